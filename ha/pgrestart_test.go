package ha

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

func TestAgentRestartsAReplicaOnRequestAndRefusesThePrimary(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 5000, "")
	pg := &settingsPG{fakePG: pgs.add("n1", fsm.RoleReplica, 4000, "n2"), auto: map[string]string{}}
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningReplica }, "agent running")
	c.must(fsm.UpdatePGConfig{Set: map[string]string{"shared_buffers": "1GB"}})
	await.True(t, 2*time.Second, func() bool { return c.State().PGConfig.Nodes["n1"].Version == 1 }, "configuration applied")
	_, applies := pg.snapshot()

	id := c.must(fsm.RequestRestart{Node: "n1", Reason: "pending restart"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartDone {
		t.Fatalf("restart of a replica: %+v", r)
	}
	calls := pg.Calls()
	if i := slices.Index(calls, "stop"); i < 0 || !slices.Contains(calls[i:], "start") {
		t.Fatalf("a restart is a stop then a start: %v", calls)
	}
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningReplica }, "running again")
	// The configuration is applied again after a restart, so its report (pending restarts
	// included) describes the server now running.
	await.True(t, 2*time.Second, func() bool { _, n := pg.snapshot(); return n > applies }, "configuration re-applied after the restart")

	// The primary is refused, with what to do instead, and not touched.
	c.must(fsm.SetPrimary{Node: ""})
	c.must(fsm.SetPrimary{Node: "n1"})
	before := len(pg.Calls())
	id = c.must(fsm.RequestRestart{Node: "n1"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "switch over first") {
		t.Fatalf("restart of the primary: %+v", r)
	}
	if calls := pg.Calls()[before:]; slices.Contains(calls, "stop") {
		t.Fatalf("the primary was stopped: %v", calls)
	}
	c.must(fsm.SetPrimary{Node: ""})
	c.must(fsm.SetPrimary{Node: "n2"})

	// A stopped PostgreSQL is not started behind the cluster's back.
	pg.set(func(p *fakePG) { p.running = false })
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateStopped }, "down reported")
	before = len(pg.Calls())
	id = c.must(fsm.RequestRestart{Node: "n1"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "not running") {
		t.Fatalf("restart of a stopped server: %+v", r)
	}
	if calls := pg.Calls()[before:]; slices.Contains(calls, "start") || slices.ContainsFunc(calls, func(s string) bool { return strings.HasPrefix(s, "follow") }) {
		t.Fatalf("a refused restart started PostgreSQL: %v", calls)
	}

	// Paused, the cluster starts no replica; an operator's restart does, as a standby of the
	// primary (a follow, never a bare start of whatever the data directory is).
	c.must(fsm.SetPause{Paused: true})
	before = len(pg.Calls())
	id = c.must(fsm.RequestRestart{Node: "n1", Reason: "maintenance done"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartDone {
		t.Fatalf("restart of a stopped replica while paused: %+v", r)
	}
	if calls := pg.Calls()[before:]; !slices.Contains(calls, "follow n2") || slices.Contains(calls, "start") {
		t.Fatalf("a stopped replica is started by following the primary: %v", calls)
	}
	await.True(t, 2*time.Second, func() bool {
		s := c.status("n1")
		return s.State == fsm.StateRunningReplica && s.Healthy && s.Following == "n2"
	}, "a running replica of n2 again")
	// Without a primary to follow, nothing is started.
	pg.set(func(p *fakePG) { p.running = false })
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateStopped }, "down reported")
	c.must(fsm.SetPrimary{Node: ""})
	before = len(pg.Calls())
	id = c.must(fsm.RequestRestart{Node: "n1"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "no primary to follow") {
		t.Fatalf("restart while paused without a primary: %+v", r)
	}
	if calls := pg.Calls()[before:]; len(calls) > 0 && (slices.Contains(calls, "start") || slices.ContainsFunc(calls, func(s string) bool { return strings.HasPrefix(s, "follow") })) {
		t.Fatalf("started without a primary: %v", calls)
	}
}

// reinitPG is a fake PostgreSQL that can reinitialise: a clone of the upstream.
type reinitPG struct{ *fakePG }

func (p reinitPG) Reinit(_ context.Context, up Upstream) error {
	src := p.net.get(up.Host)
	var lsn fsm.LSN
	if src != nil {
		_, _, lsn, _ = src.snapshot()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("reinit " + up.Name); err != nil {
		return err
	}
	p.running, p.role, p.upstream, p.lsn = true, fsm.RoleReplica, up.Host, lsn
	return nil
}

// reinitSetup is a cluster whose primary is n2, with n1 a replica of it that can reinitialise.
func reinitSetup(t *testing.T) (*fakeCluster, reinitPG) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 5000, "")
	return c, reinitPG{pgs.add("n1", fsm.RoleReplica, 4000, "n2")}
}

