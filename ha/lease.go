package ha

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// The write lease (DESIGN.md invariants 1 and 2).
//
// Every node, primary or not, renews a lease: every lease_timeout/4, and at once when its state
// shows a new primary, it sends RenewLease{Node, Routing} through Raft (forwarded to the leader
// on followers) and notes the local time it sent it. The command commits only once a Raft
// quorum has stored it, and its result names the primary at that point. On success the node
// may route writes to that primary until sent + lease_timeout, measured on its own monotonic
// clock, as long as its local state still names that primary and its Raft is a leader or a
// follower (not a candidate, which has lost its leader). One candidate has not lost its
// leader: the target of a leadership hand-over (a leader that stops hands over first), which
// the leader told to stand for election a moment ago. It keeps its lease while its last
// contact with the leader is under half a heartbeat_timeout old; a follower that stands on its
// own has heard nothing for at least heartbeat_timeout, so it still loses the lease at once.
//
// This is the quorum-contact signal for every node, followers included: a committed renewal
// proves a quorum was reachable after the send time. When the quorum is lost, renewals stop
// committing and the lease runs out within lease_timeout; when the node's Raft becomes a
// candidate (no leader heard for an election timeout) it runs out at once.
//
// The leader's controller sees the same renewals in the state (fsm.LeaseRecord) and never
// promotes a new primary while any node could still be routing writes to the old one; config
// validation makes primary_timeout long enough that a lease stamped at T has certainly run out
// when the controller's clock reads T + primary_timeout.

// WriteRoute says where this node's proxy may send writes at one instant.
type WriteRoute struct {
	// Primary is the member writes go to; Address its PostgreSQL (host:port).
	Primary string
	Address string
	// Local: the primary is this node.
	Local bool
	// Valid: writes may be routed now. When false, the proxy must stop routing writes at
	// once and close its server connections to the old primary.
	Valid bool
	// Paused: a switchover holds writes; new write transactions should wait, not fail.
	Paused bool
	// Until is when the lease runs out unless renewed (monotonic clock).
	Until time.Time
}

func (r WriteRoute) same(o WriteRoute) bool {
	return r.Primary == o.Primary && r.Address == o.Address && r.Local == o.Local && r.Valid == o.Valid && r.Paused == o.Paused
}

type leaseGrant struct {
	primary string
	sent    time.Time
	until   time.Time
}

type leaseKeeper struct {
	n       *Node
	timeout time.Duration

	grant       atomic.Pointer[leaseGrant]
	lastContact atomic.Pointer[time.Time]

	kick    chan struct{} // renew now
	granted chan struct{} // a renewal succeeded

	mu       sync.Mutex
	watchers map[chan WriteRoute]struct{}
	last     WriteRoute
}

