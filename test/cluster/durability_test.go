package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// faultTime is how long the durability tests keep failing the primary (issue 6 asks for at
// least two minutes; more would only make CI longer).
const faultTime = 2*time.Minute + 10*time.Second

// TestDurabilitySynchronous is issue 6's done-when #1 in synchronous_mode on: unique-integer
// inserts through the proxies while the primary is failed over and over (switchover, kill -9
// of its PostgreSQL, kill -9 of the whole node, in rotation, each on a steady cluster). Every
// acknowledged insert must be on the final primary and nothing that was never attempted may be.
func TestDurabilitySynchronous(t *testing.T) {
	testDurability(t, "on")
}

// TestDurabilityAsynchronous is the same workload and faults in synchronous_mode off: it
// reports what was lost and fails only on rows that were never attempted.
func TestDurabilityAsynchronous(t *testing.T) {
	testDurability(t, "off")
}

func testDurability(t *testing.T, mode string) {
	syncMode := mode != "off"
	c := Start(t, Options{
		Extra: fmt.Sprintf("failover:\n  synchronous_mode: %q\n", mode),
		// Commits wait for the local WAL flush (and, in synchronous mode, for the standby):
		// the harness's default synchronous_commit off would acknowledge commits that a kill
		// -9 of the postmaster loses without any failover.
		Parameters: map[string]string{"synchronous_commit": "on"},
	})
	keepLogs(t, c)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	{
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		conn, err := c.Connect(ctx, primary.RW)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE durability (id bigint PRIMARY KEY, worker int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
		cancel()
	}
	c.WaitHealthy(2, 3*time.Minute)
	if syncMode {
		waitSyncStandby(t, c, 3*time.Minute)
	}

	w := newWorkload(c, 4)
	w.start()
	stopped := false
	stopWorkload := func() {
		if !stopped {
			stopped = true
			w.stop()
		}
	}
	t.Cleanup(stopWorkload)
	if err := w.waitAcked(100, 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	kinds := []string{"switchover", "postgres", "node"}
	began := time.Now()
	var faults []string
	degraded := false
	for i := 0; time.Since(began) < faultTime || i < len(kinds); i++ {
		// A fault hits a steady cluster: a writable primary, two streaming replicas (in
		// synchronous mode one of them synchronous), and writes acknowledged by this primary.
		var err error
		if primary, _, err = c.WritablePrimary(3 * time.Minute); err == nil {
			err = healthy(c, 2, 3*time.Minute)
		}
		if err == nil {
			err = streaming(primary, 2, 3*time.Minute)
		}
		if err == nil && syncMode {
			err = syncStandby(c, 3*time.Minute)
		}
		if err == nil {
			err = w.waitAcked(w.ackedCount()+50, 2*time.Minute)
		}
		if err != nil {
			t.Errorf("after %d faults the cluster is not ready for the next one, so the faults stop: %v", i, err)
			degraded = true
			break
		}
		kind := kinds[i%len(kinds)]
		at := time.Now()
		var next *Node
		switch kind {
		case "postgres":
			pid := primary.PostmasterPID()
			primary.KillPostgres(t)
			waitDead(t, pid)
		case "node":
			pid := primary.PostmasterPID()
			primary.KillNode(t)
			waitDead(t, pid)
		case "switchover":
			cand := switchoverCandidate(t, c, primary, syncMode)
			c.Switchover(t, cand.Name)
			next = cand
		}
		want := next
		if next, _, err = c.WritablePrimary(3 * time.Minute); err != nil {
			t.Errorf("%s of %s: %v", kind, primary.Name, err)
			if kind == "node" {
				primary.Restart(t)
			}
			degraded = true
			break
		}
		took := time.Since(at).Round(time.Millisecond)
		switch {
		case kind == "node" && next == primary:
			t.Fatalf("killed node %s is still the primary", primary.Name)
		case want != nil && next != want:
			t.Errorf("switchover to %s: the writable primary is %s", want.Name, next.Name)
		}
		if kind == "node" {
			primary.Restart(t)
		}
		f := fmt.Sprintf("%s of %s: writable primary %s after %s (acked so far %d)", kind, primary.Name, next.Name, took, w.ackedCount())
		faults = append(faults, f)
		t.Log(f)
	}
	faultFor := time.Since(began)
	// Writes continue on the last primary for a moment, then the workload stops.
	if err := w.waitAcked(w.ackedCount()+50, 2*time.Minute); err != nil {
		t.Errorf("after the faults: %v", err)
	}
	stopWorkload()
	if !degraded {
		if err := healthy(c, 2, 3*time.Minute); err != nil {
			t.Errorf("after the faults: %v", err)
		}
	}
	final, _, err := c.WritablePrimary(3 * time.Minute)
	if err != nil {
		t.Fatalf("after the faults: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := directConn(ctx, final)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	present := presentIDs(ctx, t, conn, "durability")
	r := w.report(present)
	t.Logf("synchronous_mode %s: %d faults in %s; final primary %s", mode, len(faults), faultFor.Round(time.Second), final.Name)
	t.Logf("attempted %d, acknowledged %d, lost %d, unexpected %d, in-doubt (not acknowledged, present) %d, failed (not acknowledged, absent) %d, acknowledged with a synchronous-replication warning %d",
		r.attempted, r.acked, len(r.lost), len(r.unexpected), r.inDoubt, r.failed, r.warned)
	t.Logf("client errors by kind: %s", w.errorSummary())
	if len(r.unexpected) > 0 {
		t.Errorf("%d rows present that were never attempted, e.g. %v", len(r.unexpected), first(r.unexpected, 20))
	}
	if len(r.lost) > 0 {
		if syncMode {
			t.Errorf("synchronous_mode %s lost %d acknowledged inserts, e.g. %v", mode, len(r.lost), first(r.lost, 20))
		} else {
			t.Logf("asynchronous mode lost %d acknowledged inserts, e.g. %v", len(r.lost), first(r.lost, 20))
		}
	}
	if r.dup > 0 {
		t.Errorf("%d inserts failed with a unique violation although every id is attempted once", r.dup)
	}
}

func first(ids []int64, n int) []int64 {
	slices.Sort(ids)
	return ids[:min(n, len(ids))]
}

// workload inserts unique integers through the nodes' read-write proxies.
type workload struct {
	c       *Cluster
	workers int
	nextID  atomic.Int64
	cancel  context.CancelFunc
	ctx     context.Context
	wg      sync.WaitGroup

	mu        sync.Mutex
	attempted map[int64]bool
	acked     map[int64]bool
	warned    map[int64]bool // COMMIT succeeded with PostgreSQL's "might not have been replicated" warning
	dup       int
	errs      map[string]int
	nAcked    atomic.Int64
}

func newWorkload(c *Cluster, workers int) *workload {
	ctx, cancel := context.WithCancel(context.Background())
	return &workload{c: c, workers: workers, ctx: ctx, cancel: cancel,
		attempted: map[int64]bool{}, acked: map[int64]bool{}, warned: map[int64]bool{}, errs: map[string]int{}}
}

func (w *workload) start() {
	// The proxies' addresses are fixed for the cluster's life; the workers never read the
	// nodes' mutable fields.
	addrs := make([]string, len(w.c.Nodes))
	for i, n := range w.c.Nodes {
		addrs[i] = n.RW
	}
	for k := 0; k < w.workers; k++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.run(k, addrs)
		}()
	}
}

func (w *workload) stop() {
	w.cancel()
	w.wg.Wait()
}

func (w *workload) ackedCount() int { return int(w.nAcked.Load()) }

// waitAcked waits until at least n inserts were acknowledged.
func (w *workload) waitAcked(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for w.ackedCount() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d inserts acknowledged within %s; client errors: %s", w.ackedCount(), n, timeout, w.errorSummary())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (w *workload) noteErr(err error) {
	kind := "other"
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		kind = "SQLSTATE " + pe.Code
	case errors.Is(err, context.DeadlineExceeded):
		kind = "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		kind = "connection refused"
	case strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "reset by peer") || strings.Contains(err.Error(), "broken pipe"):
		kind = "connection lost"
	}
	w.mu.Lock()
	w.errs[kind]++
	if pe != nil && pe.Code == "23505" {
		w.dup++
	}
	w.mu.Unlock()
}

