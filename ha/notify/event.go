package notify

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// EventType names what happened.
type EventType string

// Event types.
const (
	// EvPrimaryChanged: a node was named primary (failover, switchover or the first primary).
	EvPrimaryChanged EventType = "primary_changed"
	// EvNoPrimary: the cluster stopped routing writes anywhere (the primary was deposed or
	// lost); writes fail until a new one is named.
	EvNoPrimary EventType = "no_primary"
	// EvOperationStarted and EvOperationFinished: a failover or switchover began or ended
	// (Phase done or failed).
	EvOperationStarted  EventType = "operation_started"
	EvOperationFinished EventType = "operation_finished"
	// EvNodeState: a node's reported state or health changed.
	EvNodeState EventType = "node_state"
	// EvMemberAdded and EvMemberRemoved: the membership changed.
	EvMemberAdded   EventType = "member_added"
	EvMemberRemoved EventType = "member_removed"
	// EvMaintenance: maintenance mode (no automatic failover) was switched on or off.
	EvMaintenance EventType = "maintenance"
	// EvLeaderChanged: a new Raft leader began an epoch.
	EvLeaderChanged EventType = "leader_changed"
	// EvConfigChanged: the cluster-wide PostgreSQL configuration changed.
	EvConfigChanged EventType = "pg_config_changed"
	// EvRestartFinished: an operator's restart (or reinitialisation) of a node's PostgreSQL
	// ended.
	EvRestartFinished EventType = "restart_finished"
	// EvSwitchoverScheduled: an operator booked a switchover for a later time;
	// EvScheduleEnded: the booking ended (the switchover started, an operator cancelled it, or
	// it could not start at its time, and why).
	EvSwitchoverScheduled EventType = "switchover_scheduled"
	EvScheduleEnded       EventType = "scheduled_switchover_ended"
)

// EventTypes lists every event type, for validating configuration.
var EventTypes = []EventType{EvPrimaryChanged, EvNoPrimary, EvOperationStarted, EvOperationFinished,
	EvNodeState, EvMemberAdded, EvMemberRemoved, EvMaintenance, EvLeaderChanged, EvConfigChanged,
	EvRestartFinished, EvSwitchoverScheduled, EvScheduleEnded}

// Severity says how urgently a person should look.
type Severity string

// Severities.
const (
	SevInfo     Severity = "info"
	SevWarning  Severity = "warning"
	SevCritical Severity = "critical"
)

// Event is one thing that happened to the cluster, as webhooks receive it.
type Event struct {
	// ID identifies the event: a receiver may drop an ID it saw. It is the same on every node
	// for every type but maintenance, whose ID carries the log index at which the node
	// noticed the change.
	ID       string    `json:"id"`
	Type     EventType `json:"type"`
	Severity Severity  `json:"severity"`
	// Cluster is the cluster's name (raft.cluster_name); Sender the node that delivered it.
	Cluster string `json:"cluster,omitempty"`
	Sender  string `json:"sender,omitempty"`
	// At is when it happened by the Raft leader's clock; Index the Raft log index that
	// recorded it.
	At    time.Time `json:"at"`
	Index uint64    `json:"index"`
	// Message says what happened in one line, for a person.
	Message string `json:"message"`

	// Node is the node the event is about, when it is about one.
	Node string `json:"node,omitempty"`
	// Primary is the primary after the event; OldPrimary the one before.
	Primary    string `json:"primary,omitempty"`
	OldPrimary string `json:"old_primary,omitempty"`
	// From and To: a node's state before and after (node_state).
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Healthy: the node's PostgreSQL accepts connections (node_state).
	Healthy *bool `json:"healthy,omitempty"`
	// Role: the node's PostgreSQL role after the event (node_state).
	Role string `json:"role,omitempty"`
	// Operation: for operation events the failover or switchover, for primary_changed the one
	// that named the primary.
	Operation *OperationInfo `json:"operation,omitempty"`
	// Reason is why, as the cluster recorded it.
	Reason string `json:"reason,omitempty"`
	// Timeline: the new primary's timeline (primary_changed).
	Timeline uint32 `json:"timeline,omitempty"`
	// Version: the configuration version (pg_config_changed).
	Version uint64 `json:"version,omitempty"`
	// Paused: maintenance mode after the event.
	Paused *bool `json:"paused,omitempty"`
	// Epoch: the leadership epoch (leader_changed).
	Epoch uint64 `json:"epoch,omitempty"`
	// Result is done or failed (operation_finished, restart_finished).
	Result string `json:"result,omitempty"`
	// Reinit: the restart_finished was a reinitialisation (a new clone of the primary).
	Reinit bool `json:"reinit,omitempty"`
	// Redelivered: sent again by a node that just became the Raft leader, because the
	// previous leader may have died before delivering it. Drop it if its ID was seen.
	Redelivered bool `json:"redelivered,omitempty"`
}

