package fsm

import (
	"maps"
	"slices"
	"time"
)

// Role is the PostgreSQL role a node reports.
type Role string

// Roles.
const (
	RoleUnknown Role = ""
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
)

// NodeState is the agent's view of its node, reported to the FSM.
type NodeState string

// Node states. INITIALIZING → RUNNING_PRIMARY / RUNNING_REPLICA → PROMOTING / DEMOTING / FENCED.
// STOPPED means PostgreSQL is not running although nobody fenced it (a crash, or not started yet).
const (
	StateInitializing   NodeState = "INITIALIZING"
	StateRunningPrimary NodeState = "RUNNING_PRIMARY"
	StateRunningReplica NodeState = "RUNNING_REPLICA"
	StatePromoting      NodeState = "PROMOTING"
	StateDemoting       NodeState = "DEMOTING"
	StateFenced         NodeState = "FENCED"
	StateStopped        NodeState = "STOPPED"
)

// Tags are per-node placement hints, with Patroni's meaning.
type Tags struct {
	// NoFailover: never promote this node automatically or by switchover.
	NoFailover bool `json:"nofailover,omitempty" yaml:"nofailover"`
	// FailoverPriority breaks ties between candidates with the same WAL position; higher wins.
	// 0 means "never promote", as in Patroni. Config defaults set it to 1.
	FailoverPriority int `json:"failover_priority" yaml:"failover_priority"`
	// NoSync: never a synchronous standby.
	NoSync bool `json:"nosync,omitempty" yaml:"nosync"`
	// NoLoadBalance: the proxy's read-only port skips this node.
	NoLoadBalance bool `json:"noloadbalance,omitempty" yaml:"noloadbalance"`
	// ReplicateFrom names the member this replica streams from instead of the primary
	// (cascading replication, Patroni's replicatefrom), while that member is a healthy replica
	// of the primary itself; otherwise it streams from the primary. One level only: a member
	// that has ReplicateFrom set itself is never used as an upstream.
	ReplicateFrom string `json:"replicatefrom,omitempty" yaml:"replicatefrom"`
}

// Promotable reports whether the tags allow promoting the node.
func (t Tags) Promotable() bool { return !t.NoFailover && t.FailoverPriority > 0 }

// NodeStatus is the last report of a node's agent.
type NodeStatus struct {
	Role  Role      `json:"role"`
	State NodeState `json:"state"`
	// Healthy: PostgreSQL accepts connections.
	Healthy  bool   `json:"healthy"`
	Timeline uint32 `json:"timeline,omitempty"`
	// FlushLSN is a primary's WAL flush position; ReceivedLSN and ReplayedLSN are a standby's.
	// A report without any position (PostgreSQL down) keeps the last known ones.
	FlushLSN    LSN `json:"flush_lsn,omitempty"`
	ReceivedLSN LSN `json:"received_lsn,omitempty"`
	ReplayedLSN LSN `json:"replayed_lsn,omitempty"`
	// LagBytes is how far this standby's replay is behind the primary's last reported flush
	// position, computed by the FSM when the report is applied.
	LagBytes uint64 `json:"lag_bytes,omitempty"`
	// Following is the member this standby streams from, when known.
	Following string `json:"following,omitempty"`
	// InflightWrites is the number of write transactions this node's proxy has in flight; the
	// switchover waits for every proxy to drain to zero.
	InflightWrites int `json:"inflight_writes,omitempty"`
	// Reason explains the state in words (why FENCED, why unhealthy).
	Reason string `json:"reason,omitempty"`
	// SystemID is the database system identifier of the node's data directory (pg_control).
	// A report without one (PostgreSQL down) keeps the last known one.
	SystemID string `json:"system_id,omitempty"`
	// SyncStandbyNames is a primary's synchronous_standby_names as PostgreSQL runs with it,
	// and SyncSince a WAL flush position at which that value was already in effect: every
	// transaction acknowledged under an earlier value ends at or before SyncSince.
	SyncStandbyNames string `json:"synchronous_standby_names,omitempty"`
	SyncSince        LSN    `json:"sync_since,omitempty"`
	// Streaming lists, on a primary, the standbys streaming from it by application_name
	// (their member names; pg_stat_replication, state streaming), sorted. The controller
	// drops a synchronous standby only on this, the primary's own word: a standby's report
	// that it lost its upstream may just mean the primary died, and weakening the synchronous
	// record then would block the failover it exists for.
	Streaming []string `json:"streaming,omitempty"`

	// Set by the FSM from the command envelope, not by the reporter.
	ReportedAt  time.Time `json:"reported_at"`
	ReportIndex uint64    `json:"report_index"`
}

