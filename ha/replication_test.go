package ha

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

func TestSlotName(t *testing.T) {
	for in, want := range map[string]string{
		"node1":                 "node1",
		"DB-West.2":             "db_west_2",
		strings.Repeat("a", 70): strings.Repeat("a", 63),
	} {
		if got := SlotName(in); got != want {
			t.Errorf("SlotName(%q) = %q, want %q", in, got, want)
		}
	}
}

// applier returns a function that applies commands to *s, failing the test on a refusal.
func applier(t *testing.T, s **fsm.State) func(fsm.Command) {
	return func(cmd fsm.Command) {
		next, res := (*s).Apply(cmd, fsm.Meta{Index: (*s).Index + 1, At: time.Unix(0, 0)})
		if res.Err != nil {
			t.Fatalf("%T: %v", cmd, res.Err)
		}
		*s = next
	}
}

func TestSlotPlan(t *testing.T) {
	s := fsm.NewState()
	apply := applier(t, &s)
	for _, n := range []string{"n1", "n2", "n3", "old"} {
		apply(fsm.RegisterMember{Name: n, RaftAddress: n + ":8300"})
	}
	apply(fsm.RemoveMember{Name: "old"})
	slots := []Slot{{Name: "n1"}, {Name: "n3", Active: true}, {Name: "old"}, {Name: "ghost"}, {Name: "busy", Active: true}, {Name: "keep"}}
	cases := []struct {
		primary, cleanup bool
		create, drop     string
	}{
		// The primary wants n2 and n3; its own slot and the removed member's go at once.
		{true, false, "[n2]", "[n1 old]"},
		// With the cleanup due, inactive slots of nobody go too; active ones and permanent ones stay.
		{true, true, "[n2]", "[n1 old ghost]"},
		// A standby holds no member's slot (they would only keep WAL back).
		{false, false, "[]", "[n1 old]"},
	}
	for _, tc := range cases {
		create, drop := slotPlan(s, "n1", tc.primary, slots, tc.cleanup, []string{"keep"})
		var names []string
		for _, d := range drop {
			names = append(names, d.name)
			if d.terminate != (d.name == "old") {
				t.Errorf("drop %s terminate=%v", d.name, d.terminate)
			}
		}
		if got := fmt.Sprint(create); got != tc.create && !(got == "[]" && tc.create == "[]") {
			t.Errorf("primary=%v cleanup=%v: create %s, want %s", tc.primary, tc.cleanup, got, tc.create)
		}
		if got := fmt.Sprint(names); got != tc.drop {
			t.Errorf("primary=%v cleanup=%v: drop %s, want %s", tc.primary, tc.cleanup, got, tc.drop)
		}
	}
}

// primaryN1 makes n1 (the agent's node) the primary of a three-member cluster.
func primaryN1(c *fakeCluster) {
	c.setup()
	c.must(fsm.RegisterMember{Name: "n3", RaftAddress: "n3:8300", PGHost: "n3", PGPort: 5432, Tags: fsm.Tags{FailoverPriority: 1}})
	c.must(fsm.SetPrimary{Node: ""})
	c.must(fsm.SetPrimary{Node: "n1"})
	c.lease.Store(true)
}

func TestAgentManagesSlotsOnThePrimary(t *testing.T) {
	c := newFakeCluster(t, "n1")
	primaryN1(c)
	pg := newFakePGNet().add("n1", fsm.RolePrimary, 100, "")
	pg.set(func(p *fakePG) { p.slots["ghost"], p.slots["tool"], p.slots["keep"] = false, true, false })
	runAgent(t, c, pg, agentConfig(), AgentOptions{SlotCleanupInterval: 300 * time.Millisecond, PermanentSlots: []string{"keep"}})
	slotsOf := func() string {
		ss, _ := pg.Slots(t.Context())
		var names []string
		for _, s := range ss {
			names = append(names, s.Name)
		}
		return fmt.Sprint(names)
	}
	// One slot per other member; the inactive slot of nobody goes at the cleanup.
	await.True(t, 5*time.Second, func() bool { return slotsOf() == "[keep n2 n3 tool]" }, "slots of n2 and n3, ghost dropped")
	// A stopped member keeps its slot; a removed one loses it at once.
	c.must(fsm.RemoveMember{Name: "n3"})
	await.True(t, 5*time.Second, func() bool { return slotsOf() == "[keep n2 tool]" }, "n3's slot dropped")
	if log := pg.ReplLog(); !slices.Contains(log, "drop n3") || !slices.Contains(log, "drop ghost") {
		t.Fatalf("replication calls %v", log)
	}
}

