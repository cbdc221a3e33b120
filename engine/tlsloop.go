package engine

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// TLS clients are served on the event loops like plain ones. The handshake runs on a
// goroutine with blocking I/O (it is a few round trips, once per connection); then the socket
// is enrolled on an event loop and tls.Conn works from memory: OnTraffic hands it the
// ciphertext gnet read and takes back whatever records it can decrypt, and what it encrypts
// goes out through the client's loop writer. Before, TLS clients stayed on the stream path for
// their whole life, a goroutine per client and another per transaction for the server's
// replies: under pgbench -S -c 50 in transaction mode that cost 1.6× PgBouncer's CPU per
// transaction, and moved a server between a loop and the stream path for every TLS
// transaction under mixed load.

// tlsTransport is the net.Conn under a client's tls.Conn: the socket while the handshake runs
// (and again if the client falls behind and moves to the stream path), memory while the
// client lives on an event loop.
type tlsTransport struct {
	nc     net.Conn // socket mode
	onLoop bool
	in     []byte // ciphertext from the loop not yet read by tls.Conn: in[off:]
	off    int
	out    io.Writer // the client's loop writer, on a loop
	local  net.Addr
	remote net.Addr
}

// errNoCiphertext tells tls.Conn that no more input is buffered. It is temporary, so tls.Conn
// keeps a partial record and is not broken by it.
type errNoCiphertext struct{}

func (errNoCiphertext) Error() string   { return "no more TLS input buffered" }
func (errNoCiphertext) Timeout() bool   { return true }
func (errNoCiphertext) Temporary() bool { return true }

func (t *tlsTransport) feed(b []byte) {
	if t.off == len(t.in) {
		t.in, t.off = t.in[:0], 0
	}
	t.in = append(t.in, b...)
}

func (t *tlsTransport) Read(p []byte) (int, error) {
	if t.off < len(t.in) {
		n := copy(p, t.in[t.off:])
		t.off += n
		return n, nil
	}
	if t.onLoop {
		return 0, errNoCiphertext{}
	}
	return t.nc.Read(p)
}

func (t *tlsTransport) Write(p []byte) (int, error) {
	if t.onLoop {
		return t.out.Write(p)
	}
	return t.nc.Write(p)
}

// Close closes the socket in socket mode; on a loop the loop closes it.
func (t *tlsTransport) Close() error {
	if t.onLoop || t.nc == nil {
		return nil
	}
	return t.nc.Close()
}

func (t *tlsTransport) LocalAddr() net.Addr  { return t.local }
func (t *tlsTransport) RemoteAddr() net.Addr { return t.remote }

func (t *tlsTransport) SetDeadline(d time.Time) error {
	if t.onLoop || t.nc == nil {
		return nil
	}
	return t.nc.SetDeadline(d)
}

func (t *tlsTransport) SetReadDeadline(d time.Time) error {
	if t.onLoop || t.nc == nil {
		return nil
	}
	return t.nc.SetReadDeadline(d)
}

func (t *tlsTransport) SetWriteDeadline(d time.Time) error {
	if t.onLoop || t.nc == nil {
		return nil
	}
	return t.nc.SetWriteDeadline(d)
}

// loopTLS is a TLS client's state on an event loop: its tls.Conn and the decrypted input not
// yet handled, plain[lo:hi]. The plaintext buffer is borrowed from tlsPlainBufs while there
// is input and given back when all of it is handled (release), so an idle TLS client holds
// none: with a buffer of its own each, 10,000 idle TLS clients took 35 KiB apiece.
type loopTLS struct {
	tc     *tls.Conn
	tr     *tlsTransport
	plain  []byte
	box    *[]byte // the pool's box of plain, while plain is a pooled buffer
	lo, hi int
	max    int // the most plaintext buffered before decrypting stops (as on the stream path)
}

// tlsPlainSize is the pooled plaintext buffer (a TLS record holds at most 16 KiB).
const tlsPlainSize = 16 << 10

var tlsPlainBufs = sync.Pool{New: func() any { b := make([]byte, tlsPlainSize); return &b }}

