package daemon_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/admin"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

func TestMain(m *testing.M) { daemon.Main(m) }

func queryInt(ctx context.Context, dsn, sql string) (int64, error) {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	var v int64
	err = c.QueryRow(ctx, sql).Scan(&v)
	return v, err
}

// TestLifecycle starts the real binary in front of a real PostgreSQL, queries through it, and
// exercises every process control.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	primary := pgtest.Start(t, nil)
	d := daemon.Start(t, daemon.NewConfig(t, primary))
	if d.PID() <= 0 {
		t.Fatalf("PID %d", d.PID())
	}
	ctx := t.Context()
	if v, err := queryInt(ctx, daemon.ConnString(d.RW()), "SELECT 6 * 7"); err != nil || v != 42 {
		t.Fatalf("query through rw: %d, %v", v, err)
	}
	// The API of a standalone proxy answers on its own port. A client inside a transaction:
	// /metrics counts it and the server connection it holds.
	held, err := pgx.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := held.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	api := daemon.APIClient{Addr: d.API()}
	text, err := api.Text("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "pgbastion_proxy_clients 1\n") || !regexp.MustCompile(`(?m)^pgbastion_pool_server_connections\{backend="[^"]+",database="postgres",user="postgres",state="active"\} 1$`).MatchString(text) {
		t.Fatalf("/metrics does not show the client and the server connection it holds:\n%s", text)
	}
	// The per-loop breakdown accounts for every server connection of the pool.
	sum := func(re string) (total, series int) {
		for _, m := range regexp.MustCompile(re).FindAllStringSubmatch(text, -1) {
			v, _ := strconv.Atoi(m[1])
			total += v
			series++
		}
		return total, series
	}
	if tx, n := sum(`(?m)^pgbastion_pool_transactions_total\{backend="[^"]+",database="postgres",user="postgres"\} (\d+)$`); n != 1 || tx < 1 {
		t.Fatalf("/metrics: pgbastion_pool_transactions_total %d over %d series, want one series counting the query above:\n%s", tx, n, text)
	}
	for _, name := range []string{"received_bytes_total", "sent_bytes_total", "query_seconds_total"} {
		if !regexp.MustCompile(`(?m)^pgbastion_pool_` + name + `\{backend="[^"]+",database="postgres",user="postgres"\} [1-9e.0-9-]*[1-9]`).MatchString(text) {
			t.Fatalf("/metrics: pgbastion_pool_%s is missing or 0 after a query:\n%s", name, text)
		}
	}
	open, _ := sum(`(?m)^pgbastion_pool_server_connections\{backend="[^"]+",database="postgres",user="postgres",state="(?:active|idle)"\} (\d+)$`)
	onLoops, loops := sum(`(?m)^pgbastion_pool_loop_server_connections\{backend="[^"]+",database="postgres",user="postgres",loop="\d+"\} (\d+)$`)
	if loops == 0 || onLoops != open {
		t.Fatalf("per-loop server connections add up to %d over %d loops, the pool has %d open:\n%s", onLoops, loops, open, text)
	}
	// GET /proxy shows the same pool, with the limits in force.
	var px admin.ProxyStatus
	if err := api.Get("/proxy", &px); err != nil {
		t.Fatal(err)
	}
	if px.Clients != 1 || px.WritesTo == "" || len(px.Pools) != 1 || px.Pools[0].ServersActive != 1 || px.Pools[0].Clients != 1 || px.Pools[0].Transactions < 1 ||
		px.Pools[0].Database != "postgres" || px.Pools[0].Size < 1 || len(px.Pools[0].Loops) != loops {
		t.Fatalf("GET /proxy: %+v", px)
	}
	// GET /proxy/connections pairs the client with its server, and names the backend's PID.
	var pid uint32
	if err := held.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	var conns struct {
		Connections []admin.ConnStatus `json:"connections"`
	}
	if err := api.Get("/proxy/connections", &conns); err != nil {
		t.Fatal(err)
	}
	var client, server *admin.ConnStatus
	for i, c := range conns.Connections {
		switch c.Kind {
		case "client":
			client = &conns.Connections[i]
		case "server":
			if c.State == "active" {
				server = &conns.Connections[i]
			}
		}
	}
	if client == nil || server == nil || client.Link != server.ID || server.Link != client.ID || client.BackendPID != pid ||
		server.BackendPID != pid || client.State != "active" || client.Database != "postgres" {
		t.Fatalf("GET /proxy/connections: %+v", conns.Connections)
	}
	_ = held.Close(ctx)
	rss, err := d.RSS()
	if err != nil || rss < 1<<20 || rss > 4<<30 {
		t.Fatalf("RSS %d bytes, %v", rss, err)
	}
	t.Logf("pgbastion pid %d, RSS %.1f MiB, race binary %v", d.PID(), float64(rss)/(1<<20), daemon.RaceBinary())

	// Paused, the daemon answers nothing; resumed, it carries on.
	conn, err := pgx.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	d.Pause(t)
	qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = conn.Exec(qctx, "SELECT 1")
	cancel()
	if err == nil {
		t.Fatal("a paused daemon answered a query")
	}
	d.Resume(t)
	if v, err := queryInt(ctx, daemon.ConnString(d.RW()), "SELECT 1"); err != nil || v != 1 {
		t.Fatalf("query after resume: %d, %v", v, err)
	}

	d.Kill(t)
	select {
	case <-d.Exited():
	default:
		t.Fatal("Kill returned before the process was reaped")
	}
	if c, err := net.DialTimeout("tcp", d.RW(), time.Second); err == nil {
		c.Close()
		t.Fatal("rw port still accepts connections after Kill")
	}
	if _, err := d.RSS(); err == nil {
		t.Fatal("RSS of a reaped process")
	}
}

