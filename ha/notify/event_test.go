package notify

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

var t0 = time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)

// cluster returns a state with a primary db1 and replicas db2, db3, all running.
func cluster(index uint64) *fsm.State {
	s := fsm.NewState()
	s.Index = index
	s.Epoch, s.EpochIndex, s.EpochLeader = 1, 1, "db1"
	for i, name := range []string{"db1", "db2", "db3"} {
		st := fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true, ReportIndex: uint64(2 + i), ReportedAt: t0}
		if name == "db1" {
			st.Role, st.State = fsm.RolePrimary, fsm.StateRunningPrimary
		}
		s.Members[name] = fsm.Member{Name: name, RaftAddress: name + ":7000", Status: st, RegisteredAt: t0}
	}
	s.Primary, s.PrimaryIndex = "db1", 5
	s.History = []fsm.HistoryEntry{{At: t0, Index: 5, NewPrimary: "db1", Reason: "bootstrap"}}
	return s
}

// next returns a copy of s at a later index, for the test to change.
func next(s *fsm.State, index uint64) *fsm.State {
	c := *s
	c.Index = index
	c.Members = maps.Clone(s.Members)
	c.History = slices.Clone(s.History)
	c.Operations = slices.Clone(s.Operations)
	c.Restarts = slices.Clone(s.Restarts)
	if s.Operation != nil {
		op := *s.Operation
		c.Operation = &op
	}
	return &c
}

func setStatus(s *fsm.State, name string, state fsm.NodeState, role fsm.Role, healthy bool, index uint64) {
	m := s.Members[name]
	m.Status.State, m.Status.Role, m.Status.Healthy, m.Status.ReportIndex = state, role, healthy, index
	s.Members[name] = m
}

func types(evs []Event) string {
	var b []string
	for _, e := range evs {
		b = append(b, string(e.Type))
	}
	return strings.Join(b, " ")
}

func TestDiffNothingFromTheFirstStateOrNoChange(t *testing.T) {
	s := cluster(10)
	if evs := Diff(nil, s); len(evs) != 0 {
		t.Errorf("first state: %v", types(evs))
	}
	if evs := Diff(s, next(s, 11)); len(evs) != 0 {
		t.Errorf("no change: %v", types(evs))
	}
	if evs := Diff(s, s); len(evs) != 0 {
		t.Errorf("same state: %v", types(evs))
	}
}

