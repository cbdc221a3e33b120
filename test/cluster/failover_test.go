package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/ha/tracing/otlptest"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

func TestMain(m *testing.M) { daemon.Main(m) }

// TestKillPrimaryPostmaster: kill -9 of the primary's postmaster. The cluster ends with exactly
// one writable primary reachable through every node's read-write port: either a promoted
// replica (and the old primary rejoins as a replica or stays fenced with a reason), or the old
// primary restarted in place if its agent got there first.
func TestKillPrimaryPostmaster(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(time.Minute)
	killed := time.Now()
	old.KillPostgres(t)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	t.Logf("killed %s's postmaster; writable primary %s through every node after %s", old.Name, primary.Name, time.Since(killed).Round(time.Millisecond))
	if primary != old {
		c.WaitRejoined(t, old, 3*time.Minute)
	}
	c.WaitHealthy(2, 2*time.Minute)
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary moved again, to %s", p.Name)
	}
}

// TestKillPrimaryNode: kill -9 of the primary's pgbastion and PostgreSQL together (a lost host).
// The survivors promote a replica; when the node comes back it rejoins as a replica.
func TestKillPrimaryNode(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(time.Minute)
	killed := time.Now()
	old.KillNode(t)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	t.Logf("killed node %s; writable primary %s through every surviving node after %s", old.Name, primary.Name, time.Since(killed).Round(time.Millisecond))
	if primary == old {
		t.Fatal("a dead node is still the primary")
	}
	old.Restart(t)
	c.WaitRejoined(t, old, 3*time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary changed to %s after the old node returned", p.Name)
	}
}

// TestPausePrimaryDaemon: SIGSTOP of the primary's pgbastion. Its lease runs out, a replica is
// promoted once the old primary can no longer be routing writes, and when the daemon resumes
// it finds itself deposed and rejoins as a replica — never two writable primaries.
func TestPausePrimaryDaemon(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(time.Minute)
	paused := time.Now()
	old.Pause(t)
	old.stopped = true // not reachable while paused
	// Its PostgreSQL still runs, so until the others depose it (its agent silent past the
	// lease) they keep routing writes to it; then a replica is promoted.
	c.WaitPrimaryOtherThan(t, old, 2*time.Minute)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	t.Logf("paused %s's pgbastion; writable primary %s through the others after %s", old.Name, primary.Name, time.Since(paused).Round(time.Millisecond))
	if primary == old {
		t.Fatal("the paused node is still the primary")
	}
	old.Resume(t)
	old.stopped = false
	c.WaitRejoined(t, old, 3*time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary moved to %s after %s resumed", p.Name, old.Name)
	}
}

// TestStopRaftLeaderNotPrimary: the Raft leader, when it is not the primary, stops. A new
// leader takes over; the primary does not change and writes keep working.
func TestStopRaftLeaderNotPrimary(t *testing.T) {
	c := Start(t, Options{})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	// Make sure the Raft leader is not the primary: move the primary if they coincide.
	v, err := c.AnyView()
	if err != nil {
		t.Fatal(err)
	}
	if v.RaftLeader == primary.Name {
		cand := c.Others(primary)[0]
		c.Switchover(t, cand.Name)
		primary, _ = c.WaitOneWritablePrimary(time.Minute)
		if v, err = c.AnyView(); err != nil {
			t.Fatal(err)
		}
	}
	if v.RaftLeader == "" || v.RaftLeader == primary.Name {
		t.Fatalf("could not arrange a non-primary Raft leader (leader %q, primary %q)", v.RaftLeader, primary.Name)
	}
	leader := c.Node(v.RaftLeader)
	leader.StopDaemon(t)
	p, took := c.WaitOneWritablePrimary(time.Minute)
	if p != primary {
		t.Fatalf("primary changed from %s to %s when the Raft leader %s stopped", primary.Name, p.Name, leader.Name)
	}
	t.Logf("stopped Raft leader %s; writes through the others after %s", leader.Name, took.Round(time.Millisecond))
	leader.Restart(t)
	c.WaitHealthy(2, 2*time.Minute)
}