func TestAgentAppliesTheWantedSyncConfiguration(t *testing.T) {
	c := newFakeCluster(t, "n1")
	primaryN1(c)
	pg := newFakePGNet().add("n1", fsm.RolePrimary, 500, "")
	cfg := agentConfig()
	cfg.Failover.SynchronousMode = "on"
	runAgent(t, c, pg, cfg, AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningPrimary }, "running")
	want := &fsm.SyncTarget{Primary: "n1", Standbys: []string{"n2"}, Count: 1, Value: `FIRST 1 ("n2")`}
	c.must(fsm.SetSyncState{Primary: "n1", Standbys: []string{"n2"}, Wanted: want})
	await.True(t, 2*time.Second, func() bool {
		st := c.status("n1")
		return st.SyncStandbyNames == want.Value && st.SyncSince == 500
	}, "applied and reported with the flush position")
}

func TestAgentPromotionInSyncMode(t *testing.T) {
	for _, strict := range []bool{false, true} {
		c := newFakeCluster(t, "n1")
		c.setup()
		c.must(fsm.RegisterMember{Name: "n3", RaftAddress: "n3:8300", PGHost: "n3", PGPort: 5432, Tags: fsm.Tags{FailoverPriority: 1}})
		pgs := newFakePGNet()
		pgs.add("n2", fsm.RolePrimary, 100, "")
		pg := pgs.add("n1", fsm.RoleReplica, 100, "n2")
		pg.set(func(p *fakePG) { p.ssn = `FIRST 1 ("n1")` }) // copied from its old primary by pg_basebackup
		cfg := agentConfig()
		cfg.Failover.SynchronousMode, cfg.Failover.SynchronousModeStrict = "on", strict
		runAgent(t, c, pg, cfg, AgentOptions{})
		await.True(t, 2*time.Second, func() bool { return c.status("n1").Healthy }, "first report")
		c.must(fsm.SetPrimary{Node: ""})
		id := c.must(fsm.IssueDirective{Type: fsm.DirectivePromote, Target: "n1"}).ID
		await.True(t, 3*time.Second, func() bool { d, _ := c.State().Directive(id); return d.Status == fsm.DirectiveDone }, "promoted")
		want := `sync ""`
		if strict {
			want = `sync "*"`
		}
		log := pg.ReplLog()
		// Nothing is synchronous with a new primary: reset before promotion, then the others'
		// slots before acknowledging.
		if len(log) < 3 || log[0] != want || !slices.Contains(log, "create n2") || !slices.Contains(log, "create n3") {
			t.Fatalf("strict=%v: replication calls %v, want %s first, then slots for n2 and n3", strict, log, want)
		}
	}
}

func TestAgentReportsPromptlyWhenAFailoverBegins(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 100, "")
	pg := pgs.add("n1", fsm.RoleReplica, 100, "n2")
	cfg := agentConfig()
	cfg.Health.Interval, cfg.Health.MaxBackoff = 3*time.Second, 3*time.Second // periodic reports are rare
	runAgent(t, c, pg, cfg, AgentOptions{})
	await.True(t, 4*time.Second, func() bool { return c.status("n1").Healthy }, "first report")
	start := time.Now()
	op := c.must(fsm.StartOperation{Kind: fsm.OpFailover, Reason: "test", OldPrimary: "n2"})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").ReportIndex > op.Index }, "a report after the failover began")
	fence := c.must(fsm.IssueDirective{Type: fsm.DirectiveFence, Target: "n2", Params: fsm.DirectiveParams{OperationID: op.ID}}).ID
	ack := c.must(fsm.AckDirective{ID: fence, Node: "n2", Success: true})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").ReportIndex > ack.Index }, "a report after the FENCE was acknowledged")
	if d := time.Since(start); d > cfg.Health.Interval {
		t.Fatalf("reported after %s, no faster than the periodic report", d)
	}
}

func TestAgentShowsWhyItCannotFollow(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 100, "")
	pg := pgs.add("n1", fsm.RoleReplica, 100, "n2")
	pg.set(func(p *fakePG) {
		p.running = false
		p.failOn["follow n2"] = errors.New("pg_rewind failed and postgresql.remove_data_directory_on_rewind_failure is off")
	})
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateStopped }, "reported down")
	c.must(fsm.IssueDirective{Type: fsm.DirectiveDemote, Target: "n1", Params: fsm.DirectiveParams{Upstream: "n2"}})
	await.True(t, 2*time.Second, func() bool {
		return strings.Contains(c.status("n1").Reason, "cannot follow n2: pg_rewind failed")
	}, "the reason in the status")
}

