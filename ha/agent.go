package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/tracing"
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
	// SystemID is the database system identifier (pg_control_system()).
	SystemID string
	// SyncStandbyNames is the synchronous_standby_names the server runs with.
	SyncStandbyNames string
	// Streaming lists, on a primary, the application_name of every standby streaming from
	// it (pg_stat_replication, state streaming), sorted.
	Streaming []string
}

// Replication is what the agent needs to manage replication on its PostgreSQL: physical
// replication slots (one per other member on the primary) and synchronous_standby_names.
// pgctl.Controller implements it; a PostgreSQL without it is not managed.
type Replication interface {
	// Slots lists the physical replication slots.
	Slots(ctx context.Context) ([]Slot, error)
	// CreateSlot creates a physical slot that reserves WAL at once; an existing one is fine.
	CreateSlot(ctx context.Context, name string) error
	// DropSlot drops a slot; terminate first ends the WAL sender using it (a removed member
	// still streaming). A missing slot is fine.
	DropSlot(ctx context.Context, name string, terminate bool) error
	// AdvanceSlot moves an inactive slot forward to lsn (never backwards), releasing the WAL
	// before it.
	AdvanceSlot(ctx context.Context, name string, lsn fsm.LSN) error
	// SetSyncStandbyNames sets synchronous_standby_names (ALTER SYSTEM and reload) and
	// returns once every WAL sender runs with it: standbys named in want.Standbys (all of
	// them when want.Value is "*") count as synchronous, no other does. The result is the WAL
	// flush position at that moment (0 on a standby).
	SetSyncStandbyNames(ctx context.Context, want SyncNames) (fsm.LSN, error)
}

// SyncNames is a synchronous_standby_names value and the standbys it names.
type SyncNames struct {
	Value    string
	Standbys []string
}

// Slot is a physical replication slot.
type Slot struct {
	Name   string
	Active bool
}

// SlotName is the replication slot of a member on the primary: its name in lower case, with
// every character other than a-z, 0-9 and _ replaced by _, at most 63 bytes (PostgreSQL's
// rules for slot names).
func SlotName(member string) string {
	b := []byte(strings.ToLower(member))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			b[i] = '_'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	return string(b)
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
	// SlotCleanupInterval is how often the agent drops inactive physical slots that belong to
	// no member (postgresql.slot_cleanup_interval; default an hour). Slots of members that
	// were removed are dropped at once.
	SlotCleanupInterval time.Duration
	// PermanentSlots are slots the agent never drops.
	PermanentSlots []string
	// PrePromote, when set, runs before this node's PostgreSQL is promoted (postgresql.
	// pre_promote, Patroni's fencing hook); an error refuses the promotion: the PROMOTE
	// directive fails with it, and the controller elects another candidate (a failover) or
	// ends the operation (a switchover).
	PrePromote func(ctx context.Context, p PrePromoteInfo) error
}

// PrePromoteInfo describes the promotion a PrePromote hook is asked about.
type PrePromoteInfo struct {
	OperationID uint64
	// Kind is failover or switchover; OldPrimary the primary it replaces ("" when unknown).
	Kind, OldPrimary, Reason string
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
	// lastErr: why the last Start or Follow failed (shown while PostgreSQL is down).
	lastErr string

	// Replication management (rep is nil when pg does not implement Replication).
	rep         Replication
	syncValue   string  // synchronous_standby_names as last seen or set
	syncSince   fsm.LSN // flush position at which syncValue was in effect
	syncKnown   bool
	lastSyncTry time.Time
	lastCleanup time.Time
	liveKey     string // the failover state last reported promptly for

	// Cluster-wide PostgreSQL configuration (settings is nil when pg does not implement
	// Settings).
	settings Settings
	pgc      pgConfigState
	// The cluster-wide pg_hba list (hba is nil when pg does not implement HBA).
	hba      HBA
	hbaState pgHBAState
	// Operator-requested restarts: restartAck is an executed one whose report was not
	// accepted yet; restarting explains the state while one runs.
	restartAck *fsm.FinishRestart
	restarting string
	// lastRestart is the log index of the last request this agent executed: a request is
	// executed once (log indexes only grow, also across a restore of the state).
	lastRestart uint64
}

