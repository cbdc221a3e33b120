package controller

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// Synchronous replication (synchronous_mode on or quorum).
//
// The FSM keeps a promise about the primary P (State.SyncStandbys, SyncCount, SyncPrimary):
// every transaction P acknowledged is on at least SyncCount of SyncStandbys. PostgreSQL's
// synchronous_standby_names makes it true going forward: with FIRST k (s1..sk) (exactly k
// names) or ANY k (s1..sm), a commit returns only once k of the listed standbys have flushed
// it. The controller changes the configuration in three steps, so that the promise holds at
// every instant:
//
//  1. record first: the promise is weakened to cover both the old and the new configuration
//     (the union of the standby sets, the smaller count) and the new configuration is
//     published as SyncWanted; a standby is in the record before PostgreSQL may count on it;
//  2. the primary's agent sets synchronous_standby_names, waits until its WAL senders use the
//     new value, and reports it with SyncSince, its flush position at that moment: everything
//     acknowledged before the change ends at or before SyncSince;
//  3. once Count of the new standbys have received WAL up to SyncSince (they hold the old
//     transactions too), the promise is narrowed to the new configuration; a standby leaves
//     the record only after PostgreSQL stopped counting on it.
//
// A failover in these modes promotes only a recorded standby, and only when the others it
// must compare with have answered: with a promise "on c of the n recorded standbys", any
// n-c+1 of them include one holding each acknowledged transaction, so the candidate must be
// the furthest of at least n-c+1 recorded standbys reporting positions taken after the
// primary was deposed (syncProblem). With FIRST k and exactly k names (mode on) that is the
// candidate alone; in quorum mode (ANY k of n) it needs n-k+1 of them.
//
// A new primary starts with nothing recorded (its agent sets "" before promoting, or "*" in
// strict mode, so that no commit returns without a standby). Non-strict mode drops to ""
// (asynchronous) when no standby is healthy, and nobody can then be promoted automatically;
// strict mode keeps the last configuration (or "*"), so commits wait for a standby.

// syncProblem says why promoting name could lose a transaction old acknowledged, judged by the
// synchronous record, or "". live: see liveData (0 accepts any fresh report).
func (st *step) syncProblem(old, name string, live uint64) string {
	stand, count := st.s.SyncPromise(old)
	if !slices.Contains(stand, name) {
		if len(stand) == 0 {
			return fmt.Sprintf("no synchronous standby of %q is recorded", old)
		}
		return fmt.Sprintf("not a recorded synchronous standby of %q (%s)", old, strings.Join(stand, ", "))
	}
	if count == 0 {
		return fmt.Sprintf("the synchronous record of %q does not cover every acknowledged transaction yet (standbys %s were catching up)",
			old, strings.Join(stand, ", "))
	}
	need := len(stand) - count + 1
	var heard []fsm.Member
	for _, n := range stand {
		m, ok := st.s.Members[n]
		if !ok || !m.Status.Healthy || m.Status.Role != fsm.RoleReplica || !st.fresh(m) || !st.reachable(m) {
			continue
		}
		if live > 0 && m.Status.ReportIndex <= live {
			continue
		}
		heard = append(heard, m)
	}
	if len(heard) < need {
		return fmt.Sprintf("each acknowledged transaction is on %d of %s, so current positions from %d of them are needed; %d answered",
			count, strings.Join(stand, ", "), need, len(heard))
	}
	c := st.s.Members[name]
	for _, m := range heard {
		if m.Status.Position() > c.Status.Position() {
			return fmt.Sprintf("synchronous standby %q has more WAL (%s, this one %s)", m.Name, m.Status.Position(), c.Status.Position())
		}
	}
	return ""
}

// manageSync keeps the primary's synchronous configuration and the record in step (see the
// three steps above).
func (st *step) manageSync() {
	s := st.s
	if !st.syncMode() || s.Primary == "" {
		return
	}
	p := s.Members[s.Primary]
	if p.Status.ReportIndex <= s.PrimaryIndex || p.Status.State != fsm.StateRunningPrimary || !p.Status.Healthy || !st.fresh(p) {
		return
	}
	stand, count := s.SyncPromise(p.Name)
	w := s.SyncWanted
	if w != nil && w.Primary != p.Name {
		w = nil
	}
	if target := st.syncTarget(p.Name, w); target != nil && (w == nil || !sameTarget(*w, *target)) {
		// Step 1: record first.
		union := slices.Concat(stand, target.Standbys)
		slices.Sort(union)
		st.d.add(fsm.SetSyncState{Primary: p.Name, Standbys: slices.Compact(union), Count: min(count, target.Count), Wanted: target})
		return
	}
	if w == nil {
		return
	}
	if p.Status.SyncStandbyNames != w.Value || (p.Status.SyncSince == 0 && w.Count > 0) {
		// Step 2 is the agent's.
		st.d.wait("waiting for %q to run with synchronous_standby_names = %q", p.Name, w.Value)
		return
	}
	if slices.Equal(stand, w.Standbys) && count == w.Count {
		return
	}
	// Step 3: narrow the record once the new set holds what was acknowledged before.
	var caught, behind []string
	for _, n := range w.Standbys {
		m := s.Members[n]
		if m.Status.Following == p.Name && m.Status.ReceivedLSN >= p.Status.SyncSince {
			caught = append(caught, n)
		} else {
			behind = append(behind, fmt.Sprintf("%s at %s", n, m.Status.ReceivedLSN))
		}
	}
	if len(caught) < w.Count {
		st.d.wait("waiting for %d of the synchronous standbys to receive WAL up to %s (%s)", w.Count, p.Status.SyncSince, strings.Join(behind, ", "))
		return
	}
	st.d.add(fsm.SetSyncState{Primary: p.Name, Standbys: w.Standbys, Count: w.Count})
}

