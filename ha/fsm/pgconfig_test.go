package fsm

import (
	"slices"
	"strings"
	"testing"
)

func TestPGConfigSetResetAndReports(t *testing.T) {
	m := threeNodes(t)
	if m.s.PGConfig != nil {
		t.Fatal("a new cluster has no cluster-wide configuration")
	}
	m.ok(UpdatePGConfig{Set: map[string]string{"work_mem": "64MB", "shared_buffers": "256MB"}})
	pc := m.s.PGConfig
	if pc.Version != 1 || pc.Params["work_mem"] != "64MB" || pc.Params["shared_buffers"] != "256MB" || len(pc.Reset) != 0 {
		t.Fatalf("after the first change: %+v", pc)
	}
	if pc.UpdatedIndex != m.idx || !pc.UpdatedAt.Equal(m.at) {
		t.Fatalf("updated at %d/%v, want %d/%v", pc.UpdatedIndex, pc.UpdatedAt, m.idx, m.at)
	}

	m.ok(ReportPGConfig{Node: "n2", Version: 1, PendingRestart: []string{"shared_buffers", "shared_buffers"}})
	if st := m.s.PGConfig.Nodes["n2"]; st.Version != 1 || !slices.Equal(st.PendingRestart, []string{"shared_buffers"}) || st.ReportedAt.IsZero() {
		t.Fatalf("n2's report: %+v", st)
	}

	// Removing a parameter remembers it for nodes that missed the change; setting it again
	// forgets that.
	m.ok(UpdatePGConfig{Reset: []string{"shared_buffers"}, IfVersion: 1})
	pc = m.s.PGConfig
	if pc.Version != 2 || len(pc.Params) != 1 || !slices.Equal(pc.Reset, []string{"shared_buffers"}) {
		t.Fatalf("after the reset: %+v", pc)
	}
	if pc.Nodes["n2"].Version != 1 {
		t.Fatal("a change must keep the nodes' last reports")
	}
	m.ok(UpdatePGConfig{Set: map[string]string{"shared_buffers": "512MB"}})
	if pc = m.s.PGConfig; pc.Version != 3 || len(pc.Reset) != 0 || pc.Params["shared_buffers"] != "512MB" {
		t.Fatalf("after setting it again: %+v", pc)
	}

	// An editor working from an old version is told so; nothing changes.
	m.rejects(UpdatePGConfig{Set: map[string]string{"work_mem": "1MB"}, IfVersion: 2}, ErrConflict)
	if m.s.PGConfig.Params["work_mem"] != "64MB" {
		t.Fatal("a rejected change was applied")
	}

	// Reports: from members only, for versions that exist.
	m.rejects(ReportPGConfig{Node: "n9", Version: 1}, ErrNotFound)
	m.rejects(ReportPGConfig{Node: "n1", Version: 4}, ErrInvalid)
	m.rejects(ReportPGConfig{Node: "n1", Version: 0}, ErrInvalid)
	m.ok(ReportPGConfig{Node: "n3", Version: 3, Error: strings.Repeat("x", 5000)})
	if len(m.s.PGConfig.Nodes["n3"].Error) != maxPGConfigErrorLen {
		t.Fatal("a node's error must be bounded")
	}

	// A removed member's report goes with it.
	m.ok(RemoveMember{Name: "n3"})
	if _, ok := m.s.PGConfig.Nodes["n3"]; ok {
		t.Fatal("the removed member's report is still there")
	}
}

func TestPGConfigRejectsWhatItMustNotTouch(t *testing.T) {
	m := threeNodes(t)
	for _, c := range []struct {
		cmd  UpdatePGConfig
		want string
	}{
		{UpdatePGConfig{}, "nothing to change"},
		{UpdatePGConfig{Set: map[string]string{"port": "6543"}}, "postgresql.port"},
		{UpdatePGConfig{Set: map[string]string{"synchronous_standby_names": "*"}}, "synchronous_mode"},
		{UpdatePGConfig{Set: map[string]string{"primary_conninfo": "host=x"}}, "managed by PGBastion"},
		{UpdatePGConfig{Set: map[string]string{"recovery_target_time": "2026-01-01"}}, "recovery targets"},
		{UpdatePGConfig{Reset: []string{"hot_standby"}}, "managed by PGBastion"},
		{UpdatePGConfig{Set: map[string]string{"wal_level": "Minimal"}}, "stop replication"},
		{UpdatePGConfig{Set: map[string]string{"Work_Mem": "1MB"}}, "not a PostgreSQL parameter name"},
		{UpdatePGConfig{Set: map[string]string{"work_mem; DROP TABLE x": "1MB"}}, "not a PostgreSQL parameter name"},
		{UpdatePGConfig{Set: map[string]string{"a.b.c": "1"}}, "not a PostgreSQL parameter name"},
		{UpdatePGConfig{Set: map[string]string{"1abc": "1"}}, "not a PostgreSQL parameter name"},
		{UpdatePGConfig{Set: map[string]string{strings.Repeat("a", 64): "1"}}, "not a PostgreSQL parameter name"},
		{UpdatePGConfig{Set: map[string]string{"work_mem": "1MB\nport = 1"}}, "line break"},
		{UpdatePGConfig{Set: map[string]string{"work_mem": strings.Repeat("9", MaxPGParamValue+1)}}, "at most"},
		{UpdatePGConfig{Set: map[string]string{"work_mem": "1MB"}, Reset: []string{"work_mem"}}, "both set and reset"},
	} {
		res := m.apply(c.cmd)
		if !errorsIsInvalid(res) || !strings.Contains(res.Err.Message, c.want) {
			t.Errorf("%+v: got %v, want an invalid-command error mentioning %q", c.cmd, res.Err, c.want)
		}
	}
	if m.s.PGConfig != nil {
		t.Fatal("rejected changes left a configuration")
	}
	// Custom (extension) parameters are fine.
	m.ok(UpdatePGConfig{Set: map[string]string{"pg_stat_statements.max": "10000", "wal_level": "logical"}})

	// The number of parameters is bounded.
	many := map[string]string{}
	for i := 0; i <= MaxPGParams; i++ {
		many["app.p"+strings.Repeat("x", i%10)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "1"
	}
	m.rejects(UpdatePGConfig{Set: many}, ErrInvalid)
}

func errorsIsInvalid(r Result) bool { return r.Err != nil && r.Err.Code == CodeInvalid }
