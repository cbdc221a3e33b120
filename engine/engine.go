package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pgwire/auth"
	"github.com/pgbastion/pgbastion/pool"
)

// Engine is the proxy. Create it with New, start it with Run.
type Engine struct {
	gnet.BuiltinEventEngine

	cfg Config
	log *slog.Logger
	m   *Metrics
	// live holds the settings a reload may change and what is derived from them (conf).
	live     atomic.Pointer[live]
	reloadMu sync.Mutex
	// version names the build in the admin console; reload is Options.Reload.
	version string
	reload  func() ([]string, error)

	gnet   gnet.Engine
	booted chan struct{}
	// ready is closed once every event loop is known (discoverLoops).
	ready        chan struct{}
	discoverOnce sync.Once

	frontLimits   *pgwire.Limits // after startup, session mode
	txnLimits     *pgwire.Limits // after startup, transaction mode (Parse bounded)
	backendLimits *pgwire.Limits
	registry      *pool.Registry

	routeMu  sync.Mutex
	routing  atomic.Pointer[routing]
	backends map[string]*backend // guarded by routeMu

	dbMu sync.Mutex
	// dbCounters and userCounters hold max_db_connections and max_user_connections, by
	// backend address and database or user.
	dbCounters, userCounters map[string]*pool.Counter

	heldMu sync.Mutex
	held   map[*client]time.Time

	// authq runs proxy.auth.auth_query; learned holds, by user, the credentials a client's
	// login taught the proxy to log in to PostgreSQL with (learnCredentials). learned outlives
	// reloads: clients logged in before one keep needing servers.
	authq   *authQuery
	learned sync.Map // user -> *auth.Credentials

	pausedRW atomic.Bool
	// pausedAll is the operator's pause of the whole proxy (Pause, PgBouncer's PAUSE);
	// pausedDBs the databases paused one by one (PauseDatabase, PAUSE db), nil when none,
	// replaced under pauseMu, never modified.
	pausedAll atomic.Bool
	pausedDBs atomic.Pointer[map[string]bool]
	pauseMu   sync.Mutex

	loopMu  sync.Mutex
	loops   []*loop
	loopIdx map[gnet.EventLoop]*loop
	ticks   uint64 // OnTick calls; only OnTick (gnet's ticker goroutine) touches it

	// streamClients are the clients whose stream goroutine runs (TLS, slow readers), for SHOW
	// CLIENTS.
	streamMu      sync.Mutex
	streamClients map[*client]struct{}
	// streamSweeping: sweepStreamClients is running.
	streamSweeping atomic.Bool

	clients atomic.Int64
	cancels cancelRegistry

	// roleByPort maps a listener port to its role.
	rwAddr, roAddr *net.TCPAddr
	// rwSock and roSock are the client Unix sockets' paths ("" when off).
	rwSock, roSock string

	// checkNow asks the standalone health checker to re-check roles at once.
	checkNow chan struct{}

	stopOnce sync.Once
	stopped  chan struct{}
}

// Options are the collaborators an Engine needs besides its Config.
type Options struct {
	Logger *slog.Logger
	// Auth verifies clients; nil means trust.
	Auth *auth.Verifier
	// Secrets provide the passwords to log in to PostgreSQL as each client's user when
	// Config.Server.User is empty (the auth_file); nil means empty passwords.
	Secrets auth.Secrets
	// Metrics receives the engine's counters; nil creates a private set.
	Metrics *Metrics
	// Version names the build in the admin console (default "dev").
	Version string
	// Reload, when set, re-reads the daemon's configuration file (the console's RELOAD, for
	// proxy.admin_users): it returns a line per changed setting, or why the file was refused.
	Reload func() ([]string, error)
}

