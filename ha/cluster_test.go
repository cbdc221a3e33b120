package ha

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

func TestClusterBootstrapsAndAdoptsThePrimary(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	primary := c.waitPrimary(30 * time.Second)
	if primary != "n1" {
		t.Fatalf("adopted %q, want n1 (the only running primary)", primary)
	}
	// Every node registered itself, and replicas follow n1.
	await.True(t, 15*time.Second, func() bool {
		st := c.nodes["n2"].State()
		for _, name := range []string{"n1", "n2", "n3"} {
			m, ok := st.Member(name)
			if !ok || m.PGHost != name || m.RaftAddress != name+":8300" {
				return false
			}
		}
		return st.Members["n2"].Status.Following == "n1" && st.Members["n3"].Status.State == fsm.StateRunningReplica
	}, "members registered and reporting")
	// Only the primary holds the write lease; every node routes writes to n1.
	for name, n := range c.nodes {
		r := n.WriteRoute()
		if r.Primary != "n1" || r.Address != "n1:5432" || r.Local != (name == "n1") {
			t.Errorf("%s route %+v", name, r)
		}
		if n.HoldsWriteLease() != (name == "n1") {
			t.Errorf("%s HoldsWriteLease = %v", name, n.HoldsWriteLease())
		}
	}
	await.True(t, 15*time.Second, func() bool { return c.nodes["n3"].WriteRoute().Valid }, "follower route valid")
	// The proxy may ask for every transaction: no allocation.
	if allocs := testing.AllocsPerRun(100, func() { _ = c.nodes["n1"].HoldsWriteLease() }); allocs != 0 {
		t.Errorf("HoldsWriteLease allocates %v times", allocs)
	}
}

func TestFollowerWritesAreForwardedToTheLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	var follower *testNode
	for _, n := range c.nodes {
		if !n.IsLeader() {
			follower = n
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := retry(ctx, func() error { return follower.SetPause(ctx, true) }); err != nil {
		t.Fatalf("SetPause from follower %s: %v", follower.name, err)
	}
	for name, n := range c.nodes {
		await.True(t, 15*time.Second, func() bool { return n.State().Paused }, "%s sees pause", name)
	}
	// A rejection travels back with its code.
	if _, err := follower.Switchover(ctx, "nobody", "n3"); !errorsIs(err, fsm.ErrPrecondition) {
		t.Fatalf("switchover with a wrong leader from a follower: %v", err)
	}
	// A forwarded command the leader cannot decode (a newer follower, a bug) is refused
	// before it is proposed, instead of halting every node.
	_, leaderAddr := follower.Leader()
	resp, err := follower.forward(ctx, leaderAddr, rpcRequest{Kind: rpcApply, Command: []byte{200, 9, 0, 0, 0, 0, 0, 0, 0, 0, '{', '}'}})
	if err != nil || resp.Error == nil || !errorsIs(resp.Error, fsm.ErrInvalid) {
		t.Fatalf("undecodable forwarded command: %+v %v", resp, err)
	}
	if err := retry(ctx, func() error { return follower.SetPause(ctx, false) }); err != nil {
		t.Fatalf("cluster unusable after a refused command: %v", err)
	}
	for name, n := range c.nodes {
		if n.Err() != nil {
			t.Fatalf("%s halted: %v", name, n.Err())
		}
	}
}

func TestFailoverWhenPrimaryPostgresCrashes(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	mon := c.monitorSplitBrain()
	c.pgs.get("n1").set(func(p *fakePG) { p.running = false })

	primary := c.waitPrimary(30*time.Second, "n1")
	if primary == "n1" {
		t.Fatal("n1 stayed primary with its PostgreSQL down")
	}
	// Fence before promote: FENCE to n1 was published before PROMOTE. (Normally n1 also
	// acknowledged it first; on a slow machine a leader change can supersede it and the
	// promotion then waits out n1's lease instead; the golden scripts pin both paths down.)
	st := c.nodes[primary].State()
	var fenceIssued, fenceDone, promoteIssued uint64
	for _, d := range st.Directives {
		if d.Type == fsm.DirectiveFence && d.Target == "n1" {
			if fenceIssued == 0 {
				fenceIssued = d.IssuedIndex
			}
			if d.Status == fsm.DirectiveDone {
				fenceDone = d.FinishedIndex
			}
		}
		if d.Type == fsm.DirectivePromote && d.Target == primary && d.Status == fsm.DirectiveDone {
			promoteIssued = d.IssuedIndex
		}
	}
	if fenceIssued == 0 || promoteIssued == 0 || fenceIssued > promoteIssued {
		t.Fatalf("FENCE of n1 issued at %d, acknowledged at %d, PROMOTE issued at %d: fence must come first",
			fenceIssued, fenceDone, promoteIssued)
	}
	h := st.History[len(st.History)-1]
	if h.NewPrimary != primary || h.OldPrimary != "n1" || h.Kind != fsm.OpFailover {
		t.Fatalf("history %+v", h)
	}
	// n1 rejoins as a replica of the new primary (its PostgreSQL is restarted by Follow).
	await.True(t, 30*time.Second, func() bool {
		m := c.nodes[primary].State().Members["n1"]
		return m.Status.State == fsm.StateRunningReplica && m.Status.Following == primary
	}, "n1 rejoined as a replica of %s", primary)
	mon.check(t)
}

// TestPartitionedPrimaryStopsWritesBeforePromotion isolates the primary's node from the rest:
// its agent and PostgreSQL keep running on a stale view. Its proxy must stop routing writes
// (lease lost) before the majority promotes another node, and after quorum_loss_timeout it
// stops PostgreSQL itself (invariants 1-3).
func TestPartitionedPrimaryStopsWritesBeforePromotion(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	n1 := c.nodes["n1"]
	w := watchRoutes(n1.Node)
	defer w.close()
	mon := c.monitorSplitBrain()
	cut := time.Now()
	c.isolate("n1")

	var primary string
	await.True(t, 30*time.Second, func() bool {
		for _, name := range []string{"n2", "n3"} {
			if p := c.nodes[name].State().Primary; p != "" && p != "n1" && c.pgs.get(p).writable() {
				primary = p
				return true
			}
		}
		return false
	}, "a new primary in the majority")
	lost := w.lostAt()
	promoted := c.pgs.get(primary).promotedAt
	if lost.IsZero() || !lost.Before(promoted) {
		t.Fatalf("n1's lease lost at %v, %s promoted at %v: the lease must run out first", lost.Sub(cut), primary, promoted.Sub(cut))
	}
	if d := lost.Sub(cut); d > n1.cfg.Failover.LeaseTimeout+200*time.Millisecond {
		t.Errorf("n1 kept its lease %s after the partition (lease_timeout %s)", d, n1.cfg.Failover.LeaseTimeout)
	}
	t.Logf("partition at 0; n1 lease lost at %s; %s promoted at %s", lost.Sub(cut), primary, promoted.Sub(cut))
	if n1.HoldsWriteLease() {
		t.Fatal("isolated n1 still holds its lease")
	}
	// Self-fencing quorum_loss_timeout after n1's last quorum contact (its last renewal that
	// committed, shortly before the partition).
	contact := n1.LastQuorumContact()
	await.True(t, n1.cfg.Failover.QuorumLossTimeout+5*time.Second, func() bool { return !c.pgs.get("n1").writable() },
		"isolated n1 stops its PostgreSQL")
	if since := time.Since(contact); since < n1.cfg.Failover.QuorumLossTimeout {
		t.Fatalf("self-fenced %s after the last quorum contact, before quorum_loss_timeout", since)
	}
	mon.check(t)

	// Healed, n1 learns it was deposed and rejoins as a replica.
	c.heal("n1")
	await.True(t, 30*time.Second, func() bool {
		m := c.nodes[primary].State().Members["n1"]
		return m.Status.State == fsm.StateRunningReplica && m.Status.Following == primary
	}, "n1 rejoined as a replica")
}

func TestQuorumLossDropsTheLeaseAtOnce(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	n1 := c.nodes["n1"]
	w := watchRoutes(n1.Node)
	defer w.close()
	stopped := time.Now()
	c.stop("n2")
	c.stop("n3")
	lease := n1.cfg.Failover.LeaseTimeout
	await.True(t, lease+time.Second, func() bool { return !w.lostAt().IsZero() }, "n1's proxy is told the lease is gone")
	if n1.HoldsWriteLease() {
		t.Fatal("n1 holds its lease without a quorum")
	}
	if d := w.lostAt().Sub(stopped); d > lease+100*time.Millisecond {
		t.Fatalf("lease lost %s after quorum loss, lease_timeout is %s", d, lease)
	}
	t.Logf("lease lost %s after two of three nodes stopped", w.lostAt().Sub(stopped))
}

func TestRaftLeaderLossDoesNotMoveThePrimary(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	var leader string
	await.True(t, 15*time.Second, func() bool {
		if l := c.leader(); l != nil {
			leader = l.name
			return true
		}
		return false
	}, "a leader")
	if leader == "n1" {
		// Move Raft leadership off the primary's node first.
		if err := c.nodes["n1"].raft.LeadershipTransfer().Error(); err != nil {
			t.Fatal(err)
		}
		await.True(t, 15*time.Second, func() bool { l := c.leader(); return l != nil && l.name != "n1" }, "leadership moved")
		leader = c.leader().name
	}
	epoch := c.nodes["n1"].State().Epoch
	history := len(c.nodes["n1"].State().History)
	c.stop(leader)
	await.True(t, 15*time.Second, func() bool {
		l := c.leader()
		return l != nil && l.State().Epoch > epoch
	}, "a new leader begins a new epoch")
	// The primary stays, with its lease, and nothing fails over: watch for two primary
	// timeouts' worth of n1's renewals under the new leader.
	window := time.Now().Add(2 * c.nodes["n1"].cfg.Failover.PrimaryTimeout)
	await.True(t, 30*time.Second, func() bool {
		return c.nodes["n1"].State().Members["n1"].Lease.RenewedAt.After(window)
	}, "n1 renewing under the new leader")
	if p := c.waitPrimary(15*time.Second, leader); p != "n1" {
		t.Fatalf("primary moved to %s after the raft leader %s stopped", p, leader)
	}
	if h := c.nodes["n1"].State().History; len(h) != history {
		t.Fatalf("history grew: %+v", h[history:])
	}
}

func TestSwitchover(t *testing.T) {
	var inflight atomic.Int64
	c := newTestCluster(t, 3, nil)
	c.settle(30 * time.Second)
	// n3's proxy has a write transaction in flight when the switchover starts.
	c.nodes["n3"].stopAgent()
	<-c.nodes["n3"].agentDone
	inflight.Store(1)
	c.startAgent(c.nodes["n3"], AgentOptions{InflightWrites: func() int { return int(inflight.Load()) }})
	mon := c.monitorSplitBrain()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := retry(ctx, func() error { _, err := c.nodes["n3"].Switchover(ctx, "n2", "n3"); return err }); !errorsIs(err, fsm.ErrPrecondition) {
		t.Fatalf("switchover naming a non-primary leader: %v", err)
	}
	var id uint64
	if err := retry(ctx, func() (err error) { id, err = c.nodes["n2"].Switchover(ctx, "n1", "n2"); return err }); err != nil {
		t.Fatal(err)
	}
	// Writes pause while n3's transaction runs; the switchover waits for it.
	await.True(t, 15*time.Second, func() bool {
		st := c.nodes["n1"].State()
		return st.WritesPaused() && st.Operation != nil && st.Operation.Phase == fsm.PhaseDraining &&
			c.nodes["n3"].WriteRoute().Paused
	}, "writes paused on every proxy, draining")
	if st := c.nodes["n1"].State(); st.Primary != "n1" || !c.pgs.get("n1").writable() {
		t.Fatal("the primary was demoted before the proxies drained")
	}
	inflight.Store(0)
	op, err := c.nodes["n3"].WaitOperation(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if op.Phase != fsm.PhaseDone || op.NewPrimary != "n2" {
		t.Fatalf("switchover ended %s (%s), new primary %q", op.Phase, op.Message, op.NewPrimary)
	}
	if p := c.waitPrimary(15 * time.Second); p != "n2" {
		t.Fatalf("primary %s after switchover to n2", p)
	}
	if c.nodes["n1"].State().WritesPaused() {
		t.Fatal("write pause not lifted")
	}
	// CHECKPOINT ran before the demotion; n1 follows n2; nothing was lost.
	calls := c.pgs.get("n1").Calls()
	if len(calls) < 2 || calls[0] != "checkpoint" || calls[1] != "follow n2" {
		t.Fatalf("n1's PostgreSQL calls %v, want checkpoint then follow n2", calls)
	}
	_, _, n1lsn, _ := c.pgs.get("n1").snapshot()
	_, _, n2lsn, _ := c.pgs.get("n2").snapshot()
	if n2lsn < n1lsn {
		t.Fatalf("n2 promoted at %s, behind n1's final %s", n2lsn, n1lsn)
	}
	await.True(t, 15*time.Second, func() bool {
		st := c.nodes["n2"].State()
		return st.Members["n1"].Status.Following == "n2" && st.Members["n3"].Status.Following == "n2"
	}, "replicas follow n2")
	mon.check(t)
}

func TestManualFailoverRefusesLaggingCandidateUnlessForced(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	c.waitRegistered(15*time.Second, "n1", "n2", "n3")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// n2 may never be promoted; n3's replication breaks and it falls 2 MiB behind.
	if err := retry(ctx, func() error { return c.nodes["n1"].SetTags(ctx, "n2", fsm.Tags{NoFailover: true, FailoverPriority: 1}) }); err != nil {
		t.Fatal(err)
	}
	c.pgs.get("n3").set(func(p *fakePG) { p.upstream, p.failOn["follow n1"] = "nowhere", errors.New("replication broken") })
	c.pgs.get("n1").write(2 << 20)
	await.True(t, 15*time.Second, func() bool {
		st := c.nodes["n3"].State()
		return st.Members["n1"].Status.FlushLSN == 1000+2<<20 && st.Members["n2"].Tags.NoFailover
	}, "n1 reported its new position")
	// The primary dies for good: no automatic failover (nothing eligible), no local restart.
	c.pgs.get("n1").set(func(p *fakePG) { p.running, p.failOn["start"] = false, errors.New("no space left on device") })
	await.True(t, 15*time.Second, func() bool { return c.nodes["n3"].State().Members["n1"].Status.State == fsm.StateStopped },
		"n1 reported down")
	if op := c.nodes["n3"].State().Operation; op != nil {
		t.Fatalf("automatic failover to a lagging replica: %+v", op)
	}
	id, err := c.nodes["n3"].Failover(ctx, "n3", false)
	if err != nil {
		t.Fatal(err)
	}
	await.True(t, 15*time.Second, func() bool {
		op := c.nodes["n3"].State().Operation
		return op != nil && op.ID == id && strings.Contains(op.Message, "bytes behind")
	}, "failover refuses the lagging candidate")
	if c.pgs.get("n3").writable() {
		t.Fatal("lagging n3 promoted without force")
	}
	if _, err := c.nodes["n1"].Failover(ctx, "n3", true); err != nil {
		t.Fatal(err)
	}
	op, err := c.nodes["n3"].WaitOperation(ctx, id)
	if err != nil || op.Phase != fsm.PhaseDone || op.MayLoseBytes != 2<<20 {
		t.Fatalf("forced failover: %+v %v", op, err)
	}
	if !c.pgs.get("n3").writable() || contains(c.pgs.get("n2").Calls(), "promote") {
		t.Fatal("n3 not promoted, or nofailover n2 was")
	}
}

func TestAddVoterAndRemoveMember(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	c.pgs.add("n4", fsm.RoleReplica, 1000, "n1")
	n4 := c.start("n4", nil, true) // not in its own peers: no bootstrap, waits to be added
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := retry(ctx, func() error { return c.nodes["n2"].AddVoter(ctx, "n4", "n4:8300") }); err != nil {
		t.Fatal(err)
	}
	await.True(t, 15*time.Second, func() bool {
		m, ok := n4.State().Member("n4")
		return ok && m.Status.State == fsm.StateRunningReplica
	}, "n4 joined, registered and reports")
	servers, err := c.nodes["n1"].Servers()
	if err != nil || len(servers) != 4 {
		t.Fatalf("servers %+v %v", servers, err)
	}
	if err := retry(ctx, func() error { return c.nodes["n3"].RemoveMember(ctx, "n1") }); !errorsIs(err, fsm.ErrPrecondition) {
		t.Fatalf("removing the primary: %v", err)
	}
	// A voter's name cannot be added again (under another address it would move its vote).
	if err := c.nodes["n2"].AddVoter(ctx, "n4", "elsewhere:8300"); !errorsIs(err, fsm.ErrConflict) {
		t.Fatalf("adding n4 a second time: %v", err)
	}
	// Still running, n4 would register itself again: refused until it is stopped.
	if err := c.nodes["n3"].RemoveMember(ctx, "n4"); !errorsIs(err, fsm.ErrPrecondition) || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("removing the running n4: %v", err)
	}
	c.stop("n4")
	var err2 error
	await.True(t, 15*time.Second, func() bool {
		err2 = retry(ctx, func() error { return c.nodes["n3"].RemoveMember(ctx, "n4") })
		return err2 == nil
	}, "the stopped n4 to be removable")
	await.True(t, 15*time.Second, func() bool {
		_, ok := c.nodes["n1"].State().Member("n4")
		s, _ := c.nodes["n1"].Servers()
		return !ok && len(s) == 3
	}, "n4 removed from state and raft")
}

func TestUndecodableEntryStopsTheNodesThatReachIt(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	l := c.leader()
	// A command from a future version this binary cannot read.
	f := l.raft.Apply([]byte{99, 1, 0, 0, 0, 0, 0, 0, 0, 0, '{', '}'}, time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	bad := f.Index()
	halted := func(n *testNode) bool { return n.Err() != nil }
	// The entry was committed by a quorum; each node that applies it halts and stops. (A
	// node the entry never reached before the others stopped cannot apply it either.)
	await.True(t, 15*time.Second, func() bool {
		count := 0
		for _, n := range c.nodes {
			if halted(n) {
				count++
			}
		}
		return count >= 2
	}, "a quorum of nodes halted")
	for name, n := range c.nodes {
		// raft counts an entry applied once it handed it to the FSM goroutine: a node past the
		// entry must halt (shortly), one before it cannot have applied it.
		if n.raft.AppliedIndex() >= bad {
			await.True(t, 15*time.Second, func() bool { return halted(n) }, "%s halts on entry %d", name, bad)
		}
		if halted(n) {
			if err := n.Err(); !strings.Contains(err.Error(), fmt.Sprintf("log entry %d", bad)) {
				t.Errorf("%s stopped with %v", name, err)
			}
			select {
			case <-n.Done():
			case <-time.After(15 * time.Second):
				t.Errorf("%s halted but did not shut down", name)
			}
		}
		if n.State().Index >= bad {
			t.Errorf("%s's state moved past the undecodable entry", name)
		}
	}
}

func TestCrashedPrimaryRestartsLocallyWhenNoReplicaCanTakeOver(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.waitPrimary(30 * time.Second)
	c.waitRegistered(15*time.Second, "n1", "n2", "n3")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range []string{"n2", "n3"} {
		if err := retry(ctx, func() error { return c.nodes["n1"].SetTags(ctx, n, fsm.Tags{NoFailover: true, FailoverPriority: 1}) }); err != nil {
			t.Fatal(err)
		}
	}
	await.True(t, 15*time.Second, func() bool { return !c.nodes["n1"].State().Members["n3"].Tags.Promotable() }, "tags applied")
	c.pgs.get("n1").set(func(p *fakePG) { p.running = false })
	await.True(t, 15*time.Second, func() bool { return contains(c.pgs.get("n1").Calls(), "start") }, "n1's agent restarts PostgreSQL")
	if p := c.waitPrimary(15 * time.Second); p != "n1" {
		t.Fatalf("primary %s", p)
	}
	st := c.nodes["n2"].State()
	if len(st.Operations) != 0 || len(st.History) != 1 {
		t.Fatalf("a failover happened: %+v %+v", st.Operations, st.History)
	}
}

// A switchover booked two seconds ahead (through a follower) is run by the Raft leader at its
// time: nothing moves before, the booking then records the operation, which ends with the
// candidate as primary.
func TestScheduledSwitchover(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.settle(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Now().Add(2 * time.Second)
	if err := retry(ctx, func() error { return c.nodes["n3"].ScheduleSwitchover(ctx, "n1", "n2", at) }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.nodes["n3"].Switchover(ctx, "n1", "n3"); !errorsIs(err, fsm.ErrConflict) {
		t.Fatalf("a switchover before the booked one: %v, want a conflict", err)
	}
	var last *fsm.ScheduledSwitchover
	await.True(t, 20*time.Second, func() bool {
		last = c.nodes["n1"].State().LastScheduledSwitchover
		return last != nil
	}, "the booking to end")
	if last.OperationID == 0 || last.EndedAt.Before(at) {
		t.Fatalf("the booking ended %s at %s (booked for %s), operation %d", last.Outcome, last.EndedAt, at, last.OperationID)
	}
	op, err := c.nodes["n3"].WaitOperation(ctx, last.OperationID)
	if err != nil {
		t.Fatal(err)
	}
	if op.Phase != fsm.PhaseDone || op.NewPrimary != "n2" || !strings.HasPrefix(op.Reason, "scheduled switchover") {
		t.Fatalf("the scheduled switchover ended %s (%s), new primary %q, reason %q", op.Phase, op.Message, op.NewPrimary, op.Reason)
	}
	if p := c.waitPrimary(15 * time.Second); p != "n2" {
		t.Fatalf("primary %s after the scheduled switchover to n2", p)
	}
}

// TestStoppingLeaderHandsOverLeadership: a Raft leader that stops gracefully makes another
// voter the leader first, so the cluster has a leader again at once rather than after the
// others' heartbeat timeout and an election (1.5 s each here).
func TestStoppingLeaderHandsOverLeadership(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.Raft.HeartbeatTimeout, cfg.Raft.ElectionTimeout = 1500*time.Millisecond, 1500*time.Millisecond
		cfg.Failover.LeaseTimeout, cfg.Failover.PrimaryTimeout, cfg.Failover.QuorumLossTimeout = 3*time.Second, 5*time.Second, 8*time.Second
	})
	var leader string
	await.True(t, 30*time.Second, func() bool {
		if l := c.leader(); l != nil {
			leader = l.name
			return true
		}
		return false
	}, "a leader")
	// Not c.stop: it cuts the node off the network first, which would leave it no one to hand
	// leadership to.
	tn := c.nodes[leader]
	if tn.stopAgent != nil {
		tn.stopAgent()
		<-tn.agentDone
	}
	if err := tn.Close(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, leader)
	stopped := time.Now()
	// Without the hand-over no follower even notices the loss before 1.5 s.
	await.True(t, 700*time.Millisecond, func() bool {
		for _, n := range c.nodes {
			if n.raft.State() == raft.Leader {
				return true
			}
		}
		return false
	}, "a new leader within 0.7 s of the old one's stop")
	t.Logf("a new leader %v after the old one stopped", time.Since(stopped).Round(time.Millisecond))
}

// A Raft leader handing leadership over (as a stopping one does) to the primary's node: the
// target stands for election at the leader's word, not because it lost its leader, so the
// primary keeps its write lease throughout and its proxy closes nothing. (CI saw the primary's
// proxy drop its server connections, and a client its transaction, during such a hand-over.)
func TestLeadershipHandOverKeepsThePrimarysLease(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	primary := c.settle(30 * time.Second)
	var leader *testNode
	await.True(t, 10*time.Second, func() bool { leader = c.leader(); return leader != nil }, "a Raft leader")
	if leader.name == primary {
		// Move leadership off the primary's node first.
		for name := range c.nodes {
			if name != primary {
				if err := leader.raft.LeadershipTransferToServer(raft.ServerID(name), c.nodes[name].trans.LocalAddr()).Error(); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		await.True(t, 10*time.Second, func() bool { leader = c.leader(); return leader != nil && leader.name != primary }, "leadership off the primary's node")
	}
	p := c.nodes[primary]
	await.True(t, 10*time.Second, func() bool { return p.HoldsWriteLease() }, "the primary's lease")
	w := watchRoutes(p.Node)
	defer w.close()
	sawCandidate := make(chan bool, 1)
	go func() {
		seen := false
		for !p.IsLeader() {
			if p.raft.State() == raft.Candidate {
				seen = true
			}
			time.Sleep(100 * time.Microsecond)
		}
		sawCandidate <- seen
	}()
	if err := leader.raft.LeadershipTransferToServer(raft.ServerID(primary), p.trans.LocalAddr()).Error(); err != nil {
		t.Fatal(err)
	}
	await.True(t, 10*time.Second, func() bool { return p.IsLeader() }, "%s leads", primary)
	t.Logf("%s was seen as a candidate during the hand-over: %v", primary, <-sawCandidate)
	if lost := w.lostAt(); !lost.IsZero() {
		t.Fatalf("%s's proxy was told its lease was gone during the hand-over", primary)
	}
	if !p.HoldsWriteLease() {
		t.Fatal("the primary lost its lease to the hand-over")
	}
}