// tlsKeepCiphertext is the ciphertext buffer capacity a client keeps between reads; one that a
// large message grew beyond it is dropped once read.
const tlsKeepCiphertext = 4 << 10

// release gives back the plaintext buffer once everything in it was handled, and drops a
// grown ciphertext buffer once tls.Conn has read it.
func (x *loopTLS) release() {
	if x.lo == x.hi && x.plain != nil {
		if x.box != nil && len(x.plain) == tlsPlainSize {
			*x.box = x.plain
			tlsPlainBufs.Put(x.box)
		}
		x.plain, x.box, x.lo, x.hi = nil, nil, 0, 0
	}
	if t := x.tr; t.off == len(t.in) && cap(t.in) > tlsKeepCiphertext {
		t.in, t.off = nil, 0
	}
}

// fill moves what gnet read into the transport and decrypts every complete record, up to max
// bytes of unhandled input. io.EOF means the client closed its TLS session.
func (x *loopTLS) fill(c gnet.Conn) error {
	if b, _ := c.Peek(-1); len(b) > 0 {
		x.tr.feed(b)
		_, _ = c.Discard(len(b))
	}
	_, err := x.decrypt()
	return err
}

// decrypt reads every record the transport holds into plain, up to max bytes unhandled.
// starved says the transport ran out of ciphertext (nothing more to do until gnet reads).
func (x *loopTLS) decrypt() (starved bool, err error) {
	for x.hi-x.lo < x.max {
		if x.plain == nil {
			x.box = tlsPlainBufs.Get().(*[]byte)
			x.plain = *x.box
		}
		x.plain, x.lo, x.hi, _ = makeRoom(x.plain, x.lo, x.hi, x.max)
		n, err := x.tc.Read(x.plain[x.hi:])
		x.hi += n
		if err != nil {
			if _, ok := err.(errNoCiphertext); ok {
				return true, nil
			}
			if n > 0 && err == io.EOF {
				return false, nil // handled first; the next read reports the end
			}
			return false, err
		}
	}
	return false, nil
}

func (x *loopTLS) pending() []byte { return x.plain[x.lo:x.hi] }

// returnToLoop enrolls a TLS client whose handshake just finished on an event loop. It runs on
// the handshake goroutine; the client has sent nothing but the handshake yet (it is before its
// startup message), so it holds no server and is in no pool. The socket nc is closed by the
// enrolment (gnet keeps a duplicate).
func (cl *client) returnToLoop(tc *tls.Conn, tr *tlsTransport, nc net.Conn, loopIdx int) bool {
	lp := cl.e.loopAt(loopIdx)
	if lp == nil {
		return false
	}
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return false
	}
	cl.tin = &loopTLS{tc: tc, tr: tr, max: cl.e.maxClientInput()}
	tr.onLoop, tr.out = true, &cl.lw
	cl.mu.Unlock()
	failed := func(err error) {
		cl.e.log.Warn("cannot move TLS client to an event loop", "err", err)
		cl.mu.Lock()
		cl.cleanup()
		cl.mu.Unlock()
	}
	ch, err := lp.el.Enroll(gnet.NewContext(context.Background(), cl), nc)
	if err != nil {
		_ = nc.Close()
		failed(err)
		return true
	}
	go func() {
		if r := <-ch; r.Err != nil {
			failed(r.Err)
		}
	}()
	return true
}

// onReturn runs on the loop a TLS client was enrolled on after its handshake.
func (cl *client) onReturn(c gnet.Conn, lp *loop) gnet.Action {
	cl.mu.Lock()
	if cl.closed {
		// Closed while it moved: nobody else cleans up after a client between homes.
		cl.cleanup()
		cl.mu.Unlock()
		return gnet.Close
	}
	cl.lw.c = c
	cl.lp, cl.conn, cl.out = lp, c, cl.tin.tc
	cl.stream = nil
	cl.mu.Unlock()
	lp.clients[cl] = struct{}{}
	// tls.Conn may hold the startup message already (sent with the handshake's last flight).
	return cl.onTraffic(c)
}
