package pool

import (
	"sync"
	"time"
)

// GrantKind is the outcome of Acquire.
type GrantKind uint8

const (
	// GrantIdle hands over an idle server that lives on the caller's loop.
	GrantIdle GrantKind = iota + 1
	// GrantSteal hands over an idle server that lives on another loop; the engine must move it
	// to the caller's loop (or to the stream path) before use.
	GrantSteal
	// GrantDial tells the caller to open a new server connection; it already counts against the
	// limits. Report the result with Dialed or DialFailed.
	GrantDial
	// GrantWait queued the waiter; it will be handed a server by Release, or offered a dial by
	// ServerGone or Sweep.
	GrantWait
)

// Limits are one pool's sizes and timeouts (PgBouncer's names and meanings).
type Limits struct {
	Size           int           // default_pool_size
	Min            int           // min_pool_size
	Reserve        int           // reserve_pool_size
	ReserveTimeout time.Duration // reserve_pool_timeout
	WaitTimeout    time.Duration // query_wait_timeout (0: wait forever)
	IdleTimeout    time.Duration // server_idle_timeout (0: never)
	Lifetime       time.Duration // server_lifetime (0: unlimited)
}

// Counter is a limit shared by several pools, such as max_db_connections for one database.
// A zero Max means unlimited.
type Counter struct {
	mu  sync.Mutex
	Max int
	n   int
}

func (c *Counter) tryInc() bool {
	if c == nil {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Max > 0 && c.n >= c.Max {
		return false
	}
	c.n++
	return true
}

func (c *Counter) dec() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.n--
	c.mu.Unlock()
}

// Value returns the current count.
func (c *Counter) Value() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

type idleServer[S comparable] struct {
	s     S
	since time.Time
	born  time.Time
}

type waiter[W comparable] struct {
	w     W
	loop  int
	since time.Time
}

// Pool accounts for the server connections of one (backend, database, user): how many are
// open, which are idle on which event loop, and which clients wait for one. S identifies a
// server connection, W a waiting client; both are the engine's types. Pool never does I/O:
// it tells the engine what to do. Safe for concurrent use by all loops and stream goroutines.
type Pool[S, W comparable] struct {
	mu      sync.Mutex
	limits  Limits
	db      *Counter
	open    int // open or being dialled
	idle    [][]idleServer[S]
	nidle   int
	waiters []waiter[W]
	paused  bool
	closed  bool
}

// New returns a pool for loops event loops. db, when not nil, is a limit shared with other pools.
func New[S, W comparable](loops int, l Limits, db *Counter) *Pool[S, W] {
	return &Pool[S, W]{limits: l, db: db, idle: make([][]idleServer[S], loops)}
}

// SetLimits replaces the limits (configuration reload). Existing connections stay.
func (p *Pool[S, W]) SetLimits(l Limits) {
	p.mu.Lock()
	p.limits = l
	p.mu.Unlock()
}

// Stats is a point-in-time view of a pool.
type Stats struct {
	Open, Idle, Waiting int
	MaxWait             time.Duration
	Paused              bool
}

// Stats returns the pool's counters.
func (p *Pool[S, W]) Stats(now time.Time) Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Stats{Open: p.open, Idle: p.nidle, Waiting: len(p.waiters), Paused: p.paused}
	if len(p.waiters) > 0 {
		st.MaxWait = now.Sub(p.waiters[0].since)
	}
	return st
}

// canDial reports whether one more server may be opened; reserve allows the reserve pool.
func (p *Pool[S, W]) canDial(reserve bool) bool {
	max := p.limits.Size
	if reserve {
		max += p.limits.Reserve
	}
	if p.open >= max {
		return false
	}
	if !p.db.tryInc() {
		return false
	}
	return true
}