// Position is the furthest WAL position the node is known to have.
func (s NodeStatus) Position() LSN { return max(s.FlushLSN, s.ReceivedLSN, s.ReplayedLSN) }

// LeaseRecord is what the FSM knows about a node's write-routing lease. Every node renews one
// (see package ha, lease.go); the failover controller reads these records to decide when no
// node can still be routing writes to a deposed primary.
type LeaseRecord struct {
	// The last renewal that committed.
	RenewedAt    time.Time `json:"renewed_at"`
	RenewedIndex uint64    `json:"renewed_index"`
	// Routing is the primary the node said it routed writes to when it sent that renewal.
	Routing string `json:"routing,omitempty"`
	// Granted is the primary named in that renewal's response ("" when there was none).
	Granted string `json:"granted,omitempty"`

	// The last renewal whose response named a primary. The node may route writes to
	// GrantPrimary until lease_timeout after it sent that renewal.
	GrantPrimary string    `json:"grant_primary,omitempty"`
	GrantAt      time.Time `json:"grant_at"`
	GrantIndex   uint64    `json:"grant_index"`

	// ReleaseIndex is the index of the node's last successful FENCE or DEMOTE acknowledgement:
	// from then on its PostgreSQL is stopped or read-only.
	ReleaseIndex uint64 `json:"release_index,omitempty"`
}

// Member is one node of the cluster.
type Member struct {
	Name        string `json:"name"`
	RaftAddress string `json:"raft_address"`
	APIAddress  string `json:"api_address,omitempty"`
	// The node's proxy listeners (read-write and read-only).
	ProxyRWAddress string `json:"proxy_rw_address,omitempty"`
	ProxyROAddress string `json:"proxy_ro_address,omitempty"`
	// Where this node's PostgreSQL listens for other nodes: other proxies route to the
	// primary's PostgreSQL directly, and standbys stream from it.
	PGHost string `json:"pg_host,omitempty"`
	PGPort int    `json:"pg_port,omitempty"`
	Tags   Tags   `json:"tags"`

	Status NodeStatus  `json:"status"`
	Lease  LeaseRecord `json:"lease"`

	RegisteredAt time.Time `json:"registered_at"`
}

// DirectiveType is what a directive asks its target node to do.
type DirectiveType string

// Directive types.
const (
	DirectiveFence      DirectiveType = "FENCE"      // stop PostgreSQL and keep it stopped
	DirectivePromote    DirectiveType = "PROMOTE"    // promote, return when writable
	DirectiveDemote     DirectiveType = "DEMOTE"     // become (or stay) a standby of Params.Upstream
	DirectiveCheckpoint DirectiveType = "CHECKPOINT" // run CHECKPOINT
)

// DirectiveStatus is the acknowledgement state of a directive.
type DirectiveStatus string

// Directive statuses. A directive is acknowledged exactly once: pending → done | failed.
// The leader may also end it: expired (timed out) or superseded (a newer epoch began).
const (
	DirectivePending    DirectiveStatus = "pending"
	DirectiveDone       DirectiveStatus = "done"
	DirectiveFailed     DirectiveStatus = "failed"
	DirectiveExpired    DirectiveStatus = "expired"
	DirectiveSuperseded DirectiveStatus = "superseded"
)