func newLeaseKeeper(n *Node) *leaseKeeper {
	lk := &leaseKeeper{
		n: n, timeout: n.cfg.Failover.LeaseTimeout,
		kick: make(chan struct{}, 1), granted: make(chan struct{}, 1),
		watchers: map[chan WriteRoute]struct{}{},
	}
	lk.grant.Store(&leaseGrant{})
	return lk
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run starts the renewer and runs the route publisher until the node closes.
func (lk *leaseKeeper) run() {
	lk.n.goFunc(lk.renewLoop)
	lk.publishLoop()
}

func (lk *leaseKeeper) renewLoop() {
	n := lk.n
	ticker := time.NewTicker(lk.timeout / 4)
	defer ticker.Stop()
	for {
		r := n.routeAt(time.Now())
		routing := ""
		if r.Valid {
			routing = r.Primary
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(n.ctx, lk.timeout/2)
		res, err := n.Apply(ctx, fsm.RenewLease{Node: n.name, Routing: routing})
		cancel()
		if err == nil && res.Err == nil {
			lk.grant.Store(&leaseGrant{primary: res.Primary, sent: sent, until: sent.Add(lk.timeout)})
			lk.lastContact.Store(&sent)
			signal(lk.granted)
		} else if n.ctx.Err() == nil {
			if err == nil {
				err = res.Err
			}
			n.log.Debug("lease renewal failed", "error", err)
		}
		select {
		case <-ticker.C:
		case <-lk.kick:
		case <-n.ctx.Done():
			return
		}
	}
}

// publishLoop recomputes the route whenever something that affects it happens (a renewal, a
// state change, a Raft role change, the lease running out) and hands changes to watchers.
func (lk *leaseKeeper) publishLoop() {
	n := lk.n
	sub := n.fsm.Subscribe()
	defer sub.Close()
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	recheck := time.NewTicker(max(lk.timeout/4, 10*time.Millisecond))
	defer recheck.Stop()
	lastPrimary := ""
	for {
		now := time.Now()
		r := n.routeAt(now)
		lk.publish(r)
		if !expiry.Stop() {
			select {
			case <-expiry.C:
			default:
			}
		}
		if r.Valid {
			expiry.Reset(max(r.Until.Sub(now), 0))
		}
		select {
		case st := <-sub.C:
			if st.Primary != lastPrimary {
				lastPrimary = st.Primary
				signal(lk.kick) // renew at once: the controller waits for it
			}
		case <-lk.granted:
		case <-n.observeCh:
		case <-expiry.C:
		case <-recheck.C:
		case <-n.ctx.Done():
			lk.publish(WriteRoute{})
			return
		}
	}
}

func (lk *leaseKeeper) publish(r WriteRoute) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if r.same(lk.last) {
		return
	}
	lk.last = r
	if r.Valid {
		lk.n.log.Info("write lease held", "primary", r.Primary, "local", r.Local, "paused", r.Paused)
	} else {
		lk.n.log.Info("write lease not held", "primary", r.Primary)
	}
	for ch := range lk.watchers {
		select {
		case <-ch:
		default:
		}
		ch <- r
	}
}

// leaseValid reports whether the lease covers writes to the primary st names, at now.
func (n *Node) leaseValid(st *fsm.State, now time.Time) (bool, time.Time) {
	if !n.CaughtUp() {
		return false, time.Time{} // a lease replayed from the log after a restart is history
	}
	g := n.lease.grant.Load()
	if g.primary == "" || g.primary != st.Primary || !now.Before(g.until) {
		return false, time.Time{}
	}
	switch n.raft.State() {
	case raft.Leader, raft.Follower:
		return true, g.until
	case raft.Candidate:
		// The target of a leadership hand-over, until its leader's last word is half a
		// heartbeat_timeout old (see the lease's rules above).
		if end := n.raft.LastContact().Add(n.cfg.Raft.HeartbeatTimeout / 2); now.Before(end) {
			if g.until.Before(end) {
				end = g.until
			}
			return true, end
		}
	}
	return false, time.Time{}
}

// routeAt computes the write route at now.
func (n *Node) routeAt(now time.Time) WriteRoute {
	st := n.fsm.State()
	r := WriteRoute{Primary: st.Primary, Local: st.Primary == n.name && st.Primary != "", Paused: st.WritesPaused()}
	if m, ok := st.Member(st.Primary); ok && m.PGHost != "" {
		r.Address = joinHostPort(m.PGHost, m.PGPort)
	}
	r.Valid, r.Until = n.leaseValid(st, now)
	return r
}

// WriteRoute returns where writes may go right now. It reads atomics and the clock and formats
// the address; a proxy that routes every transaction should follow WatchRoute instead.
func (n *Node) WriteRoute() WriteRoute { return n.routeAt(time.Now()) }

// HoldsWriteLease reports whether this node is the primary and may take writes right now
// (invariant 1): it is the primary in its state and has heard from a Raft quorum within
// lease_timeout. A VIP belongs only on a node for which this holds. It reads only atomics and
// the clock and does not allocate, so it may be called for every transaction.
func (n *Node) HoldsWriteLease() bool {
	st := n.fsm.State()
	if st.Primary != n.name || st.Primary == "" {
		return false
	}
	ok, _ := n.leaseValid(st, time.Now())
	return ok
}

// WatchRoute delivers the write route whenever it changes, latest value only: the channel
// holds at most one route and a newer one replaces an unread older one. Lease loss is
// delivered when it happens (a timer fires at expiry), so a proxy following this channel stops
// routing writes at once (invariant 2). Call the returned function to stop watching.
func (n *Node) WatchRoute() (<-chan WriteRoute, func()) {
	ch := make(chan WriteRoute, 1)
	lk := n.lease
	lk.mu.Lock()
	lk.watchers[ch] = struct{}{}
	ch <- n.WriteRoute()
	lk.mu.Unlock()
	return ch, func() {
		lk.mu.Lock()
		delete(lk.watchers, ch)
		lk.mu.Unlock()
	}
}

// LastQuorumContact is the send time of the last lease renewal that a Raft quorum committed
// (zero before the first).
func (n *Node) LastQuorumContact() time.Time {
	if t := n.lease.lastContact.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
