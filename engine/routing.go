package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgbastion/pgbastion/pool"
)

// Role is what a listener routes to.
type Role uint8

const (
	// RoleRW routes to the primary.
	RoleRW Role = iota
	// RoleRO routes to a healthy replica, the least busy first, and to the primary when there
	// is none.
	RoleRO
)

func (r Role) String() string {
	if r == RoleRO {
		return "ro"
	}
	return "rw"
}

// RoutingSpec is what the control plane publishes: backend addresses (host:port) by role.
type RoutingSpec struct {
	Primary  string
	Replicas []string
	// Names optionally label backends (address to name) in logs and metrics.
	Names map[string]string
	// HoldWrites makes read-write clients wait (up to query_wait_timeout) instead of failing
	// when there is no primary, e.g. while a failover is in progress.
	HoldWrites bool
}

// routing is the immutable table the hot path reads with one atomic load.
type routing struct {
	gen        uint64
	primary    *backend
	replicas   []*backend
	holdWrites bool
}

// backend is one PostgreSQL server and the pools of connections to it. It lives as long as the
// engine; retire closes every connection to it (when it stops being the primary, or leaves the
// routing table) and starts a new epoch of pools.
type backend struct {
	addr string
	name string

	mu      sync.Mutex
	epoch   uint64
	pools   map[poolKey]*poolEntry
	servers map[*server]struct{}
	// active counts servers attached to clients, for least-busy replica choice.
	active atomic.Int64
}

type poolKey struct{ database, user string }

// poolEntry is one pool: connections to one backend for one database and server user.
type poolEntry struct {
	key     poolKey
	b       *backend
	epoch   uint64
	p       *pool.Pool[*server, *client]
	welcome atomic.Pointer[pool.Params]
	// clients counts the client connections routed to this pool (see client.countedIn).
	clients atomic.Int64
	// cancels counts cancel requests on their way to this pool's servers; canceling its servers
	// held out of the pool until such a cancel lands (SHOW POOLS' cl_active_cancel_req and
	// sv_being_canceled).
	cancels, canceling atomic.Int64
	// dialing counts the pool's servers being connected and logged in (SHOW POOLS' sv_login);
	// the pool counts them open.
	dialing atomic.Int64
	// ctr holds the pool's counts, one slot per event loop plus the stream path's; created is
	// when the pool was made (the counts start there).
	ctr     []poolCounters
	created time.Time
	// gone is cancelled when the backend is retired (it left its role): dials still under way
	// to it give up at once instead of running into server_connect_timeout against a host
	// that may be unreachable, and their clients route again.
	gone       context.Context
	cancelGone context.CancelFunc
}

func (b *backend) pool(e *Engine, k poolKey) *poolEntry {
	b.mu.Lock()
	defer b.mu.Unlock()
	pe := b.pools[k]
	if pe == nil {
		pe = &poolEntry{key: k, b: b, epoch: b.epoch,
			p: pool.New[*server, *client](e.cfg.EventLoops, e.conf().cfg.PoolLimits(k.database, k.user),
				e.dbCounter(b, k.database), e.userCounter(b, k.user)),
			ctr: make([]poolCounters, e.cfg.EventLoops+1), created: time.Now()}
		pe.gone, pe.cancelGone = context.WithCancel(context.Background())
		b.pools[k] = pe
	}
	return pe
}

func (b *backend) addServer(s *server) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.epoch != b.epoch {
		return false
	}
	b.servers[s] = struct{}{}
	return true
}

func (b *backend) removeServer(s *server) {
	b.mu.Lock()
	delete(b.servers, s)
	b.mu.Unlock()
}

// retire starts a new epoch: it closes every pool and returns the connections and waiting
// clients of the old one. The caller closes the connections and re-routes the clients.
func (b *backend) retire() (servers []*server, waiters []*client) {
	b.mu.Lock()
	b.epoch++
	pools := b.pools
	b.pools = make(map[poolKey]*poolEntry)
	for s := range b.servers {
		servers = append(servers, s)
	}
	clear(b.servers)
	b.mu.Unlock()
	for _, pe := range pools {
		pe.cancelGone()
		_, w := pe.p.Close()
		waiters = append(waiters, w...)
	}
	return servers, waiters
}

func (b *backend) currentEpoch() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.epoch
}