// DirectiveParams are the type-specific arguments of a directive.
type DirectiveParams struct {
	// Upstream is the member a DEMOTE target must follow.
	Upstream string `json:"upstream,omitempty"`
	// OperationID links the directive to the failover or switchover that issued it.
	OperationID uint64 `json:"operation_id,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// DirectiveResult is what the target reports back.
type DirectiveResult struct {
	// LSN: for DEMOTE and FENCE the LSN of the shutdown checkpoint when PostgreSQL was a
	// primary; for PROMOTE the flush position after promotion.
	LSN      LSN    `json:"lsn,omitempty"`
	Timeline uint32 `json:"timeline,omitempty"`
}

// Directive is an instruction from the leader's controller to one node's agent.
type Directive struct {
	ID     uint64          `json:"id"`
	Type   DirectiveType   `json:"type"`
	Target string          `json:"target"`
	Params DirectiveParams `json:"params"`
	// Epoch is the leadership epoch that issued it; agents ignore older epochs.
	Epoch       uint64    `json:"epoch"`
	IssuedAt    time.Time `json:"issued_at"`
	IssuedIndex uint64    `json:"issued_index"`

	Status     DirectiveStatus `json:"status"`
	Message    string          `json:"message,omitempty"`
	Result     DirectiveResult `json:"result"`
	FinishedAt time.Time       `json:"finished_at"`
	// FinishedIndex is the log index of the acknowledgement (or expiry).
	FinishedIndex uint64 `json:"finished_index,omitempty"`
}

// Finished reports whether the directive has left the pending state.
func (d Directive) Finished() bool { return d.Status != DirectivePending }

// OperationKind says what an operation does.
type OperationKind string

// Operation kinds.
const (
	OpFailover   OperationKind = "failover"
	OpSwitchover OperationKind = "switchover"
)

// Phase is an operation's progress. The controller moves it forward; see package controller.
type Phase string

// Phases. Failover: electing → promoting. Switchover: checkpoint → draining → demoting →
// catchup → promoting. Every operation ends in done or failed.
const (
	PhaseElecting   Phase = "electing"
	PhaseCheckpoint Phase = "checkpoint"
	PhaseDraining   Phase = "draining"
	PhaseDemoting   Phase = "demoting"
	PhaseCatchup    Phase = "catchup"
	PhasePromoting  Phase = "promoting"
	PhaseDone       Phase = "done"
	PhaseFailed     Phase = "failed"
)

// Operation is a failover or switchover in progress (State.Operation) or finished
// (State.Operations).
type Operation struct {
	ID     uint64        `json:"id"`
	Kind   OperationKind `json:"kind"`
	Phase  Phase         `json:"phase"`
	Reason string        `json:"reason"`
	// OldPrimary is the primary being replaced ("" when there was none).
	OldPrimary string `json:"old_primary,omitempty"`
	// Candidate is the requested or chosen node to promote.
	Candidate string `json:"candidate,omitempty"`
	// Requested: started by an operator, not by the controller.
	Requested bool `json:"requested,omitempty"`
	// Force: promote even a candidate beyond maximum_lag_on_failover.
	Force bool `json:"force,omitempty"`
	// Excluded are candidates whose PROMOTE failed during this operation.
	Excluded []string `json:"excluded,omitempty"`
	// FinalLSN is the old primary's shutdown checkpoint (switchover): the candidate must
	// replay up to it before it is promoted.
	FinalLSN LSN `json:"final_lsn,omitempty"`
	// MayLoseBytes: for a forced failover, how far the candidate was behind the best known
	// WAL position when it was chosen.
	MayLoseBytes uint64 `json:"may_lose_bytes,omitempty"`
	// MayLose says in words what a forced failover may lose (which synchronous standbys it
	// passed over and where they were last seen).
	MayLose string `json:"may_lose,omitempty"`

	StartedAt    time.Time `json:"started_at"`
	StartedIndex uint64    `json:"started_index"`
	PhaseAt      time.Time `json:"phase_at"`
	PhaseIndex   uint64    `json:"phase_index"`

	// Message describes the last thing that happened (why it waits, why it failed).
	Message    string    `json:"message,omitempty"`
	NewPrimary string    `json:"new_primary,omitempty"`
	FinishedAt time.Time `json:"finished_at"`
	// Trace ties the operation to the request that asked for it and to its distributed trace
	// (TraceOperation); nil when neither is known.
	Trace *TraceRef `json:"trace,omitempty"`
}

// Active reports whether the operation has not finished.
func (o Operation) Active() bool { return o.Phase != PhaseDone && o.Phase != PhaseFailed }

// HistoryEntry records one change of primary, like Patroni's /history.
type HistoryEntry struct {
	At          time.Time     `json:"at"`
	Index       uint64        `json:"index"`
	NewPrimary  string        `json:"new_primary"`
	OldPrimary  string        `json:"old_primary,omitempty"`
	Kind        OperationKind `json:"kind,omitempty"`
	OperationID uint64        `json:"operation_id,omitempty"`
	Timeline    uint32        `json:"timeline,omitempty"`
	LSN         LSN           `json:"lsn,omitempty"`
	Reason      string        `json:"reason"`
}

// WritePause tells every node's proxy to hold new write transactions (a switchover is moving
// the primary). Transactions already running continue.
type WritePause struct {
	OperationID uint64    `json:"operation_id"`
	Reason      string    `json:"reason"`
	Since       time.Time `json:"since"`
	SinceIndex  uint64    `json:"since_index"`
}

// Bounds on retained history, so the state and its snapshots stay small.
const (
	maxFinishedDirectives = 64
	maxFinishedOperations = 32
	maxHistory            = 128
	maxDeparted           = 16
)

// State is the replicated cluster state. A *State obtained from the FSM is immutable: never
// modify it or anything it references. Each applied command produces a new State.
type State struct {
	// Index is the Raft log index of the last command applied.
	Index uint64 `json:"index"`

	// Epoch counts leaderships: each new Raft leader's first command increments it.
	// Directives carry the epoch that issued them.
	Epoch uint64 `json:"epoch"`
	// EpochIndex is the log index at which Epoch began. Times stamped into commands after it
	// come from the current leader's clock.
	EpochIndex uint64 `json:"epoch_index"`
	// EpochLeader is the member that began the epoch.
	EpochLeader string `json:"epoch_leader,omitempty"`

	Members map[string]Member `json:"members"`
	// Departed keeps the lease records of recently removed members: the controller must
	// still wait out their leases.
	Departed []Member `json:"departed,omitempty"`

	// Primary is the node PostgreSQL clients should write to; "" while there is none.
	Primary      string    `json:"primary,omitempty"`
	PrimarySince time.Time `json:"primary_since"`
	PrimaryIndex uint64    `json:"primary_index"`

	// Directives holds every pending directive and the most recent finished ones, by ID.
	Directives      []Directive `json:"directives"`
	NextDirectiveID uint64      `json:"next_directive_id"`

	// Operation is the failover or switchover in progress, nil when none.
	Operation       *Operation  `json:"operation,omitempty"`
	Operations      []Operation `json:"operations,omitempty"`
	NextOperationID uint64      `json:"next_operation_id"`

	History []HistoryEntry `json:"history,omitempty"`

	// Paused: maintenance mode, no automatic failover.
	Paused bool `json:"paused"`
	// WritePause is set while a switchover holds writes; nil otherwise.
	WritePause *WritePause `json:"write_pause,omitempty"`
	// Synchronous replication (synchronous modes). The record is a promise about SyncPrimary:
	// every transaction it acknowledged is on at least SyncCount of SyncStandbys. SyncCount 0
	// promises nothing (nobody may be promoted automatically). The controller keeps the
	// promise true at every instant: a standby is added to the record before PostgreSQL may
	// count on it, and removed (or the count raised) only after PostgreSQL stopped counting
	// on it and the new set has caught up (see package controller). Naming a new primary
	// clears the record.
	SyncStandbys []string `json:"sync_standbys,omitempty"`
	SyncCount    int      `json:"sync_count,omitempty"`
	SyncPrimary  string   `json:"sync_primary,omitempty"`
	// SyncWanted is the synchronous_standby_names the controller wants SyncPrimary's agent to
	// set; nil when it wants nothing (yet).
	SyncWanted *SyncTarget `json:"sync_wanted,omitempty"`

	// SystemID is the database system identifier of the cluster's data, recorded when the
	// first primary is named. A node whose data directory has another one belongs to another
	// cluster: it is never started, promoted or routed to.
	SystemID string `json:"system_id,omitempty"`

	// PGConfig is the cluster-wide PostgreSQL configuration; nil until one is set. It is
	// replaced, never modified, when it changes.
	PGConfig *PGConfig `json:"pg_config,omitempty"`
	// Restarts are operators' requests to restart a node's PostgreSQL: every pending one and
	// the most recent finished ones, oldest first.
	Restarts []RestartRequest `json:"restarts,omitempty"`
	// ScheduledSwitchover is the switchover booked for a later time, nil when none;
	// LastScheduledSwitchover the last one that ended, with its outcome. Both are replaced,
	// never modified.
	ScheduledSwitchover     *ScheduledSwitchover `json:"scheduled_switchover,omitempty"`
	LastScheduledSwitchover *ScheduledSwitchover `json:"last_scheduled_switchover,omitempty"`
	// Reload is the last cluster-wide reload request and each node's result. It travels in
	// the snapshot's extras (json "-": never in the state an older binary decodes).
	Reload *ReloadRequest `json:"-"`
	// PGHBA is the cluster-wide pg_hba list, nil until one is set; replaced, never modified.
	// It travels in the snapshot's extras, as Reload does.
	PGHBA *PGHBA `json:"-"`
}

// SyncTarget is a synchronous replication configuration for a primary: PostgreSQL waits for
// Count of Standbys (FIRST or ANY) before it acknowledges a commit. Value is the
// synchronous_standby_names setting that says so ("" waits for nobody, "*" for any one
// standby).
type SyncTarget struct {
	Primary  string   `json:"primary"`
	Standbys []string `json:"standbys,omitempty"`
	Count    int      `json:"count"`
	Value    string   `json:"value"`
}

// SyncPromise returns the recorded synchronous standbys and count when they are about
// primary (nothing otherwise).
func (s *State) SyncPromise(primary string) ([]string, int) {
	if primary == "" || s.SyncPrimary != primary {
		return nil, 0
	}
	return s.SyncStandbys, s.SyncCount
}

// NewState returns the empty state of a new cluster.
func NewState() *State {
	return &State{Members: map[string]Member{}, NextDirectiveID: 1, NextOperationID: 1}
}

// clone returns a copy that apply may modify without touching s. Slices of values are copied;
// their elements hold no shared mutable references except Operation.Excluded, which is
// copied where it is modified.
func (s *State) clone() *State {
	c := *s
	c.Members = maps.Clone(s.Members)
	if c.Members == nil {
		c.Members = map[string]Member{}
	}
	c.Departed = slices.Clone(s.Departed)
	c.Directives = slices.Clone(s.Directives)
	if s.Operation != nil {
		op := *s.Operation
		op.Excluded = slices.Clone(op.Excluded)
		c.Operation = &op
	}
	c.Operations = slices.Clone(s.Operations)
	c.History = slices.Clone(s.History)
	if s.WritePause != nil {
		wp := *s.WritePause
		c.WritePause = &wp
	}
	c.SyncStandbys = slices.Clone(s.SyncStandbys)
	c.Restarts = slices.Clone(s.Restarts)
	if s.SyncWanted != nil {
		w := *s.SyncWanted
		w.Standbys = slices.Clone(w.Standbys)
		c.SyncWanted = &w
	}
	return &c
}

// Member returns the named member.
func (s *State) Member(name string) (Member, bool) {
	m, ok := s.Members[name]
	return m, ok
}

// MemberNames returns the member names in sorted order.
func (s *State) MemberNames() []string {
	return slices.Sorted(maps.Keys(s.Members))
}

// Directive returns the directive with the given ID, if it is still retained.
func (s *State) Directive(id uint64) (Directive, bool) {
	i, ok := slices.BinarySearchFunc(s.Directives, id, func(d Directive, id uint64) int {
		switch {
		case d.ID < id:
			return -1
		case d.ID > id:
			return 1
		}
		return 0
	})
	if !ok {
		return Directive{}, false
	}
	return s.Directives[i], true
}

// PendingDirectives returns the pending directives addressed to target, oldest first.
func (s *State) PendingDirectives(target string) []Directive {
	var out []Directive
	for _, d := range s.Directives {
		if d.Target == target && d.Status == DirectivePending {
			out = append(out, d)
		}
	}
	return out
}

// OperationByID finds an operation in progress or finished.
func (s *State) OperationByID(id uint64) (Operation, bool) {
	if s.Operation != nil && s.Operation.ID == id {
		return *s.Operation, true
	}
	for _, o := range s.Operations {
		if o.ID == id {
			return o, true
		}
	}
	return Operation{}, false
}

// WritesPaused reports whether a switchover is holding writes.
func (s *State) WritesPaused() bool { return s.WritePause != nil }

// ReadReplicas returns, sorted by name, the members a read-only proxy port may route to: healthy
// running replicas without the noloadbalance tag whose replay lag behind the primary's last
// reported position is at most maxLag bytes (0: no limit). How recent their reports must be is
// the caller's decision (see NodeStatus.ReportedAt).
func (s *State) ReadReplicas(maxLag uint64) []Member {
	var out []Member
	for _, name := range s.MemberNames() {
		m := s.Members[name]
		st := m.Status
		if name == s.Primary || m.Tags.NoLoadBalance || !st.Healthy || st.Role != RoleReplica || st.State != StateRunningReplica {
			continue
		}
		if maxLag > 0 && st.LagBytes > maxLag {
			continue
		}
		out = append(out, m)
	}
	return out
}
