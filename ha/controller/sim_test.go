package controller

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// TestSimulatedSafety drives Step through thousands of random histories (crashes, partitions,
// PostgreSQL failures, lost and failed acknowledgements, leader changes, switchovers) and
// checks the safety invariants against an independent model of what each node's proxy does:
//
//   - invariant 1: at any instant, at most one writable PostgreSQL is reachable through the
//     proxies, where a node's proxy routes writes to the primary its last lease grant named,
//     until lease_timeout after it sent that renewal, and only while its own (possibly stale)
//     view still names that primary;
//   - invariant 3: PROMOTE is issued only after FENCE was published to the old primary;
//   - invariant 4: an automatic failover never promotes a replica beyond maximum_lag_on_failover
//     of the best known position;
//   - at most one PROMOTE is pending at a time.
//
// A partitioned node keeps running: its PostgreSQL stays up and its proxy keeps routing on its
// stale view until its lease runs out. That is the split-brain case the lease exists for.
func TestSimulatedSafety(t *testing.T) {
	runs := 120
	if testing.Short() {
		runs = 30
	}
	if n, err := strconv.Atoi(os.Getenv("HA_SIM_RUNS")); err == nil && n > 0 {
		runs = n // e.g. HA_SIM_RUNS=20000 for a long soak
	}
	promotions, gateWaits := 0, 0
	for seed := 1; seed <= runs; seed++ {
		sim := newSim(t, uint64(seed))
		for round := 0; round < 250 && !t.Failed(); round++ {
			sim.round()
		}
		if t.Failed() {
			t.Logf("seed %d history:\n%s", seed, strings.Join(sim.trace, "\n"))
			return
		}
		promotions += sim.promotions
		gateWaits += sim.gateWaits
	}
	// The histories must exercise what is checked, or the test proves nothing.
	if promotions < runs || gateWaits < runs/4 {
		t.Fatalf("too few interesting events: %d promotions, %d lease-gate waits in %d runs", promotions, gateWaits, runs)
	}
	t.Logf("%d runs: %d promotions, %d lease-gate waits", runs, promotions, gateWaits)
}

const (
	simLease   = 2 * time.Second // lease_timeout
	simTimeout = 3 * time.Second // primary_timeout (> lease: validation's inequality without drift)
)

type simPG struct {
	running bool
	primary bool
	lsn     fsm.LSN
	follows string
}

type simNode struct {
	name        string
	connected   bool // can reach the Raft majority (reports, renewals, acks get through)
	view        string
	leaseUntil  time.Time
	leaseFor    string
	pg          simPG
	fenced      bool
	agentActive bool // whether the agent processes directives this round
}

// routing is the primary this node's proxy sends writes to right now, or "".
func (n *simNode) routing(now time.Time) string {
	if n.leaseFor != "" && n.leaseFor == n.view && now.Before(n.leaseUntil) {
		return n.leaseFor
	}
	return ""
}

type sim struct {
	t     *testing.T
	rng   *rand.Rand
	h     *harness
	nodes []*simNode
	trace []string

	promotions, gateWaits int
}

func newSim(t *testing.T, seed uint64) *sim {
	s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, seed*7919)), h: newHarness()}
	s.h.cfg.PrimaryTimeout = simTimeout
	s.h.cfg.LeaseTimeout = simLease
	s.h.cfg.MaxLagOnFailover = 5000
	s.h.cfg.DirectiveTimeout = 10 * time.Second
	s.h.cfg.SwitchoverTimeout = 20 * time.Second
	s.h.cfg.DrainTimeout = 2 * time.Second
	s.h.cfg.FencingEnabled = seed%4 != 0
	s.h.apply(fsm.LeaderEstablished{Leader: "n1"})
	for i := 1; i <= 3; i++ {
		n := &simNode{name: fmt.Sprintf("n%d", i), connected: true,
			pg: simPG{running: true, primary: i == 1, lsn: 1000, follows: "n1"}}
		if i == 1 {
			n.pg.follows = ""
		}
		s.nodes = append(s.nodes, n)
		s.h.apply(fsm.RegisterMember{Name: n.name, RaftAddress: n.name, Tags: fsm.Tags{FailoverPriority: 1}})
	}
	return s
}

