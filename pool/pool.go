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
	// limits. Report a failure with DialFailed.
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

// SetMax changes the limit (configuration reload). Connections above a lowered limit stay
// until they close; no new one opens until the count is below it.
func (c *Counter) SetMax(max int) {
	c.mu.Lock()
	c.Max = max
	c.mu.Unlock()
}

func (c *Counter) dec() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.n--
	c.mu.Unlock()
}

// counters are the shared limits a pool's servers count against (max_db_connections,
// max_user_connections): a server may open only when every one of them has room.
type counters []*Counter

func (cs counters) tryInc() bool {
	for i, c := range cs {
		if !c.tryInc() {
			for _, d := range cs[:i] {
				d.dec()
			}
			return false
		}
	}
	return true
}

func (cs counters) dec() {
	for _, c := range cs {
		c.dec()
	}
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
	since time.Time
}

// queue is a FIFO of waiting clients that reuses its array. Taking the head moves an index
// instead of reslicing (a resliced queue loses the room in front of it, so a queue that never
// runs empty — clients always waiting under load — would allocate a new array every few
// dozen transactions); the live entries move back to the front once at least half the
// array is dead.
type queue[T any] struct {
	buf  []T
	head int
}

func (q *queue[T]) len() int { return len(q.buf) - q.head }

// items is the live entries, oldest first; valid until the next push or pop.
func (q *queue[T]) items() []T { return q.buf[q.head:] }

func (q *queue[T]) front() *T { return &q.buf[q.head] }

func (q *queue[T]) push(v T) {
	if len(q.buf) == cap(q.buf) && q.head > 0 && q.head >= len(q.buf)/2 {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, v)
}

func (q *queue[T]) pop() T {
	v := q.buf[q.head]
	var zero T
	q.buf[q.head] = zero
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
	return v
}

// set replaces the live entries with live, a prefix of items() (a filter in place).
func (q *queue[T]) set(live []T) {
	n := copy(q.buf, live)
	clear(q.buf[n:])
	q.buf, q.head = q.buf[:n], 0
}

// removeAt deletes the i-th live entry.
func (q *queue[T]) removeAt(i int) {
	live := q.items()
	q.set(append(live[:i], live[i+1:]...))
}

// home is the share of a pool that lives on one event loop (or, for the last home, on the
// stream path): its open servers, its idle ones, and the clients of that loop that wait.
type home[S, W comparable] struct {
	open    int
	idle    []idleServer[S]
	waiters queue[waiter[W]]
}

// Pool accounts for the server connections of one (backend, database, user): how many are
// open, which are idle on which event loop, and which clients wait for one. S identifies a
// server connection, W a waiting client; both are the engine's types. Pool never does I/O:
// it tells the engine what to do. Safe for concurrent use by all loops and stream goroutines.
//
// Each event loop gets a fair share of the pool (default_pool_size divided by the number of
// loops) so that, under balanced load, a client always gets a server that already lives on its
// own loop. A loop may go beyond its share while no other loop waits, and gives servers back
// (they move between loops, which costs a few system calls) when another loop is short.
//
// A loop moves a server to another loop's waiting client at once only when that loop holds
// fewer servers than its share, when it holds more than its own, or when shares are small
// (lendsIdle); otherwise a client waits for a server of its own loop, or for Sweep to move an
// idle one. Moving a server takes system calls on both loops and wakes the other one; under a
// balanced transaction-pooling load (pgbench -S -c 50 -j 2, pool 20, two loops) lending every
// momentarily idle server moved one server per ten transactions, and cost more CPU per
// transaction than the second loop saved.
type Pool[S, W comparable] struct {
	mu     sync.Mutex
	limits Limits
	db     counters
	open   int
	nidle  int
	homes  []home[S, W] // one per loop, plus the stream path last
	paused bool
	closed bool
	// staleBefore: servers born at or before it are not reused (Reconnect).
	staleBefore time.Time
}

