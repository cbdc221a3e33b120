package controller

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// Config is the part of the failover configuration the controller decides with. Package ha
// builds it from ha.FailoverConfig, which validates the timings.
type Config struct {
	// FencingEnabled: FENCE the old primary before promoting a replica (invariant 3).
	FencingEnabled bool
	// LeaseTimeout is the nodes' lease_timeout. Nodes renew every LeaseTimeout/4; a candidate
	// that renewed nothing for LeaseTimeout/2 is considered unreachable and is not promoted.
	LeaseTimeout time.Duration
	// PrimaryTimeout (F): a primary that has renewed no lease for this long is lost, and a node
	// whose last lease grant is this old can no longer be routing writes. ha.Config.Validate
	// guarantees it exceeds the lease timeout with a margin for clock drift.
	PrimaryTimeout time.Duration
	// MaxLagOnFailover: an automatic failover never promotes a replica further than this many
	// bytes behind the best known WAL position.
	MaxLagOnFailover uint64
	// DirectiveTimeout: a directive not acknowledged in this time is expired.
	DirectiveTimeout time.Duration
	// SwitchoverTimeout bounds a switchover (and a requested failover whose candidate never
	// becomes eligible).
	SwitchoverTimeout time.Duration
	// DrainTimeout bounds how long a switchover waits, with writes paused, for the proxies'
	// in-flight write transactions to finish before it demotes the primary.
	DrainTimeout time.Duration
	// SynchronousMode is "off", "on" or "quorum". In the latter two the controller manages the
	// primary's synchronous_standby_names and only a standby the synchronous record proves to
	// hold every acknowledged transaction may be promoted automatically (invariant 4).
	SynchronousMode string
	// SyncNodeCount is synchronous_node_count: how many standbys must confirm a commit (at
	// most; fewer when fewer are healthy).
	SyncNodeCount int
	// SyncStrict: never let the primary acknowledge commits without a standby (writes block
	// rather than fall back to asynchronous replication).
	SyncStrict bool
}

func (c Config) syncMode() bool { return c.SynchronousMode == "on" || c.SynchronousMode == "quorum" }

func (st *step) syncMode() bool { return st.cfg.syncMode() }

// Observations is what the controller's shell knows besides the replicated state.
type Observations struct {
	// Now is the leader's clock.
	Now time.Time
	// LeaderSince is when this leader's epoch began on its own clock (after its
	// LeaderEstablished command was applied). Times in the state stamped before then came
	// from another node's clock, so the controller measures their age from LeaderSince.
	LeaderSince time.Time
}

// Decision is the output of one Step.
type Decision struct {
	// Commands to apply, in order, through Raft. The shell applies them and calls Step again.
	Commands []fsm.Command
	// Waiting explains, when not empty, what the cluster is waiting for.
	Waiting string
	// WakeAt, when not zero, is the earliest time at which the passing of time alone could
	// change the decision; the shell calls Step again then, or sooner if the state changes.
	WakeAt time.Time
}

func (d *Decision) wake(t time.Time) {
	if d.WakeAt.IsZero() || t.Before(d.WakeAt) {
		d.WakeAt = t
	}
}

func (d *Decision) wait(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if d.Waiting == "" {
		d.Waiting = msg
	} else {
		d.Waiting += "; " + msg
	}
}

func (d *Decision) add(cmds ...fsm.Command) { d.Commands = append(d.Commands, cmds...) }

// step carries one evaluation.
type step struct {
	s   *fsm.State
	obs Observations
	cfg Config
	d   Decision
}

// Step decides what the leader should do next. It is a pure function of its arguments.
//
// In order of precedence it: expires directives that outlived DirectiveTimeout; drives the
// operation in progress (failover or switchover) one phase; starts a failover when the primary
// is lost (its agent silent for PrimaryTimeout, or its PostgreSQL reported unhealthy) and
// automatic failover is not paused; and tells replicas that do not follow the primary, and
// fenced or rogue primaries, to follow it (DEMOTE).
func Step(s *fsm.State, obs Observations, cfg Config) Decision {
	st := &step{s: s, obs: obs, cfg: cfg}
	if st.expireDirectives() {
		return st.d
	}
	if op := s.Operation; op != nil {
		st.driveOperation(*op)
		return st.d
	}
	if st.checkPrimary() {
		return st.d
	}
	if st.scheduledSwitchover() {
		return st.d
	}
	st.reconcileFollowers()
	st.manageSync()
	return st.d
}

// scheduledSwitchover requests the booked switchover once its time has come. The request is
// first tried on the state (Apply is pure): one the state machine would refuse (the primary
// changed since, the candidate is gone or unhealthy, another operation runs) cancels the
// booking with the reason instead, as Patroni does, rather than firing later at a moment
// nobody chose. Before its time, it only sets the wake-up.
func (st *step) scheduledSwitchover() bool {
	sch := st.s.ScheduledSwitchover
	if sch == nil {
		return false
	}
	if st.obs.Now.Before(sch.At) {
		st.d.wake(sch.At)
		return false
	}
	req := fsm.RequestSwitchover{Leader: sch.Leader, Candidate: sch.Candidate}
	if _, res := st.s.Apply(req, fsm.Meta{Index: st.s.Index + 1, At: st.obs.Now}); res.Err != nil {
		st.d.add(fsm.CancelScheduledSwitchover{Reason: "not started at its time: " + res.Err.Message})
		return true
	}
	st.d.add(req)
	return true
}

// anchor returns the time from which to measure the age of a timestamp stamped into the
// command at log index idx: the timestamp itself if this leader stamped it, otherwise the
// start of this leader's epoch, which is later than any earlier leader's commit (a new leader
// is elected only after the entries it carries were committed by their old leader).
func (st *step) anchor(at time.Time, idx uint64) time.Time {
	if idx >= st.s.EpochIndex && !at.IsZero() {
		return at
	}
	return st.obs.LeaderSince
}

