package engine

import (
	"crypto/tls"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/pgbastion/pgbastion/pgwire"
)

// stream is the stream path of one client: a goroutine that reads the client with blocking
// I/O (TLS, or after the client fell behind), and one goroutine per attached server. Blocking
// writes give TCP flow control back, so memory stays bounded whatever the peers do (DESIGN.md
// invariant 7). The client's handlers run under cl.mu.
type stream struct {
	e      *Engine
	cl     *client
	conn   net.Conn
	remote string

	buf    []byte
	lo, hi int

	scratch       []byte
	serverScratch []byte
	clientEm      emitter
	serverEm      emitter

	grants chan grant
	done   chan struct{}
	once   sync.Once

	// out is the client's writer on this path; stalled is set once the sweep closed a
	// client that stopped reading (sweepStreamClients).
	out     stallWriter
	stalled atomic.Bool
}

// setOut makes w (the client's socket or TLS connection) the client's writer on this path.
func (st *stream) setOut(w io.Writer) {
	st.out.w = w
	st.cl.out = &st.out
}

type grant struct {
	s   *server
	err error
}

func newStream(e *Engine, cl *client) *stream {
	return &stream{e: e, cl: cl, grants: make(chan grant, 1), done: make(chan struct{}), buf: make([]byte, 16<<10)}
}

// startTLS moves a client that asked for TLS to the stream path. It runs inside the client's
// traffic callback; the descriptor is taken once the callback returns (see finishDetach).
func (cl *client) startTLS(cfg *tls.Config) error {
	cl.stream = newStream(cl.e, cl)
	home := cl.lp.idx
	cl.detachCb = func(nc net.Conn) {
		tr := &tlsTransport{nc: nc, local: nc.LocalAddr(), remote: nc.RemoteAddr()}
		tc := tls.Server(tr, cfg)
		st := cl.stream
		st.conn = tc
		go func() {
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				cl.e.log.Info("TLS handshake with client failed", "remote", st.remote, "err", err)
				cl.e.m.tlsFailures.Inc()
				_ = tc.Close()
				st.finish()
				return
			}
			_ = tc.SetDeadline(time.Time{})
			cl.mu.Lock()
			cl.tlsDone = true
			st.setOut(tc)
			cl.mu.Unlock()
			// Input the client sent before the handshake ended (the startup message) is in
			// tls.Conn's buffer; st.buf holds nothing (the client sent nothing after the
			// SSLRequest before the handshake).
			if st.hi == st.lo && cl.returnToLoop(tc, tr, nc, home) {
				return
			}
			st.run()
		}()
	}
	cl.detaching = true
	return nil
}

// finishDetach takes the client's descriptor off the event loop (inside its own callback, so
// gnet cannot read in between) and hands it to the stream path.
func (cl *client) finishDetach(c gnet.Conn) gnet.Action {
	st := cl.stream
	rest, _ := c.Peek(-1)
	tin := cl.tin
	if tin != nil {
		// A TLS client leaving its loop (it fell behind): the ciphertext gnet holds goes to
		// the transport, which tls.Conn reads before the socket, and the decrypted input not
		// yet handled is the stream's.
		cl.tin = nil
		tin.tr.feed(rest)
		rest = tin.pending()
	}
	if len(rest) > 0 {
		st.takeInput(rest)
	}
	fd, err := c.Dup()
	if err != nil {
		cl.detaching = false
		return gnet.Close
	}
	f := os.NewFile(uintptr(fd), "pgbastion-client")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		cl.detaching = false
		return gnet.Close
	}
	if c.RemoteAddr() != nil {
		st.remote = c.RemoteAddr().String()
	}
	lp := cl.lp
	delete(lp.clients, cl)
	c.SetContext(detached{})
	cl.conn, cl.lp = nil, nil
	st.setOut(nc)
	cl.detaching = false
	cb := cl.detachCb
	cl.detachCb = nil
	if tin != nil {
		tin.tr.nc, tin.tr.onLoop, tin.tr.out = nc, false, nil
		st.setOut(tin.tc)
		lp.later(func() { cb(tin.tc) })
		return gnet.Close
	}
	lp.later(func() { cb(nc) })
	return gnet.Close
}

