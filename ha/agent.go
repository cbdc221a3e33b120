package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// PostgreSQL controls the local PostgreSQL server. The agent is its only caller and calls one
// method at a time; each call gets a context with a timeout and must return when it ends.
// The real implementation (pgx probes, pg_ctl) lives outside ha; tests use a fake.
//
// Every method must be idempotent: the agent may call it again after a restart or a lost
// acknowledgement (Stop on a stopped server, Promote on a primary, Follow of the upstream
// already followed all succeed).
type PostgreSQL interface {
	// Probe connects and reports the server's role and WAL positions. An error means the
	// server is not accepting connections (judge health by connecting, not by the PID).
	Probe(ctx context.Context) (PGStatus, error)
	// Start starts the server with the role its data directory has (crash recovery of a
	// primary, or the first start at bootstrap).
	Start(ctx context.Context) error
	// Stop stops the server fast and keeps it stopped (FENCE, self-fencing). When it was a
	// primary, the result carries the LSN of its shutdown checkpoint.
	Stop(ctx context.Context) (StopResult, error)
	// Promote promotes a standby and returns once it accepts writes.
	Promote(ctx context.Context) error
	// Follow makes the server a standby streaming from upstream: if it runs as a primary it is
	// shut down cleanly first (the result then carries its shutdown checkpoint LSN), rewound
	// or re-cloned when its timeline diverged, and started as a standby; a standby is
	// re-pointed. It returns once the server runs as a standby.
	Follow(ctx context.Context, upstream Upstream) (StopResult, error)
	// Checkpoint runs CHECKPOINT.
	Checkpoint(ctx context.Context) error
}

// PGStatus is the result of a successful probe.
type PGStatus struct {
	Role     fsm.Role
	Timeline uint32
	// FlushLSN: pg_current_wal_flush_lsn() on a primary. ReceivedLSN, ReplayedLSN:
	// pg_last_wal_receive_lsn() and pg_last_wal_replay_lsn() on a standby.
	FlushLSN    fsm.LSN
	ReceivedLSN fsm.LSN
	ReplayedLSN fsm.LSN
	// UpstreamHost and UpstreamPort: the WAL sender a standby streams from
	// (pg_stat_wal_receiver.sender_host/port), empty when it is not streaming.
	UpstreamHost string
	UpstreamPort int
}

// StopResult is what stopping a primary leaves behind.
type StopResult struct {
	// CheckpointLSN is the shutdown checkpoint's LSN when the server was a primary, else 0.
	CheckpointLSN fsm.LSN
}

// Upstream is the primary a standby must follow.
type Upstream struct {
	Name string
	Host string
	Port int
}

// Cluster is what the agent needs from its node; *Node implements it.
type Cluster interface {
	Name() string
	State() *fsm.State
	Subscribe() *fsm.Subscription
	Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error)
	// HoldsWriteLease and LastQuorumContact: see Node.
	HoldsWriteLease() bool
	LastQuorumContact() time.Time
}

var _ Cluster = (*Node)(nil)

// AgentOptions are the optional hooks of an Agent.
type AgentOptions struct {
	Logger *slog.Logger
	// InflightWrites returns the number of write transactions this node's proxy has in
	// flight; a switchover waits for every proxy to report zero. Nil reports zero.
	InflightWrites func() int
	// OnSelfFence is called after the agent stopped PostgreSQL because this node, believing
	// itself the primary, heard from no Raft quorum for failover.quorum_loss_timeout.
	OnSelfFence func(reason string)
}

// Agent runs on every node. It probes the local PostgreSQL every health.interval (backing off
// exponentially while probes fail), reports its status to the FSM, executes the directives
// addressed to this node exactly once, in order, ignoring older epochs, acknowledges each,
// and fences PostgreSQL itself when split-brain protection calls for it.
type Agent struct {
	c    Cluster
	pg   PostgreSQL
	cfg  Config
	opts AgentOptions
	log  *slog.Logger

	// Owned by Run's goroutine.
	started       time.Time
	last          *PGStatus // last successful probe
	failures      int
	downSince     time.Time // when failures reached the threshold
	probeErr      error
	fenced        bool
	fenceReason   string
	following     string // upstream set by the last successful Follow
	busy          fsm.NodeState
	done          map[uint64]bool // directives executed (their ack may be pending)
	acks          map[uint64]fsm.AckDirective
	maxEpoch      uint64
	lastReport    uint64 // log index of our last accepted report
	lastInflight  int
	startFailures int
}