// recent reports whether a time stamped at log index idx is less than d ago, as positive
// evidence of liveness: a time stamped before this epoch is of unknown age and never counts.
// (Safety waits use elapsed instead, which assumes the latest possible time.)
func (st *step) recent(at time.Time, idx uint64, d time.Duration) bool {
	if idx < st.s.EpochIndex || at.IsZero() {
		return false
	}
	deadline := at.Add(d)
	if st.obs.Now.Before(deadline) {
		st.d.wake(deadline)
		return true
	}
	return false
}

func (st *step) elapsed(at time.Time, idx uint64, d time.Duration) (bool, time.Time) {
	deadline := st.anchor(at, idx).Add(d)
	return !st.obs.Now.Before(deadline), deadline
}

func (st *step) expireDirectives() bool {
	expired := false
	for _, d := range st.s.Directives {
		if d.Finished() {
			continue
		}
		if ok, deadline := st.elapsed(d.IssuedAt, d.IssuedIndex, st.cfg.DirectiveTimeout); ok {
			st.d.add(fsm.ExpireDirective{ID: d.ID, Message: fmt.Sprintf("not acknowledged within %s", st.cfg.DirectiveTimeout)})
			expired = true
		} else {
			st.d.wake(deadline)
		}
	}
	return expired
}

// fresh reports whether a member's last status report is recent enough to act on: sent in
// this epoch, less than PrimaryTimeout ago.
func (st *step) fresh(m fsm.Member) bool {
	return m.Status.ReportIndex != 0 && st.recent(m.Status.ReportedAt, m.Status.ReportIndex, st.cfg.PrimaryTimeout)
}

// reachable reports whether a member renewed its lease in this epoch, within LeaseTimeout/2: it
// is alive and in contact with the Raft majority right now, not just a few moments ago.
func (st *step) reachable(m fsm.Member) bool {
	return m.Lease.RenewedIndex != 0 && st.recent(m.Lease.RenewedAt, m.Lease.RenewedIndex, st.cfg.LeaseTimeout/2)
}

// lastDirective returns the newest directive of type t to target, for operation op (0: any).
func (st *step) lastDirective(t fsm.DirectiveType, target string, op uint64) (fsm.Directive, bool) {
	for i := len(st.s.Directives) - 1; i >= 0; i-- {
		d := st.s.Directives[i]
		if d.Type == t && d.Target == target && (op == 0 || d.Params.OperationID == op) {
			return d, true
		}
	}
	return fsm.Directive{}, false
}

func (st *step) hasPending(target string) bool {
	return len(st.s.PendingDirectives(target)) > 0
}

// restartRequested reports whether an operator's restart (or reinitialisation) of name's
// PostgreSQL is pending: its agent is carrying it out.
func (st *step) restartRequested(name string) bool {
	for _, r := range st.s.Restarts {
		if r.Node == name && r.Status == fsm.RestartPending {
			return true
		}
	}
	return false
}

// checkPrimary starts a failover when there is no primary or it is lost. It reports whether
// it decided anything.
func (st *step) checkPrimary() bool {
	s := st.s
	if s.Primary == "" && len(s.History) == 0 {
		return st.adopt()
	}
	old, reason := s.Primary, ""
	if s.Primary == "" {
		old, reason = st.lastPrimary(), "no primary"
	} else {
		reason = st.primaryLost(s.Primary)
	}
	if reason == "" {
		return false
	}
	if s.Paused {
		st.d.wait("%s, but automatic failover is paused", reason)
		return true
	}
	if r := st.rank(old, nil, false, liveData{}); r.best == "" {
		st.d.wait("%s, and no replica can be promoted: %s", reason, r.why())
		return true
	}
	st.d.add(fsm.StartOperation{Kind: fsm.OpFailover, Reason: reason, OldPrimary: old})
	return true
}

// lastPrimary is the most recent primary in the history that is still a member, or "".
func (st *step) lastPrimary() string {
	for i := len(st.s.History) - 1; i >= 0; i-- {
		if _, ok := st.s.Members[st.s.History[i].NewPrimary]; ok {
			return st.s.History[i].NewPrimary
		}
	}
	return ""
}

// primaryLost returns why the current primary is lost, or "": it renewed no lease for
// PrimaryTimeout, or a report since it became primary says PostgreSQL is down, fenced or not a
// primary.
func (st *step) primaryLost(name string) string {
	s := st.s
	p, ok := s.Members[name]
	if !ok {
		return fmt.Sprintf("primary %q is not a member", name)
	}
	proof, proofIdx := s.PrimarySince, s.PrimaryIndex
	if p.Lease.RenewedIndex > proofIdx {
		proof, proofIdx = p.Lease.RenewedAt, p.Lease.RenewedIndex
	}
	if silent, deadline := st.elapsed(proof, proofIdx, st.cfg.PrimaryTimeout); silent {
		return fmt.Sprintf("primary %q renewed no lease for %s", name, st.cfg.PrimaryTimeout)
	} else {
		st.d.wake(deadline)
	}
	if p.Status.ReportIndex > s.PrimaryIndex {
		if why := primaryProblem(p.Status); why != "" {
			return fmt.Sprintf("primary %q: %s", name, why)
		}
	}
	return ""
}

// adopt names the first primary of a new cluster: the one member that reports a running,
// healthy primary. A cluster that never had a primary never elects a replica on its own: the
// node that ran initdb may simply not have reported yet, and promoting its clone would fork the
// data. An operator can still force one (RequestFailover).
func (st *step) adopt() bool {
	var primaries []string
	for _, name := range st.s.MemberNames() {
		m := st.s.Members[name]
		if m.Status.Role == fsm.RolePrimary && st.fresh(m) {
			primaries = append(primaries, name)
		}
	}
	if len(primaries) != 1 {
		st.d.wait("new cluster: waiting for exactly one member to report a running primary (have %d: %s)",
			len(primaries), strings.Join(primaries, ", "))
		return true
	}
	m := st.s.Members[primaries[0]]
	if !m.Status.Healthy || m.Status.State != fsm.StateRunningPrimary {
		st.d.wait("new cluster: %q runs as a primary but is not healthy", m.Name)
		return true
	}
	st.d.add(fsm.SetPrimary{Node: m.Name, Reason: "bootstrap: adopted the running primary",
		Timeline: m.Status.Timeline, LSN: m.Status.FlushLSN, SystemID: m.Status.SystemID})
	return true
}

