package auth

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/pgwire"
)

// result is what the test server saw of one connection.
type result struct {
	user   string
	method Method
	done   bool
	err    error
}

// testServer is a tiny PostgreSQL look-alike on a real socket that authenticates with a
// Verifier driven exactly as the event loop will drive it, then answers every Query with
// CommandComplete and ReadyForQuery.
type testServer struct {
	t       testing.TB
	v       *Verifier
	l       net.Listener
	results chan result
	wg      sync.WaitGroup
}

func startTestServer(t testing.TB, v *Verifier) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, v: v, l: l, results: make(chan result, 100)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				s.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		s.wg.Wait()
	})
	return s
}

func (s *testServer) addr() string { return s.l.Addr().String() }

// next returns the result of the next finished connection.
func (s *testServer) next(t testing.TB) result {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("test server saw no connection")
		return result{}
	}
}

// serve reports the outcome of authentication as soon as it is known, then serves queries.
func (s *testServer) serve(c net.Conn) {
	res := s.authenticate(c)
	s.results <- res
	if res.err != nil {
		return
	}
	limits := pgwire.FrontendLimits(1 << 20)
	var out []byte
	for {
		typ, _, err := readMessage(c, limits)
		if err != nil || typ == pgwire.MsgTerminate {
			return
		}
		if typ == pgwire.MsgQuery {
			out = pgwire.AppendCommandComplete(out[:0], "SELECT 0")
			out = pgwire.AppendReadyForQuery(out, pgwire.TxIdle)
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	}
}

func (s *testServer) authenticate(c net.Conn) result {
	var st pgwire.Startup
	for {
		pkt, err := readStartup(c)
		if err != nil {
			return result{err: err}
		}
		st, err = pgwire.ParseStartup(pkt)
		if err != nil {
			return result{err: err}
		}
		if st.Kind != pgwire.KindSSLRequest && st.Kind != pgwire.KindGSSENCRequest {
			break
		}
		if _, err := c.Write([]byte{'N'}); err != nil {
			return result{err: err}
		}
	}
	user := string(st.Param("user"))
	var ex Exchange
	out, done, err := ex.Begin(nil, s.v, user)
	limits := pgwire.FrontendLimits(1 << 20)
	for err == nil && !done {
		if _, err = c.Write(out); err != nil {
			break
		}
		var typ byte
		var body []byte
		typ, body, err = readMessage(c, limits)
		if err != nil {
			break
		}
		if typ != pgwire.MsgPassword {
			err = errors.New("expected a password message")
			break
		}
		out, done, err = ex.Step(out[:0], body)
	}
	res := result{user: user, method: ex.Method(), done: done, err: err}
	var ae *Error
	if errors.As(err, &ae) {
		_, _ = c.Write(ae.AppendErrorResponse(nil))
		return res
	}
	if err != nil {
		return res
	}
	out = pgwire.AppendParameterStatus(out, "server_version", "15.0")
	out = pgwire.AppendParameterStatus(out, "client_encoding", "UTF8")
	out = pgwire.AppendParameterStatus(out, "standard_conforming_strings", "on")
	out = pgwire.AppendBackendKeyData(out, 4242, []byte{1, 2, 3, 4})
	out = pgwire.AppendReadyForQuery(out, pgwire.TxIdle)
	if _, err := c.Write(out); err != nil {
		res.err = err
	}
	return res
}

func readStartup(r io.Reader) ([]byte, error) {
	var lenb [4]byte
	if _, err := io.ReadFull(r, lenb[:]); err != nil {
		return nil, err
	}
	n, err := pgwire.StartupLen(lenb[:])
	if err != nil {
		return nil, err
	}
	pkt := make([]byte, n)
	copy(pkt, lenb[:])
	_, err = io.ReadFull(r, pkt[4:])
	return pkt, err
}

func readMessage(r io.Reader, l *pgwire.Limits) (byte, []byte, error) {
	var hdr [pgwire.HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	typ, n, err := l.CheckHeader(hdr[:])
	if err != nil {
		return 0, nil, err
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return typ, body, err
}

// appendMsg appends a message with an arbitrary type and body.
func appendMsg(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)+4))
	return append(dst, body...)
}