// OperationInfo is the part of a failover or switchover an event carries.
type OperationInfo struct {
	ID        uint64            `json:"id"`
	Kind      fsm.OperationKind `json:"kind"`
	Phase     fsm.Phase         `json:"phase,omitempty"`
	Requested bool              `json:"requested,omitempty"`
	Candidate string            `json:"candidate,omitempty"`
	Message   string            `json:"message,omitempty"`
	// RequestID and TraceID tie the operation to the API request that asked for it (its
	// X-Request-ID) and to its distributed trace, when known.
	RequestID string `json:"request_id,omitempty"`
	TraceID   string `json:"trace_id,omitempty"`
}

func opInfo(o fsm.Operation) *OperationInfo {
	i := &OperationInfo{ID: o.ID, Kind: o.Kind, Phase: o.Phase, Requested: o.Requested,
		Candidate: o.Candidate, Message: o.Message}
	if o.Trace != nil {
		i.RequestID, i.TraceID = o.Trace.RequestID, o.Trace.TraceID
	}
	return i
}

// Past returns the events that the cluster's bounded logs in st still record: changes of
// primary, failovers and switchovers, finished restarts and reinitialisations, oldest first. A
// node that has just started shows them (GET /cluster/events, ctl events) although it did not
// see them happen. They are the past, not news: the notifier neither delivers nor counts them.
func Past(st *fsm.State) []Event {
	if st == nil || st.Index == 0 {
		return nil
	}
	// A state like st but for the logs, so that Diff reports only what the logs hold.
	before := *st
	before.Index, before.History, before.Operations, before.Operation, before.NextOperationID, before.Restarts = 0, nil, nil, nil, 0, nil
	var out []Event
	for _, e := range Diff(&before, st) {
		switch e.Type {
		case EvPrimaryChanged, EvOperationStarted, EvOperationFinished, EvRestartFinished:
			out = append(out, e)
		}
	}
	return out
}

