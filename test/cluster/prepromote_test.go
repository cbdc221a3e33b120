package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPrePromoteRefusalElectsAnother: postgresql.pre_promote refuses node2's promotion (the
// preferred candidate, failover_priority 5) and allows node3's. When the primary is lost, the
// failover asks node2's hook first, is refused, and promotes node3; the hook saw the
// operation's kind and the old primary.
func TestPrePromoteRefusalElectsAnother(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	calls, prog := filepath.Join(dir, "calls"), filepath.Join(dir, "pre_promote.sh")
	if err := os.WriteFile(calls, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(calls, 0o666)
	script := fmt.Sprintf(`#!/bin/sh
echo "$PGBASTION_NODE $PGBASTION_OPERATION_KIND $PGBASTION_OLD_PRIMARY $*" >> '%s'
if [ "$PGBASTION_NODE" = node2 ]; then echo "node2 may not be promoted"; exit 1; fi
`, calls)
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	c := Start(t, Options{
		PostgreSQLExtra: "pre_promote: " + prog,
		NodeExtra:       map[string]string{"node2": "tags: {failover_priority: 5}"},
	})
	old, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	if old.Name != "node1" {
		t.Fatalf("the bootstrap node is not the primary: %s", old.Name)
	}
	c.WaitHealthy(2, 3*time.Minute)
	replLogsOnFailure(t, c)
	old.KillNode(t)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	b, _ := os.ReadFile(calls)
	got := strings.TrimSpace(string(b))
	if primary.Name != "node3" {
		t.Fatalf("primary %s, want node3 (node2's pre_promote refuses); hook calls:\n%s", primary.Name, got)
	}
	want := "node2 failover node1 pre_promote replica pgbastion\nnode3 failover node1 pre_promote replica pgbastion"
	if got != want {
		t.Fatalf("hook calls:\n%s\nwant:\n%s", got, want)
	}
	log, _ := os.ReadFile(c.Node("node2").D.LogPath())
	if !strings.Contains(string(log), "pre_promote refused the promotion of this node") || !strings.Contains(string(log), "node2 may not be promoted") {
		t.Fatal("node2's log does not say its pre_promote refused, with the script's output")
	}
}
