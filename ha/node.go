package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/transport"
)

// Errors returned by Node.
var (
	// ErrNoLeader: no Raft leader is known (an election is in progress or quorum is lost).
	ErrNoLeader = errors.New("no raft leader")
	// ErrClosed: the node was closed.
	ErrClosed = errors.New("node closed")
)

// MemberInfo is what other nodes need to know about this one besides its Raft address; it is
// registered in the FSM when the node starts.
type MemberInfo struct {
	APIAddress     string
	ProxyRWAddress string
	ProxyROAddress string
	// PGHost and PGPort: where other nodes reach this node's PostgreSQL (their proxies route
	// to it directly when it is the primary, and standbys stream from it).
	PGHost string
	PGPort int
}

// NodeOptions are the non-configuration inputs of a Node.
type NodeOptions struct {
	// Logger is the parent logger; the node logs through named children of it.
	Logger *slog.Logger
	Member MemberInfo
}

// caller sends a forwarding RPC to the node at addr (transport.Client in production).
type caller interface {
	Call(ctx context.Context, addr string, req []byte) ([]byte, error)
}

// deps are the node's storage and network; Open builds real ones, tests in-memory ones.
type deps struct {
	logs   raft.LogStore
	stable raft.StableStore
	snaps  raft.SnapshotStore
	trans  raft.Transport
	fwd    caller
	// setHandler installs the node's RPC handler on its listener.
	setHandler func(transport.Handler)
	closers    []func() error
}

// Node is one member of the PGBastion cluster: the Raft group, the replicated state, the
// leader's failover controller, forwarding of followers' writes, and this node's write lease.
// Open starts it; Close stops everything it started.
type Node struct {
	cfg    Config
	name   string
	log    *slog.Logger
	member MemberInfo

	raft *raft.Raft
	fsm  *fsm.FSM
	// startIndex is the last index of the local Raft log when the node started. A node with
	// a past (startIndex > 0) has caught up once it applied that much again *and* its first
	// registration after the start (regIndex): the leader appended that entry after everything
	// committed while this node was away, so until it is applied the state may show the
	// moment this node went down (itself the primary, the others its replicas).
	startIndex uint64
	regIndex   atomic.Uint64
	caughtUp   atomic.Bool
	deps       deps
	lease      *leaseKeeper

	notifyCh    chan bool
	observeCh   chan raft.Observation
	observer    *raft.Observer
	reestablish chan struct{}
	established atomic.Bool // this node is the leader and its epoch has begun
	// waiting is what this node's controller last said it waits for (while it leads).
	waiting atomic.Pointer[string]

	// started anchors now(): see there.
	started time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
	done      chan struct{}
	haltErr   atomic.Pointer[error]
}

// Open starts a node from its configuration: it opens (or creates) the Raft state in
// raft.data_dir, listens on raft.bind (TLS when configured), bootstraps the cluster if this
// node is listed in raft.peers and has no state yet, and starts the background loops.
func Open(cfg Config, opts NodeOptions) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ha config: %w", err)
	}
	logger := loggerOf(opts)
	d, err := openDeps(cfg, logger)
	if err != nil {
		return nil, err
	}
	n, err := newNode(cfg, opts, d)
	if err != nil {
		return nil, errors.Join(err, closeAll(d.closers))
	}
	return n, nil
}

func loggerOf(opts NodeOptions) *slog.Logger {
	if opts.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return opts.Logger
}

