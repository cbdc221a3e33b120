package ha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
	"github.com/pgbastion/pgbastion/ha/transport"
)

func TestMain(m *testing.M) {
	// Node.await leaves a goroutine behind when raft shut down with a log future it will never
	// resolve (see await); that is raft's, not a leak of ours.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/pgbastion/pgbastion/ha.(*Node).await.func1"))
}

// testLogger logs to the test at the level in HA_TEST_LOG (debug, info, warn, error; default
// nothing),
// and stops when the test ends so late goroutines cannot log into a finished test.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelError + 100
	switch os.Getenv("HA_TEST_LOG") {
	case "error":
		level = slog.LevelError
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	}
	w := &testWriter{t: t}
	t.Cleanup(func() { w.stopped.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	t       testing.TB
	stopped atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.stopped.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// fastConfig is a valid configuration with timings short enough for tests.
func fastConfig(name string, peers []Peer) Config {
	c := DefaultConfig()
	c.Raft.NodeName = name
	c.Raft.Bind = "127.0.0.1:0"
	c.Raft.DataDir = "unused"
	c.Raft.Peers = peers
	// Short, but not so short that a loaded test machine (race detector, parallel packages)
	// flaps Raft leadership all the time.
	c.Raft.HeartbeatTimeout = 300 * time.Millisecond
	c.Raft.ElectionTimeout = 300 * time.Millisecond
	c.Raft.LeaderLeaseTimeout = 150 * time.Millisecond
	c.Raft.CommitTimeout = 5 * time.Millisecond
	c.Failover.LeaseTimeout = time.Second
	c.Failover.PrimaryTimeout = 2 * time.Second
	c.Failover.SafetyMargin = 200 * time.Millisecond
	c.Failover.QuorumLossTimeout = 3 * time.Second
	c.Failover.DirectiveTimeout = 3 * time.Second
	c.Failover.SwitchoverTimeout = 10 * time.Second
	c.Failover.DrainTimeout = 500 * time.Millisecond
	c.Health.Interval = 100 * time.Millisecond
	c.Health.Timeout = 500 * time.Millisecond
	c.Health.FailureThreshold = 2
	c.Health.MaxBackoff = 800 * time.Millisecond
	return c
}

// memNet carries forwarding RPCs between in-memory nodes and can cut links.
type memNet struct {
	mu       sync.Mutex
	handlers map[string]transport.Handler
	cut      map[[2]string]bool
}

func newMemNet() *memNet {
	return &memNet{handlers: map[string]transport.Handler{}, cut: map[[2]string]bool{}}
}

type memCaller struct {
	net  *memNet
	from string
}

func (c memCaller) Call(ctx context.Context, addr string, req []byte) ([]byte, error) {
	c.net.mu.Lock()
	h, cut := c.net.handlers[addr], c.net.cut[[2]string{c.from, addr}]
	c.net.mu.Unlock()
	if cut || h == nil {
		return nil, fmt.Errorf("cannot reach %s from %s", addr, c.from)
	}
	// Like a real network, only the bytes and the deadline reach the other node, none of the
	// caller's context values.
	hctx := context.Background()
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(hctx, dl)
		defer cancel()
	}
	return h(hctx, req)
}

// fakePG simulates a PostgreSQL server: role, WAL position, streaming from an upstream.
type fakePG struct {
	net  *fakePGNet
	name string

	mu       sync.Mutex
	running  bool
	role     fsm.Role
	lsn      fsm.LSN
	timeline uint32
	upstream string // fake host of the upstream
	failOn   map[string]error
	calls    []string
	// promotedAt is when Promote last turned a standby into a primary.
	promotedAt time.Time
	// Replication: physical slots (name → active), synchronous_standby_names, and a log of
	// the replication calls (kept apart from calls).
	probes  int // how many times Probe was called
	slots   map[string]bool
	ssn     string
	sysid   string
	replLog []string
}

type fakePGNet struct {
	mu  sync.Mutex
	pgs map[string]*fakePG // by host (= node name)
}

func newFakePGNet() *fakePGNet { return &fakePGNet{pgs: map[string]*fakePG{}} }

func (n *fakePGNet) add(name string, role fsm.Role, lsn fsm.LSN, upstream string) *fakePG {
	pg := &fakePG{net: n, name: name, running: true, role: role, lsn: lsn, timeline: 1, upstream: upstream, failOn: map[string]error{},
		slots: map[string]bool{}}
	n.mu.Lock()
	n.pgs[name] = pg
	n.mu.Unlock()
	return pg
}

func (n *fakePGNet) get(host string) *fakePG {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pgs[host]
}

// streamingFrom lists, sorted, the running standbys whose upstream is host (what
// pg_stat_replication shows on it).
func (n *fakePGNet) streamingFrom(host string) []string {
	n.mu.Lock()
	pgs := slices.Collect(maps.Values(n.pgs))
	n.mu.Unlock()
	var out []string
	for _, pg := range pgs {
		running, role, _, upstream := pg.snapshot()
		if running && role == fsm.RoleReplica && upstream == host {
			out = append(out, pg.name)
		}
	}
	slices.Sort(out)
	return out
}

func (p *fakePG) record(call string) error {
	p.calls = append(p.calls, call)
	return p.failOn[call]
}

// Calls returns the control calls made so far (not probes).
func (p *fakePG) Calls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...)
}