// A failover seen step by step and seen only as its end give the same events, in the order
// they happened.
func TestDiffFailoverStepByStepAndAtOnce(t *testing.T) {
	s0 := cluster(10)

	s1 := next(s0, 11) // db1 fails
	setStatus(s1, "db1", fsm.StateStopped, fsm.RolePrimary, false, 11)

	s2 := next(s1, 12) // the failover starts and deposes db1
	s2.Operation = &fsm.Operation{ID: 1, Kind: fsm.OpFailover, Phase: fsm.PhaseElecting, Reason: "primary db1 is down",
		OldPrimary: "db1", StartedAt: t0, StartedIndex: 12, PhaseIndex: 12}
	s2.NextOperationID = 2
	s2.Primary, s2.PrimaryIndex, s2.PrimarySince = "", 12, t0

	s3 := next(s2, 14) // db2 promoted and named
	setStatus(s3, "db2", fsm.StateRunningPrimary, fsm.RolePrimary, true, 13)
	s3.Primary, s3.PrimaryIndex = "db2", 14
	s3.History = append(s3.History, fsm.HistoryEntry{At: t0, Index: 14, NewPrimary: "db2", OldPrimary: "db1",
		Kind: fsm.OpFailover, OperationID: 1, Timeline: 2, Reason: "primary db1 is down"})
	op := *s3.Operation
	op.Phase, op.PhaseIndex, op.NewPrimary, op.FinishedAt = fsm.PhaseDone, 14, "db2", t0
	s3.Operation = nil
	s3.Operations = append(s3.Operations, op)

	var steps []Event
	for _, p := range [][2]*fsm.State{{s0, s1}, {s1, s2}, {s2, s3}} {
		steps = append(steps, Diff(p[0], p[1])...)
	}
	want := "node_state operation_started no_primary node_state primary_changed operation_finished"
	if got := types(steps); got != want {
		t.Errorf("step by step: %s\nwant %s", got, want)
	}
	// Seen at once: db1's state and the new primary are there, the moment without a
	// primary is not (the history tells the whole change).
	at := Diff(s0, s3)
	if got, want := types(at), "node_state operation_started node_state primary_changed operation_finished"; got != want {
		t.Errorf("at once: %s\nwant %s", got, want)
	}
	ids := map[string]bool{}
	for _, e := range steps {
		ids[e.ID] = true
	}
	for _, e := range at {
		if !ids[e.ID] {
			t.Errorf("event %s seen at once has an ID the step-by-step run did not produce", e.ID)
		}
	}
	for _, e := range steps {
		switch e.Type {
		case EvPrimaryChanged:
			if e.Primary != "db2" || e.OldPrimary != "db1" || e.Timeline != 2 || e.Operation == nil || e.Operation.ID != 1 {
				t.Errorf("primary_changed: %+v", e)
			}
			if e.Message != "db2 is the primary, replacing db1 (failover), timeline 2" {
				t.Errorf("primary_changed message: %q", e.Message)
			}
		case EvNoPrimary:
			if e.Severity != SevCritical || e.OldPrimary != "db1" {
				t.Errorf("no_primary: %+v", e)
			}
		case EvOperationFinished:
			if e.Result != "done" || e.Primary != "db2" || e.Message != "failover 1 done: db2 is the primary" {
				t.Errorf("operation_finished: %+v", e)
			}
		case EvNodeState:
			if e.Node == "db1" && (e.From != "RUNNING_PRIMARY" || e.To != "STOPPED" || *e.Healthy || e.Severity != SevCritical) {
				t.Errorf("db1's node_state: %+v", e)
			}
		}
	}
}

func TestDiffFailedOperationIsCritical(t *testing.T) {
	s0 := cluster(10)
	s0.Operation = &fsm.Operation{ID: 3, Kind: fsm.OpSwitchover, Phase: fsm.PhaseDraining, Requested: true, Candidate: "db3", OldPrimary: "db1"}
	s0.NextOperationID = 4
	s1 := next(s0, 11)
	op := *s1.Operation
	op.Phase, op.Message, op.PhaseIndex = fsm.PhaseFailed, "db3 did not catch up in 30s", 11
	s1.Operation, s1.Operations = nil, []fsm.Operation{op}
	evs := Diff(s0, s1)
	if len(evs) != 1 || evs[0].Type != EvOperationFinished || evs[0].Severity != SevCritical || evs[0].Result != "failed" ||
		evs[0].Message != "switchover 3 failed: db3 did not catch up in 30s" {
		t.Fatalf("%+v", evs)
	}
	// A later state with the same finished operation reports nothing again.
	if evs := Diff(s1, next(s1, 12)); len(evs) != 0 {
		t.Errorf("again: %s", types(evs))
	}
}

