package engine

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// recConn is a gnet connection whose descriptor is one end of a real socket pair; what goes
// through its Write (gnet's queueing path) is recorded instead of sent.
type recConn struct {
	gnet.Conn
	fd       int
	queued   int
	viaWrite []byte
	closed   bool
}

func (c *recConn) Context() any {
	if c.closed {
		return nil
	}
	return c
}

func (c *recConn) Fd() int               { return c.fd }
func (c *recConn) OutboundBuffered() int { return c.queued }
func (c *recConn) Write(b []byte) (int, error) {
	c.viaWrite = append(c.viaWrite, b...)
	c.queued += len(b)
	return len(b), nil
}

func socketPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	return fds[0], fds[1]
}

func drain(t *testing.T, fd int) []byte {
	t.Helper()
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if n <= 0 || err != nil {
			return got
		}
		got = append(got, buf[:n]...)
	}
}

func TestLoopWriterSendsDirectlyWhenNothingIsQueued(t *testing.T) {
	a, b := socketPair(t)
	c := &recConn{fd: a}
	w := loopWriter{c: c}
	msg := []byte("Q\x00\x00\x00\x0dSELECT 1\x00")
	if n, err := w.Write(msg); n != len(msg) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(c.viaWrite) != 0 {
		t.Fatalf("went through gnet's Write: %q", c.viaWrite)
	}
	if got := drain(t, b); !bytes.Equal(got, msg) {
		t.Fatalf("peer got %q, want %q", got, msg)
	}
}

func TestLoopWriterKeepsOrderBehindGnetsQueue(t *testing.T) {
	a, b := socketPair(t)
	c := &recConn{fd: a, queued: 10} // gnet still holds earlier bytes
	w := loopWriter{c: c}
	if _, err := w.Write([]byte("later")); err != nil {
		t.Fatal(err)
	}
	if string(c.viaWrite) != "later" {
		t.Fatalf("gnet's Write got %q, want everything", c.viaWrite)
	}
	if got := drain(t, b); len(got) != 0 {
		t.Fatalf("jumped the queue: peer got %q", got)
	}
}

func TestLoopWriterHandsTheRestOfAShortSendToGnet(t *testing.T) {
	a, b := socketPair(t)
	_ = unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	c := &recConn{fd: a}
	w := loopWriter{c: c}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: more than the socket takes
	if n, err := w.Write(msg); n != len(msg) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(c.viaWrite) == 0 {
		t.Fatal("a 1 MiB send fit into the socket: the test does not exercise a short send")
	}
	sent := drain(t, b)
	if got := append(sent, c.viaWrite...); !bytes.Equal(got, msg) {
		t.Fatalf("sent %d + queued %d bytes do not make up the message in order", len(sent), len(c.viaWrite))
	}
	// Once gnet holds bytes, later writes queue behind them.
	if _, err := w.Write([]byte("tail")); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(c.viaWrite, []byte("tail")) {
		t.Fatal("a write after a short send did not queue behind it")
	}
}

func TestLoopWriterLeavesErrorsToGnet(t *testing.T) {
	a, b := socketPair(t)
	// The peer reads no more: the send fails with EPIPE, and must not raise SIGPIPE.
	if err := unix.Shutdown(b, unix.SHUT_RD); err != nil {
		t.Fatal(err)
	}
	c := &recConn{fd: a}
	w := loopWriter{c: c}
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if string(c.viaWrite) != "x" {
		t.Fatalf("gnet's Write got %q; it must see the failed send to close the connection", c.viaWrite)
	}
}

// A connection gnet has closed (its context cleared) gets nothing, neither by sendto nor through
// gnet's Write: its descriptor number may already belong to another connection.
func TestLoopWriterRefusesAClosedConnection(t *testing.T) {
	a, b := socketPair(t)
	c := &recConn{fd: a, closed: true}
	w := loopWriter{c: c}
	n, err := w.Write([]byte("secret"))
	if n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write on a closed connection = %d, %v; want 0, net.ErrClosed", n, err)
	}
	if got := drain(t, b); len(got) != 0 || len(c.viaWrite) != 0 {
		t.Fatalf("sent %q and queued %q to a closed connection", got, c.viaWrite)
	}
}