func (p *fakePG) set(f func(p *fakePG)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *fakePG) snapshot() (running bool, role fsm.Role, lsn fsm.LSN, upstream string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running, p.role, p.lsn, p.upstream
}

// writable reports whether the server would accept a write.
func (p *fakePG) writable() bool {
	running, role, _, _ := p.snapshot()
	return running && role == fsm.RolePrimary
}

// write advances a primary's WAL.
func (p *fakePG) write(n fsm.LSN) {
	p.set(func(p *fakePG) {
		if p.running && p.role == fsm.RolePrimary {
			p.lsn += n
		}
	})
}

func (p *fakePG) Probe(ctx context.Context) (PGStatus, error) {
	p.mu.Lock()
	p.probes++
	if !p.running {
		p.mu.Unlock()
		return PGStatus{}, errors.New("connection refused")
	}
	if err := p.failOn["probe"]; err != nil {
		p.mu.Unlock()
		return PGStatus{}, err
	}
	if p.role == fsm.RolePrimary {
		st := PGStatus{Role: fsm.RolePrimary, Timeline: p.timeline, FlushLSN: p.lsn, SyncStandbyNames: p.ssn, SystemID: p.sysid}
		p.mu.Unlock()
		st.Streaming = p.net.streamingFrom(p.name)
		return st, nil
	}
	upHost := p.upstream
	p.mu.Unlock()
	// Streaming: catch up with a running upstream.
	var upLSN fsm.LSN
	streaming := false
	if up := p.net.get(upHost); up != nil && up != p {
		running, _, lsn, _ := up.snapshot()
		upLSN, streaming = lsn, running
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if streaming && upLSN > p.lsn {
		p.lsn = upLSN
	}
	st := PGStatus{Role: fsm.RoleReplica, Timeline: p.timeline, ReceivedLSN: p.lsn, ReplayedLSN: p.lsn, SystemID: p.sysid}
	if streaming {
		st.UpstreamHost, st.UpstreamPort = upHost, 5432
	}
	return st, nil
}

func (p *fakePG) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("start"); err != nil {
		return err
	}
	p.running = true
	return nil
}

func (p *fakePG) Stop(ctx context.Context) (StopResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("stop"); err != nil {
		return StopResult{}, err
	}
	var res StopResult
	if p.running && p.role == fsm.RolePrimary {
		res.CheckpointLSN = p.shutdownCheckpoint()
	}
	p.running = false
	return res, nil
}

func (p *fakePG) Promote(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("promote"); err != nil {
		return err
	}
	if !p.running {
		return errors.New("not running")
	}
	if p.role != fsm.RolePrimary {
		p.role, p.upstream = fsm.RolePrimary, ""
		p.timeline++
		p.promotedAt = time.Now()
	}
	return nil
}

func (p *fakePG) Follow(ctx context.Context, up Upstream) (StopResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("follow " + up.Name); err != nil {
		return StopResult{}, err
	}
	var res StopResult
	if p.running && p.role == fsm.RolePrimary {
		res.CheckpointLSN = p.shutdownCheckpoint()
	}
	p.running, p.role, p.upstream = true, fsm.RoleReplica, up.Host
	return res, nil
}

var _ Replication = (*fakePG)(nil)

func (p *fakePG) Slots(ctx context.Context) ([]Slot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return nil, errors.New("connection refused")
	}
	var out []Slot
	for _, name := range slices.Sorted(maps.Keys(p.slots)) {
		out = append(out, Slot{Name: name, Active: p.slots[name]})
	}
	return out, nil
}