// New validates cfg and returns an engine that is not yet running.
func New(cfg Config, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.EventLoops == 0 {
		cfg.EventLoops = AutoEventLoops(cfg.Pool.Mode, runtime.NumCPU())
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	e := &Engine{
		cfg:           cfg,
		log:           log,
		m:             opts.Metrics,
		booted:        make(chan struct{}),
		ready:         make(chan struct{}),
		frontLimits:   pgwire.FrontendLimits(pgwire.MaxMessageLen),
		txnLimits:     pgwire.FrontendLimits(pgwire.MaxMessageLen),
		backendLimits: pgwire.BackendLimits(),
		registry:      pool.NewRegistry(),
		backends:      make(map[string]*backend),
		dbCounters:    make(map[string]*pool.Counter),
		userCounters:  make(map[string]*pool.Counter),
		held:          make(map[*client]time.Time),
		loopIdx:       make(map[gnet.EventLoop]*loop),
		streamClients: make(map[*client]struct{}),
		cancels:       newCancelRegistry(),
		checkNow:      make(chan struct{}, 1),
		stopped:       make(chan struct{}),
	}
	e.authq = newAuthQuery(e)
	if e.m == nil {
		e.m = NewMetrics(nil)
	}
	e.version = cmp.Or(opts.Version, "dev")
	e.reload = opts.Reload
	e.txnLimits.Set(pgwire.MsgParse, cfg.MaxMessageSize)
	e.routing.Store(&routing{})
	l, err := newLive(cfg, opts.Auth, opts.Secrets)
	if err != nil {
		return nil, err
	}
	e.live.Store(l)
	if cfg.ListenRW != "" {
		if e.rwAddr, err = net.ResolveTCPAddr("tcp", cfg.ListenRW); err != nil {
			return nil, fmt.Errorf("proxy.listen_rw: %w", err)
		}
	}
	if cfg.ListenRO != "" {
		if e.roAddr, err = net.ResolveTCPAddr("tcp", cfg.ListenRO); err != nil {
			return nil, fmt.Errorf("proxy.listen_ro: %w", err)
		}
	}
	e.rwSock, e.roSock = cfg.UnixSocketPaths()
	return e, nil
}

// Run starts the listeners and serves until ctx is cancelled or Stop is called. A standalone
// proxy (Config.Backends set) also runs its role checker.
func (e *Engine) Run(ctx context.Context) error {
	// gnet reports a taken port as "setsockopt: bad file descriptor"; try each address first so
	// that the operator reads what is wrong and what to do.
	var addrs []string
	for _, l := range []struct{ key, addr string }{{"proxy.listen_rw", e.cfg.ListenRW}, {"proxy.listen_ro", e.cfg.ListenRO}} {
		if l.addr == "" {
			continue
		}
		if err := probeListen(l.key, l.addr); err != nil {
			return err
		}
		addrs = append(addrs, "tcp://"+l.addr)
	}
	for _, path := range []string{e.rwSock, e.roSock} {
		if path == "" {
			continue
		}
		if err := probeUnixSocket(path); err != nil {
			return err
		}
		addrs = append(addrs, "unix://"+path)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go e.logStatsLoop(ctx)
	if len(e.cfg.Backends) > 0 {
		// Learn the roles before accepting clients, then keep checking.
		hc := newHealthChecker(e)
		hc.check(ctx)
		go e.runHealthChecker(ctx, hc)
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-e.stopped:
		}
		select {
		case <-e.booted:
			sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			_ = e.gnet.Stop(sctx)
		default:
		}
	}()
	err := gnet.Rotate(e, addrs,
		gnet.WithNumEventLoop(e.cfg.EventLoops),
		gnet.WithLoadBalancing(gnet.LeastConnections),
		gnet.WithReuseAddr(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithTCPKeepAlive(30*time.Second),
		gnet.WithTicker(true),
		gnet.WithLogger(gnetLogger{e.log.With("component", "gnet")}),
	)
	e.stopOnce.Do(func() { close(e.stopped) })
	e.authq.close()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("proxy listeners %v: %w", addrs, err)
	}
	return nil
}

// probeListen binds addr and lets it go again, turning the usual failures into advice.
func probeListen(key, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln.Close()
	}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%s %s: the address is already in use by another process (another pgbastion, PgBouncer or PostgreSQL?); stop it or set %s to a free address", key, addr, key)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%s %s: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE", key, addr)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%s %s: no network interface of this host has that address; use one of its addresses, or 0.0.0.0 for all", key, addr)
	}
	return fmt.Errorf("%s %s: %w", key, addr, err)
}