// Diff returns the events that lead from prev to cur, oldest first. prev may be nil (nothing
// is reported then: the first state seen is the starting point, not news). States may be far
// apart (a subscriber sees only the newest state): changes of primary and operations come
// from the state's own bounded logs and are all reported; a node's state is reported as it
// was before and is now.
func Diff(prev, cur *fsm.State) []Event {
	if prev == nil || cur == nil || cur.Index <= prev.Index {
		return nil
	}
	var out []Event
	add := func(e Event) {
		if e.At.IsZero() {
			e.At = time.Now()
		}
		if e.Index == 0 {
			e.Index = cur.Index
		}
		out = append(out, e)
	}

	if cur.Epoch > prev.Epoch && cur.EpochLeader != "" {
		add(Event{ID: fmt.Sprintf("leader_changed:%d", cur.Epoch), Type: EvLeaderChanged, Severity: SevInfo,
			Index: cur.EpochIndex, Node: cur.EpochLeader, Epoch: cur.Epoch,
			Message: fmt.Sprintf("%s is the Raft leader (epoch %d)", cur.EpochLeader, cur.Epoch)})
	}

	// Membership.
	for _, name := range sortedKeys(cur.Members) {
		if _, ok := prev.Members[name]; !ok {
			m := cur.Members[name]
			add(Event{ID: fmt.Sprintf("member_added:%s:%d", name, m.RegisteredAt.UnixNano()), Type: EvMemberAdded,
				Severity: SevInfo, At: m.RegisteredAt, Node: name,
				Message: fmt.Sprintf("%s joined the cluster (Raft %s)", name, m.RaftAddress)})
		}
	}
	for _, name := range sortedKeys(prev.Members) {
		if _, ok := cur.Members[name]; !ok {
			add(Event{ID: fmt.Sprintf("member_removed:%s:%d", name, prev.Members[name].RegisteredAt.UnixNano()), Type: EvMemberRemoved,
				Severity: SevWarning, Node: name, Message: name + " was removed from the cluster"})
		}
	}

	// Changes of primary, from the history (every one, however far apart the states are).
	// Added before the operations: at the same log index (the command that names a primary
	// also ends its operation) the new primary comes first.
	for _, h := range cur.History {
		if h.Index <= prev.Index {
			continue
		}
		e := Event{ID: fmt.Sprintf("primary_changed:%d", h.Index), Type: EvPrimaryChanged, Severity: SevWarning,
			At: h.At, Index: h.Index, Node: h.NewPrimary, Primary: h.NewPrimary, OldPrimary: h.OldPrimary,
			Reason: h.Reason, Timeline: h.Timeline}
		if h.OldPrimary == "" {
			e.Severity = SevInfo
		}
		if h.OperationID != 0 {
			e.Operation = &OperationInfo{ID: h.OperationID, Kind: h.Kind}
		}
		e.Message = primaryMessage(h)
		add(e)
	}
	// Operations: those that started and those that finished since prev.
	prevActive := uint64(0)
	if prev.Operation != nil {
		prevActive = prev.Operation.ID
	}
	var ops []fsm.Operation
	for _, o := range cur.Operations {
		if (prevActive != 0 && o.ID == prevActive) || o.ID >= prev.NextOperationID {
			ops = append(ops, o)
		}
	}
	slices.SortFunc(ops, func(a, b fsm.Operation) int { return cmp.Compare(a.ID, b.ID) })
	if cur.Operation != nil {
		ops = append(ops, *cur.Operation)
	}
	for _, o := range ops {
		if o.ID >= prev.NextOperationID {
			add(Event{ID: fmt.Sprintf("operation_started:%d", o.ID), Type: EvOperationStarted, Severity: SevWarning,
				At: o.StartedAt, Index: o.StartedIndex, Node: o.OldPrimary, OldPrimary: o.OldPrimary, Operation: opInfo(o),
				Reason: o.Reason, Message: startedMessage(o)})
		}
		if !o.Active() {
			sev := SevInfo
			if o.Phase == fsm.PhaseFailed {
				sev = SevCritical
			}
			add(Event{ID: fmt.Sprintf("operation_finished:%d", o.ID), Type: EvOperationFinished, Severity: sev,
				At: o.FinishedAt, Index: o.PhaseIndex, OldPrimary: o.OldPrimary, Primary: o.NewPrimary, Operation: opInfo(o),
				Result: string(o.Phase),
				Reason: o.Reason, Message: finishedMessage(o)})
		}
	}

	// A switchover takes the primary away on purpose: what would page someone otherwise is
	// only a warning while one runs (its failure is critical).
	planned := cur.Operation != nil && cur.Operation.Kind == fsm.OpSwitchover
	if cur.Primary == "" && prev.Primary != "" {
		sev, msg := SevCritical, fmt.Sprintf("no primary: %s no longer takes writes; writes wait or fail until a new primary is named", prev.Primary)
		if planned {
			sev, msg = SevWarning, fmt.Sprintf("no primary while switchover %d moves it from %s: writes wait", cur.Operation.ID, prev.Primary)
		}
		add(Event{ID: fmt.Sprintf("no_primary:%d", cur.PrimaryIndex), Type: EvNoPrimary, Severity: sev,
			At: cur.PrimarySince, Index: cur.PrimaryIndex, OldPrimary: prev.Primary, Node: prev.Primary, Message: msg})
	}

	// Nodes.
	for _, name := range sortedKeys(cur.Members) {
		was, ok := prev.Members[name]
		if !ok {
			continue
		}
		now := cur.Members[name]
		a, b := was.Status, now.Status
		if a.State == b.State && a.Healthy == b.Healthy || b.ReportIndex == 0 {
			continue
		}
		healthy := b.Healthy
		// Down, or running but not answering, is bad; PROMOTING, DEMOTING and INITIALIZING
		// are steps on the way somewhere.
		running := b.State == fsm.StateRunningPrimary || b.State == fsm.StateRunningReplica
		sev := SevInfo
		if b.State == fsm.StateFenced || b.State == fsm.StateStopped || (running && !b.Healthy) {
			sev = SevWarning
			if (name == cur.Primary || name == prev.Primary) && !planned {
				sev = SevCritical
			}
		}
		add(Event{ID: fmt.Sprintf("node_state:%s:%d", name, b.ReportIndex), Type: EvNodeState, Severity: sev,
			At: b.ReportedAt, Index: b.ReportIndex, Node: name, From: string(a.State), To: string(b.State),
			Healthy: &healthy, Role: string(b.Role), Reason: b.Reason, Message: nodeMessage(name, a, b)})
	}

	if cur.Paused != prev.Paused {
		p := cur.Paused
		msg := "maintenance mode off: automatic failover is back on"
		sev := SevInfo
		if p {
			msg, sev = "maintenance mode on: no automatic failover until it is resumed", SevWarning
		}
		add(Event{ID: fmt.Sprintf("maintenance:%d", cur.Index), Type: EvMaintenance, Severity: sev, Paused: &p, Message: msg})
	}

	if c := cur.PGConfig; c != nil && (prev.PGConfig == nil || c.Version != prev.PGConfig.Version) {
		add(Event{ID: fmt.Sprintf("pg_config_changed:%d", c.Version), Type: EvConfigChanged, Severity: SevInfo,
			At: c.UpdatedAt, Index: c.UpdatedIndex, Version: c.Version,
			Message: fmt.Sprintf("cluster PostgreSQL configuration is now version %d", c.Version)})
	}

	if sch := cur.ScheduledSwitchover; sch != nil && (prev.ScheduledSwitchover == nil || prev.ScheduledSwitchover.Index != sch.Index) {
		add(Event{ID: fmt.Sprintf("switchover_scheduled:%d", sch.Index), Type: EvSwitchoverScheduled, Severity: SevInfo,
			At: sch.RequestedAt, Index: sch.Index, OldPrimary: sch.Leader, Node: sch.Leader,
			Message: fmt.Sprintf("switchover from %s to %s scheduled at %s", sch.Leader, orBest(sch.Candidate), sch.At.UTC().Format(time.RFC3339))})
	}
	if last := cur.LastScheduledSwitchover; last != nil && (prev.LastScheduledSwitchover == nil || prev.LastScheduledSwitchover.Index != last.Index) {
		// Started is told by the operation's own events too; one that did not start at its
		// time needs a person.
		sev := SevInfo
		if last.OperationID == 0 && last.Outcome != "cancelled by an operator" {
			sev = SevWarning
		}
		add(Event{ID: fmt.Sprintf("scheduled_switchover_ended:%d", last.Index), Type: EvScheduleEnded, Severity: sev,
			At: last.EndedAt, Node: last.Leader, OldPrimary: last.Leader,
			Message: fmt.Sprintf("scheduled switchover from %s to %s (booked for %s): %s", last.Leader, orBest(last.Candidate),
				last.At.UTC().Format(time.RFC3339), last.Outcome)})
	}

	pending := map[uint64]bool{}
	for _, r := range prev.Restarts {
		if r.Status == fsm.RestartPending {
			pending[r.ID] = true
		}
	}
	maxPrev := uint64(0)
	for _, r := range prev.Restarts {
		maxPrev = max(maxPrev, r.ID)
	}
	for _, r := range cur.Restarts {
		if r.Status == fsm.RestartPending || !(pending[r.ID] || r.ID > maxPrev) {
			continue
		}
		what := "restart"
		if r.Reinit {
			what = "reinitialisation"
		}
		sev, msg := SevInfo, fmt.Sprintf("%s of %s's PostgreSQL done", what, r.Node)
		if r.Status == fsm.RestartFailed {
			sev, msg = SevWarning, fmt.Sprintf("%s of %s's PostgreSQL failed: %s", what, r.Node, r.Message)
		}
		add(Event{ID: fmt.Sprintf("restart_finished:%d", r.ID), Type: EvRestartFinished, Severity: sev,
			At: r.FinishedAt, Node: r.Node, Reason: r.Reason, Result: string(r.Status), Reinit: r.Reinit, Message: msg})
	}
	slices.SortStableFunc(out, func(a, b Event) int { return cmp.Compare(a.Index, b.Index) })
	return out
}