func primaryProblem(ns fsm.NodeStatus) string {
	switch {
	case ns.State == fsm.StateFenced:
		return "fenced: " + ns.Reason
	case !ns.Healthy:
		if ns.Reason != "" {
			return "postgresql is down: " + ns.Reason
		}
		return "postgresql is down"
	case ns.Role != fsm.RolePrimary:
		return fmt.Sprintf("postgresql runs as %q", ns.Role)
	}
	return ""
}

// liveData says which status reports carry positions the replicas hold now: those applied
// after index idx (the failover began, or its FENCE was acknowledged). Until deadline the
// decision waits for members that could be candidates to report; after it, members that did
// not count as unheard.
type liveData struct {
	idx      uint64
	deadline time.Time
	passed   bool
}

// ranking is what rank found.
type ranking struct {
	best     string
	rejected []string
	// pending: members that could be candidates but have not reported since live.idx.
	pending []string
}

func (r ranking) why() string {
	if len(r.rejected) == 0 {
		return "no other members"
	}
	return strings.Join(r.rejected, "; ")
}

// rank finds the best candidate to promote instead of old. Eligible: a fresh, healthy,
// running replica whose tags allow promotion and, unless force: in synchronous modes one that
// the synchronous standby record proves holds every acknowledged transaction (syncProblem),
// otherwise one within MaxLagOnFailover of the best known position. Ties on WAL position go to
// the higher failover_priority, then to the lower name. With live.idx set, positions must come
// from reports applied after it, and rank waits (pending) for members that have not sent one.
func (st *step) rank(old string, excluded []string, force bool, live liveData) ranking {
	type cand struct {
		name string
		pos  fsm.LSN
		prio int
	}
	var r ranking
	var cands []cand
	ref := st.bestKnown(old)
	for _, name := range st.s.MemberNames() {
		if name == old {
			continue
		}
		m := st.s.Members[name]
		if why := st.ineligible(m, excluded); why != "" {
			r.rejected = append(r.rejected, name+": "+why)
			continue
		}
		if live.idx > 0 && m.Status.ReportIndex <= live.idx {
			if !live.passed {
				r.pending = append(r.pending, name)
				continue
			}
			r.rejected = append(r.rejected, name+": no status report since the primary was deposed")
			continue
		}
		cands = append(cands, cand{name, m.Status.Position(), m.Tags.FailoverPriority})
	}
	if len(r.pending) > 0 {
		return r
	}
	var ok []cand
	for _, c := range cands {
		if force {
			ok = append(ok, c)
			continue
		}
		if st.syncMode() {
			// The record proves the candidate holds every acknowledged transaction; WAL beyond
			// that was never acknowledged, so maximum_lag_on_failover does not apply.
			if why := st.syncProblem(old, c.name, live.idx); why != "" {
				r.rejected = append(r.rejected, c.name+": "+why)
				continue
			}
		} else if lag := ref.Sub(c.pos); lag > st.cfg.MaxLagOnFailover {
			r.rejected = append(r.rejected, fmt.Sprintf("%s: %d bytes behind the best known position %s (maximum_lag_on_failover %d)",
				c.name, lag, ref, st.cfg.MaxLagOnFailover))
			continue
		}
		ok = append(ok, c)
	}
	if len(ok) == 0 {
		return r
	}
	slices.SortFunc(ok, func(a, b cand) int {
		switch {
		case a.pos != b.pos:
			if a.pos > b.pos {
				return -1
			}
			return 1
		case a.prio != b.prio:
			return b.prio - a.prio
		}
		return strings.Compare(a.name, b.name)
	})
	r.best = ok[0].name
	return r
}

func (st *step) ineligible(m fsm.Member, excluded []string) string {
	if why := st.unfit(m, excluded); why != "" {
		return why
	}
	return st.unheard(m)
}

// unheard says why a member cannot be counted alive right now, or "".
func (st *step) unheard(m fsm.Member) string {
	switch {
	case !st.fresh(m):
		return "no recent status report"
	case !st.reachable(m):
		return "renewed no lease recently (unreachable?)"
	}
	return ""
}

// settling reports whether this leader began its epoch less than PrimaryTimeout ago: the nodes
// may not have reported or renewed in the new epoch yet, so their silence proves nothing. A
// decision already under way waits rather than give up on a node for that reason.
func (st *step) settling() bool {
	end := st.obs.LeaderSince.Add(st.cfg.PrimaryTimeout)
	if st.obs.Now.Before(end) {
		st.d.wake(end)
		return true
	}
	return false
}

// unfit says why a member's last known state rules it out as a candidate, or "".
func (st *step) unfit(m fsm.Member, excluded []string) string {
	switch {
	case slices.Contains(excluded, m.Name):
		return "its promotion failed in this operation"
	case !m.Tags.Promotable():
		return "tags forbid promotion"
	case !m.Status.Healthy || m.Status.Role != fsm.RoleReplica || m.Status.State != fsm.StateRunningReplica:
		return fmt.Sprintf("not a healthy running replica (%s)", m.Status.State)
	case st.foreign(m):
		return fmt.Sprintf("its data directory belongs to another cluster (system identifier %s, the cluster's is %s)", m.Status.SystemID, st.s.SystemID)
	}
	return ""
}

// foreign reports whether m runs a database of another cluster.
func (st *step) foreign(m fsm.Member) bool {
	return st.s.SystemID != "" && m.Status.SystemID != "" && m.Status.SystemID != st.s.SystemID
}

// bestKnown is the furthest WAL position known to hold acknowledged writes: the old primary's
// last report and every replica's (eligible or not; a replica only has WAL the primary wrote).
// Comparing with it, not just with the old primary's possibly older report, keeps a failover
// from discarding WAL that another node already has.
func (st *step) bestKnown(old string) fsm.LSN {
	var ref fsm.LSN
	for _, m := range st.s.Members {
		if m.Name == old || m.Status.Role == fsm.RoleReplica {
			ref = max(ref, m.Status.Position())
		}
	}
	return ref
}

// lagOf returns how far name is behind bestKnown.
func (st *step) lagOf(name, old string) uint64 {
	return st.bestKnown(old).Sub(st.s.Members[name].Status.Position())
}