// Metrics returns the engine's metrics.
func (e *Engine) Metrics() *Metrics { return e.m }

// Ready is closed once the listeners accept connections and every event loop is known.
func (e *Engine) Ready() <-chan struct{} { return e.ready }

// Stop shuts the proxy down.
func (e *Engine) Stop() { e.stopOnce.Do(func() { close(e.stopped) }) }

// OnBoot implements gnet.EventHandler.
func (e *Engine) OnBoot(eng gnet.Engine) gnet.Action {
	e.gnet = eng
	if err := e.setSocketAccess(); err != nil {
		// The sockets exist but with the umask's permissions: say so, and serve TCP anyway.
		e.log.Error("client Unix sockets: cannot set their permissions", "err", err)
	}
	close(e.booted)
	e.log.Info("proxy listening", "rw", e.cfg.ListenRW, "ro", e.cfg.ListenRO, "unix_rw", e.rwSock, "unix_ro", e.roSock,
		"loops", e.cfg.EventLoops, "pool_mode", e.cfg.Pool.Mode)
	return gnet.None
}

// detached marks a gnet connection whose descriptor was duplicated and handed elsewhere; its
// callbacks are ignored.
type detached struct{}

// loop is the per-event-loop state. Everything in it is touched only by that loop's goroutine.
type loop struct {
	e        *Engine
	idx      int
	el       gnet.EventLoop
	scratch  []byte
	scratch2 []byte
	em       emitter
	deferred []task
	// now caches the clock for one callback (see clock); zero between callbacks.
	now     time.Time
	clients map[*client]struct{}
	servers map[*server]struct{}
}

func (e *Engine) loopOf(c gnet.Conn) *loop {
	el := c.EventLoop()
	e.loopMu.Lock()
	defer e.loopMu.Unlock()
	lp := e.loopIdx[el]
	if lp == nil {
		lp = &loop{e: e, idx: len(e.loops), el: el, clients: make(map[*client]struct{}), servers: make(map[*server]struct{})}
		if lp.idx >= e.cfg.EventLoops {
			// gnet never runs more loops than asked; guard the pool's per-loop arrays anyway.
			lp.idx = e.cfg.EventLoops - 1
		}
		e.loops = append(e.loops, lp)
		e.loopIdx[el] = lp
	}
	return lp
}

// loopProbe is the context of the connections discoverLoops registers.
type loopProbe struct{}

// discoverLoops makes every event loop known before clients are served. A loop is known (it
// gets its index) when it first opens a connection, and the pools place servers on loops by
// index: a server placed on a loop no connection had visited yet would go to another one, and
// the next client of that loop would get a server living elsewhere. So each loop is handed a
// probe connection, one at a time and held open: gnet gives each to the loop with the fewest
// connections, which is one that has none.
func (e *Engine) discoverLoops() {
	defer close(e.ready)
	known := func() int {
		e.loopMu.Lock()
		defer e.loopMu.Unlock()
		return len(e.loops)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.log.Warn("cannot discover the event loops; they become known with their first connections", "err", err)
		return
	}
	defer ln.Close()
	var held []net.Conn // the far ends of the probes; closing them closes the probes
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	// probe registers one probe connection and reports whether it opened on a loop.
	probe := func() bool {
		near, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return false
		}
		far, err := ln.Accept()
		if err != nil {
			_ = near.Close()
			return false
		}
		held = append(held, far)
		ch, err := e.gnet.Register(gnet.NewNetConnContext(gnet.NewContext(context.Background(), loopProbe{}), near))
		if err != nil {
			_ = near.Close()
			return false
		}
		select {
		case r := <-ch:
			return r.Err == nil
		case <-e.stopped:
		case <-time.After(5 * time.Second):
		}
		return false
	}
	for try := 0; try < 4*e.cfg.EventLoops && known() < e.cfg.EventLoops && probe(); try++ {
	}
	if n := known(); n < e.cfg.EventLoops {
		e.log.Warn("not every event loop could be discovered at start", "known", n, "loops", e.cfg.EventLoops)
	}
}