// NewAgent returns an agent for cluster c and PostgreSQL pg.
func NewAgent(c Cluster, pg PostgreSQL, cfg Config, opts AgentOptions) *Agent {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		c: c, pg: pg, cfg: cfg, opts: opts, log: logger.With("component", "agent"),
		done: map[uint64]bool{}, acks: map[uint64]fsm.AckDirective{},
	}
}

// Run runs the agent until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	if m, ok := a.c.State().Member(a.c.Name()); ok && m.Status.State == fsm.StateFenced {
		// Fenced before a restart: stay fenced until a directive says otherwise.
		a.fenced, a.fenceReason = true, m.Status.Reason
	}
	sub := a.c.Subscribe()
	defer sub.Close()
	probe := time.NewTimer(0)
	defer probe.Stop()
	quick := time.NewTimer(time.Hour)
	defer quick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case st := <-sub.C:
			a.onState(ctx, st)
		case <-probe.C:
			a.probe(ctx)
			a.maybeStart(ctx)
			a.maybeSelfFence(ctx)
			a.report(ctx)
			a.onState(ctx, a.c.State())
			probe.Reset(a.nextProbe())
		case <-quick.C:
			if a.catchingUp(a.c.State()) {
				a.probe(ctx)
			}
			a.report(ctx)
		}
		if a.catchingUp(a.c.State()) {
			// A switchover waits for us to replay the old primary's shutdown checkpoint:
			// report our replay position as soon as it gets there, not at the next probe.
			resetTimer(quick, 25*time.Millisecond)
		}
		// While a switchover holds writes, report promptly until our proxy has drained.
		if wp := a.c.State().WritePause; wp != nil && (a.lastReport <= wp.SinceIndex || a.lastInflight > 0) {
			resetTimer(quick, 20*time.Millisecond)
		}
	}
}

// catchingUp reports whether a switchover waits for this node, its candidate, to replay the
// old primary's shutdown checkpoint, and our last probe has not seen it replayed yet.
func (a *Agent) catchingUp(st *fsm.State) bool {
	op := st.Operation
	return op != nil && op.Kind == fsm.OpSwitchover && op.Phase == fsm.PhaseCatchup && op.Candidate == a.c.Name() &&
		(a.last == nil || a.last.ReplayedLSN < op.FinalLSN)
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}

// nextProbe is health.interval, doubled for each failure beyond the threshold, capped.
func (a *Agent) nextProbe() time.Duration {
	h := a.cfg.Health
	d := h.Interval
	if a.failures > 0 && a.failures < h.FailureThreshold {
		// One probe failed: confirm (or clear) it quickly rather than a whole interval later,
		// so a crashed primary is known after failure_threshold quick probes.
		return min(d/5, 200*time.Millisecond)
	}
	for i := h.FailureThreshold; i < a.failures && d < h.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, h.MaxBackoff)
}

func (a *Agent) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, a.cfg.Health.Timeout)
	defer cancel()
	st, err := a.pg.Probe(pctx)
	if err != nil {
		a.failures++
		a.probeErr = err
		if a.failures == a.cfg.Health.FailureThreshold {
			a.downSince = time.Now()
			a.log.Warn("postgresql is not responding", "failures", a.failures, "error", err)
		}
		return
	}
	if a.failures >= a.cfg.Health.FailureThreshold {
		a.log.Info("postgresql is responding again", "role", st.Role)
	}
	a.failures, a.probeErr, a.startFailures, a.downSince = 0, nil, 0, time.Time{}
	a.last = &st
}

// down reports whether PostgreSQL counts as not running.
func (a *Agent) down() bool { return a.failures >= a.cfg.Health.FailureThreshold }

// status builds the report from the last probe and the agent's own state.
func (a *Agent) status(st *fsm.State) fsm.NodeStatus {
	var ns fsm.NodeStatus
	if p := a.last; p != nil {
		ns = fsm.NodeStatus{Role: p.Role, Timeline: p.Timeline, FlushLSN: p.FlushLSN, ReceivedLSN: p.ReceivedLSN, ReplayedLSN: p.ReplayedLSN}
		if p.Role == fsm.RoleReplica {
			ns.Following = a.upstreamName(st, p)
		}
	}
	if a.opts.InflightWrites != nil {
		ns.InflightWrites = a.opts.InflightWrites()
	}
	switch {
	case a.fenced:
		ns.State, ns.Healthy, ns.Reason = fsm.StateFenced, false, a.fenceReason
	case a.busy != "":
		ns.State = a.busy
	case a.down():
		ns.State, ns.Healthy = fsm.StateStopped, false
		if a.probeErr != nil {
			ns.Reason = a.probeErr.Error()
		}
	case a.last == nil:
		ns.State = fsm.StateInitializing
	case a.last.Role == fsm.RolePrimary:
		ns.State, ns.Healthy = fsm.StateRunningPrimary, true
	default:
		ns.State, ns.Healthy = fsm.StateRunningReplica, true
	}
	return ns
}

