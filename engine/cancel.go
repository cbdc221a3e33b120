package engine

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgbastion/pgbastion/pgwire"
)

// cancelRegistry maps the proxy-owned BackendKeyData it gave each client to the client, so a
// CancelRequest (which arrives on a fresh, unauthenticated connection) reaches the server that
// client holds at that moment — never the server's own key, which the client never sees.
type cancelRegistry struct {
	mu sync.Mutex
	m  map[uint32]*client
}

func newCancelRegistry() cancelRegistry { return cancelRegistry{m: make(map[uint32]*client)} }

// cancelTarget is the server a client holds, as seen by a cancel arriving on another goroutine.
type cancelTarget struct {
	s    *server
	addr string
	pid  uint32
	key  []byte
	// tls: the server connection uses TLS, so its cancel goes over TLS too.
	tls bool
}

func (r *cancelRegistry) add(cl *client) uint32 {
	var b [4]byte
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		_, _ = rand.Read(b[:])
		pid := binary.BigEndian.Uint32(b[:]) & 0x7fffffff
		if pid == 0 || r.m[pid] != nil {
			continue
		}
		r.m[pid] = cl
		return pid
	}
}

func (r *cancelRegistry) remove(cl *client) {
	if cl.pid == 0 {
		return
	}
	r.mu.Lock()
	if r.m[cl.pid] == cl {
		delete(r.m, cl.pid)
	}
	r.mu.Unlock()
	cl.cancel.Store(nil)
}

func (r *cancelRegistry) setTarget(cl *client, s *server) {
	if s == nil {
		cl.cancel.Store(nil)
		return
	}
	cl.cancel.Store(s.cancelT)
}

// initCancelTarget prepares the server's cancel target once, so attaching allocates nothing.
func (s *server) initCancelTarget() {
	s.cancelT = &cancelTarget{s: s, addr: s.b.addr, pid: s.pid, key: s.key, tls: s.sec != nil}
}

func (r *cancelRegistry) lookup(pid uint32, key []byte) *client {
	r.mu.Lock()
	cl := r.m[pid]
	r.mu.Unlock()
	if cl == nil || len(key) != len(cl.secret) || subtle.ConstantTimeCompare(key, cl.secret[:]) != 1 {
		return nil
	}
	return cl
}

// handleCancel forwards a CancelRequest to the server the client holds now. A cancel for a
// client between transactions is dropped (it would hit whoever uses that server next). The
// server is kept from being handed to another client until the cancel has been delivered.
//
// It reports whether the cancel is on its way; if so, landed is called (on another goroutine)
// once PostgreSQL has signalled the backend or forwarding failed. PostgreSQL closes a cancel
// connection only after signalling, and libpq and pgx wait for that close before they go on
// (pgx, for one, sends a cancel and then closes the session when a query's context ends), so
// the proxy keeps the client's cancel connection open until then too.
func (e *Engine) handleCancel(pid uint32, key []byte, landed func()) bool {
	e.m.cancelRequests.Inc()
	cl := e.cancels.lookup(pid, key)
	var t *cancelTarget
	if cl != nil {
		t = cl.cancel.Load()
	}
	if t != nil {
		t.s.cancelPending.Add(1)
		// Between reading the target and marking it, the client may have let the server go
		// (and another client may hold it now). Whoever lets a server go first clears the
		// client's target and then reads cancelPending, so one of the two sees the other:
		// either the release holds the server for this cancel, or this re-read sees the
		// target gone and the cancel is dropped.
		if cl.cancel.Load() != t {
			e.cancelLanded(t.s)
			t = nil
		}
	}
	if t == nil {
		e.m.cancelsDropped.Inc()
		return false
	}
	pe := t.s.pe
	if pe != nil {
		pe.cancels.Add(1)
	}
	e.forwardCancel(t, func() {
		if pe != nil {
			pe.cancels.Add(-1)
		}
		e.cancelLanded(t.s)
		landed()
	})
	return true
}

// forwardCancel sends PostgreSQL a CancelRequest for t's backend on a connection of its own,
// from a goroutine; done runs once PostgreSQL has signalled the backend or forwarding failed.
func (e *Engine) forwardCancel(t *cancelTarget, done func()) {
	go func() {
		defer done()
		d := net.Dialer{Timeout: e.conf().cfg.Pool.ServerConnectTimeout}
		nc, err := dialBackend(context.Background(), &d, t.addr)
		if err != nil {
			e.log.Warn("cannot forward cancel request", "backend", t.addr, "err", err)
			return
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		// Over TLS when the connection being cancelled uses it, as libpq 17 sends cancels:
		// the packet carries the backend's secret key.
		c := nc
		if t.tls {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if c, _, err = e.secureBackend(ctx, nc, t.addr); err != nil {
				e.log.Warn("cannot forward cancel request", "backend", t.addr, "err", err)
				return
			}
		}
		if _, err := c.Write(pgwire.AppendCancelRequest(nil, t.pid, t.key)); err != nil {
			return
		}
		// PostgreSQL closes the connection once it has signalled the backend.
		var b [1]byte
		_, _ = c.Read(b[:])
	}()
}

// holdForCancel keeps a server that no client holds any more out of the pool while a cancel
// meant for its last client is on its way, so the cancel cannot hit the next client's query;
// cancelLanded lets it go. The caller has cleared that client's cancel target first.
func (s *server) holdForCancel() bool {
	if s.cancelPending.Load() == 0 {
		return false
	}
	if s.conn == nil {
		// A stream-path server (a slow reader's) has no event loop to wait on: it is
		// closed instead, and the pool dials another.
		s.closeNow(errors.New("a cancel for its last client is still on its way"))
		return true
	}
	s.cancelHold = true
	if s.pe != nil {
		s.pe.canceling.Add(1)
	}
	return true
}

// cancelLanded lets a server whose cancel was delivered be released again. It runs off the
// server's owner, so the re-check is handed to the owner named by the server's handle; a
// server in transit is released by its next owner at its next ReadyForQuery.
func (e *Engine) cancelLanded(s *server) {
	if s.cancelPending.Add(-1) != 0 {
		return
	}
	h := s.closer.Load()
	if h == nil {
		return
	}
	recheck := func() {
		if s.closer.Load() != h {
			return // it changed owner meanwhile
		}
		switch cl := s.client; {
		case cl != nil && s.tr.Idle():
			s.afterReadyForQuery(cl)
		case cl == nil && s.cancelHold:
			// Its client let it go while the cancel was on its way (see holdForCancel).
			s.cancelHold = false
			if s.pe != nil {
				s.pe.canceling.Add(-1)
			}
			s.abandoned()
		}
	}
	switch {
	case h.lp != nil:
		h.lp.exec(recheck)
	case h.cl != nil:
		h.cl.mu.Lock()
		recheck()
		h.cl.mu.Unlock()
	}
}

var _ atomic.Pointer[cancelTarget]
