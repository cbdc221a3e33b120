package fsm

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// Meta is what the log entry, rather than the command body, contributes to applying it.
type Meta struct {
	Index uint64    // Raft log index
	At    time.Time // the leader's clock when it proposed the command
	// Trace, from the log entry's extensions, is given to an operation the command creates.
	Trace *TraceRef
}

// Apply returns the state after cmd, and the result. It is a pure function: the same state,
// command and meta always give the same answer, and s is never modified. A rejected command
// returns s itself and a Result with Err set.
func (s *State) Apply(cmd Command, m Meta) (*State, Result) {
	n := s.clone()
	n.Index = m.Index
	res := n.apply(cmd, m)
	res.Index = m.Index
	if res.Err != nil {
		return s, res
	}
	n.trimDirectives()
	return n, res
}

func (s *State) apply(cmd Command, m Meta) Result {
	switch c := cmd.(type) {
	case LeaderEstablished:
		return s.leaderEstablished(c, m)
	case RegisterMember:
		return s.registerMember(c, m)
	case RemoveMember:
		return s.removeMember(c, m)
	case SetTags:
		mem, ok := s.Members[c.Name]
		if !ok {
			return fail(CodeNotFound, "member %q is not registered", c.Name)
		}
		mem.Tags = c.Tags
		s.Members[c.Name] = mem
		return Result{}
	case ReportStatus:
		return s.reportStatus(c, m)
	case RenewLease:
		return s.renewLease(c, m)
	case IssueDirective:
		return s.issueDirective(c, m)
	case AckDirective:
		return s.ackDirective(c, m)
	case ExpireDirective:
		i := s.directiveIndex(c.ID)
		if i < 0 {
			return fail(CodeNotFound, "directive %d not found", c.ID)
		}
		if s.Directives[i].Finished() {
			return fail(CodeConflict, "directive %d is already %s", c.ID, s.Directives[i].Status)
		}
		s.finishDirective(i, DirectiveExpired, c.Message, m)
		return Result{}
	case StartOperation:
		return s.startOperation(c, m)
	case UpdateOperation:
		return s.updateOperation(c, m)
	case FinishOperation:
		return s.finishOperation(c, m)
	case SetPrimary:
		return s.setPrimary(c, m)
	case SetWritePause:
		if c.Active {
			if s.Operation == nil || s.Operation.ID != c.OperationID {
				return fail(CodeConflict, "operation %d is not in progress", c.OperationID)
			}
			s.WritePause = &WritePause{OperationID: c.OperationID, Reason: c.Reason, Since: m.At, SinceIndex: m.Index}
			return Result{}
		}
		if s.WritePause != nil && (c.OperationID == 0 || s.WritePause.OperationID == c.OperationID) {
			s.WritePause = nil
		}
		return Result{}
	case RequestSwitchover:
		return s.requestSwitchover(c, m)
	case RequestFailover:
		return s.requestFailover(c, m)
	case SetPause:
		s.Paused = c.Paused
		return Result{}
	case SetSyncStandbys:
		nodes, res := s.syncNodes(c.Nodes, "")
		if res.Err != nil {
			return res
		}
		s.SyncStandbys, s.SyncCount = nodes, len(nodes)
		s.SyncPrimary = s.Primary
		if s.SyncPrimary == "" && len(s.History) > 0 {
			s.SyncPrimary = s.History[len(s.History)-1].NewPrimary
		}
		return Result{}
	case SetSyncState:
		return s.setSyncState(c)
	case UpdatePGConfig:
		return s.updatePGConfig(c, m)
	case ReportPGConfig:
		return s.reportPGConfig(c, m)
	case RequestRestart:
		return s.requestRestart(c, false, m)
	case RequestReinit:
		return s.requestRestart(RequestRestart(c), true, m)
	case FinishRestart:
		return s.finishRestart(c, m)
	case ScheduleSwitchover:
		return s.scheduleSwitchover(c, m)
	case CancelScheduledSwitchover:
		return s.cancelScheduledSwitchover(c, m)
	case SetPGHBA:
		return s.setPGHBA(c, m)
	case ReportPGHBA:
		return s.reportPGHBA(c, m)
	case RequestReload:
		return s.requestReload(m)
	case ReportReload:
		return s.reportReload(c, m)
	}
	return fail(CodeInvalid, "unhandled command %T", cmd)
}