// leaseGate reports whether promoting candidate is safe now: no node may still be routing
// writes to another primary (invariant 1) and, with fencing, the old primary must have
// acknowledged FENCE or DEMOTE or its lease must have certainly expired (invariant 3).
//
// A node N whose last lease grant named primary P ≠ candidate is clear of P when any holds:
//   - N ≠ P (or fencing is off), N renewed after P was deposed (its latest grant names
//     someone else) and reported that it routed writes to nobody or elsewhere when it sent
//     that renewal. N drops P the moment its FSM shows P deposed and never routes to P again.
//   - N = P and it acknowledged FENCE or DEMOTE after its last grant: PostgreSQL on P is
//     stopped or read-only.
//   - PrimaryTimeout has passed since that grant (measured from the anchor). N's lease ended
//     lease_timeout after N sent the renewal; config validation makes PrimaryTimeout longer
//     than that with margin for clock drift.
func (st *step) leaseGate(candidate string) (bool, time.Time, string) {
	var until time.Time
	var blockers []string
	check := func(m fsm.Member) {
		l := m.Lease
		p := l.GrantPrimary
		if p == "" || p == candidate {
			return
		}
		if (m.Name != p || !st.cfg.FencingEnabled) && l.RenewedIndex > l.GrantIndex && l.Granted != p && l.Routing != p {
			return
		}
		if m.Name == p && l.ReleaseIndex > l.GrantIndex {
			return
		}
		ok, deadline := st.elapsed(l.GrantAt, l.GrantIndex, st.cfg.PrimaryTimeout)
		if ok {
			return
		}
		if deadline.After(until) {
			until = deadline
		}
		if m.Name == p {
			blockers = append(blockers, fmt.Sprintf("%s has not acknowledged FENCE and may hold its lease until %s", m.Name, deadline.Format(time.RFC3339Nano)))
		} else {
			blockers = append(blockers, fmt.Sprintf("%s may route writes to %s until %s", m.Name, p, deadline.Format(time.RFC3339Nano)))
		}
	}
	for _, name := range st.s.MemberNames() {
		check(st.s.Members[name])
	}
	for _, m := range st.s.Departed {
		check(m)
	}
	if len(blockers) > 0 {
		return false, until, strings.Join(blockers, "; ")
	}
	return true, time.Time{}, ""
}

func (st *step) driveOperation(op fsm.Operation) {
	switch op.Kind {
	case fsm.OpFailover:
		st.driveFailover(op)
	case fsm.OpSwitchover:
		st.driveSwitchover(op)
	default:
		st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("unknown operation kind %q", op.Kind)})
	}
}

func strp(s string) *string { return &s }

func (st *step) driveFailover(op fsm.Operation) {
	switch op.Phase {
	case fsm.PhaseElecting:
		st.elect(op)
	case fsm.PhasePromoting:
		st.promoting(op)
	default:
		st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("failover in unexpected phase %q", op.Phase)})
	}
}

// fenceTargets are the nodes whose PostgreSQL may still accept writes: the old primary and any
// other node that reports running as a primary.
func (st *step) fenceTargets(op fsm.Operation, candidate string) []string {
	var out []string
	for _, name := range st.s.MemberNames() {
		m := st.s.Members[name]
		if name == candidate {
			continue
		}
		if name == op.OldPrimary || m.Status.Role == fsm.RolePrimary {
			out = append(out, name)
		}
	}
	return out
}

func (st *step) elect(op fsm.Operation) {
	if op.Requested && op.Candidate != "" {
		if done, _ := st.elapsed(op.StartedAt, op.StartedIndex, st.cfg.SwitchoverTimeout); done {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("candidate %q did not become eligible within %s: %s",
				op.Candidate, st.cfg.SwitchoverTimeout, op.Message)})
			return
		}
	}
	// Publish FENCE first (invariant 3), whoever is promoted.
	if st.cfg.FencingEnabled {
		var fences []fsm.Command
		for _, name := range st.fenceTargets(op, op.Candidate) {
			// Once per operation and target; again only if a new leader superseded it (an
			// expired or failed FENCE will not be acknowledged: the lease runs out instead).
			if d, issued := st.lastDirective(fsm.DirectiveFence, name, op.ID); !issued || d.Status == fsm.DirectiveSuperseded {
				fences = append(fences, fsm.IssueDirective{Type: fsm.DirectiveFence, Target: name,
					Params: fsm.DirectiveParams{OperationID: op.ID, Reason: op.Reason}})
			}
		}
		if len(fences) > 0 {
			st.d.add(fences...)
			return
		}
	}
	live := st.liveSince(op)
	candidate := op.Candidate
	if candidate != "" {
		c, ok := st.s.Members[candidate]
		if !ok {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("candidate %q is no longer a member", candidate)})
			return
		}
		if c.Status.ReportIndex <= live.idx && !live.passed && st.ineligible(c, op.Excluded) == "" {
			st.d.wake(live.deadline)
			st.d.wait("waiting for candidate %q to report its position since the primary was deposed", candidate)
			return
		}
		if why := st.candidateProblem(op, candidate, live.idx); why != "" {
			msg := fmt.Sprintf("candidate %q cannot be promoted: %s", candidate, why)
			st.d.wait("%s", msg)
			if op.Message != msg {
				st.d.add(fsm.UpdateOperation{ID: op.ID, Message: &msg})
			}
			return
		}
	} else {
		r := st.rank(op.OldPrimary, op.Excluded, op.Force, live)
		if len(r.pending) > 0 {
			st.d.wake(live.deadline)
			msg := fmt.Sprintf("waiting for %s to report current WAL positions (their last reports predate the failover)", strings.Join(r.pending, ", "))
			st.d.wait("%s", msg)
			if op.Message != msg {
				st.d.add(fsm.UpdateOperation{ID: op.ID, Message: &msg})
			}
			return
		}
		if r.best == "" {
			msg := "no replica can be promoted: " + r.why()
			st.d.wait("%s", msg)
			if op.Message != msg {
				st.d.add(fsm.UpdateOperation{ID: op.ID, Message: &msg})
			}
			return
		}
		candidate = r.best
	}
	ok, until, why := st.leaseGate(candidate)
	if !ok {
		st.d.wake(until)
		msg := fmt.Sprintf("promotion of %q waits: %s", candidate, why)
		st.d.wait("%s", msg)
		if op.Message != msg {
			st.d.add(fsm.UpdateOperation{ID: op.ID, Message: &msg})
		}
		return
	}
	lose := st.lagOf(candidate, op.OldPrimary)
	msg := fmt.Sprintf("promoting %q", candidate)
	upd := fsm.UpdateOperation{ID: op.ID, Phase: fsm.PhasePromoting, Candidate: strp(candidate), MayLoseBytes: &lose, Message: &msg}
	if op.Force {
		if what := st.forcedLoss(op, candidate, lose, live.idx); what != "" {
			upd.MayLose = &what
		}
	}
	st.d.add(
		upd,
		fsm.IssueDirective{Type: fsm.DirectivePromote, Target: candidate, Params: fsm.DirectiveParams{OperationID: op.ID, Reason: op.Reason}},
	)
}

