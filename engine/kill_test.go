package engine_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// running counts the backends of pg running query q now, as text.
func running(t *testing.T, pg *pgtest.Instance, q string) string {
	t.Helper()
	return pg.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'", q)
}

// backendAlive reports whether PostgreSQL still has a backend with that PID.
func backendAlive(t *testing.T, pg *pgtest.Instance, pid uint32) bool {
	t.Helper()
	return pg.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", int64(pid)) != "0"
}

func backendPID(t *testing.T, ctx context.Context, c *pgx.Conn) uint32 {
	t.Helper()
	var pid uint32
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// The console's RECONNECT closes idle server connections at once and busy ones when their
// transaction ends; KILL_CLIENT closes one client and cancels the query it runs; KILL closes
// a database's clients and servers. Only admin users may run them.
func TestConsoleKillAndReconnect(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.AdminUsers, c.StatsUsers = []string{"postgres"}, []string{"watcher"}
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	simple := pgx.QueryExecModeSimpleProtocol
	var (
		mu      sync.Mutex
		notices []string
	)
	lastNotice := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(notices) == 0 {
			return ""
		}
		return notices[len(notices)-1]
	}
	admin, err := connectAdjusted(p.dsn(p.rw, "dbname=pgbouncer"), func(c *pgx.ConnConfig) {
		c.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { mu.Lock(); notices = append(notices, n.Message); mu.Unlock() }
	})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	watcher := connect(t, p.dsn(p.rw, "dbname=pgbouncer user=watcher"))

	// RECONNECT: a holds a server in a transaction, b's server is idle.
	a := connect(t, p.dsn(p.rw))
	b := connect(t, p.dsn(p.rw))
	if _, err := a.Exec(ctx, "BEGIN", simple); err != nil {
		t.Fatal(err)
	}
	pidA, pidB := backendPID(t, ctx, a), backendPID(t, ctx, b)
	var pe *pgconn.PgError
	if _, err := watcher.Exec(ctx, "RECONNECT", simple); !errors.As(err, &pe) || pe.Code != pgwire.InsufficientPrivilege {
		t.Fatalf("RECONNECT as a stats user: %v", err)
	}
	if tag, err := admin.Exec(ctx, "RECONNECT postgres", simple); err != nil || tag.String() != "RECONNECT" ||
		!strings.HasPrefix(lastNotice(), "2 server connections will be replaced") {
		t.Fatalf("RECONNECT: %q %v, notice %q", tag, err, lastNotice())
	}
	waitFor(t, "the idle server to close", func() bool { return !backendAlive(t, primary, pidB) })
	if got := backendPID(t, ctx, a); got != pidA || !backendAlive(t, primary, pidA) {
		t.Fatalf("the transaction lost its server: pid %d, was %d", got, pidA)
	}
	if _, err := a.Exec(ctx, "COMMIT", simple); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server released by COMMIT to close", func() bool { return !backendAlive(t, primary, pidA) })
	if got := backendPID(t, ctx, b); got == pidA || got == pidB {
		t.Fatalf("after RECONNECT a client got an old server (pid %d)", got)
	}

	// KILL_CLIENT: the victim's running query is cancelled, the victim gets 57P01.
	victim := connect(t, p.dsn(p.rw, "application_name=victim"))
	done := make(chan error, 1)
	go func() {
		_, err := victim.Exec(ctx, "SELECT pg_sleep(600)", simple)
		done <- err
	}()
	waitFor(t, "the victim's query to run", func() bool {
		return running(t, primary, "SELECT pg_sleep(600)") == "1"
	})
	cols, rows := consoleRows(t, admin, "SHOW CLIENTS")
	ptr := ""
	for _, r := range rows {
		if column(t, cols, r, "application_name") == "victim" {
			ptr = column(t, cols, r, "ptr")
		}
	}
	if ptr == "" {
		t.Fatalf("the victim is not in SHOW CLIENTS: %v", rows)
	}
	if _, err := admin.Exec(ctx, "KILL_CLIENT 0xdeadbeef", simple); !errors.As(err, &pe) || pe.Code != pgwire.UndefinedObject {
		t.Fatalf("KILL_CLIENT of no client: %v", err)
	}
	if tag, err := admin.Exec(ctx, "KILL_CLIENT "+ptr, simple); err != nil || tag.String() != "KILL_CLIENT" {
		t.Fatalf("KILL_CLIENT: %q %v", tag, err)
	}
	select {
	case err := <-done:
		if !errors.As(err, &pe) || pe.Code != pgwire.AdminShutdown || !strings.Contains(pe.Message, "KILL_CLIENT") {
			t.Fatalf("the victim's query ended with %v, want 57P01 naming KILL_CLIENT", err)
		}
	case <-ctx.Done():
		t.Fatal("the victim's query did not end")
	}
	// Its backend's query was cancelled, not left to sleep out its minute.
	waitFor(t, "the victim's query to stop in PostgreSQL", func() bool {
		return running(t, primary, "SELECT pg_sleep(600)") == "0"
	})

	// KILL: every client of the database goes, the console stays, new clients come in.
	c1, c2 := connect(t, p.dsn(p.rw)), connect(t, p.dsn(p.ro))
	backendPID(t, ctx, c1)
	backendPID(t, ctx, c2)
	for _, q := range []string{"KILL", "KILL pgbouncer", "KILL a b"} {
		if _, err := admin.Exec(ctx, q, simple); !errors.As(err, &pe) {
			t.Errorf("%s: %v, want an error", q, err)
		}
	}
	if tag, err := admin.Exec(ctx, `KILL "postgres"`, simple); err != nil || tag.String() != "KILL" ||
		!strings.HasPrefix(lastNotice(), "closed 4 client connections") {
		t.Fatalf("KILL: %q %v, notice %q", tag, err, lastNotice())
	}
	for i, c := range []*pgx.Conn{a, b, c1, c2} {
		if _, err := c.Exec(ctx, "SELECT 1", simple); err == nil {
			t.Errorf("client %d still works after KILL", i)
		}
	}
	if _, rows := consoleRows(t, admin, "SHOW VERSION"); len(rows) != 1 {
		t.Fatal("the console did not survive KILL")
	}
	waitFor(t, "the database's servers to close", func() bool {
		return primary.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'pgbastion-health'") == "0"
	})
	// As PgBouncer's KILL, it paused the database (a standalone proxy): a client comes back and
	// logs in, but its transaction waits until RESUME, so no session is in the way of, say,
	// DROP DATABASE.
	if !strings.Contains(lastNotice(), "the database is paused: clients may connect, their transactions wait until RESUME \"postgres\"") {
		t.Fatalf("KILL notice %q does not say the database is paused", lastNotice())
	}
	fresh := connect(t, p.dsn(p.rw))
	answered := make(chan error, 1)
	go func() {
		_, err := fresh.Exec(ctx, "SELECT 1", simple)
		answered <- err
	}()
	if got := fmt.Sprint(p.e.Stats().PausedDatabases); got != "[postgres]" {
		t.Fatalf("paused databases after KILL: %s", got)
	}
	waitFor(t, "the returning client to be held", func() bool { return p.e.Stats().Held == 1 })
	select {
	case err := <-answered:
		t.Fatalf("a transaction ran on the killed database before RESUME: %v", err)
	default:
	}
	if tag, err := admin.Exec(ctx, "RESUME postgres", simple); err != nil || tag.String() != "RESUME" {
		t.Fatalf("RESUME postgres: %q %v", tag, err)
	}
	if err := <-answered; err != nil {
		t.Fatalf("the held transaction after RESUME: %v", err)
	}
	if pid := backendPID(t, ctx, fresh); pid == 0 {
		t.Fatal("no server after KILL and RESUME")
	}
}

