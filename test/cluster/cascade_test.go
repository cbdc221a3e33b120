package cluster

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/daemon"
)

// TestCascadingReplication: node3 has tags.replicatefrom node2. It streams from node2 (not from
// the primary) while node2 is a healthy replica; the primary keeps node3's slot advanced to
// node3's position meanwhile, so node3 can come back to the primary at any moment; when node2
// goes down node3 streams from the primary at once, rows keep arriving; when node2 is back and
// the last DEMOTE has settled, node3 returns to node2.
func TestCascadingReplication(t *testing.T) {
	c := Start(t, Options{
		Extra:     "failover: {directive_timeout: 20s}",
		NodeExtra: map[string]string{"node3": "tags: {replicatefrom: node2}"},
	})
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	if primary.Name != "node1" {
		t.Fatalf("the bootstrap node is not the primary: %s", primary.Name)
	}
	c.WaitHealthy(2, 3*time.Minute)
	replLogsOnFailure(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	node2, node3 := c.Node("node2"), c.Node("node3")
	streamsFrom := func(up, standby *Node) (bool, string) {
		st, err := replClusterState(c)
		if err != nil {
			return false, err.Error()
		}
		following := st.Members[standby.Name].Status.Following
		n, err := countOn(ctx, up, fmt.Sprintf("SELECT count(*) FROM pg_stat_replication WHERE application_name = '%s' AND state = 'streaming'", standby.Name))
		return following == up.Name && n == 1, fmt.Sprintf("following %q, %d WAL sender(s) on %s (%v)", following, n, up.Name, err)
	}

	replAwait(t, 2*time.Minute, "node3 streaming from node2", func() (bool, string) { return streamsFrom(node2, node3) })
	if n := replCount(ctx, t, c, primary, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'node3'"); n != 0 {
		t.Fatalf("node3 also streams from the primary (%d)", n)
	}
	// ctl topology draws node3 under node2, both under the primary.
	out, err := exec.Command(daemon.Binary(t), "ctl", "--api", "http://"+primary.API, "topology").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^node1 .*\n\+ node2 .*\n  \+ node3 `).Match(out) {
		t.Fatalf("ctl topology: %v\n%s", err, out)
	}
	replSQL(ctx, t, c, primary, "CREATE TABLE cascade_t (n int)")
	replSQL(ctx, t, c, primary, "INSERT INTO cascade_t SELECT generate_series(1, 1000)")
	replAwait(t, time.Minute, "node3 having the rows through node2", func() (bool, string) {
		n, err := rowsOn(ctx, node3)
		return n == 1000, fmt.Sprint(n, err)
	})
	// The primary's slot for node3 is kept, unused, and moves with node3's position.
	var lsn string
	conn, err := directConn(ctx, primary)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	replAwait(t, time.Minute, "the primary's slot for node3 advanced past "+lsn, func() (bool, string) {
		n := replCount(ctx, t, c, primary, fmt.Sprintf("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'node3' AND NOT active AND restart_lsn >= '%s'", lsn))
		return n == 1, fmt.Sprint(replSlots(ctx, t, c, primary))
	})

	// node2 is lost: node3 goes to the primary, and streams from where it was.
	down := time.Now()
	node2.KillNode(t)
	replAwait(t, time.Minute, "node3 streaming from the primary", func() (bool, string) { return streamsFrom(primary, node3) })
	t.Logf("node3 streams from the primary %v after node2 was killed", time.Since(down).Round(100*time.Millisecond))
	replSQL(ctx, t, c, primary, "INSERT INTO cascade_t SELECT generate_series(1001, 2000)")
	replAwait(t, time.Minute, "node3 having the new rows from the primary", func() (bool, string) {
		n, err := rowsOn(ctx, node3)
		return n == 2000, fmt.Sprint(n, err)
	})

	// node2 is back: node3 returns to it.
	node2.Restart(t)
	replAwait(t, 2*time.Minute, "node3 streaming from node2 again", func() (bool, string) { return streamsFrom(node2, node3) })
	replSQL(ctx, t, c, primary, "INSERT INTO cascade_t SELECT generate_series(2001, 3000)")
	replAwait(t, time.Minute, "node3 having every row", func() (bool, string) {
		n, err := rowsOn(ctx, node3)
		return n == 3000, fmt.Sprint(n, err)
	})
}

// rowsOn counts cascade_t's rows on n (an error until the table has arrived there).
func rowsOn(ctx context.Context, n *Node) (int, error) {
	return countOn(ctx, n, "SELECT count(*) FROM cascade_t")
}

// countOn runs a count on n's PostgreSQL; unlike replCount an error (PostgreSQL still
// starting) is returned, not fatal.
func countOn(ctx context.Context, n *Node, q string) (int, error) {
	conn, err := directConn(ctx, n)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var cnt int
	err = conn.QueryRow(ctx, q).Scan(&cnt)
	return cnt, err
}
