package engine_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// slowConn reads at most 64 KiB a millisecond: a client that cannot keep up with a large
// result, so the proxy moves it (and its server) to the stream path mid-result.
type slowConn struct{ net.Conn }

func (c slowConn) Read(b []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return c.Conn.Read(b[:min(len(b), 64<<10)])
}

// connectAdjusted connects to dsn with a pgx configuration adjust may change first.
func connectAdjusted(dsn string, adjust func(*pgx.ConnConfig)) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	adjust(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// dialSlow dials with a small receive buffer, so the result backs up into the proxy.
func dialSlow(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10)
		})
	}}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return slowConn{c}, nil
}

// Everything at once in transaction mode, on five servers: clients too slow for their large
// results (moved to the stream path mid-result), over TCP and TLS; clients running short
// transactions with pgx's statement cache (named statements following them from server to
// server); clients copying rows in and out; clients whose queries time out and are cancelled;
// a console listing connections.
// Every result must be whole and right, no client that cancels nothing may see an error, and
// the proxy must serve afterwards. Run with -race: it is the test for the ownership of
// servers that move between event loops and the stream path.
func TestEverythingAtOnceInTransactionMode(t *testing.T) { everythingAtOnce(t, pool.ModeTransaction) }

// The same in session mode, where clients keep a server for their session and come and go
// (every five operations, a slow reader after each result), so servers are reset with
// DISCARD ALL and handed on between loops and the stream path.
func TestEverythingAtOnceInSessionMode(t *testing.T) { everythingAtOnce(t, pool.ModeSession) }

func everythingAtOnce(t *testing.T, mode pool.Mode) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	certs := pgtest.Certs(t)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode, c.Pool.DefaultPoolSize = mode, 5
		c.AdminUsers = []string{"postgres"}
		c.TLS = engine.TLSConfig{Mode: "prefer", Cert: certs.ServerCert, Key: certs.ServerKey}
		c.StreamHighWater = 64 << 10
	}, primary)
	ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	connectTo := func(dsn string, slow bool) (*pgx.Conn, error) {
		return connectAdjusted(dsn, func(cfg *pgx.ConnConfig) {
			if slow {
				cfg.DialFunc = dialSlow
			}
		})
	}
	type worker func(c *pgx.Conn, n int) error
	const rows, width = 16000, 1000 // a 16 MB result: more than the kernel buffers between proxy and client
	bigResult := func(c *pgx.Conn, n int) error {
		r, err := c.Query(context.Background(), fmt.Sprintf("SELECT $1::int, repeat('x', %d) FROM generate_series(1, %d)", width, rows), n)
		if err != nil {
			return err
		}
		got := 0
		for r.Next() {
			var tag int
			var s string
			if err := r.Scan(&tag, &s); err != nil {
				r.Close()
				return err
			}
			if tag != n || len(s) != width || strings.Trim(s, "x") != "" {
				r.Close()
				return fmt.Errorf("row %d of query %d: tag %d, %d bytes", got, n, tag, len(s))
			}
			got++
		}
		if err := r.Err(); err != nil {
			return err
		}
		if got != rows {
			return fmt.Errorf("query %d: %d rows, want %d", n, got, rows)
		}
		return nil
	}
	primary.Exec(t, "CREATE TABLE churn_copy (worker int, n int)")
	var copiers atomic.Int64
	// copyInOut copies 2,000 rows in (COPY FROM STDIN, extended protocol) and counts them back
	// with COPY TO STDOUT, in a table of its own rows.
	copyInOut := func() worker {
		id := copiers.Add(1)
		return func(c *pgx.Conn, n int) error {
			rows := make([][]any, 2000)
			for i := range rows {
				rows[i] = []any{int32(id), int32(n)}
			}
			if got, err := c.CopyFrom(context.Background(), pgx.Identifier{"churn_copy"}, []string{"worker", "n"}, pgx.CopyFromRows(rows)); err != nil || got != 2000 {
				return fmt.Errorf("copy in: %d rows, %v", got, err)
			}
			var out strings.Builder
			tag, err := c.PgConn().CopyTo(context.Background(), &out, fmt.Sprintf("COPY (SELECT n FROM churn_copy WHERE worker = %d AND n = %d) TO STDOUT", id, n))
			if err != nil || tag.RowsAffected() != 2000 || strings.Count(out.String(), "\n") != 2000 {
				return fmt.Errorf("copy out: %v rows, %d bytes, %v", tag.RowsAffected(), out.Len(), err)
			}
			return nil
		}
	}
	shortTxn := func(c *pgx.Conn, n int) error {
		tx, err := c.Begin(context.Background())
		if err != nil {
			return err
		}
		defer tx.Rollback(context.Background())
		var v int
		// Two statement texts per client, prepared by pgx's cache on whichever server it gets.
		if err := tx.QueryRow(context.Background(), "SELECT $1::int + 1", n).Scan(&v); err != nil || v != n+1 {
			return fmt.Errorf("SELECT %d + 1 = %d: %v", n, v, err)
		}
		if err := tx.QueryRow(context.Background(), "SELECT length($1::text)", strings.Repeat("y", n%50)).Scan(&v); err != nil || v != n%50 {
			return fmt.Errorf("length = %d, want %d: %v", v, n%50, err)
		}
		return tx.Commit(context.Background())
	}
	var cancelled atomic.Int64
	timesOut := func(c *pgx.Conn, n int) error {
		qctx, cancel := context.WithTimeout(ctx, time.Duration(1+n%15)*time.Millisecond)
		defer cancel()
		_, err := c.Exec(qctx, "SELECT pg_sleep(0.01)")
		if err != nil {
			cancelled.Add(1)
		}
		return nil
	}
	console := func(c *pgx.Conn, n int) error {
		q := "SHOW CLIENTS"
		if n%2 == 1 {
			q = "SHOW SERVERS"
		}
		_, err := c.Exec(context.Background(), q, pgx.QueryExecModeSimpleProtocol)
		return err
	}
	type role struct {
		name  string
		dsn   string
		slow  bool
		run   worker
		count atomic.Int64
	}
	plain, tls := p.dsn(p.rw), overTLS(p.dsn(p.rw))
	roles := []*role{
		{name: "slow reader", dsn: plain, slow: true, run: bigResult},
		{name: "slow reader", dsn: plain, slow: true, run: bigResult},
		{name: "slow reader over TLS", dsn: tls, slow: true, run: bigResult},
		{name: "short transactions", dsn: plain, run: shortTxn},
		{name: "short transactions", dsn: plain, run: shortTxn},
		{name: "short transactions over TLS", dsn: tls, run: shortTxn},
		{name: "copy in and out", dsn: plain, run: copyInOut()},
		{name: "copy in and out over TLS", dsn: tls, run: copyInOut()},
		{name: "timing out", dsn: plain, run: timesOut},
		{name: "timing out over TLS", dsn: tls, run: timesOut},
		{name: "console", dsn: consoleDSN(p), run: console},
	}
	errs := make(chan error, len(roles))
	for _, r := range roles {
		go func() {
			var c *pgx.Conn
			defer func() {
				if c != nil {
					_ = c.Close(context.Background())
				}
			}()
			every := 5 // session mode: operations per session
			if r.slow {
				every = 1
			}
			for n := 0; ctx.Err() == nil; n++ {
				if c != nil && mode == pool.ModeSession && r.name != "console" && n%every == 0 {
					_ = c.Close(context.Background())
					c = nil
				}
				if c == nil || c.IsClosed() {
					var err error
					if c, err = connectTo(r.dsn, r.slow); err != nil {
						errs <- fmt.Errorf("%s: connect: %w", r.name, err)
						return
					}
				}
				if err := r.run(c, n); err != nil {
					errs <- fmt.Errorf("%s: %w", r.name, err)
					return
				}
				r.count.Add(1)
			}
			errs <- nil
		}()
	}
	for range roles {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, r := range roles {
		t.Logf("%s: %d", r.name, r.count.Load())
		if r.count.Load() == 0 {
			t.Errorf("%s: nothing done", r.name)
		}
	}
	moved := metricValue(t, p.e, "pgbastion_proxy_slow_readers_total")
	t.Logf("moved to the stream path: %.0f; queries timed out: %d; server moves %.0f", moved, cancelled.Load(), metricValue(t, p.e, "pgbastion_proxy_server_moves_total"))
	if moved == 0 {
		t.Error("no client was moved to the stream path: the test did not exercise it")
	}
	if v := queryInt(t, connect(t, p.dsn(p.rw)), "SELECT 7"); v != 7 {
		t.Fatalf("after the churn: %d", v)
	}
}

