package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// TestRejoinThroughRewind is issue 6's done-when #3: the primary writes rows that no replica
// receives (its walsenders are stopped with SIGSTOP, so the WAL after that point never leaves
// it), then the whole node is killed. A replica is promoted; when the old node comes back it
// must rejoin as a replica through pg_rewind (pg_rewind's backup label in its data
// directory), without the divergent rows, streaming from the new primary.
func TestRejoinThroughRewind(t *testing.T) {
	c := Start(t, Options{Parameters: map[string]string{"synchronous_commit": "on"}})
	keepLogs(t, c)
	old, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	pc := mustDirect(ctx, t, old)
	mustExec(ctx, t, pc, "CREATE TABLE rewind_rows (id int PRIMARY KEY, phase text NOT NULL)")
	mustExec(ctx, t, pc, "INSERT INTO rewind_rows SELECT g, 'shared' FROM generate_series(1, 100) g")
	shared := currentLSN(ctx, t, pc)
	var replicas []*Node
	for _, n := range c.Nodes {
		if n != old {
			replicas = append(replicas, n)
		}
	}
	for _, r := range replicas {
		waitLSN(t, r, "pg_last_wal_replay_lsn()", shared, 2*time.Minute)
	}

	// From here on nothing the old primary writes reaches a replica.
	pids := stopWalsenders(t, old)
	if len(pids) != len(replicas) {
		t.Fatalf("%s has %d walsenders, want %d", old.Name, len(pids), len(replicas))
	}
	mustExec(ctx, t, pc, "INSERT INTO rewind_rows SELECT g, 'divergent' FROM generate_series(1001, 1100) g")
	div := queryLSN(ctx, t, pc, "pg_current_wal_insert_lsn()")
	pc.Close(ctx)
	for _, r := range replicas {
		rc := mustDirect(ctx, t, r)
		recv := queryLSN(ctx, t, rc, "pg_last_wal_receive_lsn()")
		n := countRows(ctx, t, rc, "divergent")
		rc.Close(ctx)
		if recv >= div || n != 0 {
			t.Fatalf("premise: %s received up to %s (divergent rows end at %s) and has %d divergent rows", r.Name, recv, div, n)
		}
		t.Logf("%s received up to %s; the old primary's divergent rows end at %s (%d bytes it never got)", r.Name, recv, div, div.Sub(recv))
	}

	killed := time.Now()
	old.KillNode(t)
	killPIDs(pids)
	primary, _ := c.WaitOneWritablePrimary(3 * time.Minute)
	if primary == old {
		t.Fatal("the killed node is still the primary")
	}
	t.Logf("killed node %s; %s writable through every live proxy after %s", old.Name, primary.Name, time.Since(killed).Round(time.Millisecond))
	nc := mustDirect(ctx, t, primary)
	if n := countRows(ctx, t, nc, "divergent"); n != 0 {
		t.Fatalf("premise: the new primary %s has %d divergent rows", primary.Name, n)
	}
	nc.Close(ctx)
	// A row the old primary never saw, written through the proxy.
	{
		conn, err := c.Connect(ctx, primary.RW)
		if err != nil {
			t.Fatal(err)
		}
		mustExec(ctx, t, conn, "INSERT INTO rewind_rows VALUES (2000, 'after')")
		conn.Close(ctx)
	}

	restarted := time.Now()
	old.Restart(t)
	c.WaitRejoined(t, old, 3*time.Minute)
	t.Logf("%s running as a replica %s after its restart", old.Name, time.Since(restarted).Round(time.Millisecond))

	label := ""
	for _, f := range []string{"backup_label", "backup_label.old"} {
		if b, err := os.ReadFile(filepath.Join(old.Dir, "pgdata", f)); err == nil {
			label += string(b)
		}
	}
	if !strings.Contains(label, "BACKUP METHOD: pg_rewind") {
		// Seen with PostgreSQL 15: pg_rewind reads the source's timeline from its last
		// checkpoint, so right after a promotion (no checkpoint on the new timeline yet) it
		// says "source and target cluster are on the same timeline", "no rewind required",
		// exits 0, and the old primary starts as a standby on its dead timeline that never
		// streams ("new timeline N forked off current database system timeline M before
		// current recovery point"). Patroni checkpoints the new primary first.
		t.Errorf("%s's data directory shows no pg_rewind (backup label: %q): it was not rewound "+
			"(if pg_rewind ran, did the new primary checkpoint on its new timeline first? see the comment here)", old.Name, label)
	}
	for _, line := range strings.Split(old.D.Log(), "\n") {
		if strings.Contains(strings.ToLower(line), "rewind") {
			t.Logf("%s log: %s", old.Name, line)
		}
	}

	// It streams from the new primary and has its data, without the divergent rows.
	deadline := time.Now().Add(2 * time.Minute)
	var status string
	var port int
	for {
		oc, err := directConn(ctx, old)
		if err == nil {
			err = oc.QueryRow(ctx, "SELECT status, sender_port FROM pg_stat_wal_receiver").Scan(&status, &port)
			var after int
			if err == nil {
				err = oc.QueryRow(ctx, "SELECT count(*) FROM rewind_rows WHERE phase = 'after'").Scan(&after)
			}
			if err == nil && status == "streaming" && port == primary.PGPort && after == 1 {
				var rec bool
				if err := oc.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || !rec {
					t.Fatalf("%s: pg_is_in_recovery() = %v (%v)", old.Name, rec, err)
				}
				if n := countRows(ctx, t, oc, "divergent"); n != 0 {
					t.Errorf("%s still has %d divergent rows after rejoining", old.Name, n)
				}
				if n := countRows(ctx, t, oc, "shared"); n != 100 {
					t.Errorf("%s has %d shared rows, want 100", old.Name, n)
				}
				oc.Close(ctx)
				break
			}
			oc.Close(ctx)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not stream from %s (PostgreSQL port %d): wal receiver %q from port %d, last error %v", old.Name, primary.Name, primary.PGPort, status, port, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s streams from %s (port %d) without the divergent rows", old.Name, primary.Name, port)
	c.WaitHealthy(2, 2*time.Minute)
}

// TestFailoverCandidateChoice is issue 6's done-when #4 on one cluster.
//
// node2 is tagged nofailover with failover_priority 100, so that if the tag were ignored it
// would win every tie (priority, then name) against node3.
//
//  1. Both replicas caught up, the primary node is killed: node3 is promoted, never node2.
//  2. The old primary rejoins. The new primary's walsender to it is stopped and more than
//     maximum_lag_on_failover of WAL is written, which node2 receives. The primary node is
//     killed: the only candidate lags too far and node2 may not be promoted, so nobody is
//     promoted; the failover says why.
func TestFailoverCandidateChoice(t *testing.T) {
	const maxLag = 1 << 20
	c := Start(t, Options{
		Extra:      fmt.Sprintf("failover:\n  maximum_lag_on_failover: %d\n", maxLag),
		Parameters: map[string]string{"synchronous_commit": "on"},
		NodeExtra:  map[string]string{"node2": "tags: {nofailover: true, failover_priority: 100}\n"},
	})
	keepLogs(t, c)
	tagged, free := c.Node("node2"), c.Node("node3")
	old, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	if old != c.Node("node1") {
		t.Fatalf("primary is %s, want the bootstrap node node1", old.Name)
	}
	c.WaitHealthy(2, 3*time.Minute)
	watch := watchNeverPrimary(c, tagged)
	defer watch.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	// 1. nofailover: both replicas at the same position; node2 would win if its tag were
	// ignored. The old primary's walsenders stop once both replicas received the same WAL,
	// so that nothing it writes afterwards (a checkpoint) puts one ahead of the other.
	pc := mustDirect(ctx, t, old)
	mustExec(ctx, t, pc, "CREATE TABLE lag_fill (id int PRIMARY KEY, pad text NOT NULL)")
	lsn := currentLSN(ctx, t, pc)
	pc.Close(ctx)
	var pids []int
	for attempt := 0; ; attempt++ {
		for _, r := range []*Node{tagged, free} {
			waitLSN(t, r, "pg_last_wal_receive_lsn()", lsn, 2*time.Minute)
		}
		pids = stopWalsenders(t, old)
		// What was already in flight still arrives: wait until neither position moves.
		a, b := settledLSN(ctx, t, tagged), settledLSN(ctx, t, free)
		if a == b {
			lsn = a
			break
		}
		if attempt == 20 {
			t.Fatalf("the replicas never received the same WAL (%s %s, %s %s)", tagged.Name, a, free.Name, b)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		lsn = max(a, b)
	}
	// The controller compares positions that count received WAL.
	for _, r := range []*Node{tagged, free} {
		waitReported(t, c, r, lsn, time.Minute)
	}
	t.Logf("both replicas received up to %s", lsn)
	killed := time.Now()
	old.KillNode(t)
	killPIDs(pids)
	primary, _ := c.WaitOneWritablePrimary(3 * time.Minute)
	t.Logf("killed node %s; %s promoted and writable after %s", old.Name, primary.Name, time.Since(killed).Round(time.Millisecond))
	if primary != free {
		t.Fatalf("%s was promoted, want %s (%s is tagged nofailover)", primary.Name, free.Name, tagged.Name)
	}
	old.Restart(t)
	c.WaitHealthy(2, 3*time.Minute)
	c.WaitRejoined(t, old, time.Minute)
	c.WaitRejoined(t, tagged, time.Minute)
	if v := watch.violations(); len(v) > 0 {
		t.Fatalf("nofailover node promoted: %v", v)
	}

	// 2. The only untagged candidate (old) lags beyond maximum_lag_on_failover.
	lagging := old
	pc = mustDirect(ctx, t, primary)
	pids = stopWalsenders(t, primary, lagging.Name)
	if len(pids) != 1 {
		// It lags all the same; see TestRejoinThroughRewind for why it may not stream.
		t.Logf("%s has %d walsenders to %s (it does not stream)", primary.Name, len(pids), lagging.Name)
	}
	mustExec(ctx, t, pc, "INSERT INTO lag_fill SELECT g, repeat('x', 1000) FROM generate_series(1, 8000) g")
	lsn = currentLSN(ctx, t, pc)
	pc.Close(ctx)
	waitLSN(t, tagged, "pg_last_wal_replay_lsn()", lsn, 2*time.Minute)
	waitReported(t, c, tagged, lsn, time.Minute)
	lc := mustDirect(ctx, t, lagging)
	recv := queryLSN(ctx, t, lc, "pg_last_wal_receive_lsn()")
	lc.Close(ctx)
	if lsn.Sub(recv) <= maxLag {
		t.Fatalf("premise: %s is only %d bytes behind", lagging.Name, lsn.Sub(recv))
	}
	t.Logf("%s received up to %s, %d bytes behind %s (maximum_lag_on_failover %d)", lagging.Name, recv, lsn.Sub(recv), lsn, maxLag)
	watchLag := watchNeverPrimary(c, lagging, tagged)
	defer watchLag.stop()
	killed = time.Now()
	primary.KillNode(t)
	killPIDs(pids)

	// The failover must find no candidate and say why: wait for that, then watch a while
	// longer (a promotion takes a few seconds here) that nobody is promoted.
	var msg string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		msg = controllerSays(c)
		if strings.Contains(msg, "no replica can be promoted") && strings.Contains(msg, lagging.Name) && strings.Contains(msg, "maximum_lag_on_failover") &&
			strings.Contains(msg, tagged.Name) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the controller did not say that no replica can be promoted; last: %q; promotions seen: %v", msg, watchLag.violations())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s after the kill: %s", time.Since(killed).Round(time.Millisecond), msg)
	hold := time.Now().Add(20 * time.Second)
	for time.Now().Before(hold) && len(watchLag.violations()) == 0 {
		time.Sleep(200 * time.Millisecond)
	}
	if v := watchLag.violations(); len(v) > 0 {
		t.Fatalf("a replica was promoted although it lags beyond maximum_lag_on_failover or is tagged nofailover: %v", v)
	}
	for _, n := range []*Node{lagging, tagged} {
		nc := mustDirect(ctx, t, n)
		var rec bool
		if err := nc.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || !rec {
			t.Fatalf("%s: pg_is_in_recovery() = %v (%v)", n.Name, rec, err)
		}
		nc.Close(ctx)
	}
	if v := watch.violations(); len(v) > 0 {
		t.Fatalf("nofailover node promoted: %v", v)
	}
	t.Logf("no promotion %s after killing %s", time.Since(killed).Round(time.Second), primary.Name)
}

// keepLogs copies each node's current daemon log to the temporary directory when the test
// failed (the daemon harness removes its directory), and says where.
func keepLogs(t testing.TB, c *Cluster) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.Nodes {
			if n.D == nil {
				continue
			}
			p := filepath.Join(os.TempDir(), fmt.Sprintf("%s-%s-%s.log", strings.ReplaceAll(t.Name(), "/", "_"), n.Name, time.Now().Format("150405")))
			if err := os.WriteFile(p, []byte(n.D.Log()), 0o644); err == nil {
				t.Logf("%s's log kept in %s", n.Name, p)
			}
			if b, err := os.ReadFile(filepath.Join(n.Dir, "pgdata.log")); err == nil {
				p = strings.TrimSuffix(p, ".log") + "-postgresql.log"
				if err := os.WriteFile(p, b, 0o644); err == nil {
					t.Logf("%s's PostgreSQL log kept in %s", n.Name, p)
				}
			}
		}
	})
}

