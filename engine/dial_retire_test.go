package engine_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestDialToRetiredPrimaryGivesWay: the primary's host hangs (it accepts TCP and never answers,
// as an unreachable or frozen host may), a client's connection to it is being dialed, and the
// routing table moves to a new primary. The dial is abandoned at once and the client is served
// by the new primary, instead of waiting out server_connect_timeout and getting an error.
func TestDialToRetiredPrimaryGivesWay(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	a := pgtest.Start(t, &pgtest.Options{Name: "a"})

	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 16)
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // never answered
			mu.Unlock()
			accepted <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		hung.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})

	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.ServerConnectTimeout = 2 * time.Minute
		c.Backends = nil
	}, a)
	p.e.SetRouting(engine.RoutingSpec{Primary: hung.Addr().String()})

	// Well below server_connect_timeout: without giving way the client would still be waiting.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := pgx.Connect(ctx, p.dsn(p.rw))
		if err != nil {
			done <- err
			return
		}
		defer c.Close(context.Background())
		var port int
		if err := c.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			done <- err
			return
		}
		if port != a.Port() {
			t.Errorf("served by port %d, want the new primary's %d", port, a.Port())
		}
		done <- nil
	}()
	select {
	case <-accepted:
	case err := <-done:
		t.Fatalf("the client finished before the proxy dialed the hung primary: %v", err)
	case <-ctx.Done():
		t.Fatal("the proxy never dialed the primary")
	}
	p.e.SetRouting(engine.RoutingSpec{Primary: a.Addr()})
	if err := <-done; err != nil {
		t.Fatalf("client after the primary moved: %v", err)
	}
}