// New returns a pool for loops event loops. shared are limits it shares with other pools (nil
// ones are no limit): a server opens only when each has room.
func New[S, W comparable](loops int, l Limits, shared ...*Counter) *Pool[S, W] {
	if loops < 1 {
		loops = 1
	}
	return &Pool[S, W]{limits: l, db: counters(shared), homes: make([]home[S, W], loops+1)}
}

func (p *Pool[S, W]) loops() int { return len(p.homes) - 1 }

// home maps a loop index (negative: the stream path) to its home.
func (p *Pool[S, W]) home(loop int) *home[S, W] {
	if loop < 0 || loop >= p.loops() {
		return &p.homes[p.loops()]
	}
	return &p.homes[loop]
}

// fairShare is the number of servers each loop may keep while other loops wait.
func (p *Pool[S, W]) fairShare() int {
	n := p.loops()
	return (p.limits.Size + n - 1) / n
}

// lendsIdle reports whether a loop that holds no more than its share lends an idle server at
// once to a client waiting on another loop that holds its share too. It does only when the
// shares are small (under four servers), where a client could otherwise wait for one of very
// few servers. With larger shares the waiting loop's own servers come free soon, and moving a
// server costs both loops system calls and wakeups (see Pool): such lending waits for Sweep.
func (p *Pool[S, W]) lendsIdle() bool {
	return p.loops() < 2 || p.fairShare() < 4
}

// short reports whether loop (negative or past the loops: the stream path, which owns no
// share) holds fewer servers than its share.
func (p *Pool[S, W]) short(loop int) bool {
	return loop < 0 || loop >= p.loops() || p.homes[loop].open < p.fairShare()
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
	// Size and Reserve are the limits in force: default_pool_size and reserve_pool_size.
	Size, Reserve int
	// Loops breaks the counts down by event loop (index = loop). Each loop serves its own
	// clients with its share of the servers, so a loop whose MaxWait runs ahead of the
	// others' is one whose thread gets less CPU (see Pool). Servers and clients on the
	// stream path count only in the totals.
	Loops []LoopStats
}

// Busy is the number of open servers attached to a client; IdleServers those waiting for one.
func (s Stats) Busy() int        { return s.Open - s.IdleServers() }
func (s Stats) IdleServers() int { return min(s.Idle, s.Open) }

// LoopStats is one event loop's part of a pool.
type LoopStats struct {
	Open, Idle, Waiting int
	MaxWait             time.Duration
}

// Stats returns the pool's counters.
func (p *Pool[S, W]) Stats(now time.Time) Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Stats{Open: p.open, Idle: p.nidle, Paused: p.paused, Size: p.limits.Size, Reserve: p.limits.Reserve,
		Loops: make([]LoopStats, p.loops())}
	for i := range p.homes {
		h := &p.homes[i]
		var wait time.Duration
		if h.waiters.len() > 0 {
			wait = now.Sub(h.waiters.front().since)
		}
		st.Waiting += h.waiters.len()
		st.MaxWait = max(st.MaxWait, wait)
		if i < p.loops() {
			st.Loops[i] = LoopStats{Open: h.open, Idle: len(h.idle), Waiting: h.waiters.len(), MaxWait: wait}
		}
	}
	return st
}

func (p *Pool[S, W]) waitersElsewhere(loop int) bool {
	for i := range p.homes {
		if i != loop && p.homes[i].waiters.len() > 0 {
			return true
		}
	}
	return false
}

// canDial reports whether home h may open one more server. reserve allows the reserve pool.
// It reserves the database-wide slot when it says yes.
func (p *Pool[S, W]) canDial(loop int, reserve bool) bool {
	max := p.limits.Size
	if reserve {
		max += p.limits.Reserve
	}
	if p.open >= max {
		return false
	}
	if loop >= 0 && loop < p.loops() && p.homes[loop].open >= p.fairShare() && !reserve && p.waitersElsewhere(loop) {
		return false
	}
	return p.db.tryInc()
}