// maxClientInput bounds the unhandled input buffered for a client off gnet's buffer (on the
// stream path, or decrypted for a TLS client): the largest message and then some.
func (e *Engine) maxClientInput() int { return e.cfg.MaxMessageSize + pgwire.HeaderLen + 64<<10 }

// makeRoom returns a read buffer with room after its unhandled bytes buf[lo:hi]: empty, it
// starts over at the front; full, the bytes move to the front, or buf doubles (to at most
// limit). ok is false when buf is full of unhandled bytes at limit already.
func makeRoom(buf []byte, lo, hi, limit int) (_ []byte, _, _ int, ok bool) {
	if lo == hi {
		lo, hi = 0, 0
	}
	switch {
	case hi < len(buf):
	case lo > 0:
		copy(buf, buf[lo:hi])
		hi -= lo
		lo = 0
	case len(buf) >= limit:
		return buf, lo, hi, false
	default:
		nb := make([]byte, min(max(2*len(buf), 16<<10), limit))
		copy(nb, buf[:hi])
		buf = nb
	}
	return buf, lo, hi, true
}

// takeInput makes b (client input a loop had not handled) the start of the stream's buffer.
func (st *stream) takeInput(b []byte) {
	st.buf = append(st.buf[:0], b...)
	st.lo, st.hi = 0, len(b)
	if cap(st.buf) > len(st.buf) {
		st.buf = st.buf[:cap(st.buf)]
	} else {
		st.buf = append(st.buf, make([]byte, 16<<10)...)
	}
}

// run is the client reader goroutine. The buffer bookkeeping (lo, hi, buf) happens under
// cl.mu, because a server's reader goroutine looks at the pending input (pending, peek,
// discard); only the blocking Read, into the free tail nobody else looks at, runs unlocked.
func (st *stream) run() {
	cl := st.cl
	defer st.finish()
	// Listed for SHOW CLIENTS from now on, when this goroutine owns the client (under cl.mu);
	// before, its loop did (cleanup takes it off the list).
	cl.mu.Lock()
	if !cl.closed {
		st.e.streamMu.Lock()
		st.e.streamClients[cl] = struct{}{}
		st.e.streamMu.Unlock()
	}
	cl.mu.Unlock()
	maxBuf := st.e.maxClientInput()
	for {
		cl.mu.Lock()
		if st.lo < st.hi {
			n, err := cl.handle(st.buf[st.lo:st.hi])
			st.lo += n
			closed := cl.closed
			if err != nil {
				cl.fail(err)
				closed = true
			}
			if closed {
				cl.mu.Unlock()
				return
			}
		}
		var ok bool
		if st.buf, st.lo, st.hi, ok = makeRoom(st.buf, st.lo, st.hi, maxBuf); !ok {
			cl.fail(sqlErr(pgwire.ProgramLimitExceeded, "message too large", "raise proxy.max_message_size"))
			cl.mu.Unlock()
			return
		}
		free := st.buf[st.hi:]
		cl.mu.Unlock()
		n, err := st.conn.Read(free)
		cl.mu.Lock()
		st.hi += n
		cl.mu.Unlock()
		if err != nil && n == 0 {
			return
		}
	}
}

// finish cleans up once the client reader stops.
func (st *stream) finish() {
	st.once.Do(func() {
		close(st.done)
		cl := st.cl
		cl.mu.Lock()
		cl.closed = true
		cl.cleanup()
		cl.mu.Unlock()
		if st.conn != nil {
			_ = st.conn.Close()
		}
	})
}

func (st *stream) closeClient() {
	if st.conn != nil {
		_ = st.conn.Close()
	}
}

// pending reports whether unprocessed client bytes are buffered.
func (st *stream) pending() bool { return st.hi > st.lo }

func (st *stream) peekType() byte {
	if st.hi > st.lo {
		return st.buf[st.lo]
	}
	return 0
}