// liveSince returns which reports count as current for op: those applied after it began, and
// after the last acknowledged FENCE of it (from then on the old primary writes nothing more).
// Members get PrimaryTimeout from then to report.
func (st *step) liveSince(op fsm.Operation) liveData {
	idx, at := op.StartedIndex, op.StartedAt
	for _, d := range st.s.Directives {
		if d.Type == fsm.DirectiveFence && d.Params.OperationID == op.ID && d.Status == fsm.DirectiveDone && d.FinishedIndex > idx {
			idx, at = d.FinishedIndex, d.FinishedAt
		}
	}
	passed, deadline := st.elapsed(at, idx, st.cfg.PrimaryTimeout)
	return liveData{idx: idx, deadline: deadline, passed: passed}
}

// forcedLoss describes what promoting candidate by force may lose, or "" when nothing is
// known to be at risk.
func (st *step) forcedLoss(op fsm.Operation, candidate string, lose uint64, live uint64) string {
	var parts []string
	c := st.s.Members[candidate]
	if st.syncMode() {
		if why := st.syncProblem(op.OldPrimary, candidate, live); why != "" {
			stand, _ := st.s.SyncPromise(op.OldPrimary)
			var seen []string
			for _, n := range stand {
				if m, ok := st.s.Members[n]; ok {
					seen = append(seen, fmt.Sprintf("%s last seen at %s", n, m.Status.Position()))
				}
			}
			p := fmt.Sprintf("%q is not shown to hold every transaction %q acknowledged (%s); those beyond its position %s may be lost",
				candidate, op.OldPrimary, why, c.Status.Position())
			if len(seen) > 0 {
				p += " (the synchronous standbys had them: " + strings.Join(seen, ", ") + ")"
			}
			parts = append(parts, p)
		}
	}
	if lose > 0 {
		parts = append(parts, fmt.Sprintf("%d bytes of WAL beyond %q's position %s are known to exist (best known position %s) and are lost",
			lose, candidate, c.Status.Position(), st.bestKnown(op.OldPrimary)))
	}
	return strings.Join(parts, "; ")
}

// candidateProblem says why name cannot be promoted by op now, or "". live: see liveData.
func (st *step) candidateProblem(op fsm.Operation, name string, live uint64) string {
	m, ok := st.s.Members[name]
	if !ok {
		return "not a member"
	}
	if why := st.ineligible(m, op.Excluded); why != "" {
		return why
	}
	if op.Kind == fsm.OpFailover && !op.Force {
		if st.syncMode() {
			return st.syncProblem(op.OldPrimary, name, live)
		}
		if lag := st.lagOf(name, op.OldPrimary); lag > st.cfg.MaxLagOnFailover {
			return fmt.Sprintf("%d bytes behind (maximum_lag_on_failover %d; force to accept the loss)", lag, st.cfg.MaxLagOnFailover)
		}
	}
	return ""
}

// promoting waits for the candidate's PROMOTE; on success it names the new primary and ends
// the operation, on failure it goes back to electing without that candidate (a failover) or
// ends the operation (a switchover, or a failover the operator aimed at this candidate).
func (st *step) promoting(op fsm.Operation) {
	d, ok := st.lastDirective(fsm.DirectivePromote, op.Candidate, op.ID)
	if !ok || d.Status == fsm.DirectiveSuperseded {
		// Issued by an earlier leader and superseded: check the candidate and the gate again
		// and issue it again (PROMOTE is idempotent, so a candidate that did promote but whose
		// acknowledgement was lost just acknowledges again).
		c := st.s.Members[op.Candidate]
		promoted := c.Status.Role == fsm.RolePrimary && c.Status.Healthy && st.fresh(c)
		if ok && c.Status.State == fsm.StatePromoting && st.fresh(c) {
			// It is executing the PROMOTE of the earlier epoch right now: starting over would
			// fence a primary that may already have taken writes and promote another node on
			// the same timeline. Wait for its report as a primary (or its silence).
			if done, until := st.elapsed(d.IssuedAt, d.IssuedIndex, st.cfg.DirectiveTimeout); !done {
				st.d.wake(until)
				st.d.wait("new epoch: candidate %q is executing the PROMOTE of the earlier epoch; waiting for its report", op.Candidate)
				return
			}
		}
		if why := st.candidateProblem(op, op.Candidate, 0); why != "" && !promoted {
			if st.unfit(c, op.Excluded) == "" && st.settling() {
				st.d.wait("new epoch: waiting to hear from candidate %q (%s)", op.Candidate, why)
				return
			}
			msg := fmt.Sprintf("candidate %q cannot be promoted any more: %s", op.Candidate, why)
			if op.Kind == fsm.OpSwitchover || op.Requested {
				st.d.add(fsm.FinishOperation{ID: op.ID, Message: msg})
				return
			}
			st.d.add(fsm.UpdateOperation{ID: op.ID, Phase: fsm.PhaseElecting, Candidate: strp(""), Message: &msg})
			return
		}
		if ok, until, why := st.leaseGate(op.Candidate); !ok {
			st.d.wake(until)
			st.d.wait("promotion of %q waits: %s", op.Candidate, why)
			return
		}
		st.d.add(fsm.IssueDirective{Type: fsm.DirectivePromote, Target: op.Candidate,
			Params: fsm.DirectiveParams{OperationID: op.ID, Reason: op.Reason}})
		return
	}
	switch d.Status {
	case fsm.DirectivePending:
		// A candidate that went silent will not acknowledge: give up on it after
		// PrimaryTimeout rather than the whole DirectiveTimeout.
		c := st.s.Members[op.Candidate]
		proof, idx := d.IssuedAt, d.IssuedIndex
		if c.Lease.RenewedIndex > idx {
			proof, idx = c.Lease.RenewedAt, c.Lease.RenewedIndex
		}
		if silent, deadline := st.elapsed(proof, idx, st.cfg.PrimaryTimeout); silent {
			st.d.add(fsm.ExpireDirective{ID: d.ID, Message: fmt.Sprintf("candidate %q renewed no lease for %s", op.Candidate, st.cfg.PrimaryTimeout)})
			return
		} else {
			st.d.wake(deadline)
		}
		st.d.wait("waiting for %q to acknowledge PROMOTE %d", op.Candidate, d.ID)
	case fsm.DirectiveDone:
		st.d.add(
			fsm.SetPrimary{Node: op.Candidate, OperationID: op.ID, Reason: op.Reason, Timeline: d.Result.Timeline, LSN: d.Result.LSN,
				SystemID: st.s.Members[op.Candidate].Status.SystemID},
			fsm.FinishOperation{ID: op.ID, Success: true, Message: fmt.Sprintf("%q is the primary", op.Candidate)},
		)
	default:
		msg := fmt.Sprintf("PROMOTE of %q %s: %s", op.Candidate, d.Status, d.Message)
		if op.Kind == fsm.OpSwitchover || op.Requested {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: msg})
			return
		}
		st.d.add(fsm.UpdateOperation{ID: op.ID, Phase: fsm.PhaseElecting, Candidate: strp(""), Exclude: op.Candidate, Message: &msg})
	}
}