func TestDiffMembersMaintenanceLeaderConfigRestarts(t *testing.T) {
	s0 := cluster(10)
	s0.Restarts = []fsm.RestartRequest{{ID: 1, Node: "db3", Status: fsm.RestartPending}}
	s1 := next(s0, 20)
	delete(s1.Members, "db2")
	s1.Members["db4"] = fsm.Member{Name: "db4", RaftAddress: "db4:7000", RegisteredAt: t0}
	s1.Paused = true
	s1.Epoch, s1.EpochIndex, s1.EpochLeader = 2, 15, "db3"
	s1.PGConfig = &fsm.PGConfig{Version: 4, UpdatedIndex: 18}
	s1.Restarts = []fsm.RestartRequest{{ID: 1, Node: "db3", Status: fsm.RestartDone}, {ID: 2, Node: "db4", Status: fsm.RestartFailed, Reinit: true, Message: "not streaming"}}
	evs := Diff(s0, s1)
	got := map[EventType]Event{}
	for _, e := range evs {
		got[e.Type] = e
	}
	if e := got[EvMemberAdded]; e.Node != "db4" {
		t.Errorf("member_added: %+v", e)
	}
	if e := got[EvMemberRemoved]; e.Node != "db2" || e.Severity != SevWarning {
		t.Errorf("member_removed: %+v", e)
	}
	if e := got[EvMaintenance]; e.Paused == nil || !*e.Paused || e.Severity != SevWarning {
		t.Errorf("maintenance: %+v", e)
	}
	if e := got[EvLeaderChanged]; e.Node != "db3" || e.Epoch != 2 || e.Index != 15 {
		t.Errorf("leader_changed: %+v", e)
	}
	if e := got[EvConfigChanged]; e.Version != 4 || e.Index != 18 {
		t.Errorf("pg_config_changed: %+v", e)
	}
	var restarts []string
	for _, e := range evs {
		if e.Type == EvRestartFinished {
			restarts = append(restarts, e.Node+"="+e.Result)
		}
	}
	for _, e := range evs {
		if e.Type == EvRestartFinished && e.Node == "db4" && (!e.Reinit || e.Message != "reinitialisation of db4's PostgreSQL failed: not streaming") {
			t.Errorf("reinit event: %+v", e)
		}
	}
	if strings.Join(restarts, " ") != "db3=done db4=failed" {
		t.Errorf("restarts: %v", restarts)
	}
	if !slices.IsSortedFunc(evs, func(a, b Event) int { return int(a.Index) - int(b.Index) }) {
		t.Errorf("events out of log order: %+v", evs)
	}
	// Resume: maintenance off is info.
	s2 := next(s1, 21)
	s2.Paused = false
	if evs := Diff(s1, s2); len(evs) != 1 || evs[0].Type != EvMaintenance || *evs[0].Paused || evs[0].Severity != SevInfo {
		t.Errorf("resume: %+v", evs)
	}
}

// A switchover takes the primary away on purpose: nothing about it is critical unless it fails.
func TestDiffSwitchoverIsNotCritical(t *testing.T) {
	s0 := cluster(10)
	s0.Operation = &fsm.Operation{ID: 2, Kind: fsm.OpSwitchover, Phase: fsm.PhaseDraining, Requested: true, Candidate: "db2", OldPrimary: "db1"}
	s0.NextOperationID = 3
	s1 := next(s0, 11)
	s1.Primary, s1.PrimaryIndex = "", 11
	setStatus(s1, "db1", fsm.StateDemoting, fsm.RolePrimary, false, 11)
	for _, e := range Diff(s0, s1) {
		if e.Severity == SevCritical {
			t.Errorf("critical during a switchover: %+v", e)
		}
		if e.Type == EvNoPrimary && e.Message != "no primary while switchover 2 moves it from db1: writes wait" {
			t.Errorf("no_primary: %q", e.Message)
		}
		if e.Type == EvNodeState && e.Severity != SevInfo {
			t.Errorf("DEMOTING is a step, not a fault: %+v", e)
		}
	}
	// The same loss without a switchover is critical.
	s0.Operation, s1.Operation = nil, nil
	crit := 0
	for _, e := range Diff(s0, s1) {
		if e.Severity == SevCritical {
			crit++
		}
	}
	if crit != 1 {
		t.Errorf("%d critical events for losing the primary, want 1 (no_primary)", crit)
	}
}