func (p *fakePG) CreateSlot(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return errors.New("connection refused")
	}
	p.replLog = append(p.replLog, "create "+name)
	if _, ok := p.slots[name]; !ok {
		p.slots[name] = false
	}
	return nil
}

func (p *fakePG) AdvanceSlot(ctx context.Context, name string, lsn fsm.LSN) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return errors.New("connection refused")
	}
	if _, ok := p.slots[name]; !ok {
		return errors.New("no such slot")
	}
	p.replLog = append(p.replLog, "advance "+name+" "+lsn.String())
	return nil
}

func (p *fakePG) DropSlot(ctx context.Context, name string, terminate bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return errors.New("connection refused")
	}
	if p.slots[name] && !terminate {
		return errors.New("in use")
	}
	p.replLog = append(p.replLog, "drop "+name)
	delete(p.slots, name)
	return nil
}

func (p *fakePG) SetSyncStandbyNames(ctx context.Context, want SyncNames) (fsm.LSN, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return 0, errors.New("connection refused")
	}
	if err := p.failOn["sync"]; err != nil {
		return 0, err
	}
	p.replLog = append(p.replLog, fmt.Sprintf("sync %q", want.Value))
	p.ssn = want.Value
	if p.role != fsm.RolePrimary {
		return 0, nil
	}
	return p.lsn, nil
}

// ReplLog returns the replication calls made so far.
func (p *fakePG) ReplLog() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.replLog)
}

// shutdownCheckpoint writes a primary's shutdown checkpoint record (one byte here) and
// returns where it begins, as pg_controldata reports it. Standbys that stream it replay past
// that position.
func (p *fakePG) shutdownCheckpoint() fsm.LSN {
	at := p.lsn
	p.lsn++
	return at
}

func (p *fakePG) Checkpoint(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.record("checkpoint")
}

// testNode is one in-memory node: Raft over InmemTransport, forwarding over memNet, an agent
// on a fake PostgreSQL.
type testNode struct {
	*Node
	cfg       Config
	trans     *raft.InmemTransport
	pg        *fakePG
	stopAgent context.CancelFunc
	agentDone chan struct{}
}

type testCluster struct {
	t     *testing.T
	net   *memNet
	pgs   *fakePGNet
	peers []Peer
	nodes map[string]*testNode
	log   *slog.Logger
	// tweak adjusts each node's configuration before it starts.
	tweak func(*Config)
	// stores keeps each node's Raft log and stable store across restarts.
	stores map[string]*raft.InmemStore
}

// newTestCluster starts n nodes (n1..nN) that bootstrap together. n1's PostgreSQL is a
// primary, the others stream from it. Agents run unless noAgents.
func newTestCluster(t *testing.T, n int, tweak func(*Config)) *testCluster {
	c := &testCluster{t: t, net: newMemNet(), pgs: newFakePGNet(), nodes: map[string]*testNode{}, log: testLogger(t), tweak: tweak}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%d", i)
		c.peers = append(c.peers, Peer{Name: name, Address: name + ":8300"})
	}
	t.Cleanup(c.stopAll)
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%d", i)
		if i == 1 {
			c.pgs.add(name, fsm.RolePrimary, 1000, "")
		} else {
			c.pgs.add(name, fsm.RoleReplica, 1000, "n1")
		}
		c.start(name, c.peers, true)
	}
	return c
}

func (c *testCluster) start(name string, peers []Peer, agent bool) *testNode {
	c.t.Helper()
	return c.startWithStore(name, peers, agent, raft.NewInmemStore())
}

// restart starts a node that was stopped again on its old Raft log, as a restarted daemon
// would: its state is replayed from the log.
func (c *testCluster) restart(name string) *testNode {
	c.t.Helper()
	store := c.stores[name]
	if store == nil {
		c.t.Fatalf("restart %s: no earlier log", name)
	}
	tn := c.startWithStore(name, c.peers, true, store)
	c.heal(name)
	return tn
}