func (st *step) driveSwitchover(op fsm.Operation) {
	s := st.s
	timedOut, deadline := st.elapsed(op.StartedAt, op.StartedIndex, st.cfg.SwitchoverTimeout)
	if !timedOut {
		st.d.wake(deadline)
	}
	switch op.Phase {
	case fsm.PhaseCheckpoint, fsm.PhaseDraining:
		// Nothing is changed yet: abort cleanly when the primary changed under us or time ran out.
		if s.Primary != op.OldPrimary {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("primary changed to %q during the switchover", s.Primary)})
			return
		}
		if why := st.primaryLost(op.OldPrimary); why != "" {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: "switchover aborted: " + why})
			return
		}
		if timedOut {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("switchover did not complete within %s (%s)", st.cfg.SwitchoverTimeout, op.Phase)})
			return
		}
		if op.Phase == fsm.PhaseCheckpoint {
			if c := op.Candidate; c != "" && !st.receivesFrom(c, op.OldPrimary) {
				// Only a candidate that streams from the primary (directly or through
				// another standby) receives its last WAL, up to the shutdown checkpoint;
				// one that has just been re-pointed or restarted may still be connecting.
				// Writes are not paused before it does.
				st.d.wait("waiting for candidate %q to stream from %q before pausing writes", c, op.OldPrimary)
				return
			}
			st.checkpoint(op)
		} else {
			st.drain(op)
		}
	case fsm.PhaseDemoting:
		st.demoting(op)
	case fsm.PhaseCatchup:
		if timedOut {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("candidate %q did not replay up to %s within %s", op.Candidate, op.FinalLSN, st.cfg.SwitchoverTimeout)})
			return
		}
		st.catchup(op)
	case fsm.PhasePromoting:
		st.promoting(op)
	default:
		st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("switchover in unexpected phase %q", op.Phase)})
	}
}

// receivesFrom reports whether standby name streams WAL from primary: the primary lists it
// among its streaming standbys, or it streams from a standby that does (cascading).
func (st *step) receivesFrom(name, primary string) bool {
	seen := map[string]bool{}
	for name != "" && !seen[name] {
		seen[name] = true
		if slices.Contains(st.s.Members[primary].Status.Streaming, name) {
			return true
		}
		m := st.s.Members[name]
		if m.Status.Role != fsm.RoleReplica || !st.fresh(m) {
			return false
		}
		name = m.Status.Following
	}
	return false
}

// checkpoint runs CHECKPOINT on the primary while writes still flow, so that the shutdown
// checkpoint inside DEMOTE (while writes are paused) is short. Its failure is not fatal.
func (st *step) checkpoint(op fsm.Operation) {
	d, ok := st.lastDirective(fsm.DirectiveCheckpoint, op.OldPrimary, op.ID)
	if !ok || d.Status == fsm.DirectiveSuperseded {
		st.d.add(fsm.IssueDirective{Type: fsm.DirectiveCheckpoint, Target: op.OldPrimary,
			Params: fsm.DirectiveParams{OperationID: op.ID, Reason: "switchover"}})
		return
	}
	if d.Status == fsm.DirectivePending {
		st.d.wait("waiting for CHECKPOINT %d on %q", d.ID, op.OldPrimary)
		return
	}
	st.d.add(
		fsm.SetWritePause{OperationID: op.ID, Active: true, Reason: "switchover"},
		fsm.UpdateOperation{ID: op.ID, Phase: fsm.PhaseDraining},
	)
}

