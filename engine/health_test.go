package engine_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestRoleCheckSurvivesAFastRestart: PostgreSQL restarts between two role checks. The checker's
// connection from before the restart fails (57P01), but the server is up: the check must say
// primary, not down, so the routing table does not flap to "no primary" and back (which closed
// every server connection and failed clients' transactions with 57P03).
func TestRoleCheckSurvivesAFastRestart(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.HealthCheckInterval = 200 * time.Millisecond
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	probes := func() int {
		var n int
		c := primary.Conn(t)
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbastion-health'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(20 * time.Second)
	for probes() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no role-check connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := p.e.Metrics().PrimaryChanges()
	primary.Restart(t)
	// The checker reconnects at its next check after the restart; give it two more checks
	// on the new connection to flap, as the old code did on the check after it found the
	// stale connection broken.
	for i := 0; i < 3; i++ {
		deadline := time.Now().Add(20 * time.Second)
		for probes() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the role checker did not reconnect after the restart")
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Kill the checker's session by hand (as a restart does) and wait for a new one:
		// every round is one check that starts on a broken connection.
		c := primary.Conn(t)
		if _, err := c.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgbastion-health'"); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	deadline = time.Now().Add(20 * time.Second)
	for probes() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the role checker did not reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := p.e.Metrics().PrimaryChanges() - before; n != 0 {
		t.Fatalf("the primary changed %d times around a restart and killed checker sessions; want 0", n)
	}
	if p.e.Stats().Primary == "" {
		t.Fatal("no primary after the restart")
	}
}