// TestQuorumLossStopsWrites: two of three pgbastion processes stop. The primary can no longer
// renew its lease through a Raft quorum, so its proxy stops routing writes (clients get a clear
// error once query_wait_timeout passes) and, after quorum_loss_timeout, PostgreSQL is fenced.
func TestQuorumLossStopsWrites(t *testing.T) {
	c := Start(t, Options{QueryWaitTimeout: 3 * time.Second, Extra: "failover:\n  quorum_loss_timeout: 6s\n"})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	stopped := time.Now()
	for _, n := range c.Nodes {
		if n != primary {
			n.StopDaemon(t)
		}
	}
	// Writes through the primary's own proxy stop.
	var lastErr error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, lastErr = c.WritableThrough(ctx, primary.RW)
		cancel()
		if lastErr != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lastErr == nil {
		t.Fatal("the primary's proxy kept taking writes without a Raft quorum")
	}
	var pe *pgconn.PgError
	if !errors.As(lastErr, &pe) || pe.Code != "57P03" {
		t.Fatalf("write without quorum failed with %v, want SQLSTATE 57P03 and a clear message", lastErr)
	}
	t.Logf("writes refused %s after losing quorum: %s", time.Since(stopped).Round(time.Millisecond), pe.Message)
	// PostgreSQL itself is fenced after quorum_loss_timeout: direct connections fail.
	deadline = time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && primary.PostmasterPID() != 0 {
		time.Sleep(100 * time.Millisecond)
	}
	if pid := primary.PostmasterPID(); pid != 0 {
		t.Fatalf("PostgreSQL on %s still running (pid %d) %s after quorum loss", primary.Name, pid, time.Since(stopped))
	}
	t.Logf("PostgreSQL on %s fenced %s after losing quorum", primary.Name, time.Since(stopped).Round(time.Millisecond))
}

// TestSwitchoverUnderPgbenchLoad: a switchover while pgbench writes through a node's proxy in
// transaction mode completes with 0 client errors; the cluster's webhook hears of it once
// and each node's on_role_change callback runs.
func TestSwitchoverUnderPgbenchLoad(t *testing.T) {
	pgbench := pgtest.Program(t, "pgbench")
	hooks := newHookWatch(t)
	col := otlptest.Start()
	defer col.Close()
	tracingSection := fmt.Sprintf("tracing: {endpoint: %q}\n", col.URL())
	c := Start(t, Options{Extra: hooks.webhooks() + tracingSection, PostgreSQLExtra: hooks.callbacks()})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	entry := c.Nodes[2]
	if entry == primary {
		entry = c.Nodes[1]
	}
	host, port, _ := net.SplitHostPort(entry.RW)
	env := append(os.Environ(), "PGPASSWORD="+c.Password)
	init := exec.Command(pgbench, "-i", "-s", "2", "-h", host, "-p", port, "-U", "postgres", "postgres")
	init.Env = env
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	run := exec.Command(pgbench, "-c", "8", "-j", "2", "-T", "25", "-P", "1", "-h", host, "-p", port, "-U", "postgres", "postgres")
	run.Env = env
	var out bytes.Buffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second) // let the load settle before moving the primary
	cand := c.Others(primary)[0]
	began := time.Now()
	c.SwitchoverWithHeaders(t, cand.Name, map[string]string{"traceparent": "00-" + callerTrace + "-" + callerSpan + "-01",
		"X-Request-ID": "switchover-under-load"})
	t.Logf("switchover %s -> %s took %s", primary.Name, cand.Name, time.Since(began).Round(time.Millisecond))
	err := run.Wait()
	text := out.String()
	if err != nil || !strings.Contains(text, "number of failed transactions: 0") || strings.Contains(text, "error") {
		t.Fatalf("pgbench saw errors during the switchover (%v):\n%s", err, text)
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "progress:") || strings.Contains(line, "tps =") || strings.Contains(line, "processed") {
			t.Log(line)
		}
	}
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != cand {
		t.Fatalf("primary is %s, want %s", p.Name, cand.Name)
	}
	hooks.checkSwitchover(t, c, primary.Name, cand.Name)
	checkSwitchoverTrace(t, col, primary.Name, cand.Name)
	// The webhook events of the operation name the request and the trace too.
	for _, e := range hooks.received() {
		if e.Type == "operation_started" || e.Type == "operation_finished" {
			if e.Operation == nil || e.Operation.RequestID != "switchover-under-load" || e.Operation.TraceID != callerTrace {
				t.Errorf("webhook %s: operation %+v, want the request's and trace's IDs", e.ID, e.Operation)
			}
		}
	}
}

