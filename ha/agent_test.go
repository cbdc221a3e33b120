package ha

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

// fakeCluster is a single-process stand-in for Node: commands are applied to a real FSM at
// once, with the local clock; the test plays the leader's controller by applying directives.
type fakeCluster struct {
	t    *testing.T
	name string
	f    *fsm.FSM

	mu  sync.Mutex
	idx uint64
	// failAcks makes the next n acknowledgements fail as a lost network call would.
	failAcks int
	acks     int

	lease   atomic.Bool
	contact atomic.Pointer[time.Time]
}

func newFakeCluster(t *testing.T, name string) *fakeCluster {
	return &fakeCluster{t: t, name: name, f: fsm.New(testLogger(t), nil)}
}

func (c *fakeCluster) Name() string                 { return c.name }
func (c *fakeCluster) State() *fsm.State            { return c.f.State() }
func (c *fakeCluster) Subscribe() *fsm.Subscription { return c.f.Subscribe() }

// LastQuorumContact is "now" (in contact all along) until setContact fixes it in the past.
func (c *fakeCluster) LastQuorumContact() time.Time {
	if t := c.contact.Load(); t != nil {
		return *t
	}
	return time.Now()
}

func (c *fakeCluster) HoldsWriteLease() bool          { return c.lease.Load() }
func (c *fakeCluster) setContact(t time.Time)         { c.contact.Store(&t) }
func (c *fakeCluster) ackCount() int                  { c.mu.Lock(); defer c.mu.Unlock(); return c.acks }
func (c *fakeCluster) failNextAcks(n int)             { c.mu.Lock(); c.failAcks = n; c.mu.Unlock() }
func (c *fakeCluster) member(n string) fsm.Member     { m, _ := c.State().Member(n); return m }
func (c *fakeCluster) status(n string) fsm.NodeStatus { return c.member(n).Status }

func (c *fakeCluster) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := cmd.(fsm.AckDirective); ok {
		c.acks++
		if c.failAcks > 0 {
			c.failAcks--
			return fsm.Result{}, errors.New("forward to leader: connection reset")
		}
	}
	c.idx++
	b, err := fsm.Encode(cmd, time.Now())
	if err != nil {
		return fsm.Result{}, err
	}
	return c.f.Apply(&raft.Log{Index: c.idx, Term: 1, Type: raft.LogCommand, Data: b}).(fsm.Result), nil
}

// must applies a command as the controller would and fails the test on rejection.
func (c *fakeCluster) must(cmd fsm.Command) fsm.Result {
	c.t.Helper()
	res, err := c.Apply(context.Background(), cmd)
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		c.t.Fatalf("%T: %v", cmd, err)
	}
	return res
}

// setup registers n1 (the agent's node) and n2, with n2 the primary of a cluster that already
// had one (so the agent never bootstraps).
func (c *fakeCluster) setup() {
	c.must(fsm.LeaderEstablished{Leader: "n2"})
	c.must(fsm.RegisterMember{Name: "n1", RaftAddress: "n1:8300", PGHost: "n1", PGPort: 5432, Tags: fsm.Tags{FailoverPriority: 1}})
	c.must(fsm.RegisterMember{Name: "n2", RaftAddress: "n2:8300", PGHost: "n2", PGPort: 5432, Tags: fsm.Tags{FailoverPriority: 1}})
	c.must(fsm.SetPrimary{Node: "n2", Reason: "test"})
}

func agentConfig() Config {
	c := fastConfig("n1", nil)
	c.Health.Interval = 20 * time.Millisecond
	c.Health.MaxBackoff = 160 * time.Millisecond
	c.Failover.LeaseTimeout, c.Failover.PrimaryTimeout = 600*time.Millisecond, 1200*time.Millisecond
	c.Failover.QuorumLossTimeout = c.Failover.LeaseTimeout
	return c
}