func TestAgentReinitialisesAReplicaOnRequest(t *testing.T) {
	c, pg := reinitSetup(t)
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningReplica }, "agent running")
	// A replica that cannot start any more (down, say after a failed pg_rewind) is what
	// reinit is for: it is not refused like a restart.
	pg.set(func(p *fakePG) { p.running = false })
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateStopped }, "down reported")
	id := c.must(fsm.RequestReinit{Node: "n1", Reason: "diverged"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartDone || !r.Reinit {
		t.Fatalf("reinit of a stopped replica: %+v", r)
	}
	if calls := pg.Calls(); !slices.Contains(calls, "reinit n2") {
		t.Fatalf("no clone from the primary: %v", calls)
	}
	await.True(t, 2*time.Second, func() bool {
		s := c.status("n1")
		return s.State == fsm.StateRunningReplica && s.Healthy && s.Following == "n2"
	}, "a running replica of n2 again")

	// A failed clone is reported with its reason.
	pg.set(func(p *fakePG) {
		p.failOn = map[string]error{"reinit n2": errors.New("pg_basebackup: could not connect")}
	})
	id = c.must(fsm.RequestReinit{Node: "n1"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "reinitialisation failed: pg_basebackup: could not connect") {
		t.Fatalf("failed reinit: %+v", r)
	}
	pg.set(func(p *fakePG) { p.failOn = nil })

	// The primary is refused and not touched; so is a cluster without a primary.
	c.must(fsm.SetPrimary{Node: ""})
	before := len(pg.Calls())
	id = c.must(fsm.RequestReinit{Node: "n1"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "no primary to clone from") {
		t.Fatalf("reinit without a primary: %+v", r)
	}
	c.must(fsm.SetPrimary{Node: "n1"})
	id = c.must(fsm.RequestReinit{Node: "n1"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "switch over first") {
		t.Fatalf("reinit of the primary: %+v", r)
	}
	if calls := pg.Calls()[before:]; slices.ContainsFunc(calls, func(s string) bool { return strings.HasPrefix(s, "reinit") || s == "stop" }) {
		t.Fatalf("refused requests touched PostgreSQL: %v", calls)
	}
}

func TestAgentWithoutReinitRefusesIt(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 5000, "")
	runAgent(t, c, pgs.add("n1", fsm.RoleReplica, 4000, "n2"), agentConfig(), AgentOptions{})
	id := c.must(fsm.RequestReinit{Node: "n1"}).ID
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "cannot reinitialise") {
		t.Fatalf("reinit on an agent that cannot: %+v", r)
	}
}

// The agent's loop may hand maybeRestart a state taken before the request it just executed
// was acknowledged: the request must not run again (a reinit cloned twice in CI).
func TestAgentRunsARequestOnceWhateverStateItIsShown(t *testing.T) {
	c, pg := reinitSetup(t)
	a := NewAgent(c, pg, agentConfig(), AgentOptions{})
	c.must(fsm.RequestReinit{Node: "n1"})
	before := c.State() // the request is pending here, and stays so in this snapshot
	ctx := context.Background()
	a.maybeRestart(ctx, before)
	if r, _ := c.State().PendingRestart("n1"); r.ID != 0 {
		t.Fatalf("the request is still pending after it ran: %+v", r)
	}
	a.maybeRestart(ctx, before)
	n := 0
	for _, call := range pg.Calls() {
		if strings.HasPrefix(call, "reinit") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the reinit ran %d times: %v", n, pg.Calls())
	}
}

// awaitRequest waits until restart (or reinit) request id has ended and returns it.
func awaitRequest(t *testing.T, c *fakeCluster, id uint64) fsm.RestartRequest {
	t.Helper()
	var r fsm.RestartRequest
	await.True(t, 2*time.Second, func() bool {
		r, _ = c.State().Restart(id)
		return r.Status != fsm.RestartPending
	}, "request %d finished", id)
	return r
}

// slowReinitPG clones only when released, and tells how far it has come meanwhile.
type slowReinitPG struct {
	reinitPG
	release  chan struct{}
	progress atomic.Pointer[string]
}

func (p *slowReinitPG) Reinit(ctx context.Context, up Upstream) error {
	select {
	case <-p.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.reinitPG.Reinit(ctx, up)
}

func (p *slowReinitPG) CloneProgress() string { return *p.progress.Load() }

// A clone of a large database takes hours: the agent keeps reporting meanwhile, with the
// clone's progress, so that the node does not look dead and the operator sees how far it is.
func TestAgentReportsTheCloneWhileItRuns(t *testing.T) {
	c, base := reinitSetup(t)
	pg := &slowReinitPG{reinitPG: base, release: make(chan struct{})}
	first := "3.0 GiB copied of about 40 GiB (7 %) in 1m0s"
	pg.progress.Store(&first)
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningReplica }, "agent running")
	id := c.must(fsm.RequestReinit{Node: "n1", Reason: "diverged"}).ID
	want := func(p string) func() bool {
		return func() bool {
			s := c.status("n1")
			return s.State == fsm.StateStopped && !s.Healthy && strings.HasSuffix(s.Reason, "cloning from n2, "+p)
		}
	}
	await.True(t, 2*time.Second, want(first), "the clone's progress reported")
	later := "12 GiB copied of about 40 GiB (30 %) in 4m0s"
	pg.progress.Store(&later)
	await.True(t, 2*time.Second, want(later), "the progress reported again while the clone runs")
	if r, _ := c.State().Restart(id); r.Status != fsm.RestartPending {
		t.Fatalf("request ended before the clone: %+v", r)
	}
	close(pg.release)
	if r := awaitRequest(t, c, id); r.Status != fsm.RestartDone {
		t.Fatalf("reinit: %+v", r)
	}
	await.True(t, 2*time.Second, func() bool {
		s := c.status("n1")
		return s.State == fsm.StateRunningReplica && s.Healthy && !strings.Contains(s.Reason, "cloning")
	}, "a running replica again, without the clone's reason")
}