// syncNodes returns nodes sorted and without duplicates, or a rejection when one is not a
// member or is primary.
func (s *State) syncNodes(nodes []string, primary string) ([]string, Result) {
	nodes = slices.Clone(nodes)
	slices.Sort(nodes)
	nodes = slices.Compact(nodes)
	for _, n := range nodes {
		if _, ok := s.Members[n]; !ok {
			return nil, fail(CodeNotFound, "member %q is not registered", n)
		}
		if n == primary {
			return nil, fail(CodeInvalid, "%q is the primary, not a standby", n)
		}
	}
	return nodes, Result{}
}

func (s *State) setSyncState(c SetSyncState) Result {
	if c.Primary == "" || c.Primary != s.Primary {
		return fail(CodeConflict, "synchronous state for %q, but the primary is %q", c.Primary, s.Primary)
	}
	nodes, res := s.syncNodes(c.Standbys, c.Primary)
	if res.Err != nil {
		return res
	}
	if c.Count < 0 || c.Count > len(nodes) {
		return fail(CodeInvalid, "synchronous count %d for %d standbys", c.Count, len(nodes))
	}
	var wanted *SyncTarget
	if w := c.Wanted; w != nil {
		if w.Primary != c.Primary {
			return fail(CodeInvalid, "wanted synchronous configuration is for %q, not %q", w.Primary, c.Primary)
		}
		ws, res := s.syncNodes(w.Standbys, c.Primary)
		if res.Err != nil {
			return res
		}
		if w.Count < 0 || w.Count > len(ws) {
			return fail(CodeInvalid, "wanted synchronous count %d for %d standbys", w.Count, len(ws))
		}
		wanted = &SyncTarget{Primary: w.Primary, Standbys: w.Standbys, Count: w.Count, Value: w.Value}
	}
	s.SyncPrimary, s.SyncStandbys, s.SyncCount = c.Primary, nodes, c.Count
	if wanted != nil {
		s.SyncWanted = wanted
	}
	return Result{}
}

func fail(code ErrorCode, format string, args ...any) Result {
	return Result{Err: newErr(code, fmt.Sprintf(format, args...))}
}

func (s *State) leaderEstablished(c LeaderEstablished, m Meta) Result {
	s.Epoch++
	s.EpochIndex = m.Index
	s.EpochLeader = c.Leader
	for i := range s.Directives {
		if d := s.Directives[i]; !d.Finished() && d.Epoch < s.Epoch {
			s.finishDirective(i, DirectiveSuperseded, fmt.Sprintf("superseded: epoch %d began", s.Epoch), m)
		}
	}
	return Result{ID: s.Epoch}
}

func (s *State) registerMember(c RegisterMember, m Meta) Result {
	if c.Name == "" || c.RaftAddress == "" {
		return fail(CodeInvalid, "a member needs a name and a raft address")
	}
	mem, ok := s.Members[c.Name]
	if !ok {
		mem = Member{Name: c.Name, RegisteredAt: m.At, Status: NodeStatus{State: StateInitializing}}
		s.Departed = slices.DeleteFunc(s.Departed, func(d Member) bool { return d.Name == c.Name })
	}
	mem.RaftAddress = c.RaftAddress
	mem.APIAddress = c.APIAddress
	mem.ProxyRWAddress = c.ProxyRWAddress
	mem.ProxyROAddress = c.ProxyROAddress
	mem.PGHost = c.PGHost
	mem.PGPort = c.PGPort
	mem.Tags = c.Tags
	s.Members[c.Name] = mem
	return Result{}
}