// SetRouting publishes a new routing table. Connections to a backend that stops being the
// primary, or leaves the table, are closed at once; clients waiting for them are re-routed.
func (e *Engine) SetRouting(spec RoutingSpec) {
	e.routeMu.Lock()
	defer e.routeMu.Unlock()
	old := e.routing.Load()
	nr := &routing{gen: old.gen + 1, holdWrites: spec.HoldWrites}
	if spec.Primary != "" {
		nr.primary = e.backendFor(spec.Primary, spec.Names)
	}
	for _, a := range spec.Replicas {
		if a == spec.Primary {
			continue
		}
		nr.replicas = append(nr.replicas, e.backendFor(a, spec.Names))
	}
	keep := map[*backend]bool{}
	if nr.primary != nil {
		keep[nr.primary] = true
	}
	for _, b := range nr.replicas {
		keep[b] = true
	}
	var retired []*backend
	if old.primary != nil && old.primary != nr.primary {
		retired = append(retired, old.primary)
	}
	for _, b := range old.replicas {
		if !keep[b] {
			retired = append(retired, b)
		}
	}
	e.routing.Store(nr)
	if old.primary != nr.primary {
		e.m.primaryChanges.Inc()
		e.log.Info("routing changed", "primary", addrOf(nr.primary), "replicas", len(nr.replicas))
	}
	for _, b := range retired {
		servers, waiters := b.retire()
		if len(servers) > 0 {
			e.log.Info("closing connections to backend that left its role", "backend", b.name, "connections", len(servers))
		}
		for _, s := range servers {
			s.closeAsync()
		}
		for _, cl := range waiters {
			cl.rerouteAsync()
		}
	}
	// Waiters held because there was no primary, and clients parked by a pause, retry now.
	e.releaseHeld()
}

func addrOf(b *backend) string {
	if b == nil {
		return ""
	}
	return b.addr
}

func (e *Engine) backendFor(addr string, names map[string]string) *backend {
	b := e.backends[addr]
	if b == nil {
		name := names[addr]
		if name == "" {
			name = addr
		}
		b = &backend{addr: addr, name: name, pools: make(map[poolKey]*poolEntry), servers: make(map[*server]struct{})}
		e.backends[addr] = b
	}
	return b
}

// pickBackend chooses the backend for a client of role r.
func (rt *routing) pickBackend(r Role) *backend {
	if r == RoleRW {
		return rt.primary
	}
	var best *backend
	for _, b := range rt.replicas {
		if best == nil || b.active.Load() < best.active.Load() {
			best = b
		}
	}
	if best == nil {
		return rt.primary
	}
	return best
}

// dbCounter and userCounter are the max_db_connections and max_user_connections counters of
// a database or user on backend b. Every database and user gets one, unlimited (Max 0) unless
// the limit is set, so a reload can set or lift it for the pools that exist (Counter.SetMax).
func (e *Engine) dbCounter(b *backend, db string) *pool.Counter {
	return e.sharedCounter(e.dbCounters, b, db, e.conf().cfg.MaxDBConnections)
}

func (e *Engine) userCounter(b *backend, user string) *pool.Counter {
	return e.sharedCounter(e.userCounters, b, user, e.conf().cfg.MaxUserConnections)
}

func (e *Engine) sharedCounter(m map[string]*pool.Counter, b *backend, name string, limit func(string) int) *pool.Counter {
	e.dbMu.Lock()
	defer e.dbMu.Unlock()
	k := b.addr + "\x00" + name
	c := m[k]
	if c == nil {
		c = &pool.Counter{Max: limit(name)}
		m[k] = c
	}
	return c
}

// holdClient parks a client among the held (clients waiting for a primary, with
// RoutingSpec.HoldWrites, or for a resume) until a primary appears or a pause ends. It waits
// from the start of its wait (waitSince), so being re-held after a re-route does not restart
// its query_wait_timeout.
func (e *Engine) holdClient(cl *client) {
	e.heldMu.Lock()
	e.held[cl] = cl.waitSince
	e.heldMu.Unlock()
}

func (e *Engine) unholdClient(cl *client) bool {
	e.heldMu.Lock()
	defer e.heldMu.Unlock()
	if _, ok := e.held[cl]; ok {
		delete(e.held, cl)
		return true
	}
	return false
}

func (e *Engine) releaseHeld() {
	e.heldMu.Lock()
	held := e.held
	e.held = make(map[*client]time.Time)
	e.heldMu.Unlock()
	for cl := range held {
		cl.rerouteAsync()
	}
}