// What the logs of the first state a node sees record, with the IDs the events had when
// they happened, so that a node that started later lists them as the others do.
func TestPastFromTheLogs(t *testing.T) {
	s0 := cluster(10)
	s1 := next(s0, 11)
	s1.Operation = &fsm.Operation{ID: 1, Kind: fsm.OpFailover, Phase: fsm.PhaseElecting, Reason: "primary db1 is down",
		OldPrimary: "db1", StartedAt: t0, StartedIndex: 11, PhaseIndex: 11}
	s1.NextOperationID = 2
	s2 := next(s1, 14)
	setStatus(s2, "db2", fsm.StateRunningPrimary, fsm.RolePrimary, true, 13)
	setStatus(s2, "db1", fsm.StateStopped, fsm.RolePrimary, false, 12)
	s2.Primary, s2.PrimaryIndex = "db2", 14
	s2.History = append(s2.History, fsm.HistoryEntry{At: t0, Index: 14, NewPrimary: "db2", OldPrimary: "db1",
		Kind: fsm.OpFailover, OperationID: 1, Timeline: 2})
	op := *s2.Operation
	op.Phase, op.PhaseIndex, op.NewPrimary, op.FinishedAt = fsm.PhaseDone, 14, "db2", t0
	s2.Operation, s2.Operations = nil, append(s2.Operations, op)
	s2.Restarts = []fsm.RestartRequest{{ID: 4, Node: "db3", Status: fsm.RestartDone, FinishedAt: t0},
		{ID: 5, Node: "db1", Reinit: true, Status: fsm.RestartPending}}
	s2.Paused = true

	past := Past(s2)
	if got, want := types(past), "primary_changed operation_started primary_changed operation_finished restart_finished"; got != want {
		t.Fatalf("past: %s\nwant %s", got, want)
	}
	// The same IDs as when they happened (bootstrap's primary_changed:5 aside, which came
	// before s0).
	happened := map[string]bool{}
	for _, e := range append(Diff(s0, s1), Diff(s1, s2)...) {
		happened[e.ID] = true
	}
	for _, e := range past[1:] {
		if !happened[e.ID] {
			t.Errorf("%s: an ID the live events did not have", e.ID)
		}
	}
	if Past(nil) != nil || Past(fsm.NewState()) != nil {
		t.Error("an empty state has no past")
	}
}

// A booking is an info event; its end says how it ended, a warning when it could not start.
func TestDiffScheduledSwitchover(t *testing.T) {
	at := t0.Add(3 * time.Hour)
	s0 := cluster(10)
	s1 := next(s0, 11)
	s1.ScheduledSwitchover = &fsm.ScheduledSwitchover{Leader: "db1", Candidate: "db2", At: at, RequestedAt: t0, Index: 11}
	evs := Diff(s0, s1)
	if len(evs) != 1 || evs[0].Type != EvSwitchoverScheduled || evs[0].Severity != SevInfo ||
		evs[0].Message != "switchover from db1 to db2 scheduled at "+at.Format(time.RFC3339) {
		t.Fatalf("booked: %+v", evs)
	}
	if evs := Diff(s1, next(s1, 12)); len(evs) != 0 {
		t.Errorf("again: %s", types(evs))
	}
	s2 := next(s1, 13)
	ended := *s1.ScheduledSwitchover
	ended.Outcome, ended.EndedAt = `not started at its time: candidate "db2" cannot be promoted: it is not a healthy replica`, at
	s2.ScheduledSwitchover, s2.LastScheduledSwitchover = nil, &ended
	evs = Diff(s1, s2)
	if len(evs) != 1 || evs[0].Type != EvScheduleEnded || evs[0].Severity != SevWarning ||
		!strings.HasSuffix(evs[0].Message, "(booked for "+at.Format(time.RFC3339)+`): not started at its time: candidate "db2" cannot be promoted: it is not a healthy replica`) {
		t.Fatalf("not started: %+v", evs)
	}
	s3 := next(s2, 14)
	cancelled := ended
	cancelled.Index, cancelled.Outcome = 14, "cancelled by an operator"
	s3.LastScheduledSwitchover = &cancelled
	if evs := Diff(s2, s3); len(evs) != 1 || evs[0].Severity != SevInfo || !strings.HasSuffix(evs[0].Message, "cancelled by an operator") {
		t.Fatalf("cancelled: %+v", evs)
	}
}
