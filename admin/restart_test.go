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