func runAgent(t *testing.T, c Cluster, pg PostgreSQL, cfg Config, opts AgentOptions) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	a := NewAgent(c, pg, cfg, opts)
	go func() {
		defer close(done)
		_ = a.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

type countingPG struct {
	*fakePG
	probes atomic.Int64
}

func (p *countingPG) Probe(ctx context.Context) (PGStatus, error) {
	p.probes.Add(1)
	return p.fakePG.Probe(ctx)
}

func TestAgentReportsWhatItProbes(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 5000, "")
	pg := pgs.add("n1", fsm.RoleReplica, 4000, "n2")
	runAgent(t, c, pg, agentConfig(), AgentOptions{})

	await.True(t, 2*time.Second, func() bool {
		s := c.status("n1")
		return s.State == fsm.StateRunningReplica && s.Healthy && s.ReplayedLSN == 5000 && s.Following == "n2"
	}, "replica status reported: %+v", c.status("n1"))

	pg.set(func(p *fakePG) { p.running = false })
	await.True(t, 2*time.Second, func() bool {
		s := c.status("n1")
		return s.State == fsm.StateStopped && !s.Healthy && s.Reason == "connection refused" && s.ReplayedLSN == 5000
	}, "down reported with the last known position: %+v", c.status("n1"))
	if calls := pg.Calls(); len(calls) != 0 {
		t.Fatalf("the agent must not start a replica on its own (the controller's DEMOTE does): %v", calls)
	}

	pg.set(func(p *fakePG) { p.running = true })
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningReplica }, "recovery reported")
}

func TestAgentBacksOffWhileProbesFail(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pg := &countingPG{fakePG: newFakePGNet().add("n1", fsm.RoleReplica, 1, "n2")}
	pg.set(func(p *fakePG) { p.running = false })
	cfg := agentConfig() // interval 20ms, threshold 2, max backoff 160ms
	runAgent(t, c, pg, cfg, AgentOptions{})
	start := time.Now()
	await.True(t, 5*time.Second, func() bool { return pg.probes.Load() >= 8 }, "probes continue")
	// Without backoff, 8 probes take 8 intervals (160ms); with it: 20+20+40+80+160+160+160ms.
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("8 failing probes in %s: no backoff", d)
	}
	pg.set(func(p *fakePG) { p.running = true })
	n := pg.probes.Load()
	await.True(t, 2*time.Second, func() bool { return c.status("n1").Healthy }, "healthy again")
	// Back to the normal interval after a success.
	n = pg.probes.Load()
	start = time.Now()
	await.True(t, 2*time.Second, func() bool { return pg.probes.Load() >= n+5 }, "probing at the normal interval")
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Fatalf("5 probes took %s after recovery: still backing off", d)
	}
}

func TestAgentExecutesEachDirectiveOnceAndRetriesItsAck(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 100, "")
	pg := pgs.add("n1", fsm.RoleReplica, 100, "n2")
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").Healthy }, "agent running")

	c.failNextAcks(2) // the first two acknowledgements are lost on the way
	id := c.must(fsm.IssueDirective{Type: fsm.DirectiveCheckpoint, Target: "n1"}).ID
	other := c.must(fsm.IssueDirective{Type: fsm.DirectiveCheckpoint, Target: "n2"}).ID
	await.True(t, 3*time.Second, func() bool {
		d, _ := c.State().Directive(id)
		return d.Status == fsm.DirectiveDone
	}, "directive acknowledged")
	if n := c.ackCount(); n < 3 {
		t.Fatalf("%d acknowledgement attempts, want retries after the two lost ones", n)
	}
	// Many state changes later (reports), it still ran exactly once.
	idx := c.State().Index
	await.True(t, 2*time.Second, func() bool { return c.State().Index > idx+5 }, "more reports")
	if calls := pg.Calls(); len(calls) != 1 || calls[0] != "checkpoint" {
		t.Fatalf("calls %v, want one checkpoint", calls)
	}
	if d, _ := c.State().Directive(other); d.Status != fsm.DirectivePending {
		t.Fatalf("the agent touched another node's directive: %+v", d)
	}
}

func TestAgentIgnoresDirectivesFromOlderEpochs(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pg := newFakePGNet().add("n1", fsm.RoleReplica, 1, "n2")
	a := NewAgent(c, pg, agentConfig(), AgentOptions{Logger: testLogger(t)})
	ctx := context.Background()
	// A state in which a directive of epoch 1 is still pending while epoch 2 runs (the FSM
	// supersedes those; the agent must not rely on it).
	st := *c.State()
	st.Epoch = 2
	st.Directives = []fsm.Directive{{ID: 7, Type: fsm.DirectiveFence, Target: "n1", Epoch: 1, Status: fsm.DirectivePending}}
	a.onState(ctx, &st)
	if calls := pg.Calls(); len(calls) != 0 {
		t.Fatalf("executed an old-epoch directive: %v", calls)
	}
	// Having executed a directive of epoch 3, an epoch-2 one is stale even if the state's
	// epoch has not caught up.
	st.Epoch = 2
	st.Directives = []fsm.Directive{{ID: 8, Type: fsm.DirectiveCheckpoint, Target: "n1", Epoch: 3, Status: fsm.DirectivePending}}
	a.onState(ctx, &st)
	st.Directives = []fsm.Directive{{ID: 9, Type: fsm.DirectiveFence, Target: "n1", Epoch: 2, Status: fsm.DirectivePending}}
	a.onState(ctx, &st)
	if calls := pg.Calls(); len(calls) != 1 || calls[0] != "checkpoint" {
		t.Fatalf("calls %v, want only the epoch-3 checkpoint", calls)
	}
}