func (s *sim) logf(format string, args ...any) {
	s.trace = append(s.trace, fmt.Sprintf("%s ", s.h.rel(s.h.now))+fmt.Sprintf(format, args...))
}

func (s *sim) node(name string) *simNode {
	for _, n := range s.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

func (s *sim) apply(cmd fsm.Command) fsm.Result {
	res := s.h.apply(cmd)
	s.check(cmd, res)
	return res
}

// check verifies invariant 1 at the current instant.
func (s *sim) check(cmd fsm.Command, res fsm.Result) {
	now := s.h.now
	writable := map[string]bool{}
	for _, n := range s.nodes {
		target := n.routing(now)
		if target == "" {
			continue
		}
		if pg := s.node(target).pg; pg.running && pg.primary {
			writable[target] = true
		}
	}
	if len(writable) > 1 {
		s.t.Errorf("after %T: writable primaries reachable through proxies: %v", cmd, slices.Sorted(maps.Keys(writable)))
	}
}

func (s *sim) round() {
	r := s.rng
	// Time passes; proxies' leases may run out on their own.
	s.h.now = s.h.now.Add(time.Duration(r.IntN(1500)) * time.Millisecond)
	s.check(fsm.SetPause{}, fsm.Result{})

	// Faults.
	switch x := r.IntN(100); {
	case x < 4: // partition or heal a node
		n := s.nodes[r.IntN(len(s.nodes))]
		n.connected = !n.connected
		s.logf("%s connected=%v", n.name, n.connected)
	case x < 7: // PostgreSQL crashes
		n := s.nodes[r.IntN(len(s.nodes))]
		n.pg.running = false
		s.logf("%s postgres crashed", n.name)
	case x < 9: // a new Raft leader among the connected nodes
		for _, n := range s.nodes {
			if n.connected {
				s.apply(fsm.LeaderEstablished{Leader: n.name})
				s.h.leaderSince = s.h.now
				s.logf("leader %s", n.name)
				break
			}
		}
	case x < 11:
		if p := s.h.s.Primary; p != "" {
			c := s.nodes[r.IntN(len(s.nodes))].name
			res := s.apply(fsm.RequestSwitchover{Leader: p, Candidate: c})
			s.logf("switchover %s->%s: %v", p, c, res.Err)
		}
	case x < 12:
		c := s.nodes[r.IntN(len(s.nodes))].name
		res := s.apply(fsm.RequestFailover{Candidate: c, Force: r.IntN(2) == 0})
		s.logf("failover to %s: %v", c, res.Err)
	}

	// WAL: the writable primary advances; streaming replicas catch up part of the way.
	for _, n := range s.nodes {
		if n.pg.running && n.pg.primary && !n.fenced {
			n.pg.lsn += fsm.LSN(r.IntN(3000))
		}
	}
	for _, n := range s.nodes {
		if up := s.node(n.pg.follows); up != nil && n.pg.running && !n.pg.primary && up.pg.running && up.pg.lsn > n.pg.lsn {
			n.pg.lsn += fsm.LSN(r.IntN(int(up.pg.lsn-n.pg.lsn) + 1))
		}
	}

	// Connected agents: see the state, renew, report, act on directives.
	for _, i := range r.Perm(len(s.nodes)) {
		n := s.nodes[i]
		if !n.connected {
			continue
		}
		n.view = s.h.s.Primary
		routing := n.routing(s.h.now)
		sent := s.h.now
		res := s.apply(fsm.RenewLease{Node: n.name, Routing: routing})
		if res.Err == nil && r.IntN(10) > 0 { // the response may be lost
			n.leaseFor, n.leaseUntil = res.Primary, sent.Add(simLease)
		}
		s.apply(fsm.ReportStatus{Node: n.name, Status: s.status(n)})
		if r.IntN(4) > 0 {
			s.actOnDirectives(n)
		}
	}

	// The leader's controller, if the leader is connected.
	for round := 0; round < 20; round++ {
		d := Step(s.h.s, Observations{Now: s.h.now, LeaderSince: s.h.leaderSince}, s.h.cfg)
		if strings.Contains(d.Waiting, "promotion of") {
			s.gateWaits++
		}
		if len(d.Commands) == 0 {
			break
		}
		for _, c := range d.Commands {
			s.checkDecision(c)
			res := s.apply(c)
			s.logf("controller: %s => %v", fsm.Describe(c), res.Err)
		}
	}
}

func (s *sim) status(n *simNode) fsm.NodeStatus {
	switch {
	case n.fenced:
		return fsm.NodeStatus{State: fsm.StateFenced, Reason: "fenced"}
	case !n.pg.running:
		return fsm.NodeStatus{State: fsm.StateStopped}
	case n.pg.primary:
		return fsm.NodeStatus{Role: fsm.RolePrimary, State: fsm.StateRunningPrimary, Healthy: true, FlushLSN: n.pg.lsn}
	}
	return fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true,
		ReceivedLSN: n.pg.lsn, ReplayedLSN: n.pg.lsn, Following: n.pg.follows}
}