// query_timeout cancels a request that runs too long and disconnects its client with 57014;
// PostgreSQL stops the query. client_login_timeout closes a connection that never logs in.
func TestQueryAndLoginTimeouts(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.QueryTimeout = time.Second
		c.Pool.ClientLoginTimeout = time.Second
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := connect(t, p.dsn(p.rw))
	if _, err := c.Exec(ctx, "SELECT pg_sleep(0.1)", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("a query under the timeout: %v", err)
	}
	_, err := c.Exec(ctx, "SELECT pg_sleep(600)", pgx.QueryExecModeSimpleProtocol)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != pgwire.QueryCanceled || !strings.Contains(pe.Message, "query_timeout") {
		t.Fatalf("a query over query_timeout ended with %v, want 57014 naming query_timeout", err)
	}
	waitFor(t, "PostgreSQL to stop the query", func() bool {
		return running(t, primary, "SELECT pg_sleep(600)") == "0"
	})

	// A connection that sends nothing is closed, with a message saying why.
	conn, err := net.Dial("tcp", p.rw)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	got, err := io.ReadAll(conn)
	if err != nil || !strings.Contains(string(got), "client_login_timeout") {
		t.Fatalf("a client that never logs in read %q, %v; want an error naming client_login_timeout, then the close", got, err)
	}
}

