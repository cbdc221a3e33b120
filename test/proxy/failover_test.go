package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
)

// failoverBound is the acceptance line for both halves of the standalone failover: refusing
// new read-write transactions after the primary dies, and following the promoted replica.
const failoverBound = 2 * time.Second

// attemptTimeout bounds one probe through the read-write port: a probe that hangs longer than
// the acceptance line is a failure in itself (the proxy must answer, not stall).
const attemptTimeout = failoverBound

// TestFailoverStandalone (issue 2, done-when 5): with the primary's PostgreSQL killed (kill -9
// of the postmaster), the read-write port refuses new transactions with a clear error within
// 2 s — SQLSTATE 57P03 "no primary is available" once the proxy knows, a connection-failure
// SQLSTATE before — and never hangs; the read-only port keeps serving the replica. After the
// replica is promoted by hand, the read-write port reaches it (pg_is_in_recovery() false, a
// write succeeds and lands on it) within 2 s. Two daemons (session and transaction mode)
// watch the same failover; in transaction mode a client connection survives it.
func TestFailoverStandalone(t *testing.T) {
	t.Parallel()
	c := newCluster(t, nil)
	c.primary.Exec(t, "CREATE TABLE failover_marks (daemon text PRIMARY KEY)")
	c.replica.WaitCatchUp(t)
	modes := []pool.Mode{pool.ModeSession, pool.ModeTransaction}
	daemons := map[pool.Mode]*daemon.Daemon{}
	held := map[pool.Mode]*pgx.Conn{}
	for _, mode := range modes {
		d := c.startProxy(t, mode, nil)
		daemons[mode] = d
		// A session that exists before the kill: its next statement must fail, not hang.
		conn, err := pgx.Connect(t.Context(), daemon.ConnString(d.RW()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		if _, err := conn.Exec(t.Context(), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		held[mode] = conn
	}

	killed := time.Now()
	c.primary.Kill(t)
	t.Logf("primary killed (kill -9 of the postmaster) in %v", time.Since(killed).Round(time.Millisecond))

	var wg sync.WaitGroup
	for _, mode := range modes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := awaitRefusal(t, string(mode), daemons[mode].RW(), killed); err != nil {
				t.Errorf("%s mode: %v", mode, err)
			}
		}()
	}
	wg.Wait()
	for _, mode := range modes {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := held[mode].Exec(ctx, "SELECT 1")
		cancel()
		t.Logf("%s mode: a session opened before the kill gets: %s", mode, describe(err))
		if code := pgCode(err); !strings.HasPrefix(code, "08") && code != "57P01" && code != "57P02" && code != "57P03" {
			t.Errorf("%s mode: the session that was open during the kill got %s, want a connection-failure SQLSTATE", mode, describe(err))
		}
		// Reads go on through the read-only port.
		if !inRecovery(t, daemon.ConnString(daemons[mode].RO())) {
			t.Errorf("%s mode: the read-only port reached a writable server", mode)
		}
	}
	if t.Failed() {
		return
	}

	promoteStart := time.Now()
	c.replica.Promote(t)
	promoted := time.Now()
	t.Logf("replica promoted by hand (pg_ctl promote -w, then writable) in %v", promoted.Sub(promoteStart).Round(time.Millisecond))
	for _, mode := range modes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := awaitFollow(t, string(mode), daemons[mode].RW(), promoteStart, promoted); err != nil {
				t.Errorf("%s mode: %v", mode, err)
			}
		}()
	}
	wg.Wait()
	if n := c.replica.QueryString(t, "SELECT count(*) FROM failover_marks"); n != fmt.Sprint(len(modes)) {
		t.Errorf("the promoted replica holds %s rows written through the rw ports, want %d", n, len(modes))
	}
	// In transaction mode a client's connection outlives the failover: its next transaction
	// runs on the new primary.
	var rec bool
	if err := held[pool.ModeTransaction].QueryRow(t.Context(), "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
		t.Errorf("transaction mode: the session opened before the failover, afterwards: pg_is_in_recovery() = %v, %s", rec, describe(err))
	}
}

