package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestUnixSocketBackend: a backend whose host is a directory is reached through PostgreSQL's
// Unix socket there, for the role checker, the pools (both event loops, session and
// transaction mode) and forwarded cancels.
func TestUnixSocketBackend(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	for _, mode := range []pool.Mode{pool.ModeSession, pool.ModeTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			p := startProxy(t, func(c *engine.Config) {
				c.Backends = []engine.BackendConfig{{Host: primary.SocketDir(), Port: primary.Port(), Name: "local"}}
				c.Pool.Mode = mode
				c.Pool.DefaultPoolSize = 2
			}, primary)
			clients := 10
			if mode == pool.ModeSession {
				clients = 2 // the pool has two servers; session clients each hold one
			}
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					c, err := pgx.Connect(ctx, p.dsn(p.rw))
					if err != nil {
						errs <- err
						return
					}
					defer c.Close(ctx)
					for j := 0; j < 20; j++ {
						// client_addr is NULL for a connection over a Unix socket.
						var overSocket bool
						var sum int
						if err := c.QueryRow(ctx, "SELECT client_addr IS NULL, $1::int + 1 FROM pg_stat_activity WHERE pid = pg_backend_pid()", j).Scan(&overSocket, &sum); err != nil {
							errs <- err
							return
						}
						if !overSocket || sum != j+1 {
							errs <- fmt.Errorf("server connection over the socket %v, %d+1 = %d", overSocket, j, sum)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if st := p.e.Stats(); st.Primary == "" || len(st.Pools) != 1 {
				t.Fatalf("stats: primary %q, %d pools", st.Primary, len(st.Pools))
			}

			// A cancelled query: pgx sends the CancelRequest, the proxy forwards it over the socket.
			c, err := connectAdjusted(p.dsn(p.rw), func(cfg *pgx.ConnConfig) {
				cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
					return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err = c.Exec(ctx, "SELECT pg_sleep(30)")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "57014" {
				t.Fatalf("cancelled pg_sleep: want 57014, got %v", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("cancel took %v", d)
			}
		})
	}
}
