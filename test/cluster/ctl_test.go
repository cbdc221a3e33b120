package cluster

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/daemon"
)

// TestCLIAgainstLiveCluster drives the operator's commands against a running cluster through
// the built binary: `ctl list`, `raft backup`, `ctl pause`, `raft restore` (the pause taken
// after the backup is undone by restoring it) and `ctl switchover`.
func TestCLIAgainstLiveCluster(t *testing.T) {
	c := Start(t, Options{})
	old := c.WaitHealthy(2, 2*time.Minute)
	bin := daemon.Binary(t)
	api := "http://" + c.Node("node1").API
	// pgbastion ctl [flags] COMMAND …; pgbastion raft VERB [flags] …
	run := func(args ...string) string {
		t.Helper()
		flags := []string{"--api", api, "--token", c.Token}
		switch args[0] {
		case "ctl":
			args = append(append([]string{"ctl"}, flags...), args[1:]...)
		case "raft":
			args = append(append([]string{"raft", args[1]}, flags...), args[2:]...)
		}
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbastion %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	paused := func() bool {
		resp, err := http.Get(api + "/nodes")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var v struct {
			Paused bool `json:"paused"`
		}
		if json.NewDecoder(resp.Body).Decode(&v) != nil {
			return false
		}
		return v.Paused
	}

	list := run("ctl", "list")
	for _, n := range c.Nodes {
		if !strings.Contains(list, n.Name) {
			t.Fatalf("ctl list does not show %s:\n%s", n.Name, list)
		}
	}
	if !strings.Contains(list, "primary") || strings.Count(list, "RUNNING_REPLICA") != 2 {
		t.Fatalf("ctl list: want one primary and two running replicas:\n%s", list)
	}

	backup := filepath.Join(t.TempDir(), "state.bak")
	run("raft", "backup", "-o", backup)
	run("ctl", "pause")
	waitTrue(t, 30*time.Second, paused, "the cluster reports automatic failover paused")
	if !strings.Contains(run("ctl", "list"), "paused") {
		t.Fatal("ctl list does not say that failover is paused")
	}
	run("raft", "restore", backup)
	waitTrue(t, 30*time.Second, func() bool { return !paused() }, "the restored state (taken before the pause) is in effect")
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != old {
		t.Fatalf("after restore the primary is %s, want %s", p.Name, old.Name)
	}

	var cand *Node
	for _, n := range c.Nodes {
		if n != old {
			cand = n
			break
		}
	}
	run("ctl", "switchover", "--candidate", cand.Name)
	if p, _ := c.WaitOneWritablePrimary(2 * time.Minute); p != cand {
		t.Fatalf("after ctl switchover the primary is %s, want %s", p.Name, cand.Name)
	}
}

// waitTrue polls cond until it holds or fails the test after timeout.
func waitTrue(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
