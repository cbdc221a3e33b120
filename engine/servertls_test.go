package engine_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// hostsslOnly makes PostgreSQL accept TCP connections only over TLS.
var hostsslOnly = []string{"hostssl all all 127.0.0.1/32 trust", "host all all 127.0.0.1/32 reject"}

// serverUsesTLS asks PostgreSQL whether the connection serving c is encrypted.
func serverUsesTLS(t *testing.T, c *pgx.Conn) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ssl bool
	if err := c.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
		t.Fatalf("pg_stat_ssl: %v", err)
	}
	return ssl
}

// TestServerTLS: with proxy.server.tls at its default (prefer), the proxy reaches a
// PostgreSQL that accepts TCP connections only over TLS — its role checks as well as its
// server connections — and serves transaction-mode clients whose servers move between event
// loops and to and from the stream path, with every byte intact.
func TestServerTLS(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	certs := pgtest.Certs(t)
	primary := pgtest.Start(t, &pgtest.Options{TLS: certs, HBA: hostsslOnly})
	p := startProxy(t, func(c *engine.Config) {
		c.EventLoops = 2
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 2
		c.StreamHighWater = 64 << 10
		c.AdminUsers = []string{"postgres"}
	}, primary)
	ctx := context.Background()

	c := connect(t, p.dsn(p.rw))
	if !serverUsesTLS(t, c) {
		t.Fatal("pg_stat_ssl says the proxy's connection to PostgreSQL is not encrypted")
	}
	console := connect(t, consoleDSN(p))
	_, cfgRows := consoleRows(t, console, "SHOW CONFIG")
	if !slices.ContainsFunc(cfgRows, func(r []string) bool { return r[0] == "server_tls_sslmode" && r[1] == "prefer" && r[2] == "prefer" }) {
		t.Fatalf("SHOW CONFIG has no server_tls_sslmode prefer: %v", cfgRows)
	}
	colNames, rows := consoleRows(t, console, "SHOW SERVERS")
	tlsCol := -1
	for i, n := range colNames {
		if n == "tls" {
			tlsCol = i
		}
	}
	if tlsCol < 0 || len(rows) == 0 {
		t.Fatalf("SHOW SERVERS: columns %v, %d rows", colNames, len(rows))
	}
	for _, r := range rows {
		if !strings.HasPrefix(r[tlsCol], "TLSv1.") {
			t.Fatalf("SHOW SERVERS lists a server with tls %q, want TLSv1.x/cipher", r[tlsCol])
		}
	}

	// A cancel reaches PostgreSQL over TLS, as the server connection it cancels.
	sleeper := connect(t, p.dsn(p.rw))
	started := time.Now()
	watcher, err := pgx.Connect(ctx, primary.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(ctx)
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for cctx.Err() == nil { // until PostgreSQL runs the query
			var n int
			if err := watcher.QueryRow(cctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'").Scan(&n); err != nil || n > 0 {
				break
			}
		}
		_ = sleeper.PgConn().CancelRequest(cctx)
	}()
	_, serr := sleeper.Exec(ctx, "SELECT pg_sleep(30)")
	if sqlState(serr) != "57014" || time.Since(started) > 10*time.Second {
		t.Fatalf("cancelled pg_sleep(30): %v after %s, want 57014 at once", serr, time.Since(started))
	}

	// 20 clients share 2 servers on 2 loops: servers move between loops with their TLS state.
	movesBefore := metricValue(t, p.e, "pgbastion_proxy_server_moves_total")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for w := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			conn, err := pgx.Connect(cctx, p.dsn(p.rw))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			for i := range 100 {
				var got int
				var s string
				if err := conn.QueryRow(cctx, "SELECT $1::int * 2, repeat('y', $2::int)", w*1000+i, 100+i*50).Scan(&got, &s); err != nil {
					errs <- fmt.Errorf("client %d query %d: %w", w, i, err)
					return
				}
				if got != 2*(w*1000+i) || len(s) != 100+i*50 {
					errs <- fmt.Errorf("client %d query %d: got %d and %d bytes", w, i, got, len(s))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("server moves between loops during 2000 transactions: %.0f", metricValue(t, p.e, "pgbastion_proxy_server_moves_total")-movesBefore)

	// A client that cannot keep up with a large result moves to the stream path with its
	// server, whose tls.Conn then reads the socket; afterwards the server returns to a loop.
	slow, err := connectAdjusted(p.dsn(p.rw), func(cfg *pgx.ConnConfig) { cfg.DialFunc = dialSlow })
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close(ctx)
	slowBefore := metricValue(t, p.e, "pgbastion_proxy_slow_readers_total")
	r, err := slow.Query(ctx, "SELECT i, repeat(md5(i::text), 40) FROM generate_series(1, 20000) i")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for r.Next() {
		var i int
		var s string
		if err := r.Scan(&i, &s); err != nil || i != n+1 || len(s) != 1280 {
			t.Fatalf("row %d: %d, %d bytes, %v", n+1, i, len(s), err)
		}
		n++
	}
	if r.Err() != nil || n != 20000 {
		t.Fatalf("the slow reader got %d rows: %v", n, r.Err())
	}
	if moved := metricValue(t, p.e, "pgbastion_proxy_slow_readers_total") - slowBefore; moved < 1 {
		t.Fatal("the slow reader never moved to the stream path; the test did not cover it")
	}
	var sum int64
	if err := slow.QueryRow(ctx, "SELECT sum(length(repeat('z', i))) FROM generate_series(1, 300) i").Scan(&sum); err != nil || sum != 45150 {
		t.Fatalf("the slow reader's next query: %d, %v", sum, err)
	}
	for i := range 50 {
		if v := queryInt(t, c, "SELECT $1::int + 1", i); v != int64(i+1) {
			t.Fatalf("after the stream path: %d", v)
		}
	}
	if !serverUsesTLS(t, c) {
		t.Fatal("a server is not encrypted after the moves")
	}
}

// TestServerTLSModes: verify-full checks PostgreSQL's certificate against proxy.server.tls.ca
// and refuses another CA's with an error that says so; require refuses a PostgreSQL without
// TLS; prefer takes it plain; disable never asks. Each reload takes effect for new server
// connections (a new database makes a new pool).
func TestServerTLSModes(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	certs := pgtest.Certs(t)
	secure := pgtest.Start(t, &pgtest.Options{Name: "secure", TLS: certs, HBA: hostsslOnly})
	p := startProxy(t, func(c *engine.Config) {
		c.Server.TLS = engine.ServerTLSConfig{Mode: "verify-full", CA: certs.CACert}
	}, secure)
	ctx := context.Background()
	if c := connect(t, p.dsn(p.rw)); !serverUsesTLS(t, c) {
		t.Fatal("verify-full: not encrypted")
	}
	reload := func(p *proxy, tc engine.ServerTLSConfig) {
		t.Helper()
		next := p.cfg
		next.Server.TLS = tc
		if _, err := p.e.Reload(next, nil, nil); err != nil {
			t.Fatalf("reload %+v: %v", tc, err)
		}
	}
	fails := func(p *proxy, db, code, want string) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		c, err := pgx.Connect(cctx, strings.Replace(p.dsn(p.rw), "dbname=postgres", "dbname="+db, 1))
		if err == nil {
			_, err = c.Exec(cctx, "SELECT 1")
			c.Close(ctx)
		}
		if err == nil || sqlState(err) != code || !strings.Contains(err.Error(), want) {
			t.Fatalf("database %s: %v (SQLSTATE %q), want %s with %q", db, err, sqlState(err), code, want)
		}
	}

	reload(p, engine.ServerTLSConfig{Mode: "verify-full", CA: certs.OtherCACert})
	fails(p, "template1", "08006", "TLS handshake with PostgreSQL at 127.0.0.1")
	reload(p, engine.ServerTLSConfig{Mode: "verify-ca", CA: certs.CACert})
	c := connect(t, strings.Replace(p.dsn(p.rw), "dbname=postgres", "dbname=template1", 1))
	if !serverUsesTLS(t, c) {
		t.Fatal("verify-ca: not encrypted")
	}
	reload(p, engine.ServerTLSConfig{Mode: "disable"})
	// PostgreSQL's own refusal reaches the client.
	fails(p, "postgres_tls_disabled", "28000", "no encryption")

	plain := pgtest.Start(t, &pgtest.Options{Name: "plain"})
	q := startProxy(t, nil, plain) // prefer by default
	if c := connect(t, q.dsn(q.rw)); serverUsesTLS(t, c) {
		t.Fatal("prefer against a PostgreSQL without TLS: encrypted?")
	}
	reload(q, engine.ServerTLSConfig{Mode: "require"})
	fails(q, "template1", "08006", "does not accept TLS, which proxy.server.tls.mode require requires")
}

func TestServerTLSSettingsChecked(t *testing.T) {
	for name, tc := range map[string]struct {
		c    engine.ServerTLSConfig
		want string
	}{
		"unknown mode":           {engine.ServerTLSConfig{Mode: "always"}, `"always" is not one of`},
		"allow":                  {engine.ServerTLSConfig{Mode: "allow"}, "allow (plaintext first"},
		"verify without a CA":    {engine.ServerTLSConfig{Mode: "verify-full"}, "needs proxy.server.tls.ca"},
		"cert without key":       {engine.ServerTLSConfig{Mode: "require", Cert: "/x.crt"}, "cert and key go together"},
		"files with TLS off":     {engine.ServerTLSConfig{Mode: "disable", CA: "/ca.crt"}, "mode is disable"},
		"files with TLS off too": {engine.ServerTLSConfig{Mode: "disable", Cert: "/x.crt", Key: "/x.key"}, "mode is disable"},
	} {
		cfg := engine.DefaultConfig()
		cfg.Backends = []engine.BackendConfig{{Host: "127.0.0.1", Port: 5434}}
		cfg.Server.TLS = tc.c
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	cfg := engine.DefaultConfig()
	cfg.Backends = []engine.BackendConfig{{Host: "127.0.0.1", Port: 5434}}
	if err := cfg.Validate(); err != nil || cfg.Server.TLS.Mode != "prefer" {
		t.Fatalf("default: %v, mode %q", err, cfg.Server.TLS.Mode)
	}
}