// A client that vanishes while its query runs has the query cancelled in PostgreSQL, not
// left running until it next writes.
func TestClientGoneMidQueryIsCancelled(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) { c.Pool.Mode = pool.ModeTransaction }, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := connect(t, p.dsn(p.rw))
	go func() { _, _ = c.Exec(ctx, "SELECT pg_sleep(600)", pgx.QueryExecModeSimpleProtocol) }()
	waitFor(t, "the query to run", func() bool { return running(t, primary, "SELECT pg_sleep(600)") == "1" })
	_ = c.PgConn().Conn().Close() // the client is gone, without a Terminate
	waitFor(t, "PostgreSQL to stop the query", func() bool { return running(t, primary, "SELECT pg_sleep(600)") == "0" })
}

// A client that fell behind with its results lives on the stream path, where query_timeout
// still holds: once a write to it has been blocked for longer (it stopped reading), the proxy
// closes it, its query is cancelled in PostgreSQL, and the pool's only server serves the next
// client. (Before, a client there that never read again kept its server, and PostgreSQL its
// query, for ever.)
func TestQueryTimeoutClosesAStalledReader(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 1
		c.Pool.QueryTimeout = 2 * time.Second
		c.StreamHighWater = 64 << 10
	}, primary)
	c := rawLogin(t, p.rw)
	defer c.Close()
	_ = c.SetDeadline(time.Time{})
	// The client reads (slowly enough to fall behind) until it is on the stream path, then
	// stops reading for good.
	var stop atomic.Bool
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 4<<10)
		for !stop.Load() {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	const q = "SELECT generate_series(1, 100000000), repeat('x', 1000)" // 100 GB, streamed: it never ends by itself
	if _, err := c.Write(pgwire.AppendQuery(nil, q)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the client to be on the stream path", func() bool {
		for _, cn := range p.e.Conns() {
			if !cn.Server && cn.Loop == -1 {
				return true
			}
		}
		return false
	})
	stop.Store(true)
	<-stopped
	waitFor(t, "query_timeout to close the client that stopped reading", func() bool {
		return metricValue(t, p.e, "pgbastion_proxy_query_timeouts_total") == 1
	})
	waitFor(t, "PostgreSQL to stop the query", func() bool {
		return running(t, primary, q) == "0"
	})
	if v := queryInt(t, connect(t, p.dsn(p.rw)), "SELECT 7"); v != 7 {
		t.Fatalf("after the stalled client: %d", v)
	}
	// The connection is closed: reading drains what the socket holds, then ends.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("the stalled client's connection did not end: %v", err)
	}
}