func TestAgentShowsWhyAFencedPrimaryCannotFollow(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 100, "")
	pg := pgs.add("n1", fsm.RolePrimary, 100, "")
	pg.set(func(p *fakePG) {
		p.failOn["follow n2"] = errors.New("pg_rewind failed and postgresql.remove_data_directory_on_rewind_failure is off")
	})
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	fence := c.must(fsm.IssueDirective{Type: fsm.DirectiveFence, Target: "n1"}).ID
	await.True(t, 2*time.Second, func() bool { d, _ := c.State().Directive(fence); return d.Status == fsm.DirectiveDone }, "fenced")
	c.must(fsm.IssueDirective{Type: fsm.DirectiveDemote, Target: "n1", Params: fsm.DirectiveParams{Upstream: "n2"}})
	await.True(t, 2*time.Second, func() bool {
		st := c.status("n1")
		return st.State == fsm.StateFenced && strings.Contains(st.Reason, "cannot follow n2: pg_rewind failed")
	}, "the reason it stays out in the status of the fenced node")
}

func TestAgentRefusesAnotherClustersDatabase(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	c.must(fsm.SetPrimary{Node: ""})
	c.must(fsm.SetPrimary{Node: "n2", SystemID: "7001"})
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 100, "")
	pg := pgs.add("n1", fsm.RoleReplica, 100, "n2")
	pg.set(func(p *fakePG) { p.sysid = "7002" })
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool {
		st := c.status("n1")
		return st.State == fsm.StateStopped && !st.Healthy && strings.Contains(st.Reason, "belongs to another cluster")
	}, "reported as another cluster's, never healthy")
	if got := c.State().ReadReplicas(0); len(got) != 0 {
		t.Fatalf("routed to another cluster's database: %+v", got)
	}
}

func syncCluster(t *testing.T) (*testCluster, string, string) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.Failover.SynchronousMode = "on" })
	c.settle(30 * time.Second)
	// The record settles on one synchronous standby that the primary waits for.
	var sync string
	await.True(t, 15*time.Second, func() bool {
		st := c.nodes["n1"].State()
		if len(st.SyncStandbys) != 1 || st.SyncCount != 1 || st.SyncPrimary != "n1" {
			return false
		}
		for _, n := range []string{"n2", "n3"} {
			if m := st.Members[n]; m.Status.State != fsm.StateRunningReplica || m.Status.Following != "n1" || len(st.PendingDirectives(n)) > 0 {
				return false // still settling: the synchronous standby may change
			}
		}
		sync = st.SyncStandbys[0]
		var ssn string
		c.pgs.get("n1").set(func(p *fakePG) { ssn = p.ssn })
		return ssn == fmt.Sprintf(`FIRST 1 ("%s")`, sync)
	}, "a synchronous standby recorded and in effect")
	other := "n2"
	if sync == "n2" {
		other = "n3"
	}
	return c, sync, other
}

func TestSyncModeFailoverPromotesTheSyncStandby(t *testing.T) {
	c, sync, other := syncCluster(t)
	// The asynchronous standby is further ahead (WAL that was never acknowledged); it is not
	// promoted.
	c.pgs.get(other).set(func(p *fakePG) { p.upstream = "nowhere"; p.lsn += 100 })
	c.pgs.get("n1").set(func(p *fakePG) { p.running, p.failOn["start"] = false, errors.New("disk gone") })
	if p := c.waitPrimary(30*time.Second, "n1"); p != sync {
		t.Fatalf("promoted %s, the synchronous standby was %s", p, sync)
	}
	// The new primary's record starts empty and is rebuilt from its own standbys.
	c.pgs.get(other).set(func(p *fakePG) { p.upstream = sync })
	await.True(t, 30*time.Second, func() bool {
		st := c.nodes[sync].State()
		return st.SyncPrimary == sync && st.SyncCount == 1 && slices.Equal(st.SyncStandbys, []string{other})
	}, "%s's synchronous standby recorded", sync)
}