// Acquire asks for a server for a client on loop (a negative loop means the stream path).
func (p *Pool[S, W]) Acquire(loop int, w W, now time.Time) (kind GrantKind, s S, from int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, s, 0
	}
	if !p.paused {
		if loop >= 0 {
			if s, ok := p.popIdle(loop, now); ok {
				return GrantIdle, s, loop
			}
		}
		if p.canDial(false) {
			p.open++
			return GrantDial, s, loop
		}
		for i := range p.idle {
			if i == loop {
				continue
			}
			if s, ok := p.popIdle(i, now); ok {
				return GrantSteal, s, i
			}
		}
	}
	p.waiters = append(p.waiters, waiter[W]{w: w, loop: loop, since: now})
	return GrantWait, s, 0
}

func (p *Pool[S, W]) popIdle(loop int, now time.Time) (S, bool) {
	var zero S
	l := p.idle[loop]
	for len(l) > 0 {
		e := l[len(l)-1]
		l[len(l)-1] = idleServer[S]{}
		l = l[:len(l)-1]
		p.nidle--
		p.idle[loop] = l
		return e.s, true
	}
	return zero, false
}

// Dialed records that a dial granted by Acquire (or offered by ServerGone/Sweep) succeeded.
// It is a no-op today; the connection already counts as open.
func (p *Pool[S, W]) Dialed() {}

// DialFailed records that a granted dial failed.
func (p *Pool[S, W]) DialFailed() {
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
	p.db.dec()
}

// Release returns an idle server from loop. If a client waits, the server is handed to it
// (to is that client and toLoop its loop; a client on the same loop is preferred) and handed is
// true; otherwise the server becomes idle on loop. A server past its lifetime is not reused:
// retire is true and the caller must close it (then call ServerGone).
func (p *Pool[S, W]) Release(loop int, s S, born, now time.Time) (to W, toLoop int, handed, retire bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || (p.limits.Lifetime > 0 && now.Sub(born) >= p.limits.Lifetime) || p.open > p.limits.Size+p.limits.Reserve {
		return to, 0, false, true
	}
	if !p.paused && len(p.waiters) > 0 {
		idx := 0
		// Prefer a waiter on the same loop among the first few, so that handing over does not
		// force a migration between loops; fairness is kept by looking only a short way ahead.
		for i := 0; i < len(p.waiters) && i < 8; i++ {
			if p.waiters[i].loop == loop {
				idx = i
				break
			}
		}
		w := p.waiters[idx]
		p.waiters = append(p.waiters[:idx], p.waiters[idx+1:]...)
		return w.w, w.loop, true, false
	}
	if loop < 0 {
		loop = p.leastIdleLoop()
	}
	p.idle[loop] = append(p.idle[loop], idleServer[S]{s: s, since: now, born: born})
	p.nidle++
	return to, loop, false, false
}

// ReleaseLoop tells where a server released by a stream-path client should live when it is
// not handed over: the loop with the fewest idle servers.
func (p *Pool[S, W]) leastIdleLoop() int {
	best := 0
	for i := range p.idle {
		if len(p.idle[i]) < len(p.idle[best]) {
			best = i
		}
	}
	return best
}

// PlaceIdle records s as idle on loop without offering it to waiters (used after a migration
// whose client went away).
func (p *Pool[S, W]) PlaceIdle(loop int, s S, born, now time.Time) {
	p.mu.Lock()
	p.idle[loop] = append(p.idle[loop], idleServer[S]{s: s, since: now, born: born})
	p.nidle++
	p.mu.Unlock()
}

// RemoveIdle takes s out of loop's idle list because it closed or is being checked. It
// reports whether s was there.
func (p *Pool[S, W]) RemoveIdle(loop int, s S) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if loop < 0 || loop >= len(p.idle) {
		return false
	}
	l := p.idle[loop]
	for i := range l {
		if l[i].s == s {
			p.idle[loop] = append(l[:i], l[i+1:]...)
			p.nidle--
			return true
		}
	}
	return false
}