func (c *testCluster) startWithStore(name string, peers []Peer, agent bool, store *raft.InmemStore) *testNode {
	c.t.Helper()
	if c.stores == nil {
		c.stores = map[string]*raft.InmemStore{}
	}
	c.stores[name] = store
	cfg := fastConfig(name, peers)
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		c.t.Fatalf("test config: %v", err)
	}
	addr := name + ":8300"
	_, trans := raft.NewInmemTransportWithTimeout(raft.ServerAddress(addr), 200*time.Millisecond)
	for _, other := range c.nodes {
		trans.Connect(other.trans.LocalAddr(), other.trans)
		other.trans.Connect(trans.LocalAddr(), trans)
	}
	// A node started again after stop (which isolated it) is connected to all: forwarding too.
	c.net.mu.Lock()
	for k := range c.net.cut {
		if k[0] == addr || k[1] == addr {
			delete(c.net.cut, k)
		}
	}
	c.net.mu.Unlock()
	d := deps{
		logs: store, stable: store, snaps: raft.NewInmemSnapshotStore(), trans: trans,
		fwd: memCaller{net: c.net, from: addr},
		setHandler: func(h transport.Handler) {
			c.net.mu.Lock()
			c.net.handlers[addr] = h
			c.net.mu.Unlock()
		},
		closers: []func() error{trans.Close},
	}
	node, err := newNode(cfg, NodeOptions{Logger: c.log.With("node", name), Member: MemberInfo{PGHost: name, PGPort: 5432}}, d)
	if err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	tn := &testNode{Node: node, cfg: cfg, trans: trans, pg: c.pgs.get(name)}
	c.nodes[name] = tn
	if agent && tn.pg != nil {
		c.startAgent(tn, AgentOptions{})
	}
	return tn
}

func (c *testCluster) startAgent(tn *testNode, opts AgentOptions) {
	ctx, cancel := context.WithCancel(context.Background())
	tn.stopAgent, tn.agentDone = cancel, make(chan struct{})
	if opts.Logger == nil {
		opts.Logger = c.log.With("node", tn.name)
	}
	a := NewAgent(tn.Node, tn.pg, tn.cfg, opts)
	go func() {
		defer close(tn.agentDone)
		_ = a.Run(ctx)
	}()
}

// stop stops a node's agent and node, as a crash of its daemon would; its PostgreSQL keeps
// running unless the caller stops it.
func (c *testCluster) stop(name string) {
	tn := c.nodes[name]
	if tn == nil {
		return
	}
	if tn.stopAgent != nil {
		tn.stopAgent()
		<-tn.agentDone
	}
	c.isolate(name)
	if err := tn.Close(); err != nil {
		c.t.Errorf("close %s: %v", name, err)
	}
	delete(c.nodes, name)
}

func (c *testCluster) stopAll() {
	for name := range c.nodes {
		c.stop(name)
	}
}

// isolate cuts every Raft and forwarding link between name and the others (both ways). The
// node keeps running: its agent, PostgreSQL and lease logic go on, on a stale view.
func (c *testCluster) isolate(name string) {
	tn := c.nodes[name]
	c.net.mu.Lock()
	defer c.net.mu.Unlock()
	for other, on := range c.nodes {
		if other == name {
			continue
		}
		a, b := string(tn.trans.LocalAddr()), string(on.trans.LocalAddr())
		tn.trans.Disconnect(on.trans.LocalAddr())
		on.trans.Disconnect(tn.trans.LocalAddr())
		c.net.cut[[2]string{a, b}] = true
		c.net.cut[[2]string{b, a}] = true
	}
}

// heal reconnects name with every other node.
func (c *testCluster) heal(name string) {
	tn := c.nodes[name]
	c.net.mu.Lock()
	defer c.net.mu.Unlock()
	for other, on := range c.nodes {
		if other == name {
			continue
		}
		a, b := string(tn.trans.LocalAddr()), string(on.trans.LocalAddr())
		tn.trans.Connect(on.trans.LocalAddr(), on.trans)
		on.trans.Connect(tn.trans.LocalAddr(), tn.trans)
		delete(c.net.cut, [2]string{a, b})
		delete(c.net.cut, [2]string{b, a})
	}
}

func (c *testCluster) leader() *testNode {
	for _, n := range c.nodes {
		if n.IsLeader() {
			return n
		}
	}
	return nil
}

// waitPrimary waits until every running node's state names the same primary, with a lease, a
// running PostgreSQL and no operation in progress, and returns it.
func (c *testCluster) waitPrimary(timeout time.Duration, except ...string) string {
	c.t.Helper()
	var primary string
	await.True(c.t, timeout, func() bool {
		primary = ""
		for name, n := range c.nodes {
			if contains(except, name) {
				continue
			}
			st := n.State()
			if st.Primary == "" || st.Operation != nil || (primary != "" && st.Primary != primary) {
				return false
			}
			primary = st.Primary
		}
		p := c.nodes[primary]
		return p != nil && p.HoldsWriteLease() && p.pg.writable()
	}, "a primary agreed by every node, holding its lease")
	return primary
}