func (s *State) removeMember(c RemoveMember, m Meta) Result {
	mem, ok := s.Members[c.Name]
	if !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Name)
	}
	if s.Primary == c.Name {
		return fail(CodePrecondition, "member %q is the primary: switch over first", c.Name)
	}
	if op := s.Operation; op != nil && (op.Candidate == c.Name || op.OldPrimary == c.Name) {
		return fail(CodeConflict, "member %q takes part in operation %d", c.Name, op.ID)
	}
	delete(s.Members, c.Name)
	s.Departed = append(s.Departed, mem)
	if len(s.Departed) > maxDeparted {
		s.Departed = s.Departed[len(s.Departed)-maxDeparted:]
	}
	// Every acknowledged transaction is on SyncCount of SyncStandbys, so on one fewer of the
	// others.
	if i := slices.Index(s.SyncStandbys, c.Name); i >= 0 {
		s.SyncStandbys = slices.Delete(s.SyncStandbys, i, i+1)
		s.SyncCount = max(0, min(s.SyncCount-1, len(s.SyncStandbys)))
	}
	for i, d := range s.Directives {
		if d.Target == c.Name && !d.Finished() {
			s.finishDirective(i, DirectiveExpired, "member removed", m)
		}
	}
	for i, r := range s.Restarts {
		if r.Node == c.Name && r.Status == RestartPending {
			s.Restarts[i].Status, s.Restarts[i].Message, s.Restarts[i].FinishedAt = RestartFailed, "member removed", m.At
		}
	}
	s.forgetPGHBANode(c.Name)
	if pc := s.PGConfig; pc != nil {
		if _, ok := pc.Nodes[c.Name]; ok {
			n := *pc
			n.Nodes = maps.Clone(pc.Nodes)
			delete(n.Nodes, c.Name)
			s.PGConfig = &n
		}
	}
	return Result{}
}

func validRole(r Role) bool {
	return r == RoleUnknown || r == RolePrimary || r == RoleReplica
}

func validState(st NodeState) bool {
	switch st {
	case StateInitializing, StateRunningPrimary, StateRunningReplica, StatePromoting,
		StateDemoting, StateFenced, StateStopped:
		return true
	}
	return false
}

func (s *State) reportStatus(c ReportStatus, m Meta) Result {
	mem, ok := s.Members[c.Node]
	if !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Node)
	}
	if !validRole(c.Status.Role) || !validState(c.Status.State) {
		return fail(CodeInvalid, "invalid role %q or state %q", c.Status.Role, c.Status.State)
	}
	st := c.Status
	if st.SystemID == "" {
		st.SystemID = mem.Status.SystemID
	}
	if st.Position() == 0 {
		// PostgreSQL is down or unreadable: keep the last known WAL positions, which the
		// controller needs to judge how much a failover would lose.
		st.FlushLSN, st.ReceivedLSN, st.ReplayedLSN = mem.Status.FlushLSN, mem.Status.ReceivedLSN, mem.Status.ReplayedLSN
		if st.Timeline == 0 {
			st.Timeline = mem.Status.Timeline
		}
	}
	st.ReportedAt = m.At
	st.ReportIndex = m.Index
	st.LagBytes = 0
	if p, ok := s.Members[s.Primary]; ok && s.Primary != c.Node && st.Role == RoleReplica {
		st.LagBytes = p.Status.FlushLSN.Sub(st.ReplayedLSN)
	}
	mem.Status = st
	s.Members[c.Node] = mem
	return Result{}
}

func (s *State) renewLease(c RenewLease, m Meta) Result {
	mem, ok := s.Members[c.Node]
	if !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Node)
	}
	l := &mem.Lease
	l.RenewedAt = m.At
	l.RenewedIndex = m.Index
	l.Routing = c.Routing
	l.Granted = s.Primary
	if s.Primary != "" {
		l.GrantPrimary = s.Primary
		l.GrantAt = m.At
		l.GrantIndex = m.Index
	}
	s.Members[c.Node] = mem
	return Result{Primary: s.Primary}
}

func (s *State) directiveIndex(id uint64) int {
	for i, d := range s.Directives {
		if d.ID == id {
			return i
		}
	}
	return -1
}

func (s *State) issueDirective(c IssueDirective, m Meta) Result {
	if _, ok := s.Members[c.Target]; !ok {
		return fail(CodeNotFound, "directive target %q is not registered", c.Target)
	}
	switch c.Type {
	case DirectiveFence, DirectivePromote, DirectiveCheckpoint:
	case DirectiveDemote:
		if _, ok := s.Members[c.Params.Upstream]; !ok || c.Params.Upstream == c.Target {
			return fail(CodeInvalid, "DEMOTE of %q needs another member as upstream, got %q", c.Target, c.Params.Upstream)
		}
	default:
		return fail(CodeInvalid, "unknown directive type %q", c.Type)
	}
	if id := c.Params.OperationID; id != 0 && (s.Operation == nil || s.Operation.ID != id) {
		return fail(CodeConflict, "operation %d is not in progress", id)
	}
	for _, d := range s.Directives {
		if !d.Finished() && d.Target == c.Target && d.Type == c.Type && d.Params.OperationID == c.Params.OperationID {
			return fail(CodeConflict, "%s directive %d for %q is already pending", d.Type, d.ID, d.Target)
		}
	}
	d := Directive{
		ID: s.NextDirectiveID, Type: c.Type, Target: c.Target, Params: c.Params,
		Epoch: s.Epoch, IssuedAt: m.At, IssuedIndex: m.Index, Status: DirectivePending,
	}
	s.NextDirectiveID++
	s.Directives = append(s.Directives, d)
	return Result{ID: d.ID}
}