// Acquire asks for a server for a client on loop (a negative loop means the stream path).
// from is the loop a stolen server lives on.
func (p *Pool[S, W]) Acquire(loop int, w W, now time.Time) (kind GrantKind, s S, from int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, s, 0
	}
	h := p.home(loop)
	if !p.paused {
		if s, ok := p.popIdle(h); ok {
			return GrantIdle, s, loop
		}
		if p.canDial(loop, false) {
			p.open++
			h.open++
			return GrantDial, s, loop
		}
		// An idle server on another loop that its loop does not need, if this loop is short of
		// its share or shares are small (see Pool).
		for i := 0; i < p.loops() && (p.short(loop) || p.lendsIdle()); i++ {
			o := &p.homes[i]
			if i == loop || len(o.idle) == 0 || o.waiters.len() > 0 {
				continue
			}
			s, _ := p.popIdle(o)
			o.open--
			h.open++
			return GrantSteal, s, i
		}
	}
	h.waiters.push(waiter[W]{w: w, since: now})
	return GrantWait, s, 0
}

func (p *Pool[S, W]) popIdle(h *home[S, W]) (S, bool) {
	var zero S
	n := len(h.idle)
	if n == 0 {
		return zero, false
	}
	e := h.idle[n-1]
	h.idle[n-1] = idleServer[S]{}
	h.idle = h.idle[:n-1]
	p.nidle--
	return e.s, true
}

// DialFailed records that a granted dial for loop failed.
func (p *Pool[S, W]) DialFailed(loop int) {
	p.mu.Lock()
	p.open--
	p.home(loop).open--
	p.mu.Unlock()
	p.db.dec()
}

// Release returns an idle server that lives on loop (negative: the stream path). If a client
// waits, the server is handed to it: to is that client and toLoop its loop (negative: the
// stream path), and handed is true; the server then moves there. Otherwise the server becomes
// idle on toLoop. A server past its lifetime
// is not reused: retire is true and the caller must close it (then call ServerGone with toLoop).
// A stream-path server that is not handed over is not made idle: the caller moves it to toLoop
// and releases it again from there.
func (p *Pool[S, W]) Release(loop int, s S, born, now time.Time) (to W, toLoop int, handed, retire bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.home(loop)
	if p.closed || p.tooOld(born, now) || p.open > p.limits.Size+p.limits.Reserve {
		return to, loop, false, true
	}
	if !p.paused {
		stream := loop < 0 || loop >= p.loops()
		if stream && h.waiters.len() > 0 {
			// A stream-path server goes to the oldest waiter, of the stream path or a loop.
			if i, ok := p.oldestWaiterElsewhere(loop); !ok || !p.homes[i].waiters.front().since.Before(h.waiters.front().since) {
				return h.waiters.pop().w, -1, true, false
			}
		}
		// A loop above its share gives the server to another loop that is short of servers.
		over := stream || h.open > p.fairShare()
		if over || h.waiters.len() == 0 {
			// Without a waiter here the server goes to another loop only if that loop is
			// short of its share or shares are small (see Pool).
			if i, ok := p.oldestWaiterElsewhere(loop); ok && (over || p.short(i) || p.lendsIdle()) {
				o := p.home(i)
				w := o.waiters.pop().w
				h.open--
				o.open++
				if i >= p.loops() {
					i = -1
				}
				return w, i, true, false
			}
		}
		// The stream path (TLS and slow clients) owns no share: its clients would wait for
		// as long as the loops have clients of their own waiting. Its oldest waiter is served
		// in turn with the clients waiting here, oldest first.
		if st := &p.homes[p.loops()]; st != h && st.waiters.len() > 0 &&
			(h.waiters.len() == 0 || st.waiters.front().since.Before(h.waiters.front().since)) {
			w := st.waiters.pop().w
			h.open--
			st.open++
			return w, -1, true, false
		}
		if h.waiters.len() > 0 {
			w := h.waiters.pop().w
			return w, loop, true, false
		}
	}
	if loop < 0 || loop >= p.loops() {
		// A stream-path server must first move to the loop that has the fewest servers; it is
		// counted there now, and the engine releases it again once it lives there.
		loop = p.leastOpenLoop()
		h.open--
		p.homes[loop].open++
		return to, loop, false, false
	}
	h.idle = append(h.idle, idleServer[S]{s: s, since: now, born: born})
	p.nidle++
	return to, loop, false, false
}