// upstreamName maps the WAL sender a standby reports to a member name. A standby that is not
// streaming follows nobody. One that streams from an address no member advertises (an IP where
// the member record has a host name, say) is taken to follow what this agent last told it to,
// rather than nobody, so that naming differences do not make the controller re-point it over
// and over.
func (a *Agent) upstreamName(st *fsm.State, p *PGStatus) string {
	if p.UpstreamHost == "" {
		return ""
	}
	for _, name := range st.MemberNames() {
		m := st.Members[name]
		if m.PGHost == p.UpstreamHost && m.PGPort == p.UpstreamPort {
			return name
		}
	}
	return a.following
}

func (a *Agent) report(ctx context.Context) {
	ns := a.status(a.c.State())
	rctx, cancel := context.WithTimeout(ctx, a.cfg.Health.Timeout)
	defer cancel()
	res, err := a.c.Apply(rctx, fsm.ReportStatus{Node: a.c.Name(), Status: ns})
	if err != nil || res.Err != nil {
		if ctx.Err() == nil {
			a.log.Debug("status report not accepted", "error", errors.Join(err, res.Error()))
		}
		return
	}
	a.lastReport, a.lastInflight = res.Index, ns.InflightWrites
}

// onState retries pending acknowledgements and executes new directives for this node.
func (a *Agent) onState(ctx context.Context, st *fsm.State) {
	a.flushAcks(ctx, st)
	for _, d := range st.PendingDirectives(a.c.Name()) {
		if a.done[d.ID] || ctx.Err() != nil {
			continue
		}
		// Epoch fencing: a directive from an older leadership is never executed.
		if d.Epoch < st.Epoch || d.Epoch < a.maxEpoch {
			a.log.Info("ignoring directive from an older epoch", "id", d.ID, "type", d.Type, "epoch", d.Epoch, "current", max(st.Epoch, a.maxEpoch))
			continue
		}
		a.maxEpoch = max(a.maxEpoch, d.Epoch)
		a.done[d.ID] = true
		ack := a.execute(ctx, st, d)
		a.acks[d.ID] = ack
		a.flushAcks(ctx, a.c.State())
		st = a.c.State()
	}
	// Forget executed directives that are no longer pending (acknowledged or ended).
	for id := range a.done {
		if d, ok := st.Directive(id); !ok || d.Finished() {
			if _, waiting := a.acks[id]; !waiting {
				delete(a.done, id)
			}
		}
	}
}

func (a *Agent) flushAcks(ctx context.Context, st *fsm.State) {
	for id, ack := range a.acks {
		if d, ok := st.Directive(id); !ok || d.Finished() {
			delete(a.acks, id)
			continue
		}
		actx, cancel := context.WithTimeout(ctx, a.cfg.Health.Timeout)
		res, err := a.c.Apply(actx, ack)
		cancel()
		if err != nil {
			a.log.Debug("acknowledgement pending", "id", id, "error", err)
			continue
		}
		if res.Err != nil && !errors.Is(res.Err, fsm.ErrConflict) {
			a.log.Warn("acknowledgement rejected", "id", id, "error", res.Err)
		}
		delete(a.acks, id)
	}
}

