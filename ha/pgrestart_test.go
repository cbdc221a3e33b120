package ha

import (
	"slices"
	"strings"
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

	finished := func(id uint64) fsm.RestartRequest {
		t.Helper()
		var r fsm.RestartRequest
		await.True(t, 2*time.Second, func() bool {
			r, _ = c.State().Restart(id)
			return r.Status != fsm.RestartPending
		}, "restart %d finished", id)
		return r
	}

	id := c.must(fsm.RequestRestart{Node: "n1", Reason: "pending restart"}).ID
	if r := finished(id); r.Status != fsm.RestartDone {
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
	if r := finished(id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "switch over first") {
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
	id = c.must(fsm.RequestRestart{Node: "n1"}).ID
	if r := finished(id); r.Status != fsm.RestartFailed || !strings.Contains(r.Message, "not running") {
		t.Fatalf("restart of a stopped server: %+v", r)
	}
}