func (p *Pool[S, W]) oldestWaiterElsewhere(loop int) (int, bool) {
	best, found := -1, false
	var since time.Time
	for i := range p.homes {
		if (i == loop || (loop < 0 && i == p.loops())) || p.homes[i].waiters.len() == 0 {
			continue
		}
		if !found || p.homes[i].waiters.front().since.Before(since) {
			best, since, found = i, p.homes[i].waiters.front().since, true
		}
	}
	return best, found
}

func (p *Pool[S, W]) leastOpenLoop() int {
	best := 0
	for i := 1; i < p.loops(); i++ {
		if p.homes[i].open < p.homes[best].open {
			best = i
		}
	}
	return best
}

// MoveOpen moves an open server's accounting from the home of loop from to the home of loop
// to (negative: the stream path), when the engine moves a busy server there.
func (p *Pool[S, W]) MoveOpen(from, to int) {
	p.mu.Lock()
	p.home(from).open--
	p.home(to).open++
	p.mu.Unlock()
}

// PlaceIdle records s as idle on loop without offering it to waiters (after a move whose
// client went away). The server's accounting moves from the home it came from.
func (p *Pool[S, W]) PlaceIdle(from, loop int, s S, born, now time.Time) {
	p.mu.Lock()
	p.home(from).open--
	h := p.home(loop)
	h.open++
	h.idle = append(h.idle, idleServer[S]{s: s, since: now, born: born})
	p.nidle++
	p.mu.Unlock()
}

// RemoveIdle takes s out of loop's idle list because it closed. It reports whether s was there.
func (p *Pool[S, W]) RemoveIdle(loop int, s S) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.home(loop)
	for i := range h.idle {
		if h.idle[i].s == s {
			h.idle = append(h.idle[:i], h.idle[i+1:]...)
			p.nidle--
			return true
		}
	}
	return false
}

// ServerGone records that an open server connection that lived on loop closed. If a client is
// waiting and a new connection may be opened, it returns that client and its loop: the caller
// must dial for it.
func (p *Pool[S, W]) ServerGone(loop int) (dialFor W, toLoop int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open--
	p.home(loop).open--
	p.db.dec()
	if p.closed || p.paused {
		return dialFor, 0, false
	}
	order := []int{loop}
	for i := range p.homes {
		if i != loop {
			order = append(order, i)
		}
	}
	for _, i := range order {
		if i < 0 || i >= len(p.homes) {
			continue
		}
		h := &p.homes[i]
		if h.waiters.len() == 0 || !p.canDial(i, false) {
			continue
		}
		w := h.waiters.pop().w
		p.open++
		h.open++
		if i >= p.loops() {
			i = -1
		}
		return w, i, true
	}
	return dialFor, 0, false
}

// CancelWait removes a waiting client (it disconnected or timed out). It reports whether the
// client was waiting.
func (p *Pool[S, W]) CancelWait(w W) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.homes {
		h := &p.homes[i]
		for j, x := range h.waiters.items() {
			if x.w == w {
				h.waiters.removeAt(j)
				return true
			}
		}
	}
	return false
}

// Steal is an idle server Sweep moves to a waiting client on another loop.
type Steal[S, W comparable] struct {
	S    S
	From int
	To   W
}

// SweepResult is what the engine must do after Sweep.
type SweepResult[S, W comparable] struct {
	// Expired waiters passed query_wait_timeout: fail them.
	Expired []W
	// Dial: open a server for each of these waiters (room appeared, or the reserve pool opened).
	Dial []W
	// Steals: move these idle servers to these waiters.
	Steals []Steal[S, W]
	// CloseIdle: close these idle servers (idle timeout, lifetime, or above the limits).
	CloseIdle []S
	// MinDials: open this many servers to honour min_pool_size.
	MinDials int
}