func openDeps(cfg Config, logger *slog.Logger) (d deps, err error) {
	r := cfg.Raft
	defer func() {
		if err != nil {
			err = errors.Join(err, closeAll(d.closers))
		}
	}()
	if err := os.MkdirAll(r.DataDir, 0o700); err != nil {
		return d, fmt.Errorf("create raft data dir: %w", err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(r.DataDir, "raft.db")})
	if err != nil {
		return d, fmt.Errorf("open raft log store: %w", err)
	}
	d.closers = append(d.closers, store.Close)
	d.logs, err = raft.NewLogCache(512, store)
	if err != nil {
		return d, fmt.Errorf("raft log cache: %w", err)
	}
	d.stable = store
	d.snaps, err = raft.NewFileSnapshotStoreWithLogger(r.DataDir, 2, newHclog(logger, "raft.snapshot"))
	if err != nil {
		return d, fmt.Errorf("open raft snapshot store: %w", err)
	}
	mcfg := transport.Config{Bind: r.Bind, Advertise: r.Advertise, Logger: logger.With("component", "raft.transport")}
	if r.TLSEnabled {
		mcfg.ServerTLS, mcfg.ClientTLS, err = transport.LoadTLS(transport.TLSFiles{CertFile: r.TLSCert, KeyFile: r.TLSKey, CAFile: r.TLSCA})
		if err != nil {
			return d, err
		}
	}
	mux, err := transport.Listen(mcfg)
	if err != nil {
		return d, err
	}
	d.closers = append(d.closers, mux.Close)
	nt := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: mux.RaftLayer(), MaxPool: 3, Timeout: 2 * time.Second, Logger: newHclog(logger, "raft.net"),
	})
	d.trans = nt
	// The network transport closes the stream layer (the mux) too; closers tolerate repeats.
	// CloseStreams (run first, closers run in reverse) closes its pooled outbound connections.
	d.closers = append(d.closers, nt.Close, func() error { nt.CloseStreams(); return nil })
	client := transport.NewClient(mcfg.ClientTLS)
	d.fwd = client
	d.closers = append(d.closers, func() error { client.Close(); return nil })
	d.setHandler = mux.SetHandler
	return d, nil
}

// closeAll runs closers in reverse order.
func closeAll(closers []func() error) error {
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i](); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func newNode(cfg Config, opts NodeOptions, d deps) (*Node, error) {
	logger := loggerOf(opts)
	name := cfg.Raft.NodeName
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg: cfg, name: name, log: logger.With("component", "ha"), member: opts.Member, deps: d,
		notifyCh:    make(chan bool, 16),
		observeCh:   make(chan raft.Observation, 16),
		reestablish: make(chan struct{}, 1),
		ctx:         ctx, cancel: cancel, done: make(chan struct{}),
		started: time.Now(),
	}
	n.fsm = fsm.New(logger.With("component", "fsm"), n.onHalt)
	n.lease = newLeaseKeeper(n)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(name)
	rc.HeartbeatTimeout = cfg.Raft.HeartbeatTimeout
	rc.ElectionTimeout = cfg.Raft.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.Raft.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.Raft.CommitTimeout
	rc.SnapshotInterval = cfg.Raft.SnapshotInterval
	rc.SnapshotThreshold = cfg.Raft.SnapshotThreshold
	rc.NotifyCh = n.notifyCh
	rc.Logger = newHclog(logger, "raft")
	if err := raft.ValidateConfig(rc); err != nil {
		cancel()
		return nil, fmt.Errorf("raft config: %w", err)
	}

	has, err := raft.HasExistingState(d.logs, d.stable, d.snaps)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("check raft state: %w", err)
	}
	if !has && n.listedInPeers() {
		conf := raft.Configuration{}
		for _, p := range cfg.Raft.Peers {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.Name), Address: raft.ServerAddress(p.Address)})
		}
		if err := raft.BootstrapCluster(rc, d.logs, d.stable, d.snaps, d.trans, conf); err != nil {
			cancel()
			return nil, fmt.Errorf("bootstrap raft cluster: %w", err)
		}
		n.log.Info("bootstrapped raft cluster", "peers", len(conf.Servers))
	}

	// Entries up to here are history: after a restart they are applied again one by one once
	// a leader confirms them, and the state passes through every old primary and directive.
	// Nothing acts on the state before it has caught up (CaughtUp).
	if last, err := d.logs.LastIndex(); err == nil {
		n.startIndex = last
	}
	r, err := raft.NewRaft(rc, n.fsm, d.logs, d.stable, d.snaps, d.trans)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	n.observer = raft.NewObserver(n.observeCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.RaftState, raft.LeaderObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(n.observer)
	if d.setHandler != nil {
		d.setHandler(n.handleRPC)
	}

	n.goFunc(n.monitorLeadership)
	n.goFunc(n.lease.run)
	n.goFunc(n.registerSelf)
	return n, nil
}