func TestSyncModeNoPromotionWhenPrimaryAndSyncStandbyAreLost(t *testing.T) {
	c, sync, other := syncCluster(t)
	c.stop(sync)
	c.pgs.get(sync).set(func(p *fakePG) { p.running = false })
	c.stop("n1")
	c.pgs.get("n1").set(func(p *fakePG) { p.running = false })
	// The survivor alone cannot elect a Raft leader; give it a quorum with a fresh node that
	// has no PostgreSQL worth promoting. Simpler: restart n1's daemon without PostgreSQL.
	c.pgs.get("n1").set(func(p *fakePG) { p.failOn["start"] = errors.New("disk gone") })
	c.start("n1", c.peers, true)
	// The controller says why it promotes nobody...
	await.True(t, 30*time.Second, func() bool {
		l := c.leader()
		return l != nil && strings.Contains(l.ControllerWaiting(), other+": not a recorded synchronous standby")
	}, "the controller waiting because %s is not a synchronous standby", other)
	// ... and keeps to it.
	deadline := time.Now().Add(4 * c.nodes[other].cfg.Failover.PrimaryTimeout)
	for time.Now().Before(deadline) {
		if st := c.nodes[other].State(); st.Primary == other || c.pgs.get(other).writable() {
			t.Fatalf("%s promoted although it may lack acknowledged commits (record %v)", other, st.SyncStandbys)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var id uint64
	if err := retry(ctx, func() (err error) { id, err = c.nodes[other].Failover(ctx, "", true); return err }); err != nil {
		t.Fatal(err)
	}
	op, err := c.nodes[other].WaitOperation(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if op.Phase != fsm.PhaseDone || op.NewPrimary != other || !strings.Contains(op.MayLose, "not a recorded synchronous standby") {
		t.Fatalf("forced failover: %s, new primary %q, may lose %q", op.Phase, op.NewPrimary, op.MayLose)
	}
	t.Logf("forced failover to %s: may lose: %s", other, op.MayLose)
}

// TestSlotPlanCascading: a replica keeps the slots of the members that replicate from it; the
// primary keeps a cascading member's slot and advances it, while inactive, to the position the
// member reported, and only while the member follows its replicatefrom member.
func TestSlotPlanCascading(t *testing.T) {
	s := fsm.NewState()
	apply := applier(t, &s)
	for _, n := range []string{"n1", "n2"} {
		apply(fsm.RegisterMember{Name: n, RaftAddress: n + ":8300", Tags: fsm.Tags{FailoverPriority: 1}})
	}
	apply(fsm.RegisterMember{Name: "n3", RaftAddress: "n3:8300", Tags: fsm.Tags{FailoverPriority: 1, ReplicateFrom: "n2"}})
	apply(fsm.ReportStatus{Node: "n3", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica,
		Healthy: true, Following: "n2", ReceivedLSN: 0x3000, ReplayedLSN: 0x2000}})

	// n2, a replica: n3's slot is wanted there (created, never dropped while inactive).
	create, drop := slotPlan(s, "n2", false, []Slot{{Name: "n1"}}, false, nil)
	if fmt.Sprint(create) != "[n3]" || len(drop) != 1 || drop[0].name != "n1" {
		t.Fatalf("replica n2: create %v drop %v", create, drop)
	}
	if create, drop := slotPlan(s, "n2", false, []Slot{{Name: "n3"}}, true, nil); len(create)+len(drop) != 0 {
		t.Fatalf("replica n2 with n3's slot: create %v drop %v", create, drop)
	}
	// n1, the primary: keeps every slot; advances n3's while it is inactive.
	slots := []Slot{{Name: "n2", Active: true}, {Name: "n3"}}
	if create, drop := slotPlan(s, "n1", true, slots, true, nil); len(create)+len(drop) != 0 {
		t.Fatalf("primary: create %v drop %v", create, drop)
	}
	if got := fmt.Sprint(cascadeAdvances(s, "n1", slots)); got != "[{n3 8192}]" {
		t.Fatalf("advances %s", got)
	}
	if got := cascadeAdvances(s, "n1", []Slot{{Name: "n3", Active: true}}); len(got) != 0 {
		t.Fatalf("an active slot advanced: %v", got)
	}
	// Back on the primary (its replicatefrom member failed): nothing to advance, the member
	// moves its slot itself.
	apply(fsm.ReportStatus{Node: "n3", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica,
		Healthy: true, Following: "n1", ReceivedLSN: 0x3000, ReplayedLSN: 0x3000}})
	if got := cascadeAdvances(s, "n1", slots); len(got) != 0 {
		t.Fatalf("advances while following the primary: %v", got)
	}
}
