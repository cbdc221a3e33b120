package engine

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
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
	s.cancelT = &cancelTarget{s: s, addr: s.b.addr, pid: s.pid, key: s.key}
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
func (e *Engine) handleCancel(pid uint32, key []byte) {
	e.m.cancelRequests.Inc()
	cl := e.cancels.lookup(pid, key)
	if cl == nil {
		e.m.cancelsDropped.Inc()
		return
	}
	t := cl.cancel.Load()
	if t == nil {
		e.m.cancelsDropped.Inc()
		return
	}
	t.s.cancelPending.Add(1)
	go func() {
		defer e.cancelLanded(t.s)
		d := net.Dialer{Timeout: e.cfg.Pool.ServerConnectTimeout}
		c, err := d.Dial("tcp", t.addr)
		if err != nil {
			e.log.Warn("cannot forward cancel request", "backend", t.addr, "err", err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(pgwire.AppendCancelRequest(nil, t.pid, t.key)); err != nil {
			return
		}
		// PostgreSQL closes the connection once it has signalled the backend.
		var b [1]byte
		_, _ = c.Read(b[:])
	}()
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
		if cl := s.client; cl != nil && s.tr.Idle() {
			s.afterReadyForQuery(cl)
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