// ServerGone records that an open server connection closed. If a client is waiting and a new
// connection may be opened, it returns that client: the caller must dial for it.
func (p *Pool[S, W]) ServerGone() (dialFor W, loop int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open--
	p.db.dec()
	if p.closed || p.paused || len(p.waiters) == 0 || !p.canDial(false) {
		return dialFor, 0, false
	}
	w := p.waiters[0]
	p.waiters = p.waiters[1:]
	p.open++
	return w.w, w.loop, true
}

// CancelWait removes a waiting client (it disconnected or timed out). It reports whether the
// client was waiting.
func (p *Pool[S, W]) CancelWait(w W) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.waiters {
		if p.waiters[i].w == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// Sweep is the pool's periodic housekeeping for one loop. It returns the waiters of that loop
// whose query_wait_timeout expired (to be failed), waiters that may now dial (room appeared, or
// reserve_pool_timeout passed and the reserve pool has room), idle servers of that loop to close (idle timeout or lifetime), and how many new
// connections to open to honour min_pool_size (only loop 0 is asked, so they are not opened
// twice).
func (p *Pool[S, W]) Sweep(loop int, now time.Time) (expired, dial []W, closeIdle []S, minDials int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.limits
	keep := p.waiters[:0]
	for _, w := range p.waiters {
		switch {
		case w.loop != loop && !(loop == 0 && w.loop < 0):
			keep = append(keep, w)
		case l.WaitTimeout > 0 && now.Sub(w.since) >= l.WaitTimeout:
			expired = append(expired, w.w)
		case !p.paused && p.canDial(false):
			// Room appeared without a release here (another pool sharing max_db_connections
			// closed a server, or limits were raised).
			p.open++
			dial = append(dial, w.w)
		case !p.paused && l.Reserve > 0 && now.Sub(w.since) >= l.ReserveTimeout && p.canDial(true):
			p.open++
			dial = append(dial, w.w)
		default:
			keep = append(keep, w)
		}
	}
	clear(p.waiters[len(keep):])
	p.waiters = keep
	if loop >= 0 && loop < len(p.idle) {
		idle := p.idle[loop][:0]
		for _, e := range p.idle[loop] {
			tooIdle := l.IdleTimeout > 0 && now.Sub(e.since) >= l.IdleTimeout && p.open-len(closeIdle) > l.Min
			tooOld := l.Lifetime > 0 && now.Sub(e.born) >= l.Lifetime
			if tooIdle || tooOld || p.open-len(closeIdle) > l.Size+l.Reserve {
				closeIdle = append(closeIdle, e.s)
				p.nidle--
				continue
			}
			idle = append(idle, e)
		}
		clear(p.idle[loop][len(idle):])
		p.idle[loop] = idle
	}
	if loop == 0 && !p.closed && !p.paused {
		for p.open < l.Min && p.canDial(false) {
			p.open++
			minDials++
		}
	}
	return expired, dial, closeIdle, minDials
}

// Pause stops handing out servers: new Acquire calls wait. Servers in use stay with their
// clients until they are released.
func (p *Pool[S, W]) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume ends a pause and returns the clients that waited, in order; the engine re-runs
// Acquire for each (against whatever routing is current).
func (p *Pool[S, W]) Resume() []W {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = false
	out := make([]W, len(p.waiters))
	for i, w := range p.waiters {
		out[i] = w.w
	}
	p.waiters = nil
	return out
}

// Active returns the number of servers that are open and not idle (attached, dialling or
// being moved).
func (p *Pool[S, W]) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open - p.nidle
}

// Close retires the pool: it returns every idle server (to be closed) and every waiter (to be
// re-routed). Later Acquire calls fail and Release tells the caller to close the server.
func (p *Pool[S, W]) Close() (idle []S, waiters []W) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for i, l := range p.idle {
		for _, e := range l {
			idle = append(idle, e.s)
		}
		p.idle[i] = nil
	}
	p.nidle = 0
	for _, w := range p.waiters {
		waiters = append(waiters, w.w)
	}
	p.waiters = nil
	return idle, waiters
}