// drain waits, with writes paused, until every reporting node's proxy has no write
// transaction in flight (or DrainTimeout passes), then deposes the primary and demotes it.
func (st *step) drain(op fsm.Operation) {
	wp := st.s.WritePause
	if wp == nil || wp.OperationID != op.ID {
		st.d.add(fsm.SetWritePause{OperationID: op.ID, Active: true, Reason: "switchover"})
		return
	}
	var busy []string
	settling := st.settling()
	for _, name := range st.s.MemberNames() {
		m := st.s.Members[name]
		if !st.fresh(m) && !settling {
			continue // a silent node's proxy is not waited for (beyond DrainTimeout)
		}
		if m.Status.ReportIndex <= wp.SinceIndex || m.Status.InflightWrites > 0 {
			busy = append(busy, name)
		}
	}
	timedOut, deadline := st.elapsed(wp.Since, wp.SinceIndex, st.cfg.DrainTimeout)
	if len(busy) > 0 && !timedOut {
		st.d.wake(deadline)
		st.d.wait("waiting for proxies to drain write transactions: %s", strings.Join(busy, ", "))
		return
	}
	candidate := op.Candidate
	if candidate == "" {
		// Any caught-up replica loses nothing (catchup waits for the shutdown checkpoint), so
		// neither the lag limit nor the synchronous record restricts the choice.
		r := st.rank(op.OldPrimary, op.Excluded, true, liveData{})
		if r.best == "" {
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: "no good candidates: " + r.why()})
			return
		}
		candidate = r.best
	} else if m, ok := st.s.Members[candidate]; !ok || st.ineligible(m, nil) != "" {
		why := "not a member"
		if ok {
			why = st.ineligible(m, nil)
			if st.unfit(m, nil) == "" && st.settling() {
				st.d.wait("new epoch: waiting to hear from candidate %q (%s)", candidate, why)
				return
			}
		}
		st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("candidate %q cannot be promoted: %s", candidate, why)})
		return
	}
	msg := fmt.Sprintf("demoting %q to follow %q", op.OldPrimary, candidate)
	st.d.add(
		fsm.SetPrimary{Node: "", OperationID: op.ID},
		fsm.UpdateOperation{ID: op.ID, Phase: fsm.PhaseDemoting, Candidate: strp(candidate), Message: &msg},
		fsm.IssueDirective{Type: fsm.DirectiveDemote, Target: op.OldPrimary,
			Params: fsm.DirectiveParams{Upstream: candidate, OperationID: op.ID, Reason: "switchover"}},
	)
}

func (st *step) demoting(op fsm.Operation) {
	d, ok := st.lastDirective(fsm.DirectiveDemote, op.OldPrimary, op.ID)
	if !ok || d.Status == fsm.DirectiveSuperseded {
		st.d.add(fsm.IssueDirective{Type: fsm.DirectiveDemote, Target: op.OldPrimary,
			Params: fsm.DirectiveParams{Upstream: op.Candidate, OperationID: op.ID, Reason: "switchover"}})
		return
	}
	switch d.Status {
	case fsm.DirectivePending:
		st.d.wait("waiting for %q to acknowledge DEMOTE %d", op.OldPrimary, d.ID)
	case fsm.DirectiveDone:
		final := d.Result.LSN
		if final == 0 {
			// No shutdown checkpoint: the old primary was not running when it was demoted (it
			// crashed meanwhile), so nothing says how far the candidate must catch up. Leave
			// the choice to a failover, with its rules.
			st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("%q reported no shutdown checkpoint (it was not running when demoted); a failover takes over", op.OldPrimary)})
			return
		}
		msg := fmt.Sprintf("waiting for %q to replay the shutdown checkpoint at %s", op.Candidate, final)
		st.d.add(fsm.UpdateOperation{ID: op.ID, Phase: fsm.PhaseCatchup, FinalLSN: &final, Message: &msg})
	default:
		// The old primary may still be a writable primary. If it says so, reinstate it and
		// abort; otherwise end the operation and let the next step elect a primary (fencing
		// any node that still runs as a primary first).
		old := st.s.Members[op.OldPrimary]
		msg := fmt.Sprintf("DEMOTE of %q %s: %s", op.OldPrimary, d.Status, d.Message)
		if old.Status.ReportIndex > d.FinishedIndex && old.Status.Healthy && old.Status.Role == fsm.RolePrimary &&
			old.Status.State == fsm.StateRunningPrimary {
			st.d.add(
				fsm.SetPrimary{Node: op.OldPrimary, OperationID: op.ID, Reason: "switchover aborted",
					Timeline: old.Status.Timeline, LSN: old.Status.FlushLSN},
				fsm.FinishOperation{ID: op.ID, Message: msg + "; the old primary continues"},
			)
			return
		}
		if old.Status.ReportIndex <= d.FinishedIndex && st.fresh(old) {
			st.d.wait("DEMOTE failed; waiting for a report from %q to decide whether it is still the primary", op.OldPrimary)
			return
		}
		st.d.add(fsm.FinishOperation{ID: op.ID, Message: msg})
	}
}

func (st *step) catchup(op fsm.Operation) {
	demote, _ := st.lastDirective(fsm.DirectiveDemote, op.OldPrimary, op.ID)
	c, ok := st.s.Members[op.Candidate]
	if !ok {
		st.d.add(fsm.FinishOperation{ID: op.ID, Message: fmt.Sprintf("candidate %q is no longer a member", op.Candidate)})
		return
	}
	// FinalLSN is where the old primary's shutdown checkpoint record begins; the candidate has
	// everything once it has replayed past it (the record is the last the old primary wrote).
	target := op.FinalLSN
	if target == 0 || c.Status.ReportIndex <= demote.FinishedIndex || c.Status.ReplayedLSN <= target {
		st.d.wait("waiting for %q to replay the shutdown checkpoint at %s (replayed %s)", op.Candidate, target, c.Status.ReplayedLSN)
		return
	}
	ok, until, why := st.leaseGate(op.Candidate)
	if !ok {
		st.d.wake(until)
		st.d.wait("promotion of %q waits: %s", op.Candidate, why)
		return
	}
	msg := fmt.Sprintf("promoting %q", op.Candidate)
	st.d.add(
		fsm.UpdateOperation{ID: op.ID, Phase: fsm.PhasePromoting, Message: &msg},
		fsm.IssueDirective{Type: fsm.DirectivePromote, Target: op.Candidate, Params: fsm.DirectiveParams{OperationID: op.ID, Reason: "switchover"}},
	)
}

// rejoinRetryBase is how long the controller waits before asking again a node whose DEMOTE
// failed (a rewind or clone that could not run, say); the wait doubles with each failure in a
// row, up to DirectiveTimeout. An operator who fixes the cause sees the node rejoin within
// seconds of the fix at first, and a node that keeps failing is not retried more than once
// per DirectiveTimeout for long.
const rejoinRetryBase = 5 * time.Second