// connLoop returns the loop of a connection that is already open: its context knows it, so
// the hot path takes no lock.
func (e *Engine) connLoop(c gnet.Conn) *loop {
	switch x := c.Context().(type) {
	case *client:
		if x.lp != nil {
			return x.lp
		}
	case *server:
		if x.lp != nil && x.conn == c {
			return x.lp
		}
	}
	return e.loopOf(c)
}

func (e *Engine) loopAt(i int) *loop {
	e.loopMu.Lock()
	defer e.loopMu.Unlock()
	for _, lp := range e.loops {
		if lp.idx == i {
			return lp
		}
	}
	if len(e.loops) > 0 {
		return e.loops[0]
	}
	return nil
}

// task is deferred work for a loop. The common kinds carry their operands instead of a
// closure, so handing a server to the next client allocates nothing.
type task struct {
	kind taskKind
	cl   *client
	s    *server
	f    func()
}

type taskKind uint8

const (
	taskFunc     taskKind = iota
	taskProcess           // run cl's handler on its buffered input
	taskHandover          // attach s to cl if cl still waits, else release s
)

// later queues f to run on this loop once the current callback has finished with its
// connection, which keeps hand-overs between connections free of re-entrancy.
func (lp *loop) later(f func()) { lp.deferred = append(lp.deferred, task{kind: taskFunc, f: f}) }

// laterTask queues a typed task.
func (lp *loop) laterTask(t task) { lp.deferred = append(lp.deferred, t) }

func (lp *loop) runDeferred() {
	for i := 0; i < len(lp.deferred); i++ {
		t := lp.deferred[i]
		lp.deferred[i] = task{}
		lp.e.guard(nil, func() { t.run() })
	}
	lp.deferred = lp.deferred[:0]
	// Every callback on the loop ends here: the next one reads the clock afresh.
	lp.now = time.Time{}
}

// clock returns the time of the current callback on this loop: read once, then reused by the
// rest of the callback and its deferred work. The times it feeds (last activity, server idle
// and lifetime, the start of a wait) serve timeouts of milliseconds and more, and a
// transaction read the clock five times before (about 0.5 us of vDSO time per transaction
// under pgbench -S); it now reads it once per event.
func (lp *loop) clock() time.Time {
	if lp.now.IsZero() {
		lp.now = time.Now()
	}
	return lp.now
}

// clockOf returns lp's callback clock, or the time now for a caller off the loops (the stream
// path, lp nil).
func clockOf(lp *loop) time.Time {
	if lp == nil {
		return time.Now()
	}
	return lp.clock()
}

func (t task) run() {
	switch t.kind {
	case taskFunc:
		t.f()
	case taskProcess:
		t.cl.process()
	case taskHandover:
		if t.cl.waitingFor() {
			t.cl.attachAndResume(t.s)
		} else {
			t.s.release()
		}
	}
}

// exec runs f on the loop's goroutine (from any goroutine).
func (lp *loop) exec(f func()) {
	err := lp.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		lp.e.guard(nil, f)
		lp.runDeferred()
		return nil
	}))
	if err != nil {
		lp.e.log.Warn("event loop refused a task", "err", err)
	}
}

// guard runs f and turns a panic into closing only the connection concerned (DESIGN.md
// invariant 6). It reports whether f panicked.
func (e *Engine) guard(c gnet.Conn, f func()) (panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			panicked = true
			e.m.panics.Inc()
			e.log.Error("recovered from a panic; closing only the connection concerned", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			if c != nil {
				if h, ok := c.Context().(interface{ abort() }); ok {
					h.abort()
				}
				_ = c.Close()
			}
		}
	}()
	f()
	return false
}