// execute runs one directive and returns its acknowledgement.
func (a *Agent) execute(ctx context.Context, st *fsm.State, d fsm.Directive) fsm.AckDirective {
	ack := fsm.AckDirective{ID: d.ID, Node: a.c.Name()}
	log := a.log.With("directive", d.ID, "type", d.Type, "epoch", d.Epoch)
	log.Info("executing directive", "reason", d.Params.Reason, "upstream", d.Params.Upstream)
	dctx, cancel := context.WithTimeout(ctx, a.cfg.Failover.DirectiveTimeout)
	defer cancel()
	var err error
	switch d.Type {
	case fsm.DirectiveFence:
		var res StopResult
		res, err = a.pg.Stop(dctx)
		if err == nil {
			a.fenced, a.fenceReason = true, fmt.Sprintf("fenced by directive %d: %s", d.ID, d.Params.Reason)
			ack.Result.LSN = res.CheckpointLSN
		}
	case fsm.DirectivePromote:
		a.busy = fsm.StatePromoting
		a.report(ctx)
		err = a.pg.Promote(dctx)
		a.busy = ""
		if err == nil {
			a.fenced, a.following = false, ""
			a.probe(ctx)
			if a.last != nil {
				ack.Result = fsm.DirectiveResult{LSN: a.last.FlushLSN, Timeline: a.last.Timeline}
			}
		}
	case fsm.DirectiveDemote:
		m, ok := st.Member(d.Params.Upstream)
		if !ok {
			err = fmt.Errorf("upstream %q is not a member", d.Params.Upstream)
			break
		}
		a.busy = fsm.StateDemoting
		a.report(ctx)
		var res StopResult
		res, err = a.pg.Follow(dctx, Upstream{Name: m.Name, Host: m.PGHost, Port: m.PGPort})
		a.busy = ""
		if err == nil {
			a.fenced, a.fenceReason, a.following = false, "", m.Name
			ack.Result.LSN = res.CheckpointLSN
			a.probe(ctx)
		}
	case fsm.DirectiveCheckpoint:
		err = a.pg.Checkpoint(dctx)
	default:
		err = fmt.Errorf("unknown directive type %q", d.Type)
	}
	if err != nil {
		ack.Message = err.Error()
		log.Warn("directive failed", "error", err)
	} else {
		ack.Success = true
		log.Info("directive done", "lsn", ack.Result.LSN)
	}
	a.report(ctx)
	return ack
}

// maybeStart starts a PostgreSQL that is down when nobody else will: at the bootstrap of a new
// cluster (no primary ever), or on the primary that still holds its write lease when no
// failover began within primary_timeout of PostgreSQL going down (local crash recovery: the
// controller found no replica to promote). Replicas are started by the controller's DEMOTE
// (Follow), which also points them at the primary.
func (a *Agent) maybeStart(ctx context.Context) {
	if !a.down() || a.fenced {
		return
	}
	st := a.c.State()
	bootstrap := st.Primary == "" && len(st.History) == 0
	// The controller learnt of the crash from the report of the probe that crossed the
	// threshold; it gets primary_timeout to start a failover before a local restart.
	reported := !a.downSince.IsZero() && time.Since(a.downSince) >= a.cfg.Failover.PrimaryTimeout
	recovery := reported && st.Primary == a.c.Name() && st.Operation == nil && a.c.HoldsWriteLease()
	if !bootstrap && !recovery {
		return
	}
	// Back off like the probes: one attempt per probe beyond the threshold.
	a.startFailures++
	if a.startFailures > 1 && a.startFailures%4 != 0 {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, a.cfg.Failover.DirectiveTimeout)
	defer cancel()
	a.log.Info("starting postgresql", "bootstrap", bootstrap, "crash_recovery", recovery)
	if err := a.pg.Start(sctx); err != nil {
		a.log.Warn("postgresql did not start", "error", err)
		return
	}
	a.probe(ctx)
}

// maybeSelfFence stops PostgreSQL when this node believes it is the primary but has heard from
// no Raft quorum for quorum_loss_timeout (split_brain_protection). Its proxy stopped routing
// writes long before, when the lease ran out; this also shuts out clients that connect to
// PostgreSQL directly.
func (a *Agent) maybeSelfFence(ctx context.Context) {
	f := a.cfg.Failover
	if !f.SplitBrainProtection || a.fenced || a.down() {
		return
	}
	st := a.c.State()
	if st.Primary != a.c.Name() && (a.last == nil || a.last.Role != fsm.RolePrimary || st.Primary != "") {
		return
	}
	since := a.c.LastQuorumContact()
	if since.Before(a.started) {
		since = a.started
	}
	if lost := time.Since(since); lost < f.QuorumLossTimeout {
		return
	}
	reason := fmt.Sprintf("self-fenced: no raft quorum contact for %s (quorum_loss_timeout %s)", time.Since(since).Round(time.Millisecond), f.QuorumLossTimeout)
	a.log.Error("stopping postgresql: split-brain protection", "reason", reason)
	sctx, cancel := context.WithTimeout(ctx, f.DirectiveTimeout)
	defer cancel()
	if _, err := a.pg.Stop(sctx); err != nil {
		a.log.Error("self-fencing failed", "error", err)
		return
	}
	a.fenced, a.fenceReason = true, reason
	if a.opts.OnSelfFence != nil {
		a.opts.OnSelfFence(reason)
	}
}