// probe runs one new read-write transaction through addr on a new connection.
func probe(ctx context.Context, addr, sql string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, daemon.ConnString(addr, "connect_timeout=2"))
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var rec bool
	err = conn.QueryRow(ctx, sql).Scan(&rec)
	return rec, err
}

// awaitRefusal polls the read-write port until the proxy refuses new transactions because it
// knows there is no primary (57P03), checking that every answer before that is a clear
// refusal too.
func awaitRefusal(t *testing.T, mode, addr string, killed time.Time) error {
	var first time.Duration
	var firstErr string
	deadline := killed.Add(failoverBound + 3*time.Second)
	for attempts := 1; ; attempts++ {
		rec, err := probe(t.Context(), addr, "SELECT pg_is_in_recovery()")
		at := time.Since(killed)
		switch {
		case err == nil:
			return fmt.Errorf("a read-write transaction succeeded %v after the primary died (pg_is_in_recovery() = %v)", at, rec)
		case pgCode(err) == "":
			return fmt.Errorf("attempt %d, %v after the kill: no SQLSTATE in %q (a hang or a bare disconnect)", attempts, at, err)
		}
		if first == 0 {
			first, firstErr = at, describe(err)
		}
		if pgCode(err) == "57P03" && strings.Contains(err.Error(), "primary") {
			t.Logf("%s mode: first refusal %v after the kill: %s", mode, first.Round(time.Millisecond), firstErr)
			t.Logf("%s mode: no-primary refusal %v after the kill (attempt %d): %s", mode, at.Round(time.Millisecond), attempts, describe(err))
			if first > failoverBound || at > failoverBound {
				return fmt.Errorf("the read-write port took %v to refuse with 57P03 (first refusal after %v), want under %v", at, first, failoverBound)
			}
			return nil
		}
		// Before the proxy knows, a pooled connection whose backend is going down with its
		// postmaster answers with PostgreSQL's own 57P01/57P02: clear, and retryable, too.
		if code := pgCode(err); !strings.HasPrefix(code, "08") && code != "57P03" && code != "57P01" && code != "57P02" {
			return fmt.Errorf("%v after the kill: %s is not a refusal for want of a server", at, describe(err))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still no 57P03 %v after the kill; last answer: %s", at, describe(err))
		}
		time.Sleep(poll) // poll: the proxy offers no notification of its routing change
	}
}

// awaitFollow polls the read-write port until it reaches the promoted replica and a write
// succeeds there.
func awaitFollow(t *testing.T, mode, addr string, promoteStart, promoted time.Time) error {
	deadline := promoted.Add(failoverBound + 3*time.Second)
	var last error
	for attempts := 1; ; attempts++ {
		rec, err := probe(t.Context(), addr, "SELECT pg_is_in_recovery()")
		if err == nil && !rec {
			at := time.Since(promoted)
			t.Logf("%s mode: rw reaches the promoted replica %v after the promotion completed (%v after pg_ctl promote started; attempt %d)",
				mode, at.Round(time.Millisecond), time.Since(promoteStart).Round(time.Millisecond), attempts)
			if _, err := probe(t.Context(), addr, "INSERT INTO failover_marks VALUES ('"+mode+"') RETURNING false"); err != nil {
				return fmt.Errorf("write through rw after the follow: %s", describe(err))
			}
			if at > failoverBound {
				return fmt.Errorf("the read-write port followed the promoted replica after %v, want under %v", at, failoverBound)
			}
			return nil
		}
		if err == nil {
			err = fmt.Errorf("reached a server in recovery")
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("the read-write port did not reach the promoted replica %v after the promotion; last: %s",
				time.Since(promoted), describe(last))
		}
		time.Sleep(poll) // poll: the proxy offers no notification of its routing change
	}
}
