package ha

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

func TestBackupRestoresTheSameState(t *testing.T) {
	a := newTestCluster(t, 3, nil)
	a.settle(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a.switchover(ctx, "n3", "n1", "n2")
	if err := retry(ctx, func() error { return a.nodes["n2"].SetPause(ctx, true) }); err != nil {
		t.Fatal(err)
	}
	// Taken on a follower: forwarded to the leader.
	var follower *testNode
	for _, n := range a.nodes {
		if !n.IsLeader() {
			follower = n
		}
	}
	var buf bytes.Buffer
	info, err := follower.Backup(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	gotInfo, want, err := ReadBackup(bytes.NewReader(buf.Bytes()))
	if err != nil || gotInfo != info || want.Index != info.Index || !want.Paused || want.Primary != "n2" {
		t.Fatalf("ReadBackup: %+v %v", gotInfo, err)
	}

	// Damaged backups are refused.
	bad := append([]byte(nil), buf.Bytes()...)
	bad[len(bad)-3] ^= 0xff
	if _, _, err := ReadBackup(bytes.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("corrupted backup: %v", err)
	}
	if _, _, err := ReadBackup(bytes.NewReader(buf.Bytes()[:buf.Len()-1])); err == nil {
		t.Fatal("truncated backup accepted")
	}

	// A fresh cluster (no agents, so nothing else changes its state) restores it.
	b := newBareCluster(t, 3)
	await.True(t, 30*time.Second, func() bool { return b.leader() != nil }, "leader in the new cluster")
	var bf *testNode
	for _, n := range b.nodes {
		if !n.IsLeader() {
			bf = n
		}
	}
	if _, err := bf.Restore(ctx, bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	for name, n := range b.nodes {
		await.True(t, 15*time.Second, func() bool {
			st := n.State()
			return st.Primary == "n2" && st.Epoch > want.Epoch
		}, "%s has the restored state and a new epoch", name)
		got := n.State()
		if got.Index <= want.Index {
			t.Errorf("%s: index %d not beyond the backup's %d", name, got.Index, want.Index)
		}
		compare := func(what string, g, w any) {
			if !jsonEqual(t, g, w) {
				t.Errorf("%s: %s differs:\n got %s\nwant %s", name, what, jsonOf(t, g), jsonOf(t, w))
			}
		}
		compare("history", got.History, want.History)
		compare("operations", got.Operations, want.Operations)
		compare("paused", got.Paused, want.Paused)
		compare("next ids", []uint64{got.NextDirectiveID, got.NextOperationID}, []uint64{want.NextDirectiveID, want.NextOperationID})
		for m, wm := range want.Members {
			gm := got.Members[m]
			compare("member "+m, []any{gm.Status, gm.Tags, gm.PGHost, gm.RaftAddress}, []any{wm.Status, wm.Tags, wm.PGHost, wm.RaftAddress})
		}
		for _, d := range got.Directives {
			if d.Status == fsm.DirectivePending && d.Epoch < got.Epoch {
				t.Errorf("%s: directive %d from before the restore still pending", name, d.ID)
			}
		}
	}
}

// newBareCluster starts nodes without agents or PostgreSQL.
func newBareCluster(t *testing.T, n int) *testCluster {
	c := &testCluster{t: t, net: newMemNet(), pgs: newFakePGNet(), nodes: map[string]*testNode{}, log: testLogger(t)}
	for i := 1; i <= n; i++ {
		name := "n" + string(rune('0'+i))
		c.peers = append(c.peers, Peer{Name: name, Address: name + ":8300"})
	}
	t.Cleanup(c.stopAll)
	for _, p := range c.peers {
		c.start(p.Name, c.peers, false)
	}
	return c
}