func (s *State) ackDirective(c AckDirective, m Meta) Result {
	i := s.directiveIndex(c.ID)
	if i < 0 {
		return fail(CodeNotFound, "directive %d not found", c.ID)
	}
	d := s.Directives[i]
	if d.Target != c.Node {
		return fail(CodeInvalid, "directive %d is addressed to %q, not %q", c.ID, d.Target, c.Node)
	}
	if d.Finished() {
		return fail(CodeConflict, "directive %d is already %s", c.ID, d.Status)
	}
	if d.Epoch < s.Epoch {
		return fail(CodeStaleEpoch, "directive %d is from epoch %d, current epoch is %d", c.ID, d.Epoch, s.Epoch)
	}
	status := DirectiveFailed
	if c.Success {
		status = DirectiveDone
	}
	s.Directives[i].Result = c.Result
	s.finishDirective(i, status, c.Message, m)
	if c.Success && (d.Type == DirectiveFence || d.Type == DirectiveDemote) {
		if mem, ok := s.Members[d.Target]; ok {
			mem.Lease.ReleaseIndex = m.Index
			s.Members[d.Target] = mem
		}
	}
	return Result{}
}

func (s *State) finishDirective(i int, st DirectiveStatus, msg string, m Meta) {
	d := &s.Directives[i]
	d.Status = st
	d.Message = msg
	d.FinishedAt = m.At
	d.FinishedIndex = m.Index
}

// trimDirectives keeps every pending directive and the newest maxFinishedDirectives finished
// ones, in ID order.
func (s *State) trimDirectives() {
	finished := 0
	for _, d := range s.Directives {
		if d.Finished() {
			finished++
		}
	}
	drop := finished - maxFinishedDirectives
	if drop <= 0 {
		return
	}
	s.Directives = slices.DeleteFunc(s.Directives, func(d Directive) bool {
		if drop > 0 && d.Finished() {
			drop--
			return true
		}
		return false
	})
}

func (s *State) newOperation(kind OperationKind, reason string, m Meta) *Operation {
	op := &Operation{
		ID: s.NextOperationID, Kind: kind, Reason: reason,
		StartedAt: m.At, StartedIndex: m.Index, PhaseAt: m.At, PhaseIndex: m.Index,
	}
	if m.Trace != nil {
		t := *m.Trace
		op.Trace = &t
	}
	s.NextOperationID++
	s.Operation = op
	return op
}

func (s *State) depose(m Meta) {
	if s.Primary == "" {
		return
	}
	s.Primary = ""
	s.PrimarySince = m.At
	s.PrimaryIndex = m.Index
}

func (s *State) startOperation(c StartOperation, m Meta) Result {
	if s.Operation != nil {
		return fail(CodeConflict, "operation %d (%s) is in progress", s.Operation.ID, s.Operation.Kind)
	}
	if c.Kind != OpFailover {
		return fail(CodeInvalid, "only a failover can be started directly, not %q", c.Kind)
	}
	if s.Primary != "" && c.OldPrimary != s.Primary {
		return fail(CodeConflict, "old primary %q is not the primary (%q)", c.OldPrimary, s.Primary)
	}
	op := s.newOperation(OpFailover, c.Reason, m)
	op.Phase = PhaseElecting
	op.OldPrimary = c.OldPrimary
	s.depose(m)
	return Result{ID: op.ID}
}

func (s *State) updateOperation(c UpdateOperation, m Meta) Result {
	op := s.Operation
	if op == nil || op.ID != c.ID {
		return fail(CodeConflict, "operation %d is not in progress", c.ID)
	}
	if c.Phase != "" && c.Phase != op.Phase {
		if c.Phase == PhaseDone || c.Phase == PhaseFailed {
			return fail(CodeInvalid, "use FinishOperation to end operation %d", c.ID)
		}
		op.Phase = c.Phase
		op.PhaseAt = m.At
		op.PhaseIndex = m.Index
	}
	if c.Candidate != nil {
		op.Candidate = *c.Candidate
	}
	if c.FinalLSN != nil {
		op.FinalLSN = *c.FinalLSN
	}
	if c.MayLoseBytes != nil {
		op.MayLoseBytes = *c.MayLoseBytes
	}
	if c.MayLose != nil {
		op.MayLose = *c.MayLose
	}
	if c.Exclude != "" && !slices.Contains(op.Excluded, c.Exclude) {
		op.Excluded = append(op.Excluded, c.Exclude)
	}
	if c.Message != nil {
		op.Message = *c.Message
	}
	return Result{}
}