// TestStopIsGraceful: SIGTERM ends the daemon with exit code 0.
func TestStopIsGraceful(t *testing.T) {
	t.Parallel()
	primary := pgtest.Start(t, nil)
	d := daemon.Start(t, daemon.NewConfig(t, primary))
	if err := d.Stop(t); err != nil {
		t.Fatalf("exit status after SIGTERM: %v\n%s", err, d.LogTail())
	}
}

// TestStartYAML runs the daemon from configuration text, as an operator writes it.
func TestStartYAML(t *testing.T) {
	t.Parallel()
	primary := pgtest.Start(t, nil)
	rw := daemon.FreeAddr(t)
	d := daemon.StartYAML(t, `
proxy:
  listen_rw: `+rw+`
  listen_ro: ""
  pool: {enabled: true, mode: transaction, default_pool_size: 2}
  auth: {method: trust}
  backends: [{host: 127.0.0.1, port: `+strconv.Itoa(primary.Port())+`, name: primary}]
  server: {user: postgres, password: `+primary.Password()+`}
api: {listen: "`+daemon.FreeAddr(t)+`", metrics_listen: ""}
log: {level: debug, format: json}
`, rw)
	if v, err := queryInt(t.Context(), daemon.ConnString(rw), "SELECT 7"); err != nil || v != 7 {
		t.Fatalf("query: %d, %v", v, err)
	}
	if d.Config() != nil || d.RW() != "" {
		t.Fatal("StartYAML daemon claims a typed configuration")
	}
}

// TestProblems recognises a crash or a race in the log.
func TestProblems(t *testing.T) {
	t.Parallel()
	log := "time=x level=INFO msg=\"proxy listening\"\n" +
		"time=x level=ERROR msg=\"recovered from a panic; closing only the connection concerned\" panic=boom\n" +
		"WARNING: DATA RACE\nWrite at 0x00c000 by goroutine 7:\n" +
		"panic: runtime error: index out of range [3] with length 3\n\ngoroutine 1 [running]:\n"
	dir := t.TempDir()
	path := filepath.Join(dir, "pgbastion.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	got := daemon.ProblemsIn(path)
	if len(got) != 2 {
		t.Fatalf("problems %q, want the race and the panic (a recovered panic is not one)", got)
	}
	if got := daemon.ProblemsIn(filepath.Join(dir, "missing")); len(got) != 0 {
		t.Fatalf("problems in a missing file: %q", got)
	}
}