func (e *Engine) roleOf(local net.Addr) Role {
	if ua, ok := local.(*net.UnixAddr); ok {
		if ua.Name != "" && ua.Name == e.roSock {
			return RoleRO
		}
		return RoleRW
	}
	ta, ok := local.(*net.TCPAddr)
	if !ok {
		return RoleRW
	}
	match := func(a *net.TCPAddr) bool {
		return a != nil && a.Port == ta.Port && (a.IP == nil || a.IP.IsUnspecified() || a.IP.Equal(ta.IP))
	}
	if match(e.roAddr) && !match(e.rwAddr) {
		return RoleRO
	}
	if match(e.roAddr) && match(e.rwAddr) && e.roAddr.IP.Equal(ta.IP) {
		return RoleRO
	}
	return RoleRW
}

// OnOpen implements gnet.EventHandler.
func (e *Engine) OnOpen(c gnet.Conn) (out []byte, action gnet.Action) {
	lp := e.loopOf(c)
	if e.guard(c, func() {
		switch x := c.Context().(type) {
		case nil:
			cl := newClient(e, e.roleOf(c.LocalAddr()))
			_, cl.unix = c.LocalAddr().(*net.UnixAddr)
			cl.onAccept(c, lp)
		case *server:
			x.onEnrolled(c, lp)
		case *client:
			action = x.onReturn(c, lp)
		}
	}) {
		action = gnet.Close
	}
	lp.runDeferred()
	return nil, action
}

// OnTraffic implements gnet.EventHandler.
func (e *Engine) OnTraffic(c gnet.Conn) (action gnet.Action) {
	lp := e.connLoop(c)
	if e.guard(c, func() {
		switch x := c.Context().(type) {
		case *client:
			action = x.onTraffic(c)
		case *server:
			action = x.onTraffic(c)
		case detached:
			action = gnet.Close
		default:
			action = gnet.Close
		}
	}) {
		action = gnet.Close
	}
	lp.runDeferred()
	return action
}

// OnClose implements gnet.EventHandler.
func (e *Engine) OnClose(c gnet.Conn, err error) gnet.Action {
	lp := e.connLoop(c)
	e.guard(nil, func() {
		switch x := c.Context().(type) {
		case *client:
			x.onClose(c, err)
		case *server:
			x.onClose(c, err)
		}
	})
	lp.runDeferred()
	return gnet.None
}

// OnTick implements gnet.EventHandler: periodic housekeeping on every loop.
func (e *Engine) OnTick() (time.Duration, gnet.Action) {
	// The first tick comes once gnet has set up all its loops (OnBoot comes before that).
	e.discoverOnce.Do(func() { go e.discoverLoops() })
	loops := e.loopList()
	now := time.Now()
	e.ticks++
	clients := e.ticks%uint64(clientSweepEvery/sweepEvery) == 0
	for _, lp := range loops {
		lp := lp
		lp.exec(func() { lp.sweep(now, clients) })
	}
	if clients {
		e.sweepHeld(now)
		if e.hasStreamClients() {
			go e.sweepStreamClients(now)
		}
	}
	select {
	case <-e.stopped:
		return 0, gnet.Shutdown
	default:
	}
	return sweepEvery, gnet.None
}

// PauseWrites stops handing out connections to the primary: new read-write transactions wait,
// those in flight finish. It returns when no read-write transaction is in flight, or with
// ctx's error (the pause stays in force until ResumeWrites).
func (e *Engine) PauseWrites(ctx context.Context) error {
	e.pausedRW.Store(true)
	if n, err := awaitDrained(ctx, e.WritesInFlight); err != nil {
		return fmt.Errorf("waiting for %d read-write transactions to finish: %w", n, err)
	}
	return nil
}