func (w *workload) errorSummary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range w.errs {
			if !yield(k) {
				return
			}
		}
	}) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, w.errs[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// run is one client: it inserts ids one autocommit statement at a time through a proxy and,
// when its connection fails, reconnects through the next node's proxy. An id is attempted
// once: whatever happens to it, the next insert uses a new id.
func (w *workload) run(k int, addrs []string) {
	var conn *pgx.Conn
	var warning atomic.Bool
	next := k
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for w.ctx.Err() == nil {
		if conn == nil {
			cfg, err := pgx.ParseConfig(w.c.DSN(addrs[next%len(addrs)]))
			if err != nil {
				panic(err)
			}
			next++
			cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
				if strings.Contains(n.Message, "synchronous replication") || strings.Contains(n.Detail, "might not have been replicated") {
					warning.Store(true)
				}
			}
			ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
			conn, err = pgx.ConnectConfig(ctx, cfg)
			cancel()
			if err != nil {
				conn = nil
				if w.ctx.Err() == nil {
					w.noteErr(err)
					// Pace reconnections to dead proxies (not a wait for a condition).
					select {
					case <-w.ctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
				}
				continue
			}
		}
		id := w.nextID.Add(1)
		w.mu.Lock()
		w.attempted[id] = true
		w.mu.Unlock()
		warning.Store(false)
		// Not bound to w.ctx: stopping the workload must not cut a COMMIT short.
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		_, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO durability (id, worker) VALUES (%d, %d)", id, k))
		cancel()
		if err == nil {
			w.mu.Lock()
			if warning.Load() {
				w.warned[id] = true
			} else {
				w.acked[id] = true
				w.nAcked.Add(1)
			}
			w.mu.Unlock()
			continue
		}
		w.noteErr(err)
		if conn.IsClosed() || pgconn.SafeToRetry(err) || !isPgError(err) {
			conn.Close(context.Background())
			conn = nil
		}
		// Pace retries while there is no primary (not a wait for a condition).
		select {
		case <-w.ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func isPgError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
}

type durabilityReport struct {
	attempted, acked, inDoubt, failed, warned, dup int
	lost, unexpected                               []int64
}

func (w *workload) report(present map[int64]bool) durabilityReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := durabilityReport{attempted: len(w.attempted), acked: len(w.acked), warned: len(w.warned), dup: w.dup}
	for id := range w.acked {
		if !present[id] {
			r.lost = append(r.lost, id)
		}
	}
	for id := range present {
		if !w.attempted[id] {
			r.unexpected = append(r.unexpected, id)
		}
	}
	for id := range w.attempted {
		if w.acked[id] {
			continue
		}
		if present[id] {
			r.inDoubt++
		} else {
			r.failed++
		}
	}
	return r
}

// switchoverCandidate picks the replica to switch over to: in synchronous mode a standby of
// the synchronous record, otherwise the first streaming replica.
func switchoverCandidate(t testing.TB, c *Cluster, primary *Node, sync bool) *Node {
	t.Helper()
	if sync {
		st, err := c.syncRecord()
		if err != nil || st.SyncPrimary != primary.Name || len(st.SyncStandbys) == 0 {
			t.Fatalf("choosing a switchover candidate: synchronous record %+v (%v)", st, err)
		}
		return c.Node(st.SyncStandbys[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := directConn(ctx, primary)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var name string
	if err := conn.QueryRow(ctx, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY application_name").Scan(&name); err != nil {
		t.Fatalf("choosing a switchover candidate on %s: %v", primary.Name, err)
	}
	return c.Node(name)
}

// waitSyncStandby waits until the primary's PostgreSQL has a streaming synchronous standby
// and the cluster state records one for it, so that a fault hits a cluster that promised
// synchronous durability.
func waitSyncStandby(t testing.TB, c *Cluster, timeout time.Duration) {
	t.Helper()
	if err := syncStandby(c, timeout); err != nil {
		t.Fatal(err)
	}
}

func syncStandby(c *Cluster, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		st, err := c.syncRecord()
		if err != nil {
			last = err.Error()
		} else if st.Primary == "" || st.SyncPrimary != st.Primary || st.SyncCount < 1 || len(st.SyncStandbys) == 0 {
			last = fmt.Sprintf("primary %q, synchronous record: primary %q standbys %v count %d", st.Primary, st.SyncPrimary, st.SyncStandbys, st.SyncCount)
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			n, err := countSyncStandbys(ctx, c.Node(st.Primary))
			cancel()
			if err == nil && n > 0 {
				return nil
			}
			last = fmt.Sprintf("primary %s: %d synchronous standbys streaming (%v)", st.Primary, n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no synchronous standby within %s: %s", timeout, last)
}

// syncState is the synchronous replication record of the cluster state (GET /cluster).
type syncState struct {
	Primary      string   `json:"primary"`
	SyncStandbys []string `json:"sync_standbys"`
	SyncCount    int      `json:"sync_count"`
	SyncPrimary  string   `json:"sync_primary"`
}

func (c *Cluster) syncRecord() (syncState, error) {
	var st syncState
	err := errors.New("no live node")
	for _, n := range c.Nodes {
		if !n.Alive() {
			continue
		}
		var resp *http.Response
		client := http.Client{Timeout: 2 * time.Second}
		if resp, err = client.Get("http://" + n.API + "/cluster"); err != nil {
			continue
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err == nil {
			return st, nil
		}
	}
	return st, err
}

// streaming waits until primary's PostgreSQL streams to n standbys.
func streaming(primary *Node, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var k int
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var conn *pgx.Conn
		if conn, err = directConn(ctx, primary); err == nil {
			err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&k)
			conn.Close(ctx)
		}
		cancel()
		if err == nil && k >= n {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s streams to %d standbys, want %d, within %s (%v)", primary.Name, k, n, timeout, err)
}

func countSyncStandbys(ctx context.Context, n *Node) (int, error) {
	conn, err := directConn(ctx, n)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var k int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum')").Scan(&k)
	return k, err
}

// waitDead waits until the process pid (a killed postmaster) is gone or a zombie.
func waitDead(t testing.TB, pid int) {
	t.Helper()
	if pid == 0 {
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		// pid (comm) state ...: comm may hold spaces, the state follows the last ')'.
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still alive 30s after SIGKILL", pid)
}

// healthy is Cluster.WaitHealthy returning an error instead of failing the test.
func healthy(c *Cluster, replicas int, timeout time.Duration) error {
	var last View
	var lastErr error
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		v, err := c.AnyView()
		lastErr = err
		if err == nil {
			last = v
			p, r := 0, 0
			for _, n := range v.Nodes {
				switch {
				case n.Name == v.Primary && n.Status.Healthy && n.Status.State == "RUNNING_PRIMARY":
					p++
				case n.Status.Healthy && n.Status.State == "RUNNING_REPLICA":
					r++
				}
			}
			if p == 1 && r >= replicas {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("cluster not healthy within %s (want a primary and %d replicas); last view: %+v (%v)", timeout, replicas, last, lastErr)
}

// presentIDs reads every id in table.
func presentIDs(ctx context.Context, t testing.TB, conn *pgx.Conn, table string) map[int64]bool {
	t.Helper()
	rows, err := conn.Query(ctx, "SELECT id FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	present := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		present[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return present
}