// orBest names a switchover's candidate, or says the controller picks one.
func orBest(candidate string) string {
	if candidate == "" {
		return "the best replica"
	}
	return candidate
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func startedMessage(o fsm.Operation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d started", o.Kind, o.ID)
	if o.OldPrimary != "" {
		fmt.Fprintf(&b, " (primary %s)", o.OldPrimary)
	}
	if o.Candidate != "" {
		fmt.Fprintf(&b, ", candidate %s", o.Candidate)
	}
	if o.Reason != "" {
		fmt.Fprintf(&b, ": %s", o.Reason)
	}
	return b.String()
}

func finishedMessage(o fsm.Operation) string {
	if o.Phase == fsm.PhaseFailed {
		msg := fmt.Sprintf("%s %d failed", o.Kind, o.ID)
		if o.Message != "" {
			msg += ": " + o.Message
		}
		return msg
	}
	msg := fmt.Sprintf("%s %d done", o.Kind, o.ID)
	if o.NewPrimary != "" {
		msg += ": " + o.NewPrimary + " is the primary"
	}
	return msg
}

func primaryMessage(h fsm.HistoryEntry) string {
	var b strings.Builder
	if h.OldPrimary == "" {
		fmt.Fprintf(&b, "%s is the primary", h.NewPrimary)
	} else {
		fmt.Fprintf(&b, "%s is the primary, replacing %s", h.NewPrimary, h.OldPrimary)
	}
	if h.Kind != "" {
		fmt.Fprintf(&b, " (%s)", h.Kind)
	}
	if h.Timeline != 0 {
		fmt.Fprintf(&b, ", timeline %d", h.Timeline)
	}
	return b.String()
}

func nodeMessage(name string, a, b fsm.NodeStatus) string {
	var s strings.Builder
	s.WriteString(name)
	if a.State != b.State {
		fmt.Fprintf(&s, ": %s → %s", orUnknown(a.State), b.State)
	} else {
		fmt.Fprintf(&s, ": %s", b.State)
	}
	if b.Healthy {
		s.WriteString(", PostgreSQL accepts connections")
	} else {
		s.WriteString(", PostgreSQL does not accept connections")
	}
	if b.Reason != "" {
		fmt.Fprintf(&s, " (%s)", b.Reason)
	}
	return s.String()
}

func orUnknown(s fsm.NodeState) fsm.NodeState {
	if s == "" {
		return "(none)"
	}
	return s
}