func (s *State) finishOperation(c FinishOperation, m Meta) Result {
	op := s.Operation
	if op == nil || op.ID != c.ID {
		return fail(CodeConflict, "operation %d is not in progress", c.ID)
	}
	if c.Success {
		op.Phase = PhaseDone
		op.NewPrimary = s.Primary
	} else {
		op.Phase = PhaseFailed
	}
	op.PhaseAt, op.PhaseIndex = m.At, m.Index
	op.Message = c.Message
	op.FinishedAt = m.At
	s.Operations = append(s.Operations, *op)
	if len(s.Operations) > maxFinishedOperations {
		s.Operations = s.Operations[len(s.Operations)-maxFinishedOperations:]
	}
	s.Operation = nil
	if s.WritePause != nil && s.WritePause.OperationID == c.ID {
		s.WritePause = nil
	}
	return Result{}
}

func (s *State) setPrimary(c SetPrimary, m Meta) Result {
	if id := c.OperationID; id != 0 && (s.Operation == nil || s.Operation.ID != id) {
		return fail(CodeConflict, "operation %d is not in progress", id)
	}
	if c.Node == "" {
		s.depose(m)
		return Result{}
	}
	if _, ok := s.Members[c.Node]; !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Node)
	}
	if c.SystemID != "" && s.SystemID != "" && c.SystemID != s.SystemID {
		return fail(CodeConflict, "%q runs a database with system identifier %s, not the cluster's %s", c.Node, c.SystemID, s.SystemID)
	}
	if s.SystemID == "" {
		s.SystemID = c.SystemID
	}
	if s.Primary == c.Node {
		return Result{}
	}
	if s.Primary != "" {
		return fail(CodeConflict, "%q is the primary: depose it first", s.Primary)
	}
	// Nothing is synchronous with a new primary yet.
	s.SyncPrimary, s.SyncStandbys, s.SyncCount, s.SyncWanted = c.Node, nil, 0, nil
	h := HistoryEntry{At: m.At, Index: m.Index, NewPrimary: c.Node, Timeline: c.Timeline, LSN: c.LSN, Reason: c.Reason}
	if op := s.Operation; op != nil {
		h.OldPrimary, h.Kind, h.OperationID = op.OldPrimary, op.Kind, op.ID
	}
	s.History = append(s.History, h)
	if len(s.History) > maxHistory {
		s.History = s.History[len(s.History)-maxHistory:]
	}
	s.Primary = c.Node
	s.PrimarySince = m.At
	s.PrimaryIndex = m.Index
	return Result{}
}

// HealthyReplica reports why mem cannot be a switchover or failover target, or "".
func HealthyReplica(mem Member) string {
	switch {
	case !mem.Tags.Promotable():
		return "its tags forbid promotion (nofailover or failover_priority 0)"
	case mem.Status.Role != RoleReplica || !mem.Status.Healthy:
		return fmt.Sprintf("it is not a healthy replica (role %q, state %s)", mem.Status.Role, mem.Status.State)
	}
	return ""
}

// leaderIsPrimary refuses a switchover request whose leader is not the primary.
func (s *State) leaderIsPrimary(leader string) Result {
	if s.Primary == "" {
		return fail(CodePrecondition, "the cluster has no primary")
	}
	if leader != s.Primary {
		return fail(CodePrecondition, "leader name does not match: the primary is %q", s.Primary)
	}
	return Result{}
}

// candidateMember returns a switchover's candidate, refusing one that is the leader or no
// member; an empty candidate (the controller chooses) passes with no record.
func (s *State) candidateMember(leader, candidate string) (Member, Result) {
	if candidate == leader {
		return Member{}, fail(CodeInvalid, "candidate %q is already the primary", candidate)
	}
	if candidate == "" {
		return Member{}, Result{}
	}
	mem, ok := s.Members[candidate]
	if !ok {
		return Member{}, fail(CodePrecondition, "candidate %q does not exist", candidate)
	}
	return mem, Result{}
}

