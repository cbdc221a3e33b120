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