func (st *stream) peek(n int) []byte {
	if st.hi-st.lo < n {
		return nil
	}
	return st.buf[st.lo : st.lo+n]
}

func (st *stream) discard(n int) int {
	n = min(n, st.hi-st.lo)
	st.lo += n
	return n
}

// kick is a no-op: the reader goroutine processes buffered input after every attach.
func (st *stream) kick() {}

// give delivers a server to the waiting stream client (from any goroutine).
func (st *stream) give(s *server) {
	select {
	case st.grants <- grant{s: s}:
	case <-st.done:
		// The client went away: the server goes back to the pool.
		s.moveTo = nil
		s.inTransit(s.nc)
		s.releaseFromStream()
	}
}

// deliverFailure tells a waiting client that getting a server failed (from any goroutine).
func (cl *client) deliverFailure(err error) {
	if st := cl.stream; st != nil && cl.conn == nil {
		select {
		case st.grants <- grant{err: err}:
		case <-st.done:
		}
		return
	}
	lp := cl.lp
	if lp == nil {
		return
	}
	lp.exec(func() {
		if !cl.waitingFor() {
			return
		}
		cl.waiting, cl.dialing = false, false
		if errors.Is(err, errRetry) {
			cl.pe = nil
			cl.needServer()
			return
		}
		cl.acquireFailed(err)
	})
}

func (st *stream) reroute() {
	select {
	case st.grants <- grant{err: errRetry}:
	default:
	}
}

// waitAttach blocks the client reader (which holds cl.mu) until a server or a failure
// arrives.
func (st *stream) waitAttach(cl *client) {
	cl.mu.Unlock()
	var g grant
	select {
	case g = <-st.grants:
	case <-st.done:
		cl.mu.Lock()
		return
	}
	cl.mu.Lock()
	if g.err != nil {
		cl.waiting, cl.dialing = false, false
		if errors.Is(g.err, errRetry) {
			cl.e.unholdClient(cl)
			cl.pe = nil
			cl.needServer()
			return
		}
		cl.acquireFailed(g.err)
		return
	}
	s := g.s
	s.moveTo = nil
	if cl.closed {
		s.releaseFromStream()
		return
	}
	cl.attach(s)
	// cl.srv, not s.client: a server released during attach may already belong to another
	// client, whose goroutine writes s.client under its own lock.
	if cl.srv == s {
		s.reading = true
		go st.serveServer(s)
	} else {
		// Released at once (login-only attach): the server already went back.
	}
}

// streamReadSize is the read buffer of a stream-homed server's reader goroutine.
const streamReadSize = 32 << 10

// streamReadBufs recycles those buffers: in transaction mode a reader starts for every
// transaction of a TLS client, and a fresh 32 KiB each time kept the garbage collector busy
// (under pgbench -S over TLS it took a tenth of the proxy's CPU).
var streamReadBufs = sync.Pool{New: func() any { b := make([]byte, streamReadSize); return &b }}

