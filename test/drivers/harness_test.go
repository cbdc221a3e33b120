package drivers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// Every test uses this shape: a pool much smaller than the number of clients, so that each
// client's transactions land on both servers.
const (
	poolSize = 2
	clients  = 20
)

// harness is one PostgreSQL server behind one proxy in transaction mode.
type harness struct {
	pg      *pgtest.Instance
	e       *engine.Engine
	maxOpen atomic.Int64 // most server connections the pool had open at once (sampled)
	addr    string       // the proxy's read-write listener
	host    string
	port    int
	user    string
	pass    string
	dbase   string
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

// start runs PostgreSQL and the proxy (transaction mode, pool of poolSize). mutate may change
// the proxy configuration.
func start(t *testing.T, mutate func(*engine.Config)) *harness {
	t.Helper()
	pgtest.Require(t, pgtest.PostgreSQL())
	pg := pgtest.Start(t, nil)
	cfg := engine.DefaultConfig()
	cfg.ListenRW, cfg.ListenRO = pgtest.FreeAddrPair(t)
	// One event loop: the pool gives each loop a fair share of its servers (here one each with
	// two loops), and a loop whose clients are all busy keeps its own, so with two loops the
	// clients of each loop would stay on that loop's one server for the whole run and nothing
	// would have to follow them anywhere. Moves between loops are covered by the engine's and
	// the pool's own tests.
	cfg.EventLoops = 1
	cfg.Server = engine.ServerConfig{User: pgtest.Superuser, Password: pg.Password()}
	cfg.Backends = []engine.BackendConfig{{Host: pg.Host(), Port: pg.Port(), Name: pg.Name()}}
	cfg.Pool.Mode = pool.ModeTransaction
	cfg.Pool.DefaultPoolSize = poolSize
	cfg.Pool.QueryWaitTimeout = 60 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	level := slog.LevelWarn
	if os.Getenv("PGBASTION_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	e, err := engine.New(cfg, engine.Options{Logger: log})
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
	host, port, _ := net.SplitHostPort(cfg.ListenRW)
	p, _ := strconv.Atoi(port)
	h := &harness{pg: pg, e: e, addr: cfg.ListenRW, host: host, port: p,
		user: pgtest.Superuser, pass: pg.Password(), dbase: "postgres"}
	// Sample the pool while the test runs: the limit must hold at every moment, not only at
	// the end.
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, ps := range e.Stats().Pools {
				if n := int64(ps.Open); n > h.maxOpen.Load() {
					h.maxOpen.Store(n)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-sampled
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("proxy did not stop in 10s")
		}
	})
	if bypass() {
		t.Logf("%s set: clients connect to PostgreSQL directly, not through the proxy", bypassEnv)
		h.host, h.port = pg.Host(), pg.Port()
		return h
	}
	h.disturb(t, ctx)
	return h
}

// disturb keeps taking one of the pool's servers for 20 ms at a time, with 20 ms gaps, until
// ctx ends. The pool hands out the server released last, so clients that happen to run one
// after another (a loaded machine starts driver processes slowly) would otherwise all stay on
// the same server, and the run would prove nothing about statements and settings following a
// client to another one.
func (h *harness) disturb(t testing.TB, parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	conn, err := pgx.Connect(ctx, h.dsn())
	if err != nil {
		cancel()
		t.Fatalf("disturber: %v", err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		defer conn.Close(context.Background())
		for ctx.Err() == nil {
			if _, err := conn.Exec(ctx, "SELECT pg_sleep(0.02)"); err != nil {
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	// Cleanups run last-registered first: this one before the proxy stops.
	t.Cleanup(func() { cancel(); <-stopped })
}

// bypassEnv, when set, points every client at PostgreSQL itself instead of the proxy: a
// baseline that tells a bug in a driver program from a bug in the proxy. The checks that only
// make sense through the proxy (pool size, migration between servers) are then skipped.
const bypassEnv = "PGBASTION_DRIVERS_DIRECT"

func bypass() bool { return os.Getenv(bypassEnv) != "" }

// dsn is a key/value connection string for the proxy; extra adds settings.
func (h *harness) dsn(extra ...string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=10 %s",
		h.host, h.port, h.user, h.pass, h.dbase, strings.Join(extra, " "))
}

// url is the same as a postgres:// URL.
func (h *harness) url() string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", h.user, h.pass, h.host, h.port, h.dbase)
}

// env is the environment a driver program runs with.
func (h *harness) env() []string {
	env := append(os.Environ(),
		"PGHOST="+h.host, "PGPORT="+strconv.Itoa(h.port), "PGUSER="+h.user, "PGPASSWORD="+h.pass,
		"PGDATABASE="+h.dbase, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10",
		"DRIVER_DSN="+h.url(), "DRIVER_CLIENTS="+strconv.Itoa(clients))
	return env
}

// connect opens a pgx connection through the proxy, closed in t.Cleanup.
func (h *harness) connect(t testing.TB, extra ...string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, h.dsn(extra...))
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// direct opens a pgx connection to PostgreSQL itself, bypassing the proxy.
func (h *harness) direct(t testing.TB) *pgx.Conn {
	t.Helper()
	return h.pg.Conn(t)
}

// checkPool asserts the proxy never had more than poolSize server connections open.
func (h *harness) checkPool(t testing.TB) {
	t.Helper()
	for _, ps := range h.e.Stats().Pools {
		if int64(ps.Open) > h.maxOpen.Load() {
			h.maxOpen.Store(int64(ps.Open))
		}
	}
	if n := h.maxOpen.Load(); n > poolSize {
		t.Errorf("the pool had %d server connections open at once, limit %d", n, poolSize)
	}
}

// summary is the JSON line every driver program prints last.
type summary struct {
	Driver string `json:"driver"`
	// Clients is the number of concurrent client connections the program ran.
	Clients int `json:"clients"`
	// PIDs are the distinct server backend pids the clients' transactions ran on. There may
	// be more than poolSize over a run: the proxy closes a server whose client disconnects
	// with a request still running (node-postgres does so after an error: it rejects the
	// query at the ErrorResponse and destroys its socket before the ReadyForQuery), and opens
	// a new one; checkPool asserts the limit at every moment.
	PIDs []int `json:"pids"`
	// Migrated counts clients whose transactions ran on more than one server.
	Migrated int `json:"migrated"`
	// Checks counts the result assertions that passed.
	Checks int `json:"checks"`
}

// verify checks that the run really exercised the pool: all clients ran, on at most poolSize
// servers, and statements and settings had to follow clients from server to server.
func (s summary) verify(t testing.TB, minChecks int) {
	t.Helper()
	if s.Clients != clients {
		t.Errorf("%s: %d clients ran, want %d", s.Driver, s.Clients, clients)
	}
	if bypass() {
		t.Logf("%s: %d clients, %d checks (direct to PostgreSQL)", s.Driver, s.Clients, s.Checks)
		if s.Checks < minChecks {
			t.Errorf("%s: %d checks passed, want at least %d", s.Driver, s.Checks, minChecks)
		}
		return
	}
	if len(s.PIDs) == 0 {
		t.Errorf("%s: reported no server pids", s.Driver)
	}
	if s.Migrated == 0 {
		t.Errorf("%s: no client moved between servers; the test did not exercise migration", s.Driver)
	}
	if s.Checks < minChecks {
		t.Errorf("%s: %d checks passed, want at least %d", s.Driver, s.Checks, minChecks)
	}
	t.Logf("%s: %d clients, server pids %v, %d clients migrated, %d checks", s.Driver, s.Clients, s.PIDs, s.Migrated, s.Checks)
}

// run runs a driver program and returns its stdout; it fails the test with the program's
// output when the program fails or runs longer than timeout.
func run(t testing.TB, timeout time.Duration, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, stderr, err := runProgram(timeout, dir, env, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(stderr); s != "" {
		t.Logf("%s stderr:\n%s", filepath.Base(name), tail(s))
	}
	return out
}

// runProgram runs a program and returns its stdout and stderr; the error, when the program
// failed or ran longer than timeout, includes both. Safe from any goroutine.
func runProgram(timeout time.Duration, dir string, env []string, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("did not finish in %v", timeout)
	}
	if err != nil {
		return stdout.String(), stderr.String(), fmt.Errorf("%s %v: %v\nstdout:\n%s\nstderr:\n%s",
			name, args, err, tail(stdout.String()), tail(stderr.String()))
	}
	return stdout.String(), stderr.String(), nil
}

// runDriver runs a driver program and decodes its summary line.
func runDriver(t testing.TB, timeout time.Duration, dir string, env []string, name string, args ...string) summary {
	t.Helper()
	out := run(t, timeout, dir, env, name, args...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var s summary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("%s: no summary line (%v) in output:\n%s", name, err, tail(out))
	}
	slices.Sort(s.PIDs)
	return s
}

func tail(s string) string {
	const max = 6000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}

// python returns the interpreter that has Debian's python3-psycopg and python3-asyncpg: they
// import only under /usr/bin/python3, whatever python3 comes first on PATH.
func python(t testing.TB, modules ...string) string {
	t.Helper()
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		pgtest.Skip(t, "%s not found (install python3 with python3-psycopg and python3-asyncpg)", py)
	}
	for _, m := range modules {
		if err := exec.Command(py, "-c", "import "+m).Run(); err != nil {
			pgtest.Skip(t, "python module %s not importable by %s (apt-get install python3-%s)", m, py, m)
		}
	}
	return py
}

func itoa(n int) string { return strconv.Itoa(n) }
