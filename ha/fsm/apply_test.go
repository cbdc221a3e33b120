package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"
)

// machine applies commands to a State with increasing indexes and times, like Raft would.
type machine struct {
	t   *testing.T
	s   *State
	idx uint64
	at  time.Time
}

func newMachine(t *testing.T) *machine {
	return &machine{t: t, s: NewState(), at: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (m *machine) apply(cmd Command) Result {
	m.t.Helper()
	m.idx++
	m.at = m.at.Add(100 * time.Millisecond)
	before, _ := json.Marshal(m.s)
	next, res := m.s.Apply(cmd, Meta{Index: m.idx, At: m.at})
	after, _ := json.Marshal(m.s)
	if string(before) != string(after) {
		m.t.Fatalf("Apply(%T) modified the previous state", cmd)
	}
	if res.Err != nil && next != m.s {
		m.t.Fatalf("rejected %T returned a new state", cmd)
	}
	m.s = next
	return res
}

func (m *machine) ok(cmd Command) Result {
	m.t.Helper()
	res := m.apply(cmd)
	if res.Err != nil {
		m.t.Fatalf("%T: %v", cmd, res.Err)
	}
	return res
}

func (m *machine) rejects(cmd Command, want *Error) {
	m.t.Helper()
	res := m.apply(cmd)
	if !errors.Is(res.Error(), want) {
		m.t.Fatalf("%T: got %v, want code %s", cmd, res.Err, want.Code)
	}
}

func threeNodes(t *testing.T) *machine {
	m := newMachine(t)
	m.ok(LeaderEstablished{Leader: "n1"})
	for i := 1; i <= 3; i++ {
		n := fmt.Sprintf("n%d", i)
		m.ok(RegisterMember{Name: n, RaftAddress: n + ":8300", PGHost: n, PGPort: 5432, Tags: Tags{FailoverPriority: 1}})
	}
	m.ok(ReportStatus{Node: "n1", Status: NodeStatus{Role: RolePrimary, State: StateRunningPrimary, Healthy: true, FlushLSN: 1000}})
	for _, n := range []string{"n2", "n3"} {
		m.ok(ReportStatus{Node: n, Status: NodeStatus{Role: RoleReplica, State: StateRunningReplica, Healthy: true, ReceivedLSN: 900, ReplayedLSN: 900}})
	}
	m.ok(SetPrimary{Node: "n1", Reason: "bootstrap"})
	return m
}

func TestRegisterAndReport(t *testing.T) {
	m := newMachine(t)
	m.rejects(RegisterMember{Name: "n1"}, ErrInvalid)
	m.rejects(ReportStatus{Node: "n1"}, ErrNotFound)
	m.ok(RegisterMember{Name: "n1", RaftAddress: "a:1"})
	if got := m.s.Members["n1"].Status.State; got != StateInitializing {
		t.Fatalf("new member state %q", got)
	}
	m.rejects(ReportStatus{Node: "n1", Status: NodeStatus{State: "BOGUS"}}, ErrInvalid)
	m.ok(ReportStatus{Node: "n1", Status: NodeStatus{Role: RolePrimary, State: StateRunningPrimary, Healthy: true,
		ReportedAt: time.Unix(5, 0), ReportIndex: 99}})
	st := m.s.Members["n1"].Status
	if !st.ReportedAt.Equal(m.at) || st.ReportIndex != m.idx {
		t.Fatalf("report time/index come from the reporter, not the log: %+v", st)
	}
	// Re-registering keeps the status.
	m.ok(RegisterMember{Name: "n1", RaftAddress: "a:2"})
	if m.s.Members["n1"].Status.State != StateRunningPrimary || m.s.Members["n1"].RaftAddress != "a:2" {
		t.Fatalf("re-register lost state: %+v", m.s.Members["n1"])
	}
}

func TestReportComputesLag(t *testing.T) {
	m := threeNodes(t)
	m.ok(ReportStatus{Node: "n2", Status: NodeStatus{Role: RoleReplica, State: StateRunningReplica, ReplayedLSN: 400}})
	if got := m.s.Members["n2"].Status.LagBytes; got != 600 {
		t.Fatalf("lag %d, want 600", got)
	}
}

func TestRenewLeaseGrantsOnlyTheCurrentPrimary(t *testing.T) {
	m := threeNodes(t)
	m.rejects(RenewLease{Node: "stranger"}, ErrNotFound)
	res := m.ok(RenewLease{Node: "n2", Routing: "n1"})
	if res.Primary != "n1" {
		t.Fatalf("grant names %q", res.Primary)
	}
	l := m.s.Members["n2"].Lease
	if l.GrantPrimary != "n1" || l.GrantIndex != m.idx || l.Routing != "n1" {
		t.Fatalf("lease record %+v", l)
	}
	grantIdx := l.GrantIndex
	m.ok(StartOperation{Kind: OpFailover, Reason: "test", OldPrimary: "n1"})
	res = m.ok(RenewLease{Node: "n2", Routing: ""})
	l = m.s.Members["n2"].Lease
	if res.Primary != "" || l.Granted != "" || l.GrantPrimary != "n1" || l.GrantIndex != grantIdx {
		t.Fatalf("after deposition: result %+v, record %+v", res, l)
	}
}

func TestDirectiveAcknowledgedExactlyOnce(t *testing.T) {
	m := threeNodes(t)
	m.rejects(IssueDirective{Type: DirectiveFence, Target: "nobody"}, ErrNotFound)
	m.rejects(IssueDirective{Type: "REBOOT", Target: "n1"}, ErrInvalid)
	m.rejects(IssueDirective{Type: DirectiveDemote, Target: "n1", Params: DirectiveParams{Upstream: "n1"}}, ErrInvalid)
	id := m.ok(IssueDirective{Type: DirectiveFence, Target: "n1"}).ID
	issuedAt := m.at
	m.rejects(IssueDirective{Type: DirectiveFence, Target: "n1"}, ErrConflict) // duplicate pending
	d, _ := m.s.Directive(id)
	if d.Epoch != 1 || d.Status != DirectivePending || !d.IssuedAt.Equal(issuedAt) {
		t.Fatalf("issued directive %+v", d)
	}
	m.rejects(AckDirective{ID: id, Node: "n2", Success: true}, ErrInvalid)
	m.rejects(AckDirective{ID: id + 100, Node: "n1"}, ErrNotFound)
	m.ok(AckDirective{ID: id, Node: "n1", Success: true, Result: DirectiveResult{LSN: 77}})
	m.rejects(AckDirective{ID: id, Node: "n1", Success: false}, ErrConflict)
	d, _ = m.s.Directive(id)
	if d.Status != DirectiveDone || d.Result.LSN != 77 {
		t.Fatalf("acked directive %+v", d)
	}
	if got := m.s.Members["n1"].Lease.ReleaseIndex; got != d.FinishedIndex {
		t.Fatalf("FENCE ack must release the lease: ReleaseIndex %d, ack at %d", got, d.FinishedIndex)
	}
	// A failed FENCE releases nothing.
	id2 := m.ok(IssueDirective{Type: DirectiveFence, Target: "n2"}).ID
	m.ok(AckDirective{ID: id2, Node: "n2", Success: false, Message: "pg_ctl failed"})
	if m.s.Members["n2"].Lease.ReleaseIndex != 0 {
		t.Fatal("failed FENCE released the lease")
	}
}

func TestNewEpochSupersedesOlderDirectives(t *testing.T) {
	m := threeNodes(t)
	old := m.ok(IssueDirective{Type: DirectiveCheckpoint, Target: "n1"}).ID
	m.ok(LeaderEstablished{Leader: "n2"})
	d, _ := m.s.Directive(old)
	if d.Status != DirectiveSuperseded || m.s.Epoch != 2 || m.s.EpochIndex != m.idx || m.s.EpochLeader != "n2" {
		t.Fatalf("directive %+v epoch %d", d, m.s.Epoch)
	}
	m.rejects(AckDirective{ID: old, Node: "n1", Success: true}, ErrConflict)
	fresh := m.ok(IssueDirective{Type: DirectiveCheckpoint, Target: "n1"}).ID
	if d, _ := m.s.Directive(fresh); d.Epoch != 2 {
		t.Fatalf("new directive epoch %d", d.Epoch)
	}
}

func TestDirectiveRetentionIsBounded(t *testing.T) {
	m := threeNodes(t)
	pending := m.ok(IssueDirective{Type: DirectiveFence, Target: "n3"}).ID
	for i := 0; i < maxFinishedDirectives+20; i++ {
		id := m.ok(IssueDirective{Type: DirectiveCheckpoint, Target: "n1"}).ID
		m.ok(ExpireDirective{ID: id, Message: "x"})
	}
	if n := len(m.s.Directives); n != maxFinishedDirectives+1 {
		t.Fatalf("%d directives retained", n)
	}
	if d, ok := m.s.Directive(pending); !ok || d.Finished() {
		t.Fatal("the pending directive was trimmed")
	}
}

func TestFailoverOperationLifecycle(t *testing.T) {
	m := threeNodes(t)
	m.rejects(StartOperation{Kind: OpFailover, OldPrimary: "n2"}, ErrConflict) // n1 is the primary
	m.rejects(StartOperation{Kind: OpSwitchover, OldPrimary: "n1"}, ErrInvalid)
	op := m.ok(StartOperation{Kind: OpFailover, Reason: "primary silent", OldPrimary: "n1"}).ID
	if m.s.Primary != "" || m.s.PrimaryIndex != m.idx || m.s.Operation.Phase != PhaseElecting {
		t.Fatalf("failover must depose: %+v %+v", m.s.Primary, m.s.Operation)
	}
	m.rejects(StartOperation{Kind: OpFailover}, ErrConflict)
	m.rejects(RemoveMember{Name: "n1"}, ErrConflict)
	cand := "n2"
	m.ok(UpdateOperation{ID: op, Phase: PhasePromoting, Candidate: &cand, Exclude: "n3"})
	m.rejects(UpdateOperation{ID: op, Phase: PhaseDone}, ErrInvalid)
	m.rejects(UpdateOperation{ID: op + 1}, ErrConflict)
	m.ok(SetPrimary{Node: "n2", OperationID: op, Reason: "failover", Timeline: 2, LSN: 900})
	m.ok(FinishOperation{ID: op, Success: true})
	if m.s.Operation != nil || len(m.s.Operations) != 1 || m.s.Operations[0].NewPrimary != "n2" {
		t.Fatalf("finished: %+v %+v", m.s.Operation, m.s.Operations)
	}
	h := m.s.History[len(m.s.History)-1]
	if h.NewPrimary != "n2" || h.OldPrimary != "n1" || h.Kind != OpFailover || h.Timeline != 2 {
		t.Fatalf("history %+v", h)
	}
	m.rejects(SetPrimary{Node: "n3"}, ErrConflict) // depose first
}

func TestSwitchoverRequestValidation(t *testing.T) {
	m := threeNodes(t)
	m.rejects(RequestSwitchover{Leader: "n2", Candidate: "n3"}, ErrPrecondition)
	m.rejects(RequestSwitchover{Leader: "n1", Candidate: "n1"}, ErrInvalid)
	m.rejects(RequestSwitchover{Leader: "n1", Candidate: "n9"}, ErrPrecondition)
	m.ok(SetTags{Name: "n3", Tags: Tags{NoFailover: true, FailoverPriority: 1}})
	m.rejects(RequestSwitchover{Leader: "n1", Candidate: "n3"}, ErrPrecondition)
	m.ok(ReportStatus{Node: "n2", Status: NodeStatus{Role: RoleReplica, State: StateStopped}})
	m.rejects(RequestSwitchover{Leader: "n1"}, ErrPrecondition) // no good candidates
	m.ok(ReportStatus{Node: "n2", Status: NodeStatus{Role: RoleReplica, State: StateRunningReplica, Healthy: true}})
	id := m.ok(RequestSwitchover{Leader: "n1", Candidate: "n2"}).ID
	op := m.s.Operation
	if op.ID != id || op.Kind != OpSwitchover || op.Phase != PhaseCheckpoint || op.OldPrimary != "n1" || m.s.Primary != "n1" {
		t.Fatalf("switchover op %+v, primary %q", op, m.s.Primary)
	}
	m.rejects(RequestSwitchover{Leader: "n1", Candidate: "n2"}, ErrConflict)
	m.ok(SetWritePause{OperationID: id, Active: true, Reason: "switchover"})
	if !m.s.WritesPaused() {
		t.Fatal("write pause not set")
	}
	m.ok(FinishOperation{ID: id, Success: false, Message: "aborted"})
	if m.s.WritesPaused() {
		t.Fatal("finishing the operation must clear its write pause")
	}
}

func TestFailoverRequest(t *testing.T) {
	m := threeNodes(t)
	m.rejects(RequestFailover{}, ErrInvalid)
	m.rejects(RequestFailover{Candidate: "n1"}, ErrInvalid)
	// With a healthy primary a failover request becomes a switchover.
	id := m.ok(RequestFailover{Candidate: "n2"}).ID
	if op := m.s.Operation; op.Kind != OpSwitchover || op.ID != id {
		t.Fatalf("op %+v", op)
	}
	m.ok(FinishOperation{ID: id})
	// With a primary that reports trouble it is a failover that deposes the primary.
	m.ok(ReportStatus{Node: "n1", Status: NodeStatus{Role: RolePrimary, State: StateStopped}})
	id = m.ok(RequestFailover{Candidate: "n2"}).ID
	if op := m.s.Operation; op.Kind != OpFailover || op.OldPrimary != "n1" || m.s.Primary != "" || op.Candidate != "n2" {
		t.Fatalf("op %+v primary %q", op, m.s.Primary)
	}
	m.ok(FinishOperation{ID: id})
	m.ok(SetPrimary{Node: "n1"})
	// Without a primary, an electing failover adopts the operator's candidate.
	auto := m.ok(StartOperation{Kind: OpFailover, Reason: "silent", OldPrimary: "n1"}).ID
	got := m.ok(RequestFailover{Candidate: "n3", Force: true}).ID
	if op := m.s.Operation; got != auto || op.Candidate != "n3" || !op.Force || !op.Requested {
		t.Fatalf("op %+v", op)
	}
}

func TestRemoveMember(t *testing.T) {
	m := threeNodes(t)
	m.rejects(RemoveMember{Name: "n1"}, ErrPrecondition)
	m.ok(RenewLease{Node: "n3", Routing: "n1"})
	id := m.ok(IssueDirective{Type: DirectiveCheckpoint, Target: "n3"}).ID
	m.ok(SetSyncStandbys{Nodes: []string{"n3", "n2", "n3"}})
	if got := fmt.Sprint(m.s.SyncStandbys); got != "[n2 n3]" {
		t.Fatalf("sync set %s", got)
	}
	m.ok(RemoveMember{Name: "n3"})
	if _, ok := m.s.Members["n3"]; ok || len(m.s.Departed) != 1 || m.s.Departed[0].Lease.GrantPrimary != "n1" {
		t.Fatalf("removed member must keep its lease record in Departed: %+v", m.s.Departed)
	}
	if d, _ := m.s.Directive(id); d.Status != DirectiveExpired {
		t.Fatalf("directive to removed member %+v", d)
	}
	// Every acknowledged transaction was on both; now it is known to be on one of the rest.
	if got := fmt.Sprint(m.s.SyncStandbys, m.s.SyncCount); got != "[n2] 1" {
		t.Fatalf("sync set %s", got)
	}
	m.rejects(RenewLease{Node: "n3"}, ErrNotFound)
}

func TestRemoveMemberWeakensTheSyncPromise(t *testing.T) {
	m := threeNodes(t)
	// ANY 1 (n2, n3): a transaction may be on n3 alone. Without n3 the record promises
	// nothing about n2.
	m.ok(SetSyncState{Primary: "n1", Standbys: []string{"n2", "n3"}, Count: 1})
	m.ok(RemoveMember{Name: "n3"})
	if got := fmt.Sprint(m.s.SyncStandbys, m.s.SyncCount); got != "[n2] 0" {
		t.Fatalf("sync record after removing n3: %s", got)
	}
}

func TestSetSyncState(t *testing.T) {
	m := threeNodes(t)
	w := &SyncTarget{Primary: "n1", Standbys: []string{"n2"}, Count: 1, Value: `FIRST 1 ("n2")`}
	m.rejects(SetSyncState{Primary: "n2", Standbys: []string{"n3"}, Count: 1}, ErrConflict) // not the primary
	m.rejects(SetSyncState{Primary: "n1", Standbys: []string{"n1"}, Count: 1}, ErrInvalid)  // the primary itself
	m.rejects(SetSyncState{Primary: "n1", Standbys: []string{"n9"}, Count: 1}, ErrNotFound)
	m.rejects(SetSyncState{Primary: "n1", Standbys: []string{"n2"}, Count: 2}, ErrInvalid)
	m.rejects(SetSyncState{Primary: "n1", Wanted: &SyncTarget{Primary: "n2"}}, ErrInvalid)
	m.ok(SetSyncState{Primary: "n1", Standbys: []string{"n3", "n2"}, Count: 0, Wanted: w})
	if got := fmt.Sprintf("%s %v %d %s", m.s.SyncPrimary, m.s.SyncStandbys, m.s.SyncCount, m.s.SyncWanted.Value); got != `n1 [n2 n3] 0 FIRST 1 ("n2")` {
		t.Fatalf("sync state %s", got)
	}
	// Without Wanted the wanted configuration stays.
	m.ok(SetSyncState{Primary: "n1", Standbys: []string{"n2"}, Count: 1})
	if got := fmt.Sprint(m.s.SyncStandbys, m.s.SyncCount, m.s.SyncWanted != nil); got != "[n2] 1 true" {
		t.Fatalf("sync state %s", got)
	}
	if st, n := m.s.SyncPromise("n1"); len(st) != 1 || n != 1 {
		t.Fatalf("promise %v %d", st, n)
	}
	// Deposing keeps the promise about n1 (a failover needs it); a new primary clears it.
	m.ok(SetPrimary{Node: ""})
	if st, n := m.s.SyncPromise("n1"); len(st) != 1 || n != 1 {
		t.Fatalf("promise after deposing %v %d", st, n)
	}
	m.ok(SetPrimary{Node: "n2"})
	if st, n := m.s.SyncPromise("n1"); st != nil || n != 0 || m.s.SyncPrimary != "n2" || m.s.SyncWanted != nil || m.s.SyncStandbys != nil {
		t.Fatalf("sync state after a new primary: %+v %d %q %+v", st, n, m.s.SyncPrimary, m.s.SyncWanted)
	}
}

func TestSystemIDRecordedWithTheFirstPrimary(t *testing.T) {
	m := newMachine(t)
	m.ok(RegisterMember{Name: "n1", RaftAddress: "n1:8300"})
	m.ok(RegisterMember{Name: "n2", RaftAddress: "n2:8300"})
	m.ok(ReportStatus{Node: "n2", Status: NodeStatus{Role: RoleReplica, State: StateRunningReplica, Healthy: true, ReplayedLSN: 5, SystemID: "42"}})
	// A report without a system identifier (PostgreSQL down) keeps the known one.
	m.ok(ReportStatus{Node: "n2", Status: NodeStatus{State: StateStopped}})
	if got := m.s.Members["n2"].Status.SystemID; got != "42" {
		t.Fatalf("system id %q", got)
	}
	m.ok(SetPrimary{Node: "n1", SystemID: "41"})
	if m.s.SystemID != "41" {
		t.Fatalf("cluster system id %q", m.s.SystemID)
	}
	m.ok(SetPrimary{Node: ""})
	m.rejects(SetPrimary{Node: "n2", SystemID: "42"}, ErrConflict)
	m.ok(SetPrimary{Node: "n2", SystemID: "41"})
}

func TestForcedFailoverWithoutCandidate(t *testing.T) {
	m := threeNodes(t)
	m.rejects(RequestFailover{}, ErrInvalid)
	// Even with a primary that last said it was healthy (its node may have gone silent since).
	id := m.ok(RequestFailover{Force: true}).ID
	if op := m.s.Operation; op.ID != id || op.Kind != OpFailover || op.Candidate != "" || !op.Force || m.s.Primary != "" {
		t.Fatalf("op %+v primary %q", op, m.s.Primary)
	}
}

func TestReportWithoutPositionKeepsTheLastKnown(t *testing.T) {
	m := threeNodes(t)
	m.ok(ReportStatus{Node: "n1", Status: NodeStatus{Role: RolePrimary, State: StateStopped, Reason: "down"}})
	st := m.s.Members["n1"].Status
	if st.FlushLSN != 1000 || st.State != StateStopped || st.Healthy {
		t.Fatalf("status %+v", st)
	}
}

func TestReadReplicas(t *testing.T) {
	m := threeNodes(t)
	m.ok(RegisterMember{Name: "n4", RaftAddress: "n4:8300", Tags: Tags{NoLoadBalance: true}})
	m.ok(ReportStatus{Node: "n4", Status: NodeStatus{Role: RoleReplica, State: StateRunningReplica, Healthy: true, ReplayedLSN: 1000}})
	m.ok(ReportStatus{Node: "n3", Status: NodeStatus{Role: RoleReplica, State: StateRunningReplica, Healthy: true, ReplayedLSN: 100}})
	names := func(ms []Member) string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Name)
		}
		return fmt.Sprint(out)
	}
	if got := names(m.s.ReadReplicas(0)); got != "[n2 n3]" {
		t.Fatalf("ReadReplicas(0) = %s", got)
	}
	if got := names(m.s.ReadReplicas(500)); got != "[n2]" { // n3 lags 900 bytes behind n1
		t.Fatalf("ReadReplicas(500) = %s", got)
	}
}
