package proxy_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/test/daemon"
)

// TestCtlKillClientAndReconnect runs the pgbastion binary in transaction mode. A client runs
// a query that would sleep for ten minutes; `pgbastion ctl connections` shows its ID and
// `pgbastion ctl proxy kill-client ID` closes it: the client gets 57P01 and PostgreSQL stops
// the query. `pgbastion ctl proxy reconnect` then replaces the pool's server connections: the
// next transaction runs on a new backend.
func TestCtlKillClientAndReconnect(t *testing.T) {
	primary, d := startTransactionProxy(t, "ops-token")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const sleeper = "SELECT pg_sleep(600)"
	victim, err := pgx.Connect(ctx, daemon.ConnString(d.RW(), "application_name=victim"))
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := victim.Exec(ctx, sleeper, pgx.QueryExecModeSimpleProtocol)
		done <- err
	}()
	pid := waitActive(t, primary, sleeper)

	if out, err := ctl(t, d, "", "proxy", "kill-client", "0x1"); err == nil || !strings.Contains(out, "token") {
		t.Fatalf("kill-client without the token: %v\n%s", err, out)
	}
	out, err := ctl(t, d, "ops-token", "connections")
	if err != nil {
		t.Fatalf("ctl connections: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?m)^.*\bvictim\b.*\s(0x[0-9a-f]+)\s*$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ctl connections shows no ID for the victim:\n%s", out)
	}
	if out, err := ctl(t, d, "ops-token", "proxy", "kill-client", m[1]); err != nil || !strings.Contains(out, "closed") {
		t.Fatalf("ctl proxy kill-client %s: %v\n%s", m[1], err, out)
	}
	select {
	case err := <-done:
		if pgCode(err) != "57P01" {
			t.Fatalf("the victim's query ended with %s, want 57P01", describe(err))
		}
	case <-ctx.Done():
		t.Fatal("the victim's query did not end")
	}
	eventually(t, 30*time.Second, "PostgreSQL to stop the victim's query", func(ctx context.Context) (bool, error) {
		n := primary.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", pid)
		return n == "0", nil
	})
	if out, err := ctl(t, d, "ops-token", "proxy", "kill-client", m[1]); err == nil || !strings.Contains(out, "no client connection") {
		t.Fatalf("a second kill-client: %v\n%s", err, out)
	}

	c, err := pgx.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	backend := func() (n int) {
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := backend()
	out, err = ctl(t, d, "ops-token", "proxy", "reconnect")
	if err != nil || !strings.Contains(out, "will be replaced") {
		t.Fatalf("ctl proxy reconnect: %v\n%s", err, out)
	}
	if after := backend(); after == before {
		t.Fatalf("after ctl proxy reconnect the client still runs on backend %d", after)
	}
	if out, err := ctl(t, d, "ops-token", "proxy", "kill"); err == nil || !strings.Contains(out, "usage") {
		t.Fatalf("ctl proxy kill without a database: %v\n%s", err, out)
	}
}
