package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestPauseSwitchResumeNoClientErrors is the proxy half of a switchover: writes pause, the
// routing table moves to another primary, writes resume. Clients in transaction mode that
// were between transactions must see no error, and every transaction after the resume must
// reach the new primary. Half the clients use TLS, so they and the servers they use live on
// the stream path.
func TestPauseSwitchResumeNoClientErrors(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	a := pgtest.Start(t, &pgtest.Options{Name: "a"})
	b := pgtest.Start(t, &pgtest.Options{Name: "b", SuperuserPassword: a.Password()})
	certs := pgtest.Certs(t)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.DefaultPoolSize = 4
		c.Backends = nil // routing is published by hand below, as the HA core does
		c.TLS = engine.TLSConfig{Mode: "prefer", Cert: certs.ServerCert, Key: certs.ServerKey}
	}, a)
	p.e.SetRouting(engine.RoutingSpec{Primary: a.Addr()})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		wg          sync.WaitGroup
		total       atomic.Int64
		afterResume atomic.Bool
		wrongAfter  atomic.Int64
		errs        = make(chan error, 100)
	)
	for i := 0; i < 20; i++ {
		dsn := p.dsn(p.rw)
		if i%2 == 1 {
			dsn = overTLS(dsn)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for ctx.Err() == nil {
				resumed := afterResume.Load()
				tx, err := c.Begin(ctx)
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("begin: %w", err)
					}
					return
				}
				var port int
				if err := tx.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("query: %w", err)
					}
					return
				}
				if err := tx.Commit(ctx); err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("commit: %w", err)
					}
					return
				}
				if resumed && port != b.Port() {
					wrongAfter.Add(1)
				}
				total.Add(1)
			}
		}()
	}
	waitFor(t, "traffic before the switch", func() bool { return total.Load() > 200 })

	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	start := time.Now()
	if err := p.e.PauseWrites(pctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	pcancel()
	drained := time.Since(start)
	p.e.SetRouting(engine.RoutingSpec{Primary: b.Addr()})
	afterResume.Store(true)
	p.e.ResumeWrites()
	paused := time.Since(start)
	before := total.Load()
	waitFor(t, "traffic after the switch", func() bool { return total.Load() > before+200 })
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := wrongAfter.Load(); n > 0 {
		t.Errorf("%d transactions started after the resume reached the old primary", n)
	}
	t.Logf("transactions: %d; in-flight drained in %s; writes paused for %s", total.Load(), drained, paused)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A client held for a primary keeps the start of its wait when a routing change re-routes it
// and it is held again: query_wait_timeout counts from when it first asked. Here the routing
// is re-published (still without a primary) every 100 ms, ten times within the timeout; a
// held client that started its clock again each time would wait for ever.
func TestReheldClientKeepsItsWaitTimeout(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	a := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.QueryWaitTimeout = time.Second
		c.Backends = nil // routing is published by hand, as the HA core does
	}, a)
	p.e.SetRouting(engine.RoutingSpec{Primary: a.Addr()})
	c := connect(t, p.dsn(p.rw))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	p.e.SetRouting(engine.RoutingSpec{HoldWrites: true}) // the primary is gone; writes wait
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := c.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol)
		done <- err
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "57P03" {
				t.Fatalf("the held query ended with %v, want 57P03 (query_wait_timeout)", err)
			}
			t.Logf("held for %s before query_wait_timeout (1s) failed it", time.Since(start).Round(time.Millisecond))
			return
		case <-tick.C:
			p.e.SetRouting(engine.RoutingSpec{HoldWrites: true})
		case <-ctx.Done():
			t.Fatal("the held client was never failed: re-routing restarted its query_wait_timeout")
		}
	}
}