// settle waits for a primary and for every other running node to be reported, in the
// primary's state, as a healthy replica following it.
func (c *testCluster) settle(timeout time.Duration) string {
	c.t.Helper()
	primary := c.waitPrimary(timeout)
	await.True(c.t, timeout, func() bool {
		st := c.nodes[primary].State()
		for name := range c.nodes {
			m, ok := st.Member(name)
			if !ok || (name != primary && (m.Status.State != fsm.StateRunningReplica || m.Status.Following != primary)) {
				return false
			}
		}
		return true
	}, "replicas following %s", primary)
	return primary
}

// waitRegistered waits until every running node's state has the named members.
func (c *testCluster) waitRegistered(timeout time.Duration, names ...string) {
	c.t.Helper()
	await.True(c.t, timeout, func() bool {
		for _, n := range c.nodes {
			for _, name := range names {
				if _, ok := n.State().Member(name); !ok {
					return false
				}
			}
		}
		return true
	}, "members %v registered everywhere", names)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// routeWatcher records every write route a node publishes, with the time it arrived.
type routeWatcher struct {
	mu     sync.Mutex
	events []routeEvent
	stop   func()
	done   chan struct{}
}

type routeEvent struct {
	at    time.Time
	route WriteRoute
}

func watchRoutes(n *Node) *routeWatcher {
	ch, stop := n.WatchRoute()
	w := &routeWatcher{stop: stop, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case r := <-ch:
				w.mu.Lock()
				w.events = append(w.events, routeEvent{time.Now(), r})
				w.mu.Unlock()
			case <-n.Done():
				return
			}
		}
	}()
	return w
}

func (w *routeWatcher) close() { w.stop() }

// lostAt returns when the route last went from valid to invalid, or zero.
func (w *routeWatcher) lostAt() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var at time.Time
	for i := 1; i < len(w.events); i++ {
		if w.events[i-1].route.Valid && !w.events[i].route.Valid {
			at = w.events[i].at
		}
	}
	return at
}

var _ io.Writer = (*testWriter)(nil)

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// splitBrainMonitor samples, every millisecond, where each running node's proxy would send
// writes and which PostgreSQL servers accept them, and records any instant at which two
// different writable servers are reachable through proxies (invariant 1).
type splitBrainMonitor struct {
	c          *testCluster
	mu         sync.Mutex
	violations []string
	samples    int
	stop       chan struct{}
	done       chan struct{}
}

func (c *testCluster) monitorSplitBrain() *splitBrainMonitor {
	m := &splitBrainMonitor{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	nodes := map[string]*testNode{}
	for k, v := range c.nodes {
		nodes[k] = v
	}
	go func() {
		defer close(m.done)
		for {
			select {
			case <-m.stop:
				return
			case <-time.After(time.Millisecond):
			}
			targets := map[string]bool{}
			for _, n := range nodes {
				select {
				case <-n.Done():
					continue
				default:
				}
				r := n.WriteRoute()
				if !r.Valid {
					continue
				}
				if pg := c.pgs.get(r.Primary); pg != nil && pg.writable() {
					targets[r.Primary] = true
				}
			}
			m.mu.Lock()
			m.samples++
			if len(targets) > 1 {
				m.violations = append(m.violations, fmt.Sprintf("%s: writable primaries reachable through proxies: %v", time.Now().Format("15:04:05.000"), targets))
			}
			m.mu.Unlock()
		}
	}()
	return m
}

func (m *splitBrainMonitor) check(t *testing.T) {
	t.Helper()
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.samples < 10 {
		t.Fatalf("split-brain monitor took only %d samples", m.samples)
	}
	for _, v := range m.violations {
		t.Error(v)
	}
}

func jsonOf(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func jsonEqual(t testing.TB, a, b any) bool { return jsonOf(t, a) == jsonOf(t, b) }

// Probes returns how many times Probe was called.
func (p *fakePG) Probes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.probes
}

// switchover asks node via for a switchover from leader to candidate and fails the test unless
// it completes.
func (c *testCluster) switchover(ctx context.Context, via, leader, candidate string) {
	c.t.Helper()
	id, err := c.nodes[via].Switchover(ctx, leader, candidate)
	if err != nil {
		c.t.Fatalf("switchover %s → %s: %v", leader, candidate, err)
	}
	if op, err := c.nodes[via].WaitOperation(ctx, id); err != nil || op.Phase != fsm.PhaseDone {
		c.t.Fatalf("switchover %s → %s: %+v %v", leader, candidate, op, err)
	}
}