func TestAgentFenceSurvivesRestartAndDemoteRejoins(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 900, "")
	pg := pgs.add("n1", fsm.RolePrimary, 1000, "") // a rogue old primary
	cfg := agentConfig()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = NewAgent(c, pg, cfg, AgentOptions{Logger: testLogger(t)}).Run(ctx)
	}()
	fence := c.must(fsm.IssueDirective{Type: fsm.DirectiveFence, Target: "n1", Params: fsm.DirectiveParams{Reason: "failover"}}).ID
	await.True(t, 2*time.Second, func() bool {
		d, _ := c.State().Directive(fence)
		return d.Status == fsm.DirectiveDone && c.status("n1").State == fsm.StateFenced
	}, "fenced")
	if d, _ := c.State().Directive(fence); d.Result.LSN != 1000 {
		t.Fatalf("FENCE of a primary reports its shutdown checkpoint: %+v", d.Result)
	}
	if c.member("n1").Lease.ReleaseIndex == 0 {
		t.Fatal("FENCE acknowledgement did not release the lease")
	}
	cancel()
	<-done

	// A restarted agent stays fenced: it does not start PostgreSQL even as the lease holder.
	c.lease.Store(true)
	c.must(fsm.SetPrimary{Node: ""})
	c.must(fsm.SetPrimary{Node: "n1"})
	runAgent(t, c, pg, cfg, AgentOptions{})
	idx := c.State().Index
	await.True(t, 2*time.Second, func() bool { return c.State().Index > idx+5 }, "agent reporting")
	if c.status("n1").State != fsm.StateFenced || contains(pg.Calls(), "start") {
		t.Fatalf("fence lost across a restart: %+v %v", c.status("n1"), pg.Calls())
	}
	c.must(fsm.SetPrimary{Node: ""})
	c.must(fsm.SetPrimary{Node: "n2"})

	demote := c.must(fsm.IssueDirective{Type: fsm.DirectiveDemote, Target: "n1", Params: fsm.DirectiveParams{Upstream: "n2"}}).ID
	await.True(t, 2*time.Second, func() bool {
		d, _ := c.State().Directive(demote)
		s := c.status("n1")
		return d.Status == fsm.DirectiveDone && s.State == fsm.StateRunningReplica && s.Following == "n2"
	}, "rejoined as a replica of n2: %+v", c.status("n1"))
	calls := pg.Calls()
	if calls[len(calls)-1] != "follow n2" {
		t.Fatalf("calls %v", calls)
	}
}

func TestAgentPromoteAcknowledgesTimelineAndPosition(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 700, "")
	pg := pgs.add("n1", fsm.RoleReplica, 700, "n2")
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	id := c.must(fsm.IssueDirective{Type: fsm.DirectivePromote, Target: "n1"}).ID
	await.True(t, 2*time.Second, func() bool { d, _ := c.State().Directive(id); return d.Status == fsm.DirectiveDone }, "promoted")
	d, _ := c.State().Directive(id)
	if d.Result.Timeline != 2 || d.Result.LSN != 700 || !pg.writable() {
		t.Fatalf("PROMOTE result %+v", d.Result)
	}
	// A failing promotion is acknowledged as failed, with the reason.
	pg.set(func(p *fakePG) { p.failOn["promote"] = errors.New("pg_ctl: server did not promote in time") })
	id = c.must(fsm.IssueDirective{Type: fsm.DirectivePromote, Target: "n1"}).ID
	await.True(t, 2*time.Second, func() bool { d, _ := c.State().Directive(id); return d.Status == fsm.DirectiveFailed }, "failure acknowledged")
	if d, _ := c.State().Directive(id); d.Message != "pg_ctl: server did not promote in time" {
		t.Fatalf("message %q", d.Message)
	}
}

