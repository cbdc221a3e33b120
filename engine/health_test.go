package engine_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestRoleCheckSurvivesAFastRestart: the role checker's kept connection was ended by
// PostgreSQL (57P01, as a restart ends it) but the server is up: the check must say primary,
// not down, so the routing table does not flap to "no primary" and back (which closed every
// server connection and failed clients' transactions with 57P03). A real restart comes first;
// it is not counted, since a check may fall in the moment the server is really down.
func TestRoleCheckSurvivesAFastRestart(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.HealthCheckInterval = 200 * time.Millisecond
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// probePID is the role checker's backend (0: none); awaitNewProbe waits for a checker
	// connection other than old, which takes a check that found old broken.
	probePID := func() int {
		var pid int
		c := primary.Conn(t)
		defer c.Close(ctx)
		err := c.QueryRow(ctx, "SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE application_name = 'pgbastion-health'").Scan(&pid)
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}
	awaitNewProbe := func(old int) int {
		var pid int
		waitFor(t, "a new role-check connection", func() bool { pid = probePID(); return pid != 0 && pid != old })
		return pid
	}
	awaitNewProbe(0)
	primary.Restart(t)
	pid := awaitNewProbe(0)
	waitFor(t, "the primary known after the restart", func() bool { return p.e.Stats().Primary != "" })
	before := p.e.Metrics().PrimaryChanges()
	// Three times, the checker's session is killed as a restart kills it, with the server up;
	// the check that finds it broken must reconnect rather than call the primary down.
	for range 3 {
		c := primary.Conn(t)
		if _, err := c.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
		pid = awaitNewProbe(pid)
	}
	if n := p.e.Metrics().PrimaryChanges() - before; n != 0 {
		t.Fatalf("the primary changed %d times while the checker's sessions were killed; want 0", n)
	}
	if p.e.Stats().Primary == "" {
		t.Fatal("no primary after the restart")
	}
}