func (n *Node) listedInPeers() bool {
	for _, p := range n.cfg.Raft.Peers {
		if p.Name == n.name {
			return true
		}
	}
	return false
}

func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// onHalt runs on raft's FSM goroutine when the state machine cannot decode an entry: the node
// shuts itself down (asynchronously; raft.Shutdown waits for that goroutine).
func (n *Node) onHalt(err error) {
	n.haltErr.Store(&err)
	go n.Close()
}

// now is the clock the leader stamps commands with and runs the controller on: the wall time
// at start plus the monotonic time elapsed since. The controller compares times stamped in
// this leader's epoch with its own now; a step of the system clock (NTP) in between would
// otherwise shorten or stretch the waits that keep promotions safe.
func (n *Node) now() time.Time { return n.started.Add(time.Since(n.started)) }

// CaughtUp reports whether the state has caught up with what this node's Raft log held when
// it started. Before that the state is being replayed: it shows old primaries, old leases and
// old directives, and neither the agent nor the proxy's write routing may act on it.
// StartIndex is the last index of the local Raft log when the node started: entries up to it
// are its past (a request among them was for the process before this one).
func (n *Node) StartIndex() uint64 { return n.startIndex }

func (n *Node) CaughtUp() bool {
	if n.caughtUp.Load() {
		return true
	}
	if n.raft == nil {
		return false
	}
	if n.startIndex > 0 {
		reg := n.regIndex.Load()
		// raft's AppliedIndex moves when entries are handed to the state machine, before it
		// has applied them: the state itself must have reached the registration (a command,
		// so its index is the state's), or it may still show the past for a moment.
		if reg == 0 || n.raft.AppliedIndex() < max(n.startIndex, reg) || n.fsm.State().Index < reg {
			return false
		}
	}
	n.caughtUp.Store(true)
	return true
}

// ControllerWaiting returns what the failover controller waits for ("" when it waits for
// nothing, or when this node does not lead): for example why no replica can be promoted.
func (n *Node) ControllerWaiting() string {
	if p := n.waiting.Load(); p != nil && n.IsLeader() {
		return *p
	}
	return ""
}

// Name is this node's name.
func (n *Node) Name() string { return n.name }

// State returns the current replicated state (immutable).
func (n *Node) State() *fsm.State { return n.fsm.State() }

// Subscribe delivers every new state, latest value only (see fsm.Subscription).
func (n *Node) Subscribe() *fsm.Subscription { return n.fsm.Subscribe() }

// IsLeader reports whether this node is the Raft leader and has begun its epoch.
func (n *Node) IsLeader() bool { return n.established.Load() }

// Leader returns the current Raft leader's ID and address, empty when unknown.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// RaftState is this node's Raft role (Follower, Candidate, Leader, Shutdown).
func (n *Node) RaftState() raft.RaftState { return n.raft.State() }

// RaftStats returns hashicorp/raft's statistics, for the API.
func (n *Node) RaftStats() map[string]string { return n.raft.Stats() }

// Server is one member of the Raft configuration.
type Server struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

// Servers returns the Raft configuration as this node knows it.
func (n *Node) Servers() ([]Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	_, leader := n.raft.LeaderWithID()
	var out []Server
	for _, s := range f.Configuration().Servers {
		out = append(out, Server{ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String(), Leader: s.ID == leader})
	}
	return out, nil
}

// Done is closed when the node has stopped (Close, or a halted state machine).
func (n *Node) Done() <-chan struct{} { return n.done }

