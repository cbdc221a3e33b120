package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

func TestRestartWaitsForTheAgentsAnswer(t *testing.T) {
	c := newCluster(t, "n2")
	// Play n2's and n1's agents: n1 is the primary and refuses.
	c.onRestart = func(id uint64) {
		r, _ := c.State().Restart(id)
		fin := fsm.FinishRestart{ID: id, Node: r.Node, Success: r.Node != "n1"}
		if !fin.Success {
			fin.Message = "this node is the primary: switch over first"
		}
		_, _ = c.propose(fin, time.Now())
	}
	base := startAPI(t, "tok", c)

	if code, _ := do(t, "POST", base+"/restart", "", ""); code != 401 {
		t.Fatalf("restart without the token: %d", code)
	}
	// No body: this node.
	code, body := do(t, "POST", base+"/restart", "tok", "")
	if code != 200 || !strings.Contains(body, `"node": "n2"`) || !strings.Contains(body, `"status": "done"`) {
		t.Fatalf("restart of this node: %d %s", code, body)
	}
	code, body = do(t, "POST", base+"/restart", "tok", `{"node":"n1"}`)
	if code != 409 || !strings.Contains(body, "switch over first") {
		t.Fatalf("restart of the primary: %d %s", code, body)
	}
	if code, body := do(t, "POST", base+"/restart", "tok", `{"node":"n9"}`); code != 404 {
		t.Fatalf("restart of a stranger: %d %s", code, body)
	}
	code, body = do(t, "GET", base+"/restarts", "", "")
	if code != 200 || strings.Count(body, `"id"`) != 2 || !strings.Contains(body, "requested through the API") {
		t.Fatalf("GET /restarts: %d %s", code, body)
	}

	// Patroni's conditions: one request for every member, done only where they hold.
	c.apply(t, fsm.ReportStatus{Node: "n1", Status: fsm.NodeStatus{Role: fsm.RolePrimary, State: fsm.StateRunningPrimary, Healthy: true}})
	c.apply(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true}})
	for req, want := range map[string]string{
		`{"node":"n2","restart_pending":true}`: "n2 has no parameter waiting for a restart",
		`{"node":"n2","role":"primary"}`:       "n2 is a replica, not a primary",
		`{"node":"n1","role":"replica"}`:       "n1 is a primary, not a replica",
	} {
		if code, body := do(t, "POST", base+"/restart", "tok", req); code != 503 || !strings.Contains(body, "restart conditions are not satisfied: "+want) {
			t.Errorf("%s: %d %s, want 503 saying %q", req, code, body, want)
		}
	}
	for req, want := range map[string]string{
		`{"schedule":"2026-11-28T03:00:00Z"}`: "does not schedule restarts",
		`{"timeout":30}`:                      "timeout is not supported",
		`{"postgres_version":"15.4"}`:         "postgres_version is not supported",
		`{"role":"boss"}`:                     "role must be primary, replica or any",
	} {
		if code, body := do(t, "POST", base+"/restart", "tok", req); code != 400 || !strings.Contains(body, want) {
			t.Errorf("%s: %d %s, want 400 saying %q", req, code, body, want)
		}
	}
	if _, err := c.UpdatePGConfig(t.Context(), map[string]string{"shared_buffers": "256MB"}, nil, 0); err != nil {
		t.Fatal(err)
	}
	c.apply(t, fsm.ReportPGConfig{Node: "n2", Version: 1, PendingRestart: []string{"shared_buffers"}})
	if code, body := do(t, "GET", base+"/patroni", "", ""); code != 200 || !strings.Contains(body, `"pending_restart": true`) || !strings.Contains(body, `"new_value": "256MB"`) {
		t.Fatalf("GET /patroni with a pending restart: %d %s", code, body)
	}
	if code, body := do(t, "GET", base+"/nodes", "", ""); code != 200 || strings.Count(body, `"pending_restart"`) != 1 || !strings.Contains(body, `"shared_buffers"`) {
		t.Fatalf("GET /nodes with a pending restart on n2: %d %s", code, body)
	}
	code, body = do(t, "POST", base+"/restart", "tok", `{"restart_pending":true,"role":"replica"}`)
	if code != 200 || !strings.Contains(body, `"node": "n2"`) || !strings.Contains(body, `"status": "done"`) {
		t.Fatalf("restart of this node with its conditions met: %d %s", code, body)
	}
}

func TestReinitializeWaitsForTheAgentsAnswer(t *testing.T) {
	c := newCluster(t, "n2")
	// Play the agents: n1 is the primary and refuses; others clone.
	c.onRestart = func(id uint64) {
		r, _ := c.State().Restart(id)
		fin := fsm.FinishRestart{ID: id, Node: r.Node, Success: r.Node != "n1" && r.Reinit}
		if !fin.Success {
			fin.Message = "this node is the primary: its data is the cluster's; switch over first"
		}
		_, _ = c.propose(fin, time.Now())
	}
	base := startAPI(t, "tok", c)
	if code, _ := do(t, "POST", base+"/reinitialize", "", `{"node":"n2"}`); code != 401 {
		t.Fatalf("reinitialize without the token: %d", code)
	}
	code, body := do(t, "POST", base+"/reinitialize", "tok", `{"node":"n2","reason":"diverged"}`)
	if code != 200 || !strings.Contains(body, `"reinit": true`) || !strings.Contains(body, `"status": "done"`) {
		t.Fatalf("reinitialize n2: %d %s", code, body)
	}
	code, body = do(t, "POST", base+"/reinitialize", "tok", `{"node":"n1"}`)
	if code != 409 || !strings.Contains(body, "reinitialisation of n1: this node is the primary") {
		t.Fatalf("reinitialize the primary: %d %s", code, body)
	}
	if code, body := do(t, "POST", base+"/reinitialize", "tok", `{"node":"n2","force":true}`); code != 400 || !strings.Contains(body, "force") {
		t.Fatalf("unknown field: %d %s", code, body)
	}
}
