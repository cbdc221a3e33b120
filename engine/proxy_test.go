package engine_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// proxy is an engine running in the test process in front of real PostgreSQL servers.
type proxy struct {
	e      *engine.Engine
	rw, ro string
	cfg    engine.Config // as started
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startProxy(t testing.TB, mutate func(*engine.Config), backends ...*pgtest.Instance) *proxy {
	t.Helper()
	return startProxyWith(t, mutate, engine.Options{}, backends...)
}

func startProxyWith(t testing.TB, mutate func(*engine.Config), opts engine.Options, backends ...*pgtest.Instance) *proxy {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.ListenRW, cfg.ListenRO = pgtest.FreeAddrPair(t)
	cfg.EventLoops = 2
	cfg.Server = engine.ServerConfig{User: "postgres", Password: backends[0].Password()}
	for _, b := range backends {
		cfg.Backends = append(cfg.Backends, engine.BackendConfig{Host: b.Host(), Port: b.Port(), Name: b.Name()})
	}
	if mutate != nil {
		mutate(&cfg)
	}
	level := slog.LevelWarn
	if os.Getenv("PGBASTION_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	e, err := engine.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	select {
	case <-e.Ready():
	case err := <-done:
		t.Fatalf("proxy did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("proxy did not start in 10s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("proxy did not stop in 10s")
		}
	})
	if len(cfg.Backends) > 0 {
		// The role checker's first probe can miss on a loaded machine; it retries every
		// health_check_interval. Tests start once a primary is known.
		deadline := time.Now().Add(60 * time.Second)
		for e.Stats().Primary == "" {
			if time.Now().After(deadline) {
				t.Fatal("the proxy found no primary within 60s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return &proxy{e: e, rw: cfg.ListenRW, ro: cfg.ListenRO, cfg: cfg}
}

func (p *proxy) dsn(addr string, extra ...string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable %s", host, port, strings.Join(extra, " "))
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func queryInt(t testing.TB, c *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var v int64
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func TestSessionModeBasics(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, nil, primary)
	c := connect(t, p.dsn(p.rw))
	if got := queryInt(t, c, "SELECT 41 + $1::int", 1); got != 42 {
		t.Fatalf("got %d", got)
	}
	var inRecovery bool
	if err := c.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		t.Fatalf("rw routed to a replica or failed: %v %v", inRecovery, err)
	}
	// The server connection is reused by the next client after DISCARD ALL.
	pid := queryInt(t, c, "SELECT pg_backend_pid()")
	if _, err := c.Exec(context.Background(), "SET application_name = 'first'"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	c2 := connect(t, p.dsn(p.rw))
	var app string
	if err := c2.QueryRow(context.Background(), "SELECT current_setting('application_name')").Scan(&app); err != nil {
		t.Fatal(err)
	}
	if app == "first" {
		t.Fatal("session state leaked to the next client")
	}
	if pid2 := queryInt(t, c2, "SELECT pg_backend_pid()"); pid2 != pid {
		t.Logf("server connection not reused (pid %d then %d)", pid, pid2)
	}
}

func TestTransactionModeManyClients(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.DefaultPoolSize = 2
	}, primary)
	primary.Exec(t, "CREATE TABLE t (id int primary key, v text)")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, p.dsn(p.rw, fmt.Sprintf("application_name=client%d", i)))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(ctx)
			for j := 0; j < 50; j++ {
				var app string
				if err := c.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&app); err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				if app != fmt.Sprintf("client%d", i) {
					errs <- fmt.Errorf("client %d saw application_name %q", i, app)
					return
				}
				tx, err := c.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				if _, err := tx.Exec(ctx, "INSERT INTO t VALUES ($1, $2)", i*1000+j, "x"); err != nil {
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := primary.QueryString(t, "SELECT count(*) FROM t"); n != "1000" {
		t.Fatalf("rows %s", n)
	}
	st := p.e.Stats()
	for _, ps := range st.Pools {
		if ps.Open > 2 {
			t.Fatalf("pool opened %d server connections, limit 2", ps.Open)
		}
	}
}

// TestServerCheckDelay: an idle server unused for longer than server_check_delay answers the
// empty query before a client gets it; a server that died while idle is replaced without the
// client seeing an error.
func TestServerCheckDelay(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.DefaultPoolSize = 1
		c.EventLoops = 1
		c.Pool.ServerCheckDelay = time.Millisecond
	}, primary)
	c := connect(t, p.dsn(p.rw))
	before := metricValue(t, p.e, "pgbastion_proxy_server_checks_total")
	for i := 0; i < 5; i++ {
		time.Sleep(5 * time.Millisecond) // let the server sit idle past the delay
		if got := queryInt(t, c, "SELECT 1"); got != 1 {
			t.Fatal(got)
		}
	}
	if n := metricValue(t, p.e, "pgbastion_proxy_server_checks_total") - before; n < 4 {
		t.Fatalf("%v checks for 5 uses of an idle server", n)
	}
	// Kill the pooled server behind the proxy's back; the next query still succeeds.
	primary.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name = ''")
	time.Sleep(5 * time.Millisecond)
	if got := queryInt(t, c, "SELECT 2"); got != 2 {
		t.Fatal(got)
	}
}

func metricValue(t *testing.T, e *engine.Engine, name string) float64 {
	t.Helper()
	var b strings.Builder
	e.Metrics().Set().WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, name+" ") {
			var v float64
			fmt.Sscan(strings.TrimPrefix(line, name+" "), &v)
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// A taken port fails the start with a message that names the setting and what to do, not
// gnet's "setsockopt: bad file descriptor".
func TestRunExplainsATakenListenAddress(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := engine.DefaultConfig()
	cfg.ListenRW, cfg.ListenRO = freeAddr(t), taken.Addr().String()
	e, err := engine.New(cfg, engine.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = e.Run(ctx)
	if err == nil {
		t.Fatal("Run succeeded on a taken address")
	}
	for _, want := range []string{"proxy.listen_ro " + cfg.ListenRO, "already in use", "free address"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// TestTransactionModeClientGetsIdleServerOfOtherLoop: with shares of four servers per loop a
// loop keeps its servers (see pool.Pool), so a client whose loop has all its servers in open
// transactions is served by an idle server of the other loop, moved to it by the pool sweep,
// instead of waiting for those transactions to end.
func TestTransactionModeClientGetsIdleServerOfOtherLoop(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.DefaultPoolSize = 8
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clients := make([]*pgx.Conn, 16)
	for i := range clients {
		clients[i] = connect(t, p.dsn(p.rw))
	}
	// begin opens a transaction that holds a server until it ends.
	begin := func(c *pgx.Conn) pgx.Tx {
		t.Helper()
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	// loopLine reads a loop's header line of Engine.DebugState.
	loopLine := func(line string) (loop, servers int, ok bool) {
		var clients int
		k, _ := fmt.Sscanf(line, "loop %d: %d clients, %d servers", &loop, &clients, &servers)
		return loop, servers, k == 3
	}
	// Open all eight servers: eight transactions at once.
	var txs []pgx.Tx
	for _, c := range clients[:8] {
		txs = append(txs, begin(c))
	}
	for _, tx := range txs {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Find each client's loop: the engine lists attached clients under their loop.
	loopOf := map[*pgx.Conn]int{}
	for _, c := range clients {
		tx := begin(c)
		loop := -1
		for _, line := range strings.Split(p.e.DebugState(), "\n") {
			var pid uint32
			if l, _, ok := loopLine(line); ok {
				loop = l
			} else if k, _ := fmt.Sscanf(strings.TrimSpace(line), "client %d", &pid); k == 1 && pid == c.PgConn().PID() {
				loopOf[c] = loop
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok := loopOf[c]; !ok {
			t.Fatalf("client %d not found attached in:\n%s", c.PgConn().PID(), p.e.DebugState())
		}
	}
	servers := map[int]int{}
	for _, line := range strings.Split(p.e.DebugState(), "\n") {
		if l, s, ok := loopLine(line); ok {
			servers[l] = s
		}
	}
	// Pick the loop with the most servers whose clients can hold them all and leave one over.
	x := -1
	for l, s := range servers {
		n := 0
		for _, cl := range loopOf {
			if cl == l {
				n++
			}
		}
		if s > 0 && n > s && servers[1-l] > 0 && (x < 0 || s > servers[x]) {
			x = l
		}
	}
	if x < 0 {
		t.Fatalf("no loop to saturate: servers %v, clients by loop %v", servers, loopOf)
	}
	var held []pgx.Tx
	var last *pgx.Conn
	for _, c := range clients {
		if loopOf[c] != x {
			continue
		}
		if len(held) == servers[x] {
			last = c
			break
		}
		held = append(held, begin(c))
	}
	moves := metricValue(t, p.e, "pgbastion_proxy_server_moves_total")
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	defer qcancel()
	var one int
	if err := last.QueryRow(qctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("client on loop %d, whose %d servers are all in transactions, was not served by the other loop's idle servers: %v\n%s",
			x, servers[x], err, p.e.DebugState())
	}
	if n := metricValue(t, p.e, "pgbastion_proxy_server_moves_total") - moves; n < 1 {
		t.Fatalf("served without a server moving between loops (%v moves)", n)
	}
	for _, tx := range held {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