func TestAgentSelfFencesAfterQuorumLoss(t *testing.T) {
	for _, protect := range []bool{true, false} {
		c := newFakeCluster(t, "n1")
		c.setup()
		c.must(fsm.SetPrimary{Node: ""})
		c.must(fsm.SetPrimary{Node: "n1"})
		pg := &countingPG{fakePG: newFakePGNet().add("n1", fsm.RolePrimary, 1, "")}
		cfg := agentConfig()
		cfg.Failover.SplitBrainProtection = protect
		var hook atomic.Value
		runAgent(t, c, pg, cfg, AgentOptions{OnSelfFence: func(reason string) { hook.Store(reason) }})
		await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningPrimary }, "running")
		if !pg.writable() {
			t.Fatal("stopped while in contact")
		}
		c.setContact(time.Now().Add(-time.Hour)) // no quorum contact any more
		if protect {
			await.True(t, 10*time.Second, func() bool { return !pg.writable() }, "self-fenced")
			await.True(t, 5*time.Second, func() bool {
				r, _ := hook.Load().(string)
				return r != "" && c.status("n1").State == fsm.StateFenced
			}, "hook called and FENCED reported")
		} else {
			n := pg.probes.Load()
			await.True(t, 2*time.Second, func() bool { return pg.probes.Load() > n+10 }, "probing on")
			if !pg.writable() || hook.Load() != nil {
				t.Fatal("self-fenced with split_brain_protection off")
			}
		}
	}
}

func TestAgentReportsPromptlyWhileWritesArePaused(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 100, "")
	pg := pgs.add("n1", fsm.RoleReplica, 100, "n2")
	cfg := agentConfig()
	cfg.Health.Interval, cfg.Health.MaxBackoff = 2*time.Second, 2*time.Second // periodic reports are rare
	var inflight atomic.Int64
	inflight.Store(3)
	runAgent(t, c, pg, cfg, AgentOptions{InflightWrites: func() int { return int(inflight.Load()) }})
	await.True(t, 3*time.Second, func() bool { return c.status("n1").Healthy }, "first report")
	c.must(fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RolePrimary, State: fsm.StateRunningPrimary, Healthy: true}})
	op := c.must(fsm.RequestSwitchover{Leader: "n2", Candidate: "n1"}).ID
	pause := c.must(fsm.SetWritePause{OperationID: op, Active: true}).Index
	start := time.Now()
	await.True(t, time.Second, func() bool {
		s := c.status("n1")
		return s.ReportIndex > pause && s.InflightWrites == 3
	}, "report after the pause began")
	inflight.Store(0)
	await.True(t, time.Second, func() bool { return c.status("n1").InflightWrites == 0 }, "drained reported")
	if d := time.Since(start); d > cfg.Health.Interval {
		t.Fatalf("drain reported after %s, no faster than the periodic report", d)
	}
}

// TestAgentPrePromoteHookDecides: the pre_promote hook runs before PostgreSQL is promoted; its
// refusal fails the PROMOTE with the reason and leaves PostgreSQL a replica; its approval lets
// the promotion go ahead; a PROMOTE repeated on a node that already is a primary does not ask
// again.
func TestAgentPrePromoteHookDecides(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 700, "")
	pg := pgs.add("n1", fsm.RoleReplica, 700, "n2")
	var mu sync.Mutex
	var asked []PrePromoteInfo
	refuse := true
	runAgent(t, c, pg, agentConfig(), AgentOptions{PrePromote: func(_ context.Context, p PrePromoteInfo) error {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, p)
		if refuse {
			return errors.New("exit status 1: the old primary is still powered on")
		}
		return nil
	}})
	id := c.must(fsm.IssueDirective{Type: fsm.DirectivePromote, Target: "n1", Params: fsm.DirectiveParams{Reason: "primary lost"}}).ID
	await.True(t, 2*time.Second, func() bool { d, _ := c.State().Directive(id); return d.Status == fsm.DirectiveFailed }, "refused")
	if d, _ := c.State().Directive(id); d.Message != "postgresql.pre_promote refused the promotion: exit status 1: the old primary is still powered on" || pg.writable() {
		t.Fatalf("refusal: %q, writable %v", d.Message, pg.writable())
	}
	mu.Lock()
	refuse = false
	mu.Unlock()
	id = c.must(fsm.IssueDirective{Type: fsm.DirectivePromote, Target: "n1", Params: fsm.DirectiveParams{Reason: "primary lost"}}).ID
	await.True(t, 2*time.Second, func() bool { d, _ := c.State().Directive(id); return d.Status == fsm.DirectiveDone }, "promoted")
	if !pg.writable() {
		t.Fatal("not promoted after the hook allowed it")
	}
	id = c.must(fsm.IssueDirective{Type: fsm.DirectivePromote, Target: "n1"}).ID
	await.True(t, 2*time.Second, func() bool { d, _ := c.State().Directive(id); return d.Status == fsm.DirectiveDone }, "repeated PROMOTE acknowledged")
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 2 || asked[0].Reason != "primary lost" {
		t.Fatalf("hook asked %+v", asked)
	}
}