// awaitDrained polls inFlight until it reaches 0, or until ctx ends: then it returns the
// last count and ctx's error.
func awaitDrained(ctx context.Context, inFlight func() int) (int, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for n := inFlight(); n > 0; n = inFlight() {
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-t.C:
		}
	}
	return 0, nil
}

// HoldWrites turns the write pause on or off without waiting: the HA core's switchover sets it
// on every node and waits, through WritesInFlight, for each proxy to drain.
func (e *Engine) HoldWrites(on bool) {
	if on {
		e.pausedRW.Store(true)
		return
	}
	if e.pausedRW.Load() {
		e.ResumeWrites()
	}
}

// WritesInFlight is the number of transactions holding a connection to the primary now.
func (e *Engine) WritesInFlight() int {
	rt := e.routing.Load()
	if rt.primary == nil {
		return 0
	}
	return int(rt.primary.active.Load())
}

// ResumeWrites ends a pause; waiting clients continue against the current routing table.
func (e *Engine) ResumeWrites() {
	e.pausedRW.Store(false)
	e.releaseHeld()
}

// Pause is PgBouncer's PAUSE for the whole proxy, for maintenance of a standalone proxy's
// PostgreSQL (a restart, a minor upgrade): from now on every new transaction, on both ports,
// waits instead of getting a server; transactions in flight finish. It returns once none is in
// flight, or with ctx's error and the number still in flight (in session mode a connected
// client's whole session counts). Either way the pause stays in force until Resume; a client
// that waits longer than query_wait_timeout gets an error naming it.
func (e *Engine) Pause(ctx context.Context) (inFlight int, err error) {
	if !e.pausedAll.Swap(true) {
		e.log.Warn("proxy paused: new transactions wait until it is resumed")
	}
	if n, err := awaitDrained(ctx, e.inFlight); err != nil {
		return n, fmt.Errorf("%d transactions still hold a server connection: %w", n, err)
	}
	return 0, nil
}

// Resume ends a Pause, and every PauseDatabase: the clients that waited continue against the
// current routing table.
func (e *Engine) Resume() {
	if e.pausedAll.Swap(false) {
		e.log.Warn("proxy resumed")
	}
	e.pauseMu.Lock()
	if dbs := e.pausedDBs.Swap(nil); dbs != nil {
		e.log.Warn("databases resumed", "databases", sortedNames(*dbs))
	}
	e.pauseMu.Unlock()
	e.releaseHeld()
}

// PauseDatabase is PgBouncer's PAUSE db: as Pause, for the transactions on database db only
// (on both ports). It returns once none of them holds a server, or with ctx's error and how
// many still do; the pause stays in force until ResumeDatabase (or Resume).
func (e *Engine) PauseDatabase(ctx context.Context, db string) (inFlight int, err error) {
	if e.setDBPaused(db, true) {
		e.log.Warn("database paused: its new transactions wait until it is resumed", "database", db)
	}
	if n, err := awaitDrained(ctx, func() int { return e.inFlightOn(db) }); err != nil {
		return n, fmt.Errorf("%d transactions on database %q still hold a server connection: %w", n, db, err)
	}
	return 0, nil
}

// ResumeDatabase ends PauseDatabase for db; it reports whether db was paused.
func (e *Engine) ResumeDatabase(db string) bool {
	if !e.setDBPaused(db, false) {
		return false
	}
	e.log.Warn("database resumed", "database", db)
	e.releaseHeld()
	return true
}

// setDBPaused adds db to the paused databases or takes it out, publishing a new set (nil when
// empty: the hot path then reads one nil pointer). It reports whether the set changed.
func (e *Engine) setDBPaused(db string, paused bool) bool {
	e.pauseMu.Lock()
	defer e.pauseMu.Unlock()
	var next map[string]bool
	if old := e.pausedDBs.Load(); old != nil {
		next = maps.Clone(*old)
	}
	if next[db] == paused {
		return false
	}
	if paused {
		if next == nil {
			next = map[string]bool{}
		}
		next[db] = true
	} else {
		delete(next, db)
	}
	if len(next) == 0 {
		e.pausedDBs.Store(nil)
	} else {
		e.pausedDBs.Store(&next)
	}
	return true
}