// directConn connects to the node's PostgreSQL itself, not through a proxy.
func directConn(ctx context.Context, n *Node) (*pgx.Conn, error) {
	return pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable connect_timeout=5",
		n.PGPort, n.c.Password))
}

func mustDirect(ctx context.Context, t testing.TB, n *Node) *pgx.Conn {
	t.Helper()
	conn, err := directConn(ctx, n)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	return conn
}

func mustExec(ctx context.Context, t testing.TB, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryLSN(ctx context.Context, t testing.TB, conn *pgx.Conn, expr string) fsm.LSN {
	t.Helper()
	var s *string
	if err := conn.QueryRow(ctx, "SELECT ("+expr+")::text").Scan(&s); err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	if s == nil {
		return 0
	}
	l, err := fsm.ParseLSN(*s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func receivedLSN(ctx context.Context, t testing.TB, n *Node) fsm.LSN {
	t.Helper()
	conn := mustDirect(ctx, t, n)
	defer conn.Close(ctx)
	return queryLSN(ctx, t, conn, "pg_last_wal_receive_lsn()")
}

// settledLSN waits until n's received WAL position stays the same for a second (its upstream
// stopped sending) and returns it.
func settledLSN(ctx context.Context, t testing.TB, n *Node) fsm.LSN {
	t.Helper()
	last, since := receivedLSN(ctx, t, n), time.Now()
	deadline := time.Now().Add(time.Minute)
	for time.Since(since) < time.Second {
		if time.Now().After(deadline) {
			t.Fatalf("%s: received WAL position still moving after a minute", n.Name)
		}
		time.Sleep(100 * time.Millisecond)
		if l := receivedLSN(ctx, t, n); l != last {
			last, since = l, time.Now()
		}
	}
	return last
}

func currentLSN(ctx context.Context, t testing.TB, conn *pgx.Conn) fsm.LSN {
	t.Helper()
	return queryLSN(ctx, t, conn, "pg_current_wal_flush_lsn()")
}

func countRows(ctx context.Context, t testing.TB, conn *pgx.Conn, phase string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM rewind_rows WHERE phase = $1", phase).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitLSN waits until expr (a WAL position function) on n's PostgreSQL reaches want.
func waitLSN(t testing.TB, n *Node, expr string, want fsm.LSN, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got fsm.LSN
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var conn *pgx.Conn
		if conn, err = directConn(ctx, n); err == nil {
			var s *string
			if err = conn.QueryRow(ctx, "SELECT ("+expr+")::text").Scan(&s); err == nil && s != nil {
				got, err = fsm.ParseLSN(*s)
			}
			conn.Close(ctx)
		}
		cancel()
		if err == nil && got >= want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %s at %s, want %s, within %s (%v)", n.Name, expr, got, want, timeout, err)
}

// waitReported waits until the cluster state holds a report from n at or beyond want.
func waitReported(t testing.TB, c *Cluster, n *Node, want fsm.LSN, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got fsm.LSN
	for time.Now().Before(deadline) {
		if v, err := c.fullView(); err == nil {
			for _, m := range v.Nodes {
				if m.Name == n.Name {
					got = m.Status.Position()
				}
			}
			if got >= want {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the cluster state has %s at %s, want %s, within %s", n.Name, got, want, timeout)
}

// clusterView is GET /nodes with the whole member records and the current operation.
type clusterView struct {
	Primary    string `json:"primary"`
	RaftLeader string `json:"raft_leader"`
	// ControllerWaiting is what the failover controller waits for (only from the leader).
	ControllerWaiting string         `json:"controller_waiting"`
	Operation         *fsm.Operation `json:"operation"`
	SyncStandbys      []string       `json:"sync_standbys"`
	Nodes             []fsm.Member   `json:"nodes"`
}

func viewAt(api string) (clusterView, error) {
	var v clusterView
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + api + "/nodes")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return v, err
	}
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET /nodes: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return v, json.Unmarshal(b, &v)
}

// fullView reads /nodes from the first live node that answers.
func (c *Cluster) fullView() (clusterView, error) {
	err := fmt.Errorf("no live node")
	for _, n := range c.Nodes {
		if !n.Alive() {
			continue
		}
		var v clusterView
		if v, err = viewAt(n.API); err == nil {
			return v, nil
		}
	}
	return clusterView{}, err
}

// controllerSays returns what the Raft leader's failover controller waits for, or else the
// current operation's message.
func controllerSays(c *Cluster) string {
	v, err := c.fullView()
	if err != nil {
		return err.Error()
	}
	for _, n := range c.Nodes {
		if n.Name == v.RaftLeader && n.Alive() {
			if lv, err := viewAt(n.API); err == nil && lv.ControllerWaiting != "" {
				return lv.ControllerWaiting
			}
		}
	}
	if v.Operation != nil {
		return v.Operation.Message
	}
	return ""
}

// stopWalsenders sends SIGSTOP to n's walsenders (to the named standbys, or to all) and returns
// their PIDs; they are killed when the test ends if still there. WAL written from then on does
// not leave n.
func stopWalsenders(t testing.TB, n *Node, standbys ...string) []int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := mustDirect(ctx, t, n)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT pid, application_name FROM pg_stat_replication")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for rows.Next() {
		var pid int
		var name string
		if err := rows.Scan(&pid, &name); err != nil {
			t.Fatal(err)
		}
		if len(standbys) == 0 || contains(standbys, name) {
			pids = append(pids, pid)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killPIDs(pids) })
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP walsender %d: %v", pid, err)
		}
	}
	return pids
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// killPIDs kills the walsenders stopWalsenders stopped, if they are still walsenders (a
// stopped walsender outlives its killed postmaster and keeps its shared memory attached).
func killPIDs(pids []int) {
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err == nil && bytes.Contains(b, []byte("walsender")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// neverPrimary watches, from its own goroutine, that none of some nodes is named the primary
// or runs as one.
type neverPrimary struct {
	mu    sync.Mutex
	seen  []string
	done  chan struct{}
	wg    sync.WaitGroup
	names []string
}

func watchNeverPrimary(c *Cluster, nodes ...*Node) *neverPrimary {
	w := &neverPrimary{done: make(chan struct{})}
	apis := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		apis[i] = n.API
	}
	for _, n := range nodes {
		w.names = append(w.names, n.Name)
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, api := range apis {
				v, err := viewAt(api)
				if err != nil {
					continue
				}
				for _, m := range v.Nodes {
					if !contains(w.names, m.Name) {
						continue
					}
					if v.Primary == m.Name || m.Status.Role == fsm.RolePrimary || m.Status.State == fsm.StatePromoting || m.Status.State == fsm.StateRunningPrimary {
						w.mu.Lock()
						if len(w.seen) < 20 {
							w.seen = append(w.seen, fmt.Sprintf("%s: primary %q, %s role %q state %s", time.Now().Format("15:04:05.000"), v.Primary, m.Name, m.Status.Role, m.Status.State))
						}
						w.mu.Unlock()
					}
				}
			}
			select {
			case <-w.done:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *neverPrimary) violations() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.seen...)
}

func (w *neverPrimary) stop() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
}

// TestSwitchoverAwayFromAnAdoptedPrimary: PostgreSQL outlives its pgbastion (a restart of the
// daemon for an upgrade), and the new pgbastion process adopts the running server without
// being its parent. A switchover away from that primary must still stop it and make it
// follow the new primary with its data: DEMOTE used to look only for a server it had started
// itself, took the running one for stopped, failed to rewind it and, with
// remove_data_directory_on_rewind_failure, removed its data directory under it.
func TestSwitchoverAwayFromAnAdoptedPrimary(t *testing.T) {
	c := Start(t, Options{})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn, err := c.Connect(ctx, primary.RW)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE adopted (id int); INSERT INTO adopted VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	pid := primary.PostmasterPID()
	primary.StopDaemon(t)
	primary.Restart(t)
	if p, _ := c.WaitOneWritablePrimary(2 * time.Minute); p != primary {
		t.Fatalf("after its daemon restarted the primary is %s, want %s", p.Name, primary.Name)
	}
	if got := primary.PostmasterPID(); got != pid {
		t.Fatalf("restarting pgbastion restarted PostgreSQL (postmaster %d, was %d): the test needs it adopted", got, pid)
	}
	c.WaitHealthy(2, 2*time.Minute)
	cand := c.Others(primary)[0]
	c.Switchover(t, cand.Name)
	c.WaitRejoined(t, primary, 2*time.Minute)
	if got := primary.PostmasterPID(); got == pid || got == 0 {
		t.Fatalf("the old primary's postmaster is %d (was %d): it was not stopped and started as a standby", got, pid)
	}
	if log := primary.D.Log(); strings.Contains(log, "re-cloning") || strings.Contains(log, "pg_rewind failed") {
		t.Fatalf("the old primary lost its data directory or failed to rewind:\n%s", primary.D.LogTail())
	}
	// Its data is there, streamed through the new primary.
	rconn, err := c.Connect(ctx, primary.RO)
	if err != nil {
		t.Fatal(err)
	}
	defer rconn.Close(ctx)
	var v int
	if err := rconn.QueryRow(ctx, "SELECT id FROM adopted").Scan(&v); err != nil || v != 42 {
		t.Fatalf("reading the row back: %d, %v", v, err)
	}
}

// TestStopOnExit: with postgresql.stop_on_exit (what a container needs, since PostgreSQL dies
// with the container) a stopping daemon stops its PostgreSQL cleanly. The primary's clean stop
// loses nothing: a replica takes over with every committed row, and the old primary comes back
// as a replica without being re-cloned.
func TestStopOnExit(t *testing.T) {
	c := Start(t, Options{PostgreSQLExtra: "stop_on_exit: true"})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	c.WaitHealthy(2, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	conn, err := c.Connect(ctx, primary.RW)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE stopped (id int); INSERT INTO stopped SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	pid := primary.PostmasterPID()
	primary.StopDaemon(t)
	if got := primary.PostmasterPID(); got != 0 {
		t.Fatalf("%s's pgbastion stopped but postmaster.pid still names %d", primary.Name, got)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("the postmaster (%d) still runs after its pgbastion stopped", pid)
	}
	if log := primary.D.Log(); !strings.Contains(log, "postgresql.stop_on_exit: PostgreSQL stopped") {
		t.Fatalf("the log does not say PostgreSQL was stopped:\n%s", primary.D.LogTail())
	}
	next := c.WaitPrimaryOtherThan(t, primary, 2*time.Minute)
	// It said so before leaving: the others list it stopped, not as the running primary it
	// last reported, and the failover started from that report, not from its lease lapsing.
	v, err := c.fullView()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range v.Nodes {
		if m.Name == primary.Name && (m.Status.State != fsm.StateStopped || m.Status.Healthy || !strings.Contains(m.Status.Reason, "stop_on_exit")) {
			t.Fatalf("%s is listed as %s healthy=%v (%q), want STOPPED for stop_on_exit", m.Name, m.Status.State, m.Status.Healthy, m.Status.Reason)
		}
	}
	// The failover that made next the primary, running or finished.
	op := lastOperation(t, next)
	if op.Kind != fsm.OpFailover || !strings.Contains(op.Reason, "stop_on_exit") {
		t.Fatalf("the operation is a %s for %q, want a failover started by the stopped report", op.Kind, op.Reason)
	}
	nconn, err := c.Connect(ctx, next.RW)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := nconn.QueryRow(ctx, "SELECT count(*) FROM stopped").Scan(&n); err != nil || n != 1000 {
		t.Fatalf("the new primary %s has %d rows of 1000 (%v)", next.Name, n, err)
	}
	nconn.Close(ctx)
	primary.Restart(t)
	c.WaitRejoined(t, primary, 2*time.Minute)
	if log := primary.D.Log(); strings.Contains(log, "re-cloning") {
		t.Fatalf("the cleanly stopped old primary was re-cloned:\n%s", primary.D.LogTail())
	}
}

// TestSwitchoverOnExit: with postgresql.switchover_on_exit, stopping the primary's pgbastion
// hands over first: the change of primary is a switchover, not a failover, and a client
// writing through another node's proxy the whole time gets no error.
func TestSwitchoverOnExit(t *testing.T) {
	c := Start(t, Options{PostgreSQLExtra: "stop_on_exit: true\nswitchover_on_exit: true"})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	c.WaitHealthy(2, 2*time.Minute)
	via := c.Others(primary)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	conn, err := c.Connect(ctx, via.RW)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE handover (id int)"); err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	var writeErr atomic.Pointer[error]
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := conn.Exec(ctx, "INSERT INTO handover VALUES (1)"); err != nil {
				writeErr.CompareAndSwap(nil, &err)
				return
			}
			writes.Add(1)
		}
	}()
	awaitWrites := func(n int64, what string) {
		t.Helper()
		replAwait(t, time.Minute, what, func() (bool, string) {
			if e := writeErr.Load(); e != nil {
				t.Fatalf("a write through %s failed: %v", via.Name, *e)
			}
			return writes.Load() >= n, fmt.Sprintf("%d writes, want %d", writes.Load(), n)
		})
	}
	awaitWrites(20, "before the stop")
	primary.StopDaemon(t)
	next := c.WaitPrimaryOtherThan(t, primary, time.Minute)
	awaitWrites(writes.Load()+20, "after the handover")
	close(stop)
	<-done
	if e := writeErr.Load(); e != nil {
		t.Fatalf("a write through %s failed during the handover: %v", via.Name, *e)
	}
	if log := primary.D.Log(); !strings.Contains(log, "postgresql.switchover_on_exit: switchover finished") {
		t.Fatalf("%s's log does not show the handover:\n%s", primary.Name, primary.D.LogTail())
	}
	if op := lastOperation(t, next); op.Kind != fsm.OpSwitchover || op.NewPrimary != next.Name ||
		op.Trace == nil || op.Trace.RequestID != "switchover_on_exit:"+primary.Name {
		t.Fatalf("the last operation is a %s to %q (trace %+v), want a switchover to %s requested by switchover_on_exit", op.Kind, op.NewPrimary, op.Trace, next.Name)
	}
	t.Logf("%d writes through %s, none failed, while %s handed over to %s", writes.Load(), via.Name, primary.Name, next.Name)
	// Leave the cluster settled, the other replica streaming from the new primary: the
	// harness's stops hand over again, and a switchover to a replica still pointed at the
	// node that left would wait for it to catch up longer than the harness waits for a stop.
	replAwait(t, time.Minute, "the remaining replica follows "+next.Name, func() (bool, string) {
		v, err := c.fullView()
		if err != nil {
			return false, err.Error()
		}
		for _, m := range v.Nodes {
			if m.Name != primary.Name && m.Name != next.Name && (m.Status.State != fsm.StateRunningReplica || m.Status.Following != next.Name) {
				return false, fmt.Sprintf("%s: %s following %q", m.Name, m.Status.State, m.Status.Following)
			}
		}
		return true, ""
	})
}

// lastOperation returns the operation running on n's view of the cluster, or else the last one
// that finished, waiting up to 30 s for there to be one (n may not have applied it yet).
func lastOperation(t *testing.T, n *Node) fsm.Operation {
	t.Helper()
	var op fsm.Operation
	replAwait(t, 30*time.Second, "an operation in "+n.Name+"'s /history", func() (bool, string) {
		var hist struct {
			Operation  *fsm.Operation  `json:"operation"`
			Operations []fsm.Operation `json:"operations"`
		}
		resp, err := http.Get("http://" + n.API + "/history")
		if err != nil {
			return false, err.Error()
		}
		err = json.NewDecoder(resp.Body).Decode(&hist)
		resp.Body.Close()
		switch {
		case err != nil:
			return false, err.Error()
		case hist.Operation != nil:
			op = *hist.Operation
		case len(hist.Operations) > 0:
			op = hist.Operations[len(hist.Operations)-1]
		default:
			return false, "none yet"
		}
		return true, ""
	})
	return op
}