// The caller's trace context, sent with the switchover request.
const (
	callerTrace = "0af7651916cd43dd8448eb211c80319c"
	callerSpan  = "b7ad6b7169203331"
)

// checkSwitchoverTrace: the switchover is one trace across the cluster, below the caller's
// span: the API request's span, the operation's (recorded by the Raft leader), the DEMOTE on
// the old primary and the PROMOTE on the candidate, each with the pg_ctl run under it.
func checkSwitchoverTrace(t *testing.T, col *otlptest.Collector, old, cand string) {
	t.Helper()
	inTrace := func(match func(otlptest.Span) bool) (otlptest.Span, bool) {
		return col.Find(func(s otlptest.Span) bool { return s.TraceID == callerTrace && match(s) })
	}
	var req, op, demote, promote otlptest.Span
	waitTrue(t, time.Minute, func() bool {
		var ok [4]bool
		req, ok[0] = inTrace(func(s otlptest.Span) bool { return s.Name == "POST /switchover" && s.ParentID == callerSpan })
		op, ok[1] = inTrace(func(s otlptest.Span) bool {
			return strings.HasPrefix(s.Name, "switchover ") && s.ParentID == req.SpanID
		})
		demote, ok[2] = inTrace(func(s otlptest.Span) bool {
			return s.Name == "directive DEMOTE" && s.Node == old && s.ParentID == op.SpanID
		})
		promote, ok[3] = inTrace(func(s otlptest.Span) bool {
			return s.Name == "directive PROMOTE" && s.Node == cand && s.ParentID == op.SpanID
		})
		return ok[0] && ok[1] && ok[2] && ok[3]
	}, "the switchover's spans from every node in one trace")
	if req.Attributes["pgbastion.request_id"] != "switchover-under-load" || op.Attributes["pgbastion.request_id"] != "switchover-under-load" ||
		op.Attributes["pgbastion.operation.new_primary"] != cand {
		t.Fatalf("request span %v, operation span %v", req.Attributes, op.Attributes)
	}
	// The PostgreSQL work under each directive: the old primary stopped and started as a
	// standby, the candidate promoted with pg_ctl.
	for _, w := range []struct {
		d    otlptest.Span
		name string
	}{{demote, "postgres stop"}, {demote, "postgres start"}, {promote, "pg_ctl"}} {
		if _, ok := inTrace(func(s otlptest.Span) bool { return s.Name == w.name && s.ParentID == w.d.SpanID && s.Node == w.d.Node }); !ok {
			t.Errorf("no %s span under %s on %s", w.name, w.d.Name, w.d.Node)
		}
	}
	t.Logf("trace %s: %s on %s; %s (%d ms) recorded by %s; %s on %s; %s on %s", callerTrace, req.Name, req.Node, op.Name,
		(op.End-op.Start)/1e6, op.Attributes["pgbastion.recorded_by"], demote.Name, demote.Node, promote.Name, promote.Node)
}