// dbPaused reports whether database db is paused on its own (PauseDatabase).
func (e *Engine) dbPaused(db string) bool {
	m := e.pausedDBs.Load()
	return m != nil && (*m)[db]
}

// PausedDatabases lists the databases paused on their own, sorted.
func (e *Engine) PausedDatabases() []string {
	if m := e.pausedDBs.Load(); m != nil {
		return sortedNames(*m)
	}
	return nil
}

func sortedNames(m map[string]bool) []string {
	return slices.Sorted(maps.Keys(m))
}

// inFlightOn counts the server connections of database db's pools in use (attached to a
// client, or being connected for one).
func (e *Engine) inFlightOn(db string) int {
	n := 0
	for _, pe := range e.poolEntries() {
		if pe.key.database == db {
			n += pe.p.Active()
		}
	}
	return n
}

// inFlight is the number of server connections attached to clients, over every backend.
func (e *Engine) inFlight() int {
	e.routeMu.Lock()
	defer e.routeMu.Unlock()
	n := int64(0)
	for _, b := range e.backends {
		n += b.active.Load()
	}
	return int(n)
}

// Stats is a summary for the API and tests.
type Stats struct {
	Clients int64
	Primary string
	Pools   []PoolStats
	// Paused: an operator's Pause is in force; InFlight counts the transactions that hold a
	// server connection; Held the clients waiting for the end of a pause or for a primary
	// (counted in no pool).
	Paused         bool
	InFlight, Held int
	// PausedDatabases are the databases paused on their own (PauseDatabase).
	PausedDatabases []string
}

// PoolStats describes one pool.
type PoolStats struct {
	// Backend is the backend's name, Addr its host:port.
	Backend, Addr, Database, User string
	// Clients is the number of client connections routed to the pool.
	Clients int
	Counts  PoolCounts
	// CancelsInFlight counts cancel requests being forwarded to the pool's servers;
	// HeldForCancel the servers no client holds that wait for such a cancel to land before
	// they return to the pool (counted busy in Stats).
	CancelsInFlight, HeldForCancel int
	// LoggingIn counts servers being connected and logged in (counted open, and busy).
	LoggingIn int
	pool.Stats
}

// Stats returns the current counters, pools ordered by database, user and backend.
func (e *Engine) Stats() Stats {
	st := Stats{Clients: e.clients.Load(), Primary: addrOf(e.routing.Load().primary), Paused: e.pausedAll.Load(),
		PausedDatabases: e.PausedDatabases()}
	e.heldMu.Lock()
	st.Held = len(e.held)
	e.heldMu.Unlock()
	e.routeMu.Lock()
	bs := make([]*backend, 0, len(e.backends))
	for _, b := range e.backends {
		bs = append(bs, b)
		st.InFlight += int(b.active.Load())
	}
	e.routeMu.Unlock()
	now := time.Now()
	for _, b := range bs {
		b.mu.Lock()
		for k, pe := range b.pools {
			st.Pools = append(st.Pools, PoolStats{Backend: b.name, Addr: b.addr, Database: k.database, User: k.user,
				Clients: int(max(0, pe.clients.Load())), Counts: pe.counts(), Stats: pe.p.Stats(now),
				CancelsInFlight: int(max(0, pe.cancels.Load())), HeldForCancel: int(max(0, pe.canceling.Load())),
				LoggingIn: int(max(0, pe.dialing.Load()))})
		}
		b.mu.Unlock()
	}
	// Pools come from maps: one order for every reader (the API, /metrics, the console's
	// per-database sums, which add up neighbours).
	slices.SortFunc(st.Pools, func(a, b PoolStats) int {
		return cmp.Or(cmp.Compare(a.Database, b.Database), cmp.Compare(a.User, b.User), cmp.Compare(a.Backend, b.Backend))
	})
	return st
}

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...)) }