// serveServer is the reader goroutine of a stream-homed server attached to this client.
func (st *stream) serveServer(s *server) {
	cl := st.cl
	// Room for everything carried over from the event loop (which may hold more than one
	// gnet read): copy must not cut the carry short. The handlers keep no slice of buf past
	// their return (they copy what they keep, as with gnet's inbound buffer), so it goes back
	// to the pool when the reader ends; a buffer grown past the standard size is dropped.
	var buf []byte
	if 2*len(s.carry) <= streamReadSize {
		bp := streamReadBufs.Get().(*[]byte)
		buf = *bp
		defer func() {
			if len(buf) == streamReadSize {
				*bp = buf
				streamReadBufs.Put(bp)
			}
		}()
	} else {
		buf = make([]byte, 2*len(s.carry))
	}
	lo, hi := 0, 0
	if len(s.carry) > 0 {
		hi = copy(buf, s.carry)
		s.carry = nil
	}
	for {
		if hi > lo {
			cl.mu.Lock()
			n, err := s.handle(buf[lo:hi])
			lo += n
			if err != nil {
				s.closing = true
			}
			stop := s.closing || (s.client == nil && !s.resetting)
			if stop {
				if hi > lo {
					s.carry = append([]byte(nil), buf[lo:hi]...)
				}
				closing := s.closing
				s.reading = false
				if !closing {
					_ = s.nc.SetReadDeadline(time.Time{})
					// Released below without cl.mu: no longer this client's to recheck.
					s.inTransit(s.nc)
				}
				cl.mu.Unlock()
				if closing {
					_ = s.nc.Close()
					cl.mu.Lock()
					s.lost(err)
					cl.mu.Unlock()
					return
				}
				s.releaseFromStream()
				return
			}
			cl.mu.Unlock()
		}
		buf, lo, hi, _ = makeRoom(buf, lo, hi, math.MaxInt)
		n, err := s.reader().Read(buf[hi:])
		hi += n
		if err != nil && n == 0 {
			cl.mu.Lock()
			if errors.Is(err, os.ErrDeadlineExceeded) && !s.gone && !s.closing {
				// Woken by release: stop reading once the server is free.
				_ = s.nc.SetReadDeadline(time.Time{})
				free := s.client == nil && !s.resetting
				if free {
					s.reading = false
					s.inTransit(s.nc) // released below without cl.mu
					if hi > lo {
						s.carry = append([]byte(nil), buf[lo:hi]...)
					}
				}
				cl.mu.Unlock()
				if !free {
					continue
				}
				s.releaseFromStream()
				return
			}
			if !s.gone {
				_ = s.nc.Close()
				if !errors.Is(err, io.EOF) {
					s.e.log.Debug("server connection lost", "backend", s.b.name, "err", err)
				}
				s.lost(err)
			}
			cl.mu.Unlock()
			return
		}
	}
}

// releaseFromStream returns a stream-homed server nobody reads any more to the pool.
func (s *server) releaseFromStream() {
	if s.gone {
		return
	}
	s.release()
}

// startSlowReader moves a loop-mode pair whose client stopped reading to the stream path. It
// runs on the loop inside the server's traffic callback.
func (s *server) startSlowReader(cl *client) {
	if cl.stream != nil || s.detaching {
		return
	}
	st := newStream(s.e, cl)
	cl.stream = st
	// The server now lives on the stream path: the pool counts it there, so that when it is
	// released from there it is moved to a loop first (never made idle in place).
	if s.pe != nil {
		s.pe.p.MoveOpen(s.home, -1)
	}
	s.home = -1
	s.e.m.slowReaders.Inc()
	s.e.log.Info("client is not reading its results; moving it to the stream path", "remote", cl.remote(), "queued_bytes", cl.conn.OutboundBuffered())
	lp := s.lp
	s.detachFromLoop(func(nc net.Conn) {
		s.setSocket(nc)
		s.publish(nc, nil) // the stream owns it once it has taken the client too
		s.out = s.writer()
		// Wait until what gnet queued for the client has left, then take the client too.
		go st.drainThenMove(lp)
	})
}

// drainThenMove waits (polling its loop) until the client's queued output is sent, then
// detaches the client and starts the stream goroutines.
func (st *stream) drainThenMove(lp *loop) {
	cl := st.cl
	moved := make(chan bool, 1)
	for {
		check := make(chan int, 1)
		lp.exec(func() {
			if cl.closed || cl.conn == nil {
				check <- -1
				return
			}
			n := cl.conn.OutboundBuffered()
			if n == 0 {
				cl.detaching = true
				cl.detachCb = func(nc net.Conn) {
					st.conn = nc
					moved <- true
				}
				_ = cl.conn.Wake(nil)
			}
			check <- n
		})
		n := <-check
		if n < 0 {
			if s := cl.srv; s != nil && s.nc != nil {
				_ = s.nc.Close()
			}
			return
		}
		if n == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	<-moved
	s := cl.srv
	cl.mu.Lock()
	if s != nil {
		s.out = s.writer()
		s.reading = true
	}
	cl.mu.Unlock()
	if s != nil {
		go st.serveServer(s)
	}
	st.run()
}