// Err reports why the node stopped on its own (the state machine halted), or nil.
func (n *Node) Err() error {
	if p := n.haltErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close stops the node: background loops, Raft (without leaving the cluster), the transport
// and the stores. It is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.handOffLeadership()
		n.cancel()
		n.wg.Wait()
		n.raft.DeregisterObserver(n.observer)
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
		if err := closeAll(n.deps.closers); err != nil {
			errs = append(errs, err)
		}
		n.closeErr = errors.Join(errs...)
		close(n.done)
	})
	return n.closeErr
}

// leadershipHandoffWait bounds how long a stopping leader waits for another voter to take
// over.
const leadershipHandoffWait = 5 * time.Second

// handOffLeadership makes another voter the Raft leader before this one stops, when this node
// leads and has a peer to hand to. Without it the cluster has no leader until the others'
// heartbeat timeout and an election: meanwhile no write lease is renewed, so every proxy stops
// routing writes and closes its server connections to the primary (a stop of the primary's
// pgbastion with switchover_on_exit showed this as a client's transaction cut after a clean
// switchover). With it, a graceful stop or rolling restart of the leader costs no gap.
func (n *Node) handOffLeadership() {
	if n.raft.State() != raft.Leader {
		return
	}
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	others := 0
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != n.name {
			others++
		}
	}
	if others == 0 {
		return
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- n.raft.LeadershipTransfer().Error() }()
	select {
	case err := <-done:
		if err != nil {
			n.log.Warn("could not hand Raft leadership over before stopping; the others elect a leader after their heartbeat timeout", "error", err)
			return
		}
		id, _ := n.Leader()
		n.log.Info("handed Raft leadership over before stopping", "to", id, "took", time.Since(start).Round(time.Millisecond))
	case <-time.After(leadershipHandoffWait):
		n.log.Warn("Raft leadership hand-over did not finish in time; stopping anyway", "waited", leadershipHandoffWait)
	}
}

// registerSelf writes this node's member record (addresses and the configured tags) when the
// node starts, and again whenever the state loses it or its addresses differ (after a restore
// from a backup, for example). Tags changed at run time (SetTags) are kept until the node
// restarts with its configured ones.
func (n *Node) registerSelf() {
	sub := n.fsm.Subscribe()
	defer sub.Close()
	backoff := 50 * time.Millisecond
	first := true // register once at start even if present: the configured tags apply
	for {
		st := n.fsm.State()
		if first || !n.registered(st) {
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			res, err := n.applyChecked(ctx, fsm.RegisterMember{
				Name: n.name, RaftAddress: n.advertise(), APIAddress: n.member.APIAddress,
				ProxyRWAddress: n.member.ProxyRWAddress, ProxyROAddress: n.member.ProxyROAddress,
				PGHost: n.member.PGHost, PGPort: n.member.PGPort, Tags: n.cfg.Tags,
			})
			cancel()
			if err != nil {
				if n.ctx.Err() != nil {
					return
				}
				n.log.Debug("member registration pending", "error", err)
				select {
				case <-time.After(backoff):
				case <-n.ctx.Done():
					return
				}
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			n.regIndex.CompareAndSwap(0, res.Index)
			n.log.Info("registered member", "name", n.name)
			backoff, first = 50*time.Millisecond, false
		}
		select {
		case <-sub.C:
		case <-n.ctx.Done():
			return
		}
	}
}

func (n *Node) registered(st *fsm.State) bool {
	m, ok := st.Member(n.name)
	return ok && m.RaftAddress == n.advertise() && m.APIAddress == n.member.APIAddress &&
		m.ProxyRWAddress == n.member.ProxyRWAddress && m.ProxyROAddress == n.member.ProxyROAddress &&
		m.PGHost == n.member.PGHost && m.PGPort == n.member.PGPort
}

func (n *Node) advertise() string { return string(n.deps.trans.LocalAddr()) }