// probeUnixSocket refuses a client socket path another live process listens on (gnet removes
// whatever is at the path before it binds); a socket file left by a process that died goes.
func probeUnixSocket(path string) error {
	if err := checkSocketDir(filepath.Dir(path)); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("proxy.unix_socket_dir: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("proxy.unix_socket_dir: %s exists and is not a socket; move it away", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("proxy.unix_socket_dir: %s is in use by another process (another pgbastion, PgBouncer or PostgreSQL on the same port?); stop it or choose another directory", path)
	}
	return nil
}

// setSocketAccess gives the client Unix sockets unix_socket_mode and unix_socket_group.
func (e *Engine) setSocketAccess() error {
	if e.rwSock == "" && e.roSock == "" {
		return nil
	}
	mode, err := e.cfg.unixSocketMode()
	if err != nil {
		return err
	}
	gid, err := socketGroup(e.cfg.UnixSocketGroup)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range []string{e.rwSock, e.roSock} {
		if p == "" {
			continue
		}
		if gid >= 0 {
			errs = append(errs, os.Chown(p, -1, gid))
		}
		errs = append(errs, os.Chmod(p, mode))
	}
	return errors.Join(errs...)
}

// CheckUnixSockets checks what proxy.unix_socket_dir and unix_socket_group name exist (pgbastion
// check), so that a missing directory is found before the daemon starts.
func CheckUnixSockets(cfg Config) error {
	if cfg.UnixSocketDir == "" {
		return nil
	}
	if err := checkSocketDir(cfg.UnixSocketDir); err != nil {
		return err
	}
	_, err := socketGroup(cfg.UnixSocketGroup)
	return err
}

// checkSocketDir says what to do when proxy.unix_socket_dir is not a directory.
func checkSocketDir(dir string) error {
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("proxy.unix_socket_dir %s: not a directory (%v); create it, writable by the user pgbastion runs as", dir, err)
	}
	return nil
}

// socketGroup is the gid of proxy.unix_socket_group, -1 when it is unset.
func socketGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	grp, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("proxy.unix_socket_group %q: %w", name, err)
	}
	gid, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return -1, fmt.Errorf("proxy.unix_socket_group %q: gid %q", name, grp.Gid)
	}
	return gid, nil
}

// logStatsLoop logs the proxy's traffic every stats_period while log_stats is on (it may be
// turned on and off by a reload; the period takes a restart).
func (e *Engine) logStatsLoop(ctx context.Context) {
	t := time.NewTicker(cmp.Or(e.cfg.StatsPeriod, time.Minute))
	defer t.Stop()
	total := func() PoolCounts {
		var c PoolCounts
		for _, p := range e.Stats().Pools {
			c.add(p.Counts)
		}
		return c
	}
	// The pools are read only while log_stats is on; the first period after it is turned on
	// takes the baseline.
	var prev PoolCounts
	var prevAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.stopped:
			return
		case <-t.C:
		}
		if !e.conf().cfg.LogStats {
			prevAt = time.Time{}
			continue
		}
		cur, now := total(), time.Now()
		d, secs := cur.since(prev), now.Sub(prevAt).Seconds()
		first := prevAt.IsZero()
		prev, prevAt = cur, now
		if first || secs <= 0 {
			continue
		}
		perSec := func(n uint64) int64 { return int64(float64(n) / secs) }
		avgUS := func(total time.Duration, n uint64) int64 {
			if n == 0 {
				return 0
			}
			return total.Microseconds() / int64(n)
		}
		e.log.Info("stats", "xacts_per_s", perSec(d.Transactions), "queries_per_s", perSec(d.Queries),
			"in_bytes_per_s", perSec(d.Received), "out_bytes_per_s", perSec(d.Sent),
			"xact_us", avgUS(d.Assigned, d.Transactions), "query_us", avgUS(d.Query, d.Queries), "wait_us", avgUS(d.Wait, d.Assignments),
			"clients", e.clients.Load())
	}
}