// Sweep is the pool's periodic housekeeping for one loop (a negative loop also sweeps the
// stream path's waiters; the engine calls it from loop 0 with both).
func (p *Pool[S, W]) Sweep(loop int, now time.Time) (r SweepResult[S, W]) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.limits
	homes := []int{loop}
	if loop == 0 {
		homes = append(homes, p.loops())
	}
	for _, hi := range homes {
		if hi < 0 || hi >= len(p.homes) {
			continue
		}
		h := &p.homes[hi]
		keep := h.waiters.items()[:0]
		for _, w := range h.waiters.items() {
			switch {
			case l.WaitTimeout > 0 && now.Sub(w.since) >= l.WaitTimeout:
				r.Expired = append(r.Expired, w.w)
			case p.paused:
				keep = append(keep, w)
			case p.canDial(hi, false):
				// Room appeared without a release here (another pool sharing
				// max_db_connections closed a server, or limits were raised).
				p.open++
				h.open++
				r.Dial = append(r.Dial, w.w)
			case l.Reserve > 0 && now.Sub(w.since) >= l.ReserveTimeout && p.canDial(hi, true):
				p.open++
				h.open++
				r.Dial = append(r.Dial, w.w)
			default:
				if from, s, ok := p.stealFor(hi); ok {
					h.open++
					r.Steals = append(r.Steals, Steal[S, W]{S: s, From: from, To: w.w})
					continue
				}
				keep = append(keep, w)
			}
		}
		h.waiters.set(keep)
	}
	if loop >= 0 && loop < p.loops() {
		h := &p.homes[loop]
		idle := h.idle[:0]
		for _, e := range h.idle {
			tooIdle := l.IdleTimeout > 0 && now.Sub(e.since) >= l.IdleTimeout && p.open-len(r.CloseIdle) > l.Min
			tooOld := p.tooOld(e.born, now)
			if tooIdle || tooOld || p.open-len(r.CloseIdle) > l.Size+l.Reserve {
				r.CloseIdle = append(r.CloseIdle, e.s)
				p.nidle--
				continue
			}
			idle = append(idle, e)
		}
		clear(h.idle[len(idle):])
		h.idle = idle
	}
	if loop == 0 && !p.closed && !p.paused {
		for p.open < l.Min && p.canDial(0, false) {
			p.open++
			p.homes[0].open++
			r.MinDials++
		}
	}
	return r
}

// stealFor takes an idle server from a loop other than hi that has no waiters.
func (p *Pool[S, W]) stealFor(hi int) (int, S, bool) {
	var zero S
	for i := 0; i < p.loops(); i++ {
		o := &p.homes[i]
		if i == hi || len(o.idle) == 0 || o.waiters.len() > 0 {
			continue
		}
		s, _ := p.popIdle(o)
		o.open--
		return i, s, true
	}
	return 0, zero, false
}

// tooOld reports whether a server born then must not be reused: it passed server_lifetime,
// or it was open when Reconnect was called.
func (p *Pool[S, W]) tooOld(born, now time.Time) bool {
	return (p.limits.Lifetime > 0 && now.Sub(born) >= p.limits.Lifetime) || !born.After(p.staleBefore)
}

// Reconnect retires every server open now (the console's RECONNECT): it returns the idle ones,
// which the caller must close (each then reported with ServerGone), and how many others are
// open (in use, or being connected: those are kept); the ones in use are closed when released
// instead of being reused.
func (p *Pool[S, W]) Reconnect(now time.Time) (idle []S, others int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.staleBefore = now
	for i := range p.homes {
		for _, e := range p.homes[i].idle {
			idle = append(idle, e.s)
		}
		clear(p.homes[i].idle)
		p.homes[i].idle = p.homes[i].idle[:0]
	}
	p.nidle = 0
	return idle, p.open - len(idle)
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
	return p.takeWaiters()
}

func (p *Pool[S, W]) takeWaiters() []W {
	var out []W
	for i := range p.homes {
		for _, w := range p.homes[i].waiters.items() {
			out = append(out, w.w)
		}
		p.homes[i].waiters = queue[waiter[W]]{}
	}
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
	for i := range p.homes {
		for _, e := range p.homes[i].idle {
			idle = append(idle, e.s)
		}
		p.homes[i].idle = nil
	}
	p.nidle = 0
	return idle, p.takeWaiters()
}