// NewAgent returns an agent for cluster c and PostgreSQL pg.
func NewAgent(c Cluster, pg PostgreSQL, cfg Config, opts AgentOptions) *Agent {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.SlotCleanupInterval <= 0 {
		opts.SlotCleanupInterval = time.Hour
	}
	rep, _ := pg.(Replication)
	settings, _ := pg.(Settings)
	hba, _ := pg.(HBA)
	return &Agent{
		c: c, pg: pg, cfg: cfg, opts: opts, log: logger.With("component", "agent"),
		done: map[uint64]bool{}, acks: map[uint64]fsm.AckDirective{}, rep: rep, settings: settings, hba: hba,
	}
}

// Run runs the agent until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	if err := a.waitCaughtUp(ctx); err != nil {
		return err
	}
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
			a.manageSlots(ctx, a.c.State(), time.Now(), false)
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
// old primary's shutdown checkpoint, and the controller has not had a report of ours since
// the wait began or our last probe has not seen it replayed yet. (Already replayed when the
// wait began: one prompt report, rather than the controller waiting for the next probe.)
func (a *Agent) catchingUp(st *fsm.State) bool {
	op := st.Operation
	return op != nil && op.Kind == fsm.OpSwitchover && op.Phase == fsm.PhaseCatchup && op.Candidate == a.c.Name() &&
		(a.last == nil || a.last.ReplayedLSN < op.FinalLSN || a.lastReport <= op.PhaseIndex)
}

// waitCaughtUp waits until the cluster state has caught up with this node's Raft log (after a
// restart the log is applied again and the state shows old primaries and directives; acting
// on them would, say, promote this node on a PROMOTE of long ago). Meanwhile PostgreSQL is
// only probed, and stopped if it runs as a primary cut off from the quorum too long.
func (a *Agent) waitCaughtUp(ctx context.Context) error {
	cu, ok := a.c.(interface{ CaughtUp() bool })
	if !ok || cu.CaughtUp() {
		return nil
	}
	a.log.Info("waiting for the cluster state to catch up before acting on it")
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	probe := time.NewTimer(0)
	defer probe.Stop()
	for !cu.CaughtUp() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-probe.C:
			a.probe(ctx)
			a.maybeSelfFence(ctx)
			probe.Reset(a.nextProbe())
		}
	}
	a.log.Info("cluster state caught up", "index", a.c.State().Index)
	return nil
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
		a.forgetPGConfig()
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
	a.failures, a.probeErr, a.startFailures, a.downSince, a.lastErr = 0, nil, 0, time.Time{}, ""
	a.last = &st
	if st.Role == fsm.RolePrimary && (!a.syncKnown || st.SyncStandbyNames != a.syncValue) {
		// Changed behind our back (or first seen): in effect at least since now.
		a.syncValue, a.syncSince, a.syncKnown = st.SyncStandbyNames, st.FlushLSN, true
	}
}

// down reports whether PostgreSQL counts as not running.
func (a *Agent) down() bool { return a.failures >= a.cfg.Health.FailureThreshold }