// demoteWait is how long after its last DEMOTE towards this primary finished name is left
// alone: DirectiveTimeout to settle after one that succeeded, rejoinRetryBase doubled for each
// failure in a row (capped at DirectiveTimeout) after one that failed or expired.
func (st *step) demoteWait(name string) time.Duration {
	failures := 0
	for i := len(st.s.Directives) - 1; i >= 0; i-- {
		d := st.s.Directives[i]
		if d.Type != fsm.DirectiveDemote || d.Target != name || d.IssuedIndex <= st.s.PrimaryIndex {
			continue
		}
		if d.Status != fsm.DirectiveFailed && d.Status != fsm.DirectiveExpired {
			break
		}
		failures++
	}
	if failures == 0 {
		return st.cfg.DirectiveTimeout
	}
	wait := rejoinRetryBase
	for i := 1; i < failures && wait < st.cfg.DirectiveTimeout; i++ {
		wait *= 2
	}
	return min(wait, st.cfg.DirectiveTimeout)
}

// reconcileFollowers tells every fresh replica that is not following its upstream (the
// primary, or the member its replicatefrom tag names while that one can serve: upstreamFor),
// and every fenced or rogue primary, to follow the primary. A node whose last DEMOTE failed is
// asked again after demoteWait (5 s, doubling up to DirectiveTimeout).
func (st *step) reconcileFollowers() {
	s := st.s
	if s.Paused || s.Primary == "" {
		return
	}
	p := s.Members[s.Primary]
	if p.Status.ReportIndex <= s.PrimaryIndex || p.Status.State != fsm.StateRunningPrimary || !p.Status.Healthy {
		st.d.wait("waiting for %q to report as a running primary", s.Primary)
		return
	}
	for _, name := range s.MemberNames() {
		m := s.Members[name]
		if name == s.Primary || !st.fresh(m) || st.hasPending(name) {
			continue
		}
		why, upstream := "", s.Primary
		switch {
		case m.Status.Role == fsm.RolePrimary:
			why = "runs as a primary but is not the primary"
		case m.Status.State == fsm.StateFenced:
			why = "rejoin after fencing"
		case m.Status.State == fsm.StateStopped && st.restartRequested(name):
			// Its agent is restarting (or re-cloning) it at an operator's request: a DEMOTE
			// now would restart it once more when that is done.
		case m.Status.State == fsm.StateStopped:
			why = "postgresql is not running"
		case m.Status.Role == fsm.RoleReplica && m.Status.State == fsm.StateRunningReplica &&
			m.Status.ReportIndex > s.PrimaryIndex: // reported knowing the primary
			upstream = st.upstreamFor(name)
			switch {
			case m.Status.Following == upstream:
			case upstream != s.Primary:
				why = fmt.Sprintf("replicatefrom %q, which is a healthy replica of the primary", upstream)
			case m.Tags.ReplicateFrom != "" && m.Status.Following == m.Tags.ReplicateFrom:
				why = fmt.Sprintf("follows %q (replicatefrom), which cannot serve now: %s", m.Status.Following,
					st.cascadeRefusal(name, true))
			default:
				why = fmt.Sprintf("follows %q instead of the primary", m.Status.Following)
			}
		}
		if why == "" {
			continue
		}
		// After a DEMOTE towards this primary, give the node DirectiveTimeout to settle (a
		// restarted standby takes a moment to stream) before asking again; after a failed one,
		// less (demoteWait). One towards an earlier primary does not hold back re-pointing it at this one
		// (a replica left following the old primary after a switchover).
		// Nor does one towards a replicatefrom member that can no longer serve: its replica
		// goes back to the primary at once.
		if last, ok := st.lastDirective(fsm.DirectiveDemote, name, 0); ok && last.IssuedIndex > s.PrimaryIndex &&
			(upstream != s.Primary || last.Params.Upstream == s.Primary) {
			if settled, until := st.elapsed(last.FinishedAt, last.FinishedIndex, st.demoteWait(name)); !settled {
				st.d.wake(until)
				continue
			}
		}
		st.d.add(fsm.IssueDirective{Type: fsm.DirectiveDemote, Target: name,
			Params: fsm.DirectiveParams{Upstream: upstream, Reason: why}})
	}
}

// upstreamFor returns the member a running replica should stream from: the one its
// replicatefrom tag names when that one can serve (cascadeRefusal), else the primary.
func (st *step) upstreamFor(name string) string {
	m := st.s.Members[name]
	if st.cascadeRefusal(name, m.Status.Following == m.Tags.ReplicateFrom) == "" {
		return m.Tags.ReplicateFrom
	}
	return st.s.Primary
}

// cascadeRefusal says why name's replicatefrom member cannot be its upstream now ("" when it
// can): it must be another member, a fresh and healthy running replica that follows the
// primary itself and cascades from no one (one level, so never a cycle). To become its
// upstream it must also be streaming from the primary right now, with no directive pending;
// a replica that already follows it (staying) leaves only when it fails the first test, so a
// moment's gap in the primary's list does not move it back and forth.
func (st *step) cascadeRefusal(name string, staying bool) string {
	s := st.s
	from := s.Members[name].Tags.ReplicateFrom
	u, ok := s.Members[from]
	switch {
	case from == "":
		return "no replicatefrom tag"
	case from == name || from == s.Primary:
		return "it names this node or the primary"
	case !ok:
		return "no such member"
	case u.Tags.ReplicateFrom != "" && u.Tags.ReplicateFrom != s.Primary:
		return "it cascades itself (one level only)"
	case !st.fresh(u) || u.Status.State != fsm.StateRunningReplica || !u.Status.Healthy:
		return fmt.Sprintf("it is not a healthy running replica (state %s)", u.Status.State)
	case u.Status.Following != s.Primary:
		return "it does not follow the primary"
	case staying:
	case !slices.Contains(s.Members[s.Primary].Status.Streaming, from):
		return "it does not stream from the primary"
	case st.hasPending(from):
		return "a directive to it is pending"
	}
	return ""
}
