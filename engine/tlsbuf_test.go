package engine

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/pgbastion/pgbastion/test/pgtest"
)

// captureConn, once on, keeps what is written to it instead of sending it.
type captureConn struct {
	net.Conn
	on  bool
	got []byte
}

func (c *captureConn) Write(p []byte) (int, error) {
	if !c.on {
		return c.Conn.Write(p)
	}
	c.got = append(c.got, p...)
	return len(p), nil
}

// inboundConn is a gnet connection whose inbound buffer holds in.
type inboundConn struct {
	fakeConn
	in []byte
}

func (c *inboundConn) Peek(n int) ([]byte, error) {
	if n < 0 || n > len(c.in) {
		n = len(c.in)
	}
	return c.in[:n], nil
}

func (c *inboundConn) Discard(n int) (int, error) {
	c.in = c.in[n:]
	return n, nil
}

// TestLoopTLSHoldsNoBufferWhenIdle: a TLS client on a loop borrows its plaintext buffer while
// it has input and gives it back once all of it is handled, keeping what is not; a ciphertext
// buffer grown by a large message is dropped once read. (With a buffer of its own, each idle
// TLS client held 16 KiB more: 35 KiB per client instead of 17 for 10,000 idle ones.)
func TestLoopTLSHoldsNoBufferWhenIdle(t *testing.T) {
	certs := pgtest.Certs(t)
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	capture := &captureConn{Conn: a}
	tr := &tlsTransport{nc: b}
	server := tls.Server(tr, &tls.Config{Certificates: []tls.Certificate{cert}})
	client := tls.Client(capture, &tls.Config{InsecureSkipVerify: true})
	done := make(chan error, 1)
	go func() { done <- client.Handshake() }()
	if err := server.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	tr.onLoop = true
	x := &loopTLS{tc: server, tr: tr, max: 1 << 20}
	capture.on = true

	// ciphertext returns what the client's tls.Conn writes for msg.
	ciphertext := func(msg []byte) []byte {
		t.Helper()
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		out := capture.got
		capture.got = nil
		return out
	}

	c := &inboundConn{in: ciphertext([]byte("hello, world"))}
	if err := x.fill(c); err != nil {
		t.Fatal(err)
	}
	if string(x.pending()) != "hello, world" || len(c.in) != 0 {
		t.Fatalf("pending %q, %d bytes left in gnet's buffer", x.pending(), len(c.in))
	}
	// Half handled (a message waiting for a server): the buffer stays.
	x.lo += 7
	x.release()
	if string(x.pending()) != "world" {
		t.Fatalf("after a partial release: pending %q", x.pending())
	}
	x.lo = x.hi
	x.release()
	if x.plain != nil || x.box != nil || x.lo != 0 || x.hi != 0 {
		t.Fatalf("idle client still holds a plaintext buffer of %d bytes", len(x.plain))
	}

	// A message larger than the kept ciphertext capacity: once read, that buffer goes too.
	big := make([]byte, 3*tlsPlainSize)
	for i := range big {
		big[i] = byte(i)
	}
	c.in = ciphertext(big)
	var got []byte
	for len(got) < len(big) {
		if err := x.fill(c); err != nil {
			t.Fatal(err)
		}
		got = append(got, x.pending()...)
		x.lo = x.hi
		if x.tr.off == len(x.tr.in) && len(x.pending()) == 0 && len(got) < len(big) && len(c.in) == 0 {
			t.Fatalf("decrypted %d of %d bytes and nothing left to read", len(got), len(big))
		}
	}
	if string(got) != string(big) {
		t.Fatal("the large message was not decrypted intact")
	}
	x.release()
	if x.plain != nil || cap(x.tr.in) > tlsKeepCiphertext {
		t.Fatalf("after a large message: plaintext buffer %d bytes, ciphertext buffer %d", len(x.plain), cap(x.tr.in))
	}
}