// A slow reader's server, moved to the stream path with its client mid-result, goes back to
// the pool once when the transaction ends. (It kept its loop's place in the pool's
// accounting, so its release from the stream path made it idle on that loop and then, once
// moved there, idle again: two clients could get the same server.)
func TestSlowReadersServerReturnsToThePoolOnce(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 1
		c.StreamHighWater = 64 << 10
	}, primary)
	slow, err := connectAdjusted(p.dsn(p.rw), func(cfg *pgx.ConnConfig) { cfg.DialFunc = dialSlow })
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close(context.Background())
	var n int
	if err := slow.QueryRow(context.Background(), "SELECT count(*) FROM (SELECT repeat('x', 1000) FROM generate_series(1, 16000)) r").Scan(&n); err != nil || n != 16000 {
		t.Fatalf("count: %d, %v", n, err)
	}
	r, err := slow.Query(context.Background(), "SELECT repeat('x', 1000) FROM generate_series(1, 16000)")
	if err != nil {
		t.Fatal(err)
	}
	for n = 0; r.Next(); n++ {
	}
	if r.Err() != nil || n != 16000 {
		t.Fatalf("the slow reader got %d rows: %v", n, r.Err())
	}
	if moved := metricValue(t, p.e, "pgbastion_proxy_slow_readers_total"); moved != 1 {
		t.Fatalf("%v clients moved to the stream path, want 1", moved)
	}
	// The one server, held by a client in a transaction, is not idle as well.
	c := connect(t, p.dsn(p.rw))
	tx, err := c.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v := queryInt(t, c, "SELECT 1"); v != 1 {
		t.Fatal(v)
	}
	st := p.e.Stats().Pools[0]
	if st.Open != 1 || st.Idle != 0 {
		t.Fatalf("with its only server held in a transaction the pool has %d open, %d idle", st.Open, st.Idle)
	}
	_ = tx.Rollback(context.Background())
	for i := range 50 {
		if v := queryInt(t, c, "SELECT $1::int", i); v != int64(i) {
			t.Fatalf("query %d: %d", i, v)
		}
	}
}
