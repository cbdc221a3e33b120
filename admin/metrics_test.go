package admin

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// TestClusterMetrics: /metrics carries this node's roles and every member's status from the
// replicated state, with label values escaped, plus what the Writers add.
func TestClusterMetrics(t *testing.T) {
	c := newCluster(t, "n1")
	c.applyAt(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true,
		Timeline: 3, ReceivedLSN: 900, ReplayedLSN: 900}}, time.Now().Add(-90*time.Second))
	c.apply(t, fsm.RegisterMember{Name: `odd"name`, RaftAddress: "n3:8300"})
	booked := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	c.apply(t, fsm.ScheduleSwitchover{Leader: "n1", Candidate: "n2", At: booked})
	c.apply(t, fsm.UpdatePGConfig{Set: map[string]string{"shared_buffers": "1GB"}})
	c.apply(t, fsm.ReportPGConfig{Node: "n2", Version: 1, PendingRestart: []string{"shared_buffers"}})
	c.apply(t, fsm.SetPGHBA{Lines: []string{"host all all 10.0.0.0/8 md5"}})
	c.apply(t, fsm.ReportPGHBA{Node: "n2", Version: 1, Error: "PostgreSQL refuses the cluster-wide pg_hba[0]: …"})
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", ""
	s, err := New(cfg, Sources{Cluster: c, Writers: []func(io.Writer){func(w io.Writer) {
		metrics.WriteGaugeUint64(w, "pgbastion_test_writer", 7)
	}}}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)
	code, body := do(t, "GET", u+"/metrics", "", "")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	for _, want := range []string{
		"pgbastion_cluster_caught_up 1\n",
		"pgbastion_cluster_members 3\n",
		"pgbastion_node_is_primary 1\n",
		"pgbastion_node_is_raft_leader 1\n",
		"pgbastion_node_write_lease_held 1\n",
		`pgbastion_member_primary{member="n1"} 1` + "\n",
		`pgbastion_member_primary{member="n2"} 0` + "\n",
		`pgbastion_member_healthy{member="n2"} 1` + "\n",
		`pgbastion_member_state{member="n2",state="RUNNING_REPLICA"} 1` + "\n",
		`pgbastion_member_state{member="n2",state="RUNNING_PRIMARY"} 0` + "\n",
		`pgbastion_member_lag_bytes{member="n2"} 100` + "\n",
		`pgbastion_member_timeline{member="n2"} 3` + "\n",
		`pgbastion_member_state{member="odd\"name",state="INITIALIZING"} 1` + "\n",
		"pgbastion_test_writer 7\n",
		"pgbastion_cluster_switchover_scheduled_timestamp_seconds 1893553200\n",
		`pgbastion_member_pending_restart{member="n2"} 1` + "\n",
		`pgbastion_member_pending_restart{member="n1"} 0` + "\n",
		`pgbastion_member_pg_hba_refused{member="n2"} 1` + "\n",
		`pgbastion_member_pg_hba_refused{member="n1"} 0` + "\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// n2 last reported 90 s ago.
	i := strings.Index(body, `pgbastion_member_status_age_seconds{member="n2"} `)
	if i < 0 || !strings.HasPrefix(body[i+len(`pgbastion_member_status_age_seconds{member="n2"} `):], "9") {
		t.Errorf("n2's status age is not ~90 s:\n%s", body)
	}
}

func TestLabelEscapes(t *testing.T) {
	if got, want := Label("m", "a", `x\y"z`+"\n", "b", "c"), `m{a="x\\y\"z\n",b="c"}`; got != want {
		t.Fatalf("Label: %s, want %s", got, want)
	}
}