// status builds the report from the last probe and the agent's own state.
func (a *Agent) status(st *fsm.State) fsm.NodeStatus {
	var ns fsm.NodeStatus
	if p := a.last; p != nil {
		ns = fsm.NodeStatus{Role: p.Role, Timeline: p.Timeline, FlushLSN: p.FlushLSN, ReceivedLSN: p.ReceivedLSN, ReplayedLSN: p.ReplayedLSN,
			SystemID: p.SystemID}
		if p.Role == fsm.RoleReplica {
			ns.Following = a.upstreamName(st, p)
		}
		if p.Role == fsm.RolePrimary {
			ns.Streaming = p.Streaming
			if a.syncKnown {
				ns.SyncStandbyNames, ns.SyncSince = a.syncValue, a.syncSince
			}
		}
	}
	if a.opts.InflightWrites != nil {
		ns.InflightWrites = a.opts.InflightWrites()
	}
	switch {
	case a.fenced:
		ns.State, ns.Healthy, ns.Reason = fsm.StateFenced, false, a.fenceReason
		if a.lastErr != "" {
			// Why it is still out (a failed rewind, say) matters more than why it was fenced.
			ns.Reason = a.lastErr + "; " + a.fenceReason
		}
	case a.busy != "":
		ns.State, ns.Reason = a.busy, a.restarting
	case a.down():
		ns.State, ns.Healthy = fsm.StateStopped, false
		if a.lastErr != "" {
			ns.Reason = a.lastErr
		} else if a.probeErr != nil {
			ns.Reason = a.probeErr.Error()
		}
	case a.last == nil:
		ns.State = fsm.StateInitializing
		ns.Reason = a.lastErr
	case st.SystemID != "" && a.last.SystemID != "" && a.last.SystemID != st.SystemID:
		// Someone else's database: never counted healthy, so never routed to or promoted.
		ns.State, ns.Healthy = fsm.StateStopped, false
		ns.Reason = fmt.Sprintf("the running PostgreSQL belongs to another cluster: system identifier %s, the cluster's is %s",
			a.last.SystemID, st.SystemID)
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

// prePromote runs the PrePromote hook unless PostgreSQL already runs as a primary (a PROMOTE
// repeated after its acknowledgement was lost: the hook approved it the first time).
func (a *Agent) prePromote(ctx context.Context, st *fsm.State, d fsm.Directive) error {
	if a.opts.PrePromote == nil || a.last != nil && a.last.Role == fsm.RolePrimary {
		return nil
	}
	info := PrePromoteInfo{OperationID: d.Params.OperationID, Reason: d.Params.Reason}
	if op, ok := st.OperationByID(d.Params.OperationID); ok {
		info.Kind, info.OldPrimary = string(op.Kind), op.OldPrimary
	}
	if err := a.opts.PrePromote(ctx, info); err != nil {
		return fmt.Errorf("postgresql.pre_promote refused the promotion: %w", err)
	}
	return nil
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

// ReportStopped tells the cluster that this node's PostgreSQL was stopped on purpose as
// pgbastion exits (postgresql.stop_on_exit), once Run has returned: the members' list shows it
// stopped, with why, rather than its last running state until the report goes stale, and a
// primary's failover starts at once (still no sooner than the write leases allow).
func (a *Agent) ReportStopped(ctx context.Context, reason string) error {
	ns := a.status(a.c.State())
	ns.State, ns.Healthy, ns.Reason = fsm.StateStopped, false, reason
	res, err := a.c.Apply(ctx, fsm.ReportStatus{Node: a.c.Name(), Status: ns})
	return errors.Join(err, res.Error())
}

// onState retries pending acknowledgements, reports at once when a failover needs current
// positions, applies the wanted synchronous configuration, and executes new directives for
// this node.
func (a *Agent) onState(ctx context.Context, st *fsm.State) {
	a.flushAcks(ctx, st)
	if key := failoverKey(st); key != "" && key != a.liveKey {
		// The controller chooses the candidate from positions reported after the primary
		// was deposed (and after its FENCE): send ours now rather than at the next probe.
		a.liveKey = key
		a.probe(ctx)
		a.report(ctx)
	}
	a.applySync(ctx, st)
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
	// Operators' requests come after the directives, so that they never delay a failover.
	a.applyPGConfig(ctx, st)
	a.applyPGHBA(ctx, st)
	a.maybeRestart(ctx, st)
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
	// The directive's span is a child of its operation's (tracing); its PostgreSQL programs
	// are children of it. The request and trace IDs tie the log lines to the operation.
	tctx, span, ref := tracing.StartDirective(ctx, st, d, a.c.Name())
	log := a.log.With("directive", d.ID, "type", d.Type, "epoch", d.Epoch)
	if d.Params.OperationID != 0 {
		log = log.With("operation", d.Params.OperationID)
	}
	log = log.With(tracing.LogAttrs(ref)...)
	log.Info("executing directive", "reason", d.Params.Reason, "upstream", d.Params.Upstream)
	dctx, cancel := context.WithTimeout(tctx, a.cfg.Failover.DirectiveTimeout)
	defer cancel()
	var err error
	defer func() { tracing.EndSpan(span, err) }()
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
		err = a.prepareSyncForPromotion(dctx)
		if err == nil {
			err = a.prePromote(dctx, st, d)
		}
		if err == nil {
			err = a.pg.Promote(dctx)
		}
		a.busy = ""
		if err == nil {
			a.fenced, a.following = false, ""
			a.probe(ctx)
			if a.last != nil {
				ack.Result = fsm.DirectiveResult{LSN: a.last.FlushLSN, Timeline: a.last.Timeline}
			}
			// The others' slots exist before anyone is told to follow us.
			a.manageSlots(ctx, a.c.State(), time.Now(), true)
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
			a.fenced, a.fenceReason, a.following, a.lastErr = false, "", m.Name, ""
			ack.Result.LSN = res.CheckpointLSN
			a.probe(ctx)
		} else {
			// PostgreSQL may be stopped now (a rewind that failed, another cluster's data):
			// say why in the status until something works.
			a.lastErr = fmt.Sprintf("cannot follow %s: %v", m.Name, err)
			a.probe(ctx)
		}
	case fsm.DirectiveCheckpoint:
		err = a.pg.Checkpoint(dctx)
	default:
		err = fmt.Errorf("unknown directive type %q", d.Type)
	}
	if d.Type != fsm.DirectiveCheckpoint {
		a.forgetPGConfig()
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
		a.lastErr = "postgresql did not start: " + err.Error()
		return
	}
	a.lastErr = ""
	a.forgetPGConfig()
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

// failoverKey identifies the progress of a failover that is choosing its candidate (the
// operation and how many of its FENCE directives were acknowledged), or "" when none is.
func failoverKey(st *fsm.State) string {
	op := st.Operation
	if op == nil || op.Kind != fsm.OpFailover || op.Phase != fsm.PhaseElecting {
		return ""
	}
	fenced := 0
	for _, d := range st.Directives {
		if d.Type == fsm.DirectiveFence && d.Params.OperationID == op.ID && d.Status == fsm.DirectiveDone {
			fenced++
		}
	}
	return fmt.Sprintf("%d/%d", op.ID, fenced)
}

// syncMode reports whether PGBastion manages synchronous replication.
func (a *Agent) syncMode() bool {
	m := a.cfg.Failover.SynchronousMode
	return m == "on" || m == "quorum"
}

// applySync sets synchronous_standby_names on this node's PostgreSQL when the controller wants
// a value for it as the primary that it does not run with yet, then reports at once.
func (a *Agent) applySync(ctx context.Context, st *fsm.State) {
	w := st.SyncWanted
	if a.rep == nil || !a.syncMode() || w == nil || w.Primary != a.c.Name() || st.Primary != a.c.Name() ||
		a.fenced || a.busy != "" || a.notRunning() || a.last.Role != fsm.RolePrimary {
		return
	}
	if a.syncKnown && a.syncValue == w.Value {
		return
	}
	now := time.Now()
	if now.Sub(a.lastSyncTry) < a.cfg.Health.Interval {
		return // failed a moment ago: try again at the next probe, not on every state change
	}
	a.lastSyncTry = now
	sctx, cancel := context.WithTimeout(ctx, a.cfg.Failover.DirectiveTimeout)
	defer cancel()
	lsn, err := a.rep.SetSyncStandbyNames(sctx, SyncNames{Value: w.Value, Standbys: w.Standbys})
	if err != nil {
		a.log.Warn("cannot set synchronous_standby_names", "value", w.Value, "error", err)
		return
	}
	a.log.Info("synchronous_standby_names set", "value", w.Value, "since", lsn)
	a.syncValue, a.syncSince, a.syncKnown, a.lastSyncTry = w.Value, lsn, true, time.Time{}
	a.report(ctx)
}

// prepareSyncForPromotion sets synchronous_standby_names before a standby is promoted: nothing
// is synchronous with a new primary yet, so "" (asynchronous until the controller picks
// standbys), or "*" in strict mode (no commit returns before some standby has it).
func (a *Agent) prepareSyncForPromotion(ctx context.Context) error {
	if a.rep == nil || !a.syncMode() {
		return nil
	}
	want := SyncNames{}
	if a.cfg.Failover.SynchronousModeStrict {
		want.Value = "*"
	}
	if _, err := a.rep.SetSyncStandbyNames(ctx, want); err != nil {
		return fmt.Errorf("setting synchronous_standby_names before promotion: %w", err)
	}
	a.syncKnown = false // read it again from the promoted server
	return nil
}

// manageSlots keeps the physical replication slots of this node's PostgreSQL: on the primary,
// one per other member (created ahead of need, kept while the member exists, even when it is
// down); slots of removed members, and on a standby those of any member, are dropped at once;
// every SlotCleanupInterval, inactive slots that belong to no member are dropped too.
// PermanentSlots are never touched. promoted: PostgreSQL was just promoted and the FSM does
// not name it the primary yet; only create.
func (a *Agent) manageSlots(ctx context.Context, st *fsm.State, now time.Time, promoted bool) {
	if a.rep == nil || a.fenced || a.busy != "" || a.notRunning() {
		return
	}
	primary := a.last.Role == fsm.RolePrimary
	if primary && st.Primary != a.c.Name() && !promoted {
		return // a deposed or not yet named primary: leave its slots alone
	}
	sctx, cancel := context.WithTimeout(ctx, a.cfg.Health.Timeout)
	defer cancel()
	slots, err := a.rep.Slots(sctx)
	if err != nil {
		a.log.Debug("cannot list replication slots", "error", err)
		return
	}
	cleanup := now.Sub(a.lastCleanup) >= a.opts.SlotCleanupInterval && !promoted
	create, drop := slotPlan(st, a.c.Name(), primary, slots, cleanup, a.opts.PermanentSlots)
	if promoted {
		drop = nil
	}
	for _, name := range create {
		if err := a.rep.CreateSlot(sctx, name); err != nil {
			a.log.Warn("cannot create replication slot", "slot", name, "error", err)
			continue
		}
		a.log.Info("created replication slot", "slot", name)
	}
	for _, d := range drop {
		if err := a.rep.DropSlot(sctx, d.name, d.terminate); err != nil {
			a.log.Warn("cannot drop replication slot", "slot", d.name, "error", err)
			continue
		}
		a.log.Info("dropped replication slot", "slot", d.name, "why", d.why)
	}
	if primary {
		for _, adv := range cascadeAdvances(st, a.c.Name(), slots) {
			if err := a.rep.AdvanceSlot(sctx, adv.slot, adv.lsn); err != nil {
				a.log.Debug("cannot advance the slot of a cascading replica", "slot", adv.slot, "lsn", adv.lsn, "error", err)
			}
		}
	}
	if cleanup {
		a.lastCleanup = now
	}
}

// slotAdvance is a slot to move forward (cascadeAdvances).
type slotAdvance struct {
	slot string
	lsn  fsm.LSN
}

// cascadeAdvances returns, for the primary self, the slots of members that stream from another
// replica (their replicatefrom) rather than from it, with the position each has replayed. Such
// a slot is inactive, so nothing moves it; kept where it was it would hold WAL back without
// bound, dropped it would leave the member unable to stream from the primary should its
// replicatefrom member fail. Advanced to the member's position it keeps just the WAL that
// member still lacks.
func cascadeAdvances(st *fsm.State, self string, slots []Slot) []slotAdvance {
	var out []slotAdvance
	for _, sl := range slots {
		if sl.Active {
			continue
		}
		for _, name := range st.MemberNames() {
			m := st.Members[name]
			if SlotName(name) != sl.Name || name == self || m.Tags.ReplicateFrom == "" || m.Tags.ReplicateFrom == self ||
				m.Status.Following != m.Tags.ReplicateFrom || m.Status.ReplayedLSN == 0 {
				continue
			}
			out = append(out, slotAdvance{sl.Name, m.Status.ReplayedLSN})
		}
	}
	return out
}

type slotDrop struct {
	name      string
	terminate bool
	why       string
}

// slotPlan decides which slots to create and drop (see manageSlots).
func slotPlan(st *fsm.State, self string, primary bool, slots []Slot, cleanup bool, permanent []string) ([]string, []slotDrop) {
	want := map[string]bool{}
	members := map[string]bool{}
	for _, name := range st.MemberNames() {
		members[SlotName(name)] = true
		// The primary keeps every other member's slot (one that cascades from a replica is
		// advanced to its position: cascadeAdvances); a replica keeps the slots of the members
		// whose replicatefrom names it.
		if primary && name != self || !primary && st.Members[name].Tags.ReplicateFrom == self && name != self {
			want[SlotName(name)] = true
		}
	}
	departed := map[string]bool{}
	for _, m := range st.Departed {
		if !members[SlotName(m.Name)] {
			departed[SlotName(m.Name)] = true
		}
	}
	have := map[string]bool{}
	var drop []slotDrop
	for _, sl := range slots {
		have[sl.Name] = true
		switch {
		case want[sl.Name] || slices.Contains(permanent, sl.Name):
		case departed[sl.Name]:
			// A removed member must not stream any more, nor hold WAL back.
			drop = append(drop, slotDrop{sl.Name, true, "its member was removed"})
		case sl.Active:
		case members[sl.Name]:
			drop = append(drop, slotDrop{sl.Name, false, "a member's slot on a node that is not the primary (it would only hold WAL back)"})
		case cleanup:
			drop = append(drop, slotDrop{sl.Name, false, "belongs to no member"})
		}
	}
	var create []string
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if !have[name] {
			create = append(create, name)
		}
	}
	return create, drop
}