// syncTarget is the configuration the primary should run with now, or nil to keep the wanted
// one (strict mode with no healthy standby left).
func (st *step) syncTarget(primary string, w *fsm.SyncTarget) *fsm.SyncTarget {
	var prefer []string
	if w != nil {
		prefer = w.Standbys
	}
	cands := st.syncCandidates(primary, prefer)
	n := max(st.cfg.SyncNodeCount, 1)
	t := &fsm.SyncTarget{Primary: primary}
	switch {
	case len(cands) == 0 && st.cfg.SyncStrict:
		if w != nil && len(w.Standbys) > 0 {
			return nil // keep waiting for the standbys we have: writes block
		}
		t.Value = "*" // any standby that connects confirms; none may be promoted yet
	case len(cands) == 0:
		t.Value = "" // asynchronous; nobody may be promoted automatically
	case st.cfg.SynchronousMode == "quorum":
		t.Standbys = slices.Sorted(slices.Values(cands))
		t.Count = min(n, len(cands))
		t.Value = syncValue("ANY", t.Count, t.Standbys)
	default:
		t.Standbys = slices.Sorted(slices.Values(cands[:min(n, len(cands))]))
		t.Count = len(t.Standbys)
		t.Value = syncValue("FIRST", t.Count, t.Standbys)
	}
	return t
}

// syncCandidates returns the standbys that may be synchronous, best first. Every one streams
// from the primary by the primary's own last report (NodeStatus.Streaming), has no nosync tag,
// and its agent is alive and in contact (fresh, reachable). A standby not in prefer must also
// say so itself: a healthy running replica following the primary. One in prefer (already
// wanted) stays while the primary still reports it streaming, whatever its own report says: a
// standby that lost its upstream is what the primary's death looks like from the standby,
// and dropping it from the record then would leave nobody the failover may promote. For the
// same reason it stays while its agent is silent (a loaded host) until the primary has
// renewed its lease after that silence began: until then the silence may as well be the
// primary's own death, seen through its last, still fresh report. Those in prefer come first
// (stability), then those within maximum_lag_on_failover, then by WAL position and name.
func (st *step) syncCandidates(primary string, prefer []string) []string {
	type cand struct {
		name       string
		cur, lagOK bool
		pos        fsm.LSN
	}
	p := st.s.Members[primary]
	var cands []cand
	for _, name := range st.s.MemberNames() {
		m := st.s.Members[name]
		ns := m.Status
		if name == primary || m.Tags.NoSync || !slices.Contains(p.Status.Streaming, name) || st.foreign(m) {
			continue
		}
		cur := slices.Contains(prefer, name)
		if (!st.fresh(m) || !st.reachable(m)) && (!cur || p.Lease.RenewedAt.After(st.quietSince(m))) {
			continue
		}
		if !cur && (!ns.Healthy || ns.Role != fsm.RoleReplica || ns.State != fsm.StateRunningReplica ||
			ns.Following != primary || ns.ReportIndex <= st.s.PrimaryIndex) {
			continue
		}
		cands = append(cands, cand{name, cur, ns.LagBytes <= st.cfg.MaxLagOnFailover, ns.Position()})
	}
	slices.SortFunc(cands, func(a, b cand) int {
		switch {
		case a.cur != b.cur:
			if a.cur {
				return -1
			}
			return 1
		case a.lagOK != b.lagOK:
			if a.lagOK {
				return -1
			}
			return 1
		case a.pos != b.pos:
			if a.pos > b.pos {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	out := make([]string, len(cands))
	for i, c := range cands {
		out[i] = c.name
	}
	return out
}

// quietSince is when m's agent went quiet: its last lease renewal plus half the lease timeout
// (reachable) or its last report plus primary_timeout (fresh), whichever came first.
func (st *step) quietSince(m fsm.Member) time.Time {
	quiet := m.Lease.RenewedAt.Add(st.cfg.LeaseTimeout / 2)
	if r := m.Status.ReportedAt.Add(st.cfg.PrimaryTimeout); r.Before(quiet) {
		quiet = r
	}
	return quiet
}

func sameTarget(a, b fsm.SyncTarget) bool {
	return a.Primary == b.Primary && a.Count == b.Count && a.Value == b.Value && slices.Equal(a.Standbys, b.Standbys)
}

// syncValue renders synchronous_standby_names: FIRST or ANY, the count, and the standbys'
// application names (their member names) quoted as identifiers.
func syncValue(method string, count int, names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
	}
	return fmt.Sprintf("%s %d (%s)", method, count, strings.Join(q, ", "))
}