func (s *State) requestSwitchover(c RequestSwitchover, m Meta) Result {
	if res := s.leaderIsPrimary(c.Leader); res.Err != nil {
		return res
	}
	if s.Operation != nil {
		return fail(CodeConflict, "operation %d (%s) is in progress", s.Operation.ID, s.Operation.Kind)
	}
	if res := s.scheduleBlocks(m); res.Err != nil {
		return res
	}
	mem, res := s.candidateMember(c.Leader, c.Candidate)
	if res.Err != nil {
		return res
	}
	if c.Candidate != "" {
		if why := HealthyReplica(mem); why != "" {
			return fail(CodePrecondition, "candidate %q cannot be promoted: %s", c.Candidate, why)
		}
	} else {
		if s.Paused {
			return fail(CodeInvalid, "switchover in pause mode needs a candidate")
		}
		good := false
		for _, mem := range s.Members {
			if mem.Name != c.Leader && HealthyReplica(mem) == "" {
				good = true
			}
		}
		if !good {
			return fail(CodePrecondition, "no good candidates")
		}
	}
	reason := "switchover requested"
	sch := s.ScheduledSwitchover
	if sch != nil {
		reason = describeSchedule(sch)
	}
	op := s.newOperation(OpSwitchover, reason, m)
	op.Phase = PhaseCheckpoint
	op.OldPrimary = c.Leader
	op.Candidate = c.Candidate
	op.Requested = true
	if sch != nil {
		s.endSchedule(fmt.Sprintf("started as operation %d", op.ID), op.ID, m)
	}
	return Result{ID: op.ID}
}

func (s *State) requestFailover(c RequestFailover, m Meta) Result {
	if c.Candidate == "" && !c.Force {
		return fail(CodeInvalid, "failover needs a candidate (or force, to let the controller choose one that may lose data)")
	}
	var mem Member
	if c.Candidate != "" {
		var ok bool
		if mem, ok = s.Members[c.Candidate]; !ok {
			return fail(CodePrecondition, "candidate %q does not exist", c.Candidate)
		}
		if !mem.Tags.Promotable() {
			return fail(CodePrecondition, "candidate %q cannot be promoted: its tags forbid promotion", c.Candidate)
		}
		if s.Primary == c.Candidate {
			return fail(CodeInvalid, "candidate %q is already the primary", c.Candidate)
		}
	}
	if op := s.Operation; op != nil {
		// A failover still looking for a candidate adopts the operator's choice.
		if op.Kind == OpFailover && op.Phase == PhaseElecting {
			op.Candidate, op.Force, op.Requested = c.Candidate, c.Force, true
			op.Message = fmt.Sprintf("operator chose %q", c.Candidate)
			if c.Candidate == "" {
				op.Message = "operator forced a failover"
			}
			return Result{ID: op.ID}
		}
		return fail(CodeConflict, "operation %d (%s) is in progress", op.ID, op.Kind)
	}
	if p, ok := s.Members[s.Primary]; ok && !c.Force && p.Status.Healthy && p.Status.Role == RolePrimary && p.Status.State == StateRunningPrimary {
		// With a primary that last reported itself healthy, a failover is a switchover:
		// graceful, nothing lost. (Force always fails over: the operator may know better than
		// a last report, of a node that has since gone silent, say.)
		if why := HealthyReplica(mem); why != "" {
			return fail(CodePrecondition, "candidate %q cannot be promoted: %s", c.Candidate, why)
		}
		op := s.newOperation(OpSwitchover, "failover requested with a primary in place", m)
		op.Phase = PhaseCheckpoint
		op.OldPrimary = s.Primary
		op.Candidate = c.Candidate
		op.Requested, op.Force = true, c.Force
		return Result{ID: op.ID}
	}
	// No primary, one that reports trouble, or force: depose it and fail over to the candidate.
	op := s.newOperation(OpFailover, "failover requested", m)
	op.Phase = PhaseElecting
	op.OldPrimary = s.Primary
	if op.OldPrimary == "" && len(s.History) > 0 {
		op.OldPrimary = s.History[len(s.History)-1].NewPrimary
	}
	s.depose(m)
	op.Candidate = c.Candidate
	op.Requested, op.Force = true, c.Force
	return Result{ID: op.ID}
}
