package ha

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

// settingsPG adds ALTER SYSTEM to a fake PostgreSQL: auto holds postgresql.auto.conf, a value
// "bad" is refused, and a changed shared_buffers waits for a restart.
type settingsPG struct {
	*fakePG
	mu      sync.Mutex
	auto    map[string]string
	applies int
}

func (p *settingsPG) ApplySettings(ctx context.Context, set map[string]string, reset []string) (SettingsResult, error) {
	if _, err := p.Probe(ctx); err != nil {
		return SettingsResult{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applies++
	res := SettingsResult{Refused: map[string]string{}}
	for name, v := range set {
		if v == "bad" {
			res.Refused[name] = `invalid value for parameter "` + name + `": "bad"`
			continue
		}
		if name == "shared_buffers" && p.auto[name] != v {
			res.PendingRestart = append(res.PendingRestart, name)
		}
		p.auto[name] = v
	}
	for _, name := range reset {
		delete(p.auto, name)
	}
	return res, nil
}

func (p *settingsPG) snapshot() (map[string]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.auto), p.applies
}

func TestAgentAppliesTheClusterConfigAndReportsBack(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 5000, "")
	pg := &settingsPG{fakePG: pgs.add("n1", fsm.RoleReplica, 4000, "n2"), auto: map[string]string{"shared_buffers": "128MB"}}
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningReplica }, "agent running")

	report := func() fsm.PGConfigStatus { return c.State().PGConfig.Nodes["n1"] }
	c.must(fsm.UpdatePGConfig{Set: map[string]string{"work_mem": "64MB", "shared_buffers": "1GB"}})
	await.True(t, 2*time.Second, func() bool { return report().Version == 1 }, "version 1 reported: %+v", c.State().PGConfig)
	if r := report(); !slices.Equal(r.PendingRestart, []string{"shared_buffers"}) || r.Error != "" {
		t.Fatalf("report: %+v", r)
	}
	if auto, _ := pg.snapshot(); auto["work_mem"] != "64MB" || auto["shared_buffers"] != "1GB" {
		t.Fatalf("postgresql.auto.conf: %v", auto)
	}

	// Applied once: the agent does not run ALTER SYSTEM again at every probe.
	_, n := pg.snapshot()
	idx := c.State().Index
	await.True(t, 2*time.Second, func() bool { return c.State().Index > idx+10 }, "agent reporting")
	if _, again := pg.snapshot(); again != n {
		t.Fatalf("applied %d more times without a change", again-n)
	}

	// A removed parameter is reset; a refused value is reported with PostgreSQL's words.
	c.must(fsm.UpdatePGConfig{Set: map[string]string{"maintenance_work_mem": "bad"}, Reset: []string{"work_mem"}})
	await.True(t, 2*time.Second, func() bool { return report().Version == 2 }, "version 2 reported")
	if r := report(); r.Error != `maintenance_work_mem: invalid value for parameter "maintenance_work_mem": "bad"` {
		t.Fatalf("refusal not reported: %+v", r)
	}
	if auto, _ := pg.snapshot(); auto["work_mem"] != "" {
		t.Fatalf("work_mem not reset: %v", auto)
	}

	// A change made while PostgreSQL is down is applied when it is back.
	pg.set(func(p *fakePG) { p.running = false })
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateStopped }, "down reported")
	c.must(fsm.UpdatePGConfig{Set: map[string]string{"maintenance_work_mem": "256MB"}})
	if r := report(); r.Version != 2 {
		t.Fatalf("a stopped PostgreSQL cannot have applied version 3: %+v", r)
	}
	pg.set(func(p *fakePG) { p.running = true })
	await.True(t, 2*time.Second, func() bool { r := report(); return r.Version == 3 && r.Error == "" }, "version 3 applied after the restart: %+v", report())
	if auto, _ := pg.snapshot(); auto["maintenance_work_mem"] != "256MB" {
		t.Fatalf("postgresql.auto.conf after the restart: %v", auto)
	}
}
