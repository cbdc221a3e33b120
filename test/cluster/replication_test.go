package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/pgctl"
)

// TestSyncPrimaryAndSyncStandbyLostTogether is issue 6's done-when #2. In synchronous_mode on
// with three nodes and synchronous_node_count 1 there is one synchronous standby. The primary
// and that standby are killed together (kill -9 of both nodes). The remaining replica may lack
// commits the primary acknowledged, so it is not promoted: the controller says so and keeps
// to it. The sync standby's host comes back without its data (so that Raft has a majority
// again and the operator can act); an operator's forced failover then promotes the replica,
// and the answer says what may have been lost. The returning node is re-cloned from the new
// primary and becomes its synchronous standby.
func TestSyncPrimaryAndSyncStandbyLostTogether(t *testing.T) {
	c := Start(t, Options{
		Extra:      "failover: {synchronous_mode: \"on\", synchronous_node_count: 1}",
		Parameters: map[string]string{"synchronous_commit": "on"},
	})
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	syncName := replWaitSyncStandby(ctx, t, c, primary, 2*time.Minute)
	syncNode := c.Node(syncName)
	var replica *Node
	for _, n := range c.Nodes {
		if n != primary && n != syncNode {
			replica = n
		}
	}
	t.Logf("primary %s, synchronous standby %s, asynchronous replica %s", primary.Name, syncName, replica.Name)

	// Acknowledged commits: each is on the synchronous standby.
	conn, err := c.Connect(ctx, primary.RW)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE sync_acked (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		if _, err := conn.Exec(ctx, "INSERT INTO sync_acked VALUES ($1)", i); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
	}
	conn.Close(ctx)

	// The primary and its only synchronous standby die together. The standby's host comes
	// back without its data directory: its daemon restores the Raft majority, its
	// PostgreSQL is gone.
	primary.KillNode(t)
	syncNode.KillNode(t)
	lost := filepath.Join(syncNode.Dir, "pgdata")
	if err := os.Rename(lost, lost+".lost"); err != nil {
		t.Fatal(err)
	}
	syncNode.Restart(t)

	// The controller refuses to promote the replica, and says why.
	want := replica.Name + ": not a recorded synchronous standby"
	waiting := replWaitControllerWaiting(t, c, want, 3*time.Minute)
	t.Logf("controller: %s", waiting)
	// It keeps to that: several primary_timeouts (3 s by default) of decisions later, nobody
	// was promoted and the replica's PostgreSQL is still a standby.
	until := time.Now().Add(15 * time.Second)
	for time.Now().Before(until) {
		if st, err := replClusterState(c); err == nil {
			if st.Primary == replica.Name || (st.Operation != nil && st.Operation.Candidate == replica.Name) {
				t.Fatalf("%s is being promoted although it may lack acknowledged commits: primary %q, operation %+v", replica.Name, st.Primary, st.Operation)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if inRecovery := replInRecovery(ctx, t, c, replica); !inRecovery {
		t.Fatalf("%s's PostgreSQL was promoted", replica.Name)
	}

	// An operator forces it; the answer says what may be lost.
	code, body := replAPI(t, c, replica, http.MethodPost, "/failover", fmt.Sprintf(`{"candidate": %q, "force": true}`, replica.Name))
	var res struct {
		Operation fsm.Operation `json:"operation"`
		Message   string        `json:"message"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &res) != nil {
		t.Fatalf("forced failover: %d %s", code, body)
	}
	op := res.Operation
	if op.Phase != fsm.PhaseDone || op.NewPrimary != replica.Name || !op.Force || !strings.Contains(op.MayLose, "not a recorded synchronous standby") {
		t.Fatalf("forced failover: phase %s, new primary %q, force %v, may lose %q", op.Phase, op.NewPrimary, op.Force, op.MayLose)
	}
	t.Logf("forced failover to %s: %s; may lose: %s", replica.Name, res.Message, op.MayLose)
	if p, _ := c.WaitOneWritablePrimary(2 * time.Minute); p != replica {
		t.Fatalf("writable primary %s, want %s", p.Name, replica.Name)
	}
	if n := replCount(ctx, t, c, replica, "SELECT count(*) FROM sync_acked"); n != 100 {
		t.Logf("%s has %d of the 100 acknowledged rows (it was not a synchronous standby: nothing was promised)", replica.Name, n)
	}

	// The node that lost its data is cloned from the new primary and becomes its synchronous
	// standby.
	if got := replWaitSyncStandby(ctx, t, c, replica, 4*time.Minute); got != syncName {
		t.Fatalf("synchronous standby of %s is %s, want %s (the only other live node)", replica.Name, got, syncName)
	}
}

// TestRemovedMemberLosesItsSlot is issue 6's done-when #5. The primary keeps one physical slot
// per member, also for a replica that is stopped, across cleanups (slot_cleanup_interval is
// 3 s here: every cleanup stands for an hour); the cleanups drop slots of nobody and keep
// permanent ones; removing the stopped member (DELETE /members/{name}) drops its slot.
// Pause and resume are shown in GET /nodes. A noloadbalance replica gets no reads through
// the proxies' read-only ports.
func TestRemovedMemberLosesItsSlot(t *testing.T) {
	c := Start(t, Options{
		PostgreSQLExtra: "slot_cleanup_interval: 3s\npermanent_slots: [backup_tool]",
		NodeExtra:       map[string]string{"node3": "tags: {noloadbalance: true}"},
	})
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	replicas := c.Others(primary)
	kept, stopped := replicas[0], replicas[1]
	keptSlot, stoppedSlot := ha.SlotName(kept.Name), ha.SlotName(stopped.Name)

	// Reads through every read-only port reach the load-balanced replica, never node3. The
	// proxy sends a read to the replica with the fewest transactions in progress, so the
	// reads are held open together: without the tag, node3 would get some of them.
	noLB := c.Node("node3")
	replAwait(t, time.Minute, "reads through "+primary.Name+"'s read-only port reaching a replica", func() (bool, string) {
		ports, err := replReadPorts(ctx, c, primary.RO, 1)
		return err == nil && ports[0] != primary.PGPort, fmt.Sprint(ports, err)
	})
	for _, n := range c.Nodes {
		ports, err := replReadPorts(ctx, c, n.RO, 6)
		if err != nil {
			t.Fatalf("reads through %s: %v", n.Name, err)
		}
		if slices.Contains(ports, noLB.PGPort) || slices.Contains(ports, primary.PGPort) {
			t.Fatalf("reads through %s's read-only port reached PostgreSQL ports %v: %s (port %d) is tagged noloadbalance", n.Name, ports, noLB.Name, noLB.PGPort)
		}
	}

	// One slot per other member, used by its replica.
	replAwait(t, time.Minute, "a slot per replica, in use", func() (bool, string) {
		s := replSlots(ctx, t, c, primary)
		return s[keptSlot] == "active" && s[stoppedSlot] == "active", fmt.Sprint(s)
	})

	// Pause and resume show in /nodes.
	for _, paused := range []bool{true, false} {
		path := map[bool]string{true: "/pause", false: "/resume"}[paused]
		if code, body := replAPI(t, c, primary, http.MethodPost, path, ""); code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, code, body)
		}
		replAwait(t, 30*time.Second, fmt.Sprintf("/nodes showing paused %v", paused), func() (bool, string) {
			_, body := replAPI(t, c, kept, http.MethodGet, "/nodes", "")
			var v struct {
				Paused bool `json:"paused"`
			}
			return json.Unmarshal([]byte(body), &v) == nil && v.Paused == paused, body
		})
	}

	// A replica stopped for a long time keeps its slot while it is a member.
	stopped.KillNode(t)
	replSQL(ctx, t, c, primary, "SELECT pg_create_physical_replication_slot('backup_tool', true)")
	for i := 1; i <= 2; i++ {
		ghost := fmt.Sprintf("ghost_%d", i)
		replSQL(ctx, t, c, primary, fmt.Sprintf("SELECT pg_create_physical_replication_slot('%s', true)", ghost))
		replAwait(t, time.Minute, "a cleanup dropping "+ghost+", a slot of nobody", func() (bool, string) {
			s := replSlots(ctx, t, c, primary)
			return s[ghost] == "", fmt.Sprint(s)
		})
		s := replSlots(ctx, t, c, primary)
		if s[stoppedSlot] != "inactive" || s[keptSlot] != "active" || s["backup_tool"] == "" {
			t.Fatalf("after cleanup %d: slots %v, want %s kept inactive, %s in use, backup_tool kept", i, s, stoppedSlot, keptSlot)
		}
	}

	// Removing it drops its slot (once its last report is old enough that it counts as
	// stopped: until then the removal is refused with 412).
	replAwait(t, time.Minute, "DELETE /members/"+stopped.Name+" accepted", func() (bool, string) {
		code, body := replAPI(t, c, primary, http.MethodDelete, "/members/"+stopped.Name, "")
		if code != http.StatusOK && code != http.StatusPreconditionFailed {
			t.Fatalf("DELETE /members/%s: %d %s", stopped.Name, code, body)
		}
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
	replAwait(t, time.Minute, "the removed member's slot dropped", func() (bool, string) {
		s := replSlots(ctx, t, c, primary)
		return s[stoppedSlot] == "" && s[keptSlot] == "active" && s["backup_tool"] != "", fmt.Sprint(s)
	})
	st, err := replClusterState(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Members[stopped.Name]; ok {
		t.Fatalf("%s is still a member", stopped.Name)
	}
	_, body := replAPI(t, c, primary, http.MethodGet, "/members", "")
	if strings.Contains(body, `"`+stopped.Name+`"`) {
		t.Fatalf("%s is still in the Raft configuration: %s", stopped.Name, body)
	}
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary moved to %s", p.Name)
	}
}

// TestRewindFailureKeepsTheNodeOut: a former primary whose pg_rewind fails stays out of the
// cluster, with the reason in GET /nodes, while postgresql.remove_data_directory_on_rewind_failure
// is off; once an operator turns it on, the node is re-cloned from the new primary and streams.
// pg_rewind is made to fail by a directory it cannot read in the old primary's data directory
// (PostgreSQL itself ignores it).
func TestRewindFailureKeepsTheNodeOut(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	old.KillNode(t)
	primary := c.WaitPrimaryOtherThan(t, old, 2*time.Minute)
	if p, _ := c.WaitOneWritablePrimary(2 * time.Minute); p != primary {
		t.Fatalf("writable primary %s, the cluster names %s", p.Name, primary.Name)
	}
	unreadable := filepath.Join(old.Dir, "pgdata", "pgbastion_test_unreadable")
	if err := os.Mkdir(unreadable, 0o700); err != nil { // owned by root: PostgreSQL's OS user cannot list it
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unreadable, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	const on, off = "remove_data_directory_on_rewind_failure: true", "remove_data_directory_on_rewind_failure: false"
	if !strings.Contains(old.config, on) {
		t.Fatalf("the harness no longer sets %q", on)
	}
	old.config = strings.Replace(old.config, on, off, 1)
	old.Restart(t)

	// It stays out and says why.
	var reason string
	replAwait(t, 3*time.Minute, old.Name+" out of the cluster with the reason", func() (bool, string) {
		v, err := c.AnyView()
		if err != nil {
			return false, err.Error()
		}
		_, state, healthy, r := v.Status(old.Name)
		reason = r
		return !healthy && strings.Contains(r, "remove_data_directory_on_rewind_failure is off"), state + ": " + r
	})
	t.Logf("%s: %s", old.Name, reason)
	if !strings.Contains(reason, "pg_rewind") {
		t.Fatalf("reason %q does not say that pg_rewind failed", reason)
	}
	if conn, err := directConn(ctx, old); err == nil {
		conn.Close(ctx)
		t.Fatalf("%s's PostgreSQL runs although it could not be rewound", old.Name)
	}
	v, _ := c.AnyView()
	if v.Primary != primary.Name {
		t.Fatalf("primary %q, want %s", v.Primary, primary.Name)
	}

	// The operator allows re-cloning: it rejoins from a fresh copy of the new primary.
	old.StopDaemon(t)
	old.config = strings.Replace(old.config, off, on, 1)
	old.Restart(t)
	replAwait(t, 4*time.Minute, old.Name+" streaming from "+primary.Name, func() (bool, string) {
		st, err := replClusterState(c)
		if err != nil {
			return false, err.Error()
		}
		m := st.Members[old.Name].Status
		return m.State == fsm.StateRunningReplica && m.Healthy && m.Following == primary.Name, fmt.Sprintf("%s following %q: %s", m.State, m.Following, m.Reason)
	})
	if _, err := os.Stat(unreadable); !os.IsNotExist(err) {
		t.Fatalf("%s was not re-cloned: %s still exists (%v)", old.Name, unreadable, err)
	}
	if !replInRecovery(ctx, t, c, old) {
		t.Fatalf("%s runs as a primary", old.Name)
	}
}

// TestForeignDataDirectoryIsRefused: a node whose data directory holds another cluster
// (another database system identifier) refuses to start, rewind or replace it, although
// remove_data_directory_on_rewind_failure is on, and says so in GET /nodes; once an operator
// moves the directory away, the node clones the cluster and streams.
func TestForeignDataDirectoryIsRefused(t *testing.T) {
	c := Start(t, Options{})
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	x := c.Nodes[0]
	if x == primary {
		x = c.Nodes[1]
	}
	ours, err := x.pg().SystemID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	x.KillNode(t)
	data := filepath.Join(x.Dir, "pgdata")
	if err := os.Rename(data, data+".ours"); err != nil {
		t.Fatal(err)
	}
	if err := x.pg().InitDB(ctx); err != nil {
		t.Fatal(err)
	}
	foreign, err := x.pg().SystemID(ctx)
	if err != nil || foreign == ours {
		t.Fatalf("the new data directory's system identifier %q (ours %q): %v", foreign, ours, err)
	}
	x.Restart(t)
	replAwait(t, 3*time.Minute, x.Name+" refusing the other cluster's data directory", func() (bool, string) {
		v, err := c.AnyView()
		if err != nil {
			return false, err.Error()
		}
		_, state, healthy, reason := v.Status(x.Name)
		return !healthy && strings.Contains(reason, "belongs to another cluster") && strings.Contains(reason, foreign), state + ": " + reason
	})
	if id, err := x.pg().SystemID(ctx); err != nil || id != foreign {
		t.Fatalf("the other cluster's data directory was changed: system identifier %q, %v", id, err)
	}
	if conn, err := directConn(ctx, x); err == nil {
		conn.Close(ctx)
		t.Fatalf("%s runs the other cluster's PostgreSQL", x.Name)
	}

	// Moved away by the operator: the node clones the cluster.
	if err := os.Rename(data, data+".foreign"); err != nil {
		t.Fatal(err)
	}
	replAwait(t, 4*time.Minute, x.Name+" streaming from "+primary.Name, func() (bool, string) {
		st, err := replClusterState(c)
		if err != nil {
			return false, err.Error()
		}
		m := st.Members[x.Name].Status
		return m.State == fsm.StateRunningReplica && m.Healthy && m.Following == primary.Name, fmt.Sprintf("%s following %q: %s", m.State, m.Following, m.Reason)
	})
	if id, err := x.pg().SystemID(ctx); err != nil || id != ours {
		t.Fatalf("%s's system identifier after cloning %q, want the cluster's %q (%v)", x.Name, id, ours, err)
	}
}

// TestQuorumModeFailoverKeepsAcknowledgedWrites: in synchronous_mode quorum with three nodes
// the primary runs with ANY 1 of both replicas, so each acknowledged commit is on one of them,
// not a known one. Writers insert unique ids through the replicas' proxies while the primary's
// node is killed (kill -9 of pgbastion and PostgreSQL); the controller must promote the
// replica with the most WAL among positions from both. Every acknowledged insert is on the new
// primary afterwards, nothing that was never attempted is, and the old node rejoins.
func TestQuorumModeFailoverKeepsAcknowledgedWrites(t *testing.T) {
	c := Start(t, Options{
		Extra:      "failover: {synchronous_mode: quorum, synchronous_node_count: 1}",
		Parameters: map[string]string{"synchronous_commit": "on"},
	})
	replLogsOnFailure(t, c)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	replicas := c.Others(primary)
	want := fmt.Sprintf(`ANY 1 ("%s", "%s")`, replicas[0].Name, replicas[1].Name)
	replAwait(t, 2*time.Minute, primary.Name+" running with "+want+", recorded", func() (bool, string) {
		st, err := replClusterState(c)
		if err != nil {
			return false, err.Error()
		}
		var ssn string
		if conn, err := directConn(ctx, primary); err == nil {
			_ = conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&ssn)
			conn.Close(ctx)
		}
		return st.SyncPrimary == primary.Name && st.SyncCount == 1 && len(st.SyncStandbys) == 2 && ssn == want,
			fmt.Sprintf("record of %q: %v count %d; synchronous_standby_names %q", st.SyncPrimary, st.SyncStandbys, st.SyncCount, ssn)
	})
	conn, err := c.Connect(ctx, primary.RW)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE quorum_rows (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	// Writers through the replicas' proxies (they outlive the primary's node).
	var (
		mu        sync.Mutex
		attempted = map[int64]bool{}
		acked     = map[int64]bool{}
		next      atomic.Int64
		wg        sync.WaitGroup
	)
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	for k := 0; k < 4; k++ {
		addr := replicas[k%2].RW
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conn *pgx.Conn
			for wctx.Err() == nil {
				if conn == nil {
					cctx, ccancel := context.WithTimeout(wctx, 5*time.Second)
					conn, _ = c.Connect(cctx, addr)
					ccancel()
					if conn == nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
				}
				id := next.Add(1)
				mu.Lock()
				attempted[id] = true
				mu.Unlock()
				ictx, icancel := context.WithTimeout(wctx, 10*time.Second)
				_, err := conn.Exec(ictx, "INSERT INTO quorum_rows VALUES ($1)", id)
				icancel()
				if err != nil {
					conn.Close(context.Background())
					conn = nil
					continue
				}
				mu.Lock()
				acked[id] = true
				mu.Unlock()
			}
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
	}
	ackedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	replAwait(t, 2*time.Minute, "200 inserts acknowledged", func() (bool, string) { return ackedCount() >= 200, fmt.Sprint(ackedCount()) })

	primary.KillNode(t)
	killedAt, before := time.Now(), ackedCount()
	newPrimary := c.WaitPrimaryOtherThan(t, primary, 2*time.Minute)
	replAwait(t, 2*time.Minute, "inserts acknowledged by the new primary", func() (bool, string) {
		return ackedCount() >= before+100, fmt.Sprint(ackedCount())
	})
	stopWriters()
	wg.Wait()
	t.Logf("killed %s with %d inserts acknowledged; %s promoted, writes acknowledged again within %s", primary.Name, before, newPrimary.Name,
		time.Since(killedAt).Round(time.Millisecond))

	conn, err = directConn(ctx, newPrimary)
	if err != nil {
		t.Fatal(err)
	}
	present := presentIDs(ctx, t, conn, "quorum_rows")
	conn.Close(ctx)
	var lost, unexpected []int64
	for id := range acked {
		if !present[id] {
			lost = append(lost, id)
		}
	}
	for id := range present {
		if !attempted[id] {
			unexpected = append(unexpected, id)
		}
	}
	t.Logf("acknowledged %d, present on %s %d, lost %d, unexpected %d", len(acked), newPrimary.Name, len(present), len(lost), len(unexpected))
	if len(lost) > 0 || len(unexpected) > 0 {
		slices.Sort(lost)
		slices.Sort(unexpected)
		t.Fatalf("lost acknowledged inserts %v; present but never attempted %v", lost[:min(len(lost), 20)], unexpected[:min(len(unexpected), 20)])
	}

	// The old node rejoins, and the new primary's quorum covers both again.
	primary.Restart(t)
	replAwait(t, 4*time.Minute, primary.Name+" streaming from "+newPrimary.Name+" and in the quorum", func() (bool, string) {
		st, err := replClusterState(c)
		if err != nil {
			return false, err.Error()
		}
		m := st.Members[primary.Name].Status
		return m.State == fsm.StateRunningReplica && m.Following == newPrimary.Name && st.SyncPrimary == newPrimary.Name &&
				slices.Contains(st.SyncStandbys, primary.Name) && len(st.SyncStandbys) == 2,
			fmt.Sprintf("%s following %q (%s); record of %q: %v", m.State, m.Following, m.Reason, st.SyncPrimary, st.SyncStandbys)
	})
}

// replLogsOnFailure logs the end of every node's pgbastion log when the test fails (before
// the harness removes them).
func replLogsOnFailure(t *testing.T, c *Cluster) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.Nodes {
			if n.D != nil {
				t.Logf("%s log (%s), tail:\n%s", n.Name, n.D.LogPath(), n.D.LogTail())
			}
		}
	})
}

// replAwait polls cond every 200 ms until it holds; on timeout it fails with cond's last
// description.
func replAwait(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, desc := cond()
		if ok {
			return
		}
		last = desc
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s (last: %s)", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// replAPI sends a request with the bearer token to n's API, or to any live node's when n is
// not alive.
func replAPI(t *testing.T, c *Cluster, n *Node, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.API+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// replClusterState reads GET /cluster (the replicated state) from a live node.
func replClusterState(c *Cluster) (*fsm.State, error) {
	var last error
	for _, n := range c.Nodes {
		if !n.Alive() {
			continue
		}
		resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + n.API + "/cluster")
		if err != nil {
			last = err
			continue
		}
		var st fsm.State
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			last = err
			continue
		}
		return &st, nil
	}
	return nil, fmt.Errorf("no live node answered GET /cluster: %v", last)
}

// replWaitSyncStandby waits until the record names one synchronous standby of primary with
// count 1, the primary runs with FIRST 1 of it, and PostgreSQL reports it as the synchronous
// standby; it returns its name.
func replWaitSyncStandby(ctx context.Context, t *testing.T, c *Cluster, primary *Node, timeout time.Duration) string {
	t.Helper()
	var name string
	replAwait(t, timeout, "a synchronous standby of "+primary.Name+" recorded and in effect", func() (bool, string) {
		st, err := replClusterState(c)
		if err != nil {
			return false, err.Error()
		}
		desc := fmt.Sprintf("record of %q: %v count %d", st.SyncPrimary, st.SyncStandbys, st.SyncCount)
		if st.SyncPrimary != primary.Name || st.SyncCount != 1 || len(st.SyncStandbys) != 1 {
			return false, desc
		}
		name = st.SyncStandbys[0]
		want := `FIRST 1 ("` + name + `")`
		conn, err := directConn(ctx, primary)
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(context.Background())
		var ssn, syncState string
		if err := conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&ssn); err != nil {
			return false, err.Error()
		}
		err = conn.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", name).Scan(&syncState)
		desc += fmt.Sprintf("; synchronous_standby_names %q, %s is %q (%v)", ssn, name, syncState, err)
		return ssn == want && syncState == "sync", desc
	})
	return name
}

// replWaitControllerWaiting waits until the Raft leader's controller says it waits for
// something containing want, and returns what it says.
func replWaitControllerWaiting(t *testing.T, c *Cluster, want string, timeout time.Duration) string {
	t.Helper()
	var waiting string
	replAwait(t, timeout, "the controller waiting with "+want, func() (bool, string) {
		v, err := c.AnyView()
		if err != nil || v.RaftLeader == "" {
			return false, fmt.Sprintf("no Raft leader (%v)", err)
		}
		leader := c.Node(v.RaftLeader)
		_, body := replAPI(t, c, leader, http.MethodGet, "/nodes", "")
		var nv struct {
			Waiting string `json:"controller_waiting"`
		}
		if err := json.Unmarshal([]byte(body), &nv); err != nil {
			return false, body
		}
		waiting = nv.Waiting
		return strings.Contains(waiting, want), waiting
	})
	return waiting
}

// replReadPorts opens n connections through a proxy address, each in a read transaction held
// open until all have started, and returns the PostgreSQL port each reached.
func replReadPorts(ctx context.Context, c *Cluster, addr string, n int) ([]int, error) {
	var ports []int
	for range n {
		conn, err := c.Connect(ctx, addr)
		if err != nil {
			return ports, err
		}
		defer conn.Close(context.Background())
		tx, err := conn.Begin(ctx)
		if err != nil {
			return ports, err
		}
		defer tx.Rollback(context.Background())
		var port int
		if err := tx.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			return ports, err
		}
		ports = append(ports, port)
	}
	return ports, nil
}

func replInRecovery(ctx context.Context, t *testing.T, c *Cluster, n *Node) bool {
	t.Helper()
	conn, err := directConn(ctx, n)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	defer conn.Close(context.Background())
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	return rec
}

func replCount(ctx context.Context, t *testing.T, c *Cluster, n *Node, q string) int {
	t.Helper()
	conn, err := directConn(ctx, n)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	defer conn.Close(context.Background())
	var cnt int
	if err := conn.QueryRow(ctx, q).Scan(&cnt); err != nil {
		t.Fatalf("%s: %s: %v", n.Name, q, err)
	}
	return cnt
}

func replSQL(ctx context.Context, t *testing.T, c *Cluster, n *Node, q string) {
	t.Helper()
	conn, err := directConn(ctx, n)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, q); err != nil {
		t.Fatalf("%s: %s: %v", n.Name, q, err)
	}
}

// replSlots returns n's physical replication slots: name → "active" or "inactive".
func replSlots(ctx context.Context, t *testing.T, c *Cluster, n *Node) map[string]string {
	t.Helper()
	conn, err := directConn(ctx, n)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'")
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	out := map[string]string{}
	for rows.Next() {
		var name string
		var active bool
		if err := rows.Scan(&name, &active); err != nil {
			t.Fatal(err)
		}
		out[name] = map[bool]string{true: "active", false: "inactive"}[active]
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAddAndRemoveANode grows a running cluster by a node and shrinks it again, as an operator
// would: the new node starts with raft.peers that do not list itself (no bootstrap of its own)
// and waits; POST /members (pgbastion ctl add) makes it a voter; it registers itself, clones
// its data from the primary and streams. Removing it is refused while it runs (it would
// register itself again) and works once it is stopped.
func TestAddAndRemoveANode(t *testing.T) {
	c := Start(t, Options{})
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	replSQL(ctx, t, c, primary, "CREATE TABLE grown (v int); INSERT INTO grown VALUES (4)")
	n4 := c.AddNode(t)
	for _, bad := range []string{`{"name": "node4"}`, `{"name": "node1", "raft_address": "` + primary.Raft + `"}`} {
		if code, body := replAPI(t, c, primary, http.MethodPost, "/members", bad); code != http.StatusBadRequest && code != http.StatusConflict {
			t.Fatalf("POST /members %s: %d %s", bad, code, body)
		}
	}
	code, body := replAPI(t, c, c.Others(primary)[0], http.MethodPost, "/members", `{"name": "node4", "raft_address": "`+n4.Raft+`"}`)
	if code != http.StatusOK || !strings.Contains(body, "clones its data") {
		t.Fatalf("POST /members: %d %s", code, body)
	}
	c.WaitHealthy(3, 5*time.Minute)
	replAwait(t, time.Minute, "node4's PostgreSQL to have the primary's data", func() (bool, string) {
		conn, err := directConn(ctx, n4)
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(context.Background())
		var v int
		err = conn.QueryRow(ctx, "SELECT v FROM grown").Scan(&v)
		return err == nil && v == 4, fmt.Sprint(v, err)
	})
	_, body = replAPI(t, c, primary, http.MethodGet, "/members", "")
	if !strings.Contains(body, `"node4"`) {
		t.Fatalf("node4 is not a Raft voter: %s", body)
	}

	// Shrinking: refused while node4 runs, done once it is stopped.
	if code, body := replAPI(t, c, primary, http.MethodDelete, "/members/node4", ""); code != http.StatusPreconditionFailed || !strings.Contains(body, "still running") {
		t.Fatalf("removing the running node4: %d %s", code, body)
	}
	n4.StopDaemon(t)
	n4.stopPostgres(pgctl.Fast)
	replAwait(t, time.Minute, "the stopped node4 removed", func() (bool, string) {
		code, body := replAPI(t, c, primary, http.MethodDelete, "/members/node4", "")
		return code == http.StatusOK, fmt.Sprint(code, body)
	})
	// The removal is committed by the Raft leader; the node asked here (the primary, maybe a
	// follower) learns the new configuration when that entry reaches it.
	replAwait(t, 30*time.Second, "node4 gone from the Raft configuration as "+primary.Name+" sees it", func() (bool, string) {
		_, body := replAPI(t, c, primary, http.MethodGet, "/members", "")
		return !strings.Contains(body, `"node4"`), body
	})
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary moved to %s", p.Name)
	}
}