func (s *sim) actOnDirectives(n *simNode) {
	for _, d := range s.h.s.PendingDirectives(n.name) {
		if d.Epoch < s.h.s.Epoch {
			continue
		}
		ok := s.rng.IntN(8) > 0
		var result fsm.DirectiveResult
		if ok {
			switch d.Type {
			case fsm.DirectiveFence:
				n.pg.running, n.fenced = false, true
			case fsm.DirectivePromote:
				if !n.pg.running {
					ok = false
					break
				}
				n.pg.primary, n.pg.follows = true, ""
			case fsm.DirectiveDemote:
				result.LSN = n.pg.lsn
				n.pg = simPG{running: true, lsn: n.pg.lsn, follows: d.Params.Upstream}
				n.fenced = false
			}
		}
		s.apply(fsm.AckDirective{ID: d.ID, Node: n.name, Success: ok, Result: result})
		s.logf("%s acks %s %d ok=%v", n.name, d.Type, d.ID, ok)
	}
}

// checkDecision verifies invariants 3 and 4 and the single pending PROMOTE on each command
// the controller emits.
func (s *sim) checkDecision(c fsm.Command) {
	issue, ok := c.(fsm.IssueDirective)
	if !ok || issue.Type != fsm.DirectivePromote {
		return
	}
	s.promotions++
	st := s.h.s
	for _, d := range st.Directives {
		if d.Type == fsm.DirectivePromote && !d.Finished() {
			s.t.Errorf("second PROMOTE while %d is pending", d.ID)
		}
	}
	if st.Primary != "" {
		s.t.Errorf("PROMOTE of %s while %s is the primary", issue.Target, st.Primary)
	}
	op := st.Operation
	if op == nil {
		s.t.Errorf("PROMOTE outside an operation")
		return
	}
	if s.h.cfg.FencingEnabled && op.Kind == fsm.OpFailover && op.OldPrimary != "" && op.OldPrimary != issue.Target {
		fenced := false
		for _, d := range st.Directives {
			if d.Type == fsm.DirectiveFence && d.Target == op.OldPrimary && d.Params.OperationID == op.ID {
				fenced = true
			}
		}
		if !fenced {
			s.t.Errorf("PROMOTE of %s before FENCE of %s was published", issue.Target, op.OldPrimary)
		}
	}
	if op.Kind == fsm.OpFailover && !op.Force {
		var ref fsm.LSN
		for _, m := range st.Members {
			if m.Name == op.OldPrimary || m.Status.Role == fsm.RoleReplica {
				ref = max(ref, m.Status.Position())
			}
		}
		if lag := ref.Sub(st.Members[issue.Target].Status.Position()); lag > s.h.cfg.MaxLagOnFailover {
			s.t.Errorf("PROMOTE of %s, %d bytes behind", issue.Target, lag)
		}
	}
}
