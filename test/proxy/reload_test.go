package proxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/admin"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// proxyStatus reads the daemon's GET /proxy.
func proxyStatus(t *testing.T, d *daemon.Daemon) admin.ProxyStatus {
	t.Helper()
	var st admin.ProxyStatus
	if err := (daemon.APIClient{Addr: d.API()}).Get("/proxy", &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// awaitProxy waits until the daemon's GET /proxy satisfies ok.
func awaitProxy(t *testing.T, d *daemon.Daemon, what string, ok func(admin.ProxyStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for st := proxyStatus(t, d); !ok(st); st = proxyStatus(t, d) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s: %+v\n%s", what, st, d.LogTail())
		}
		time.Sleep(poll)
	}
}

// startTransactionProxy starts a PostgreSQL and the pgbastion binary in front of it as a
// standalone proxy in transaction mode, with one listener and the API token given.
func startTransactionProxy(t *testing.T, token string) (*pgtest.Instance, *daemon.Daemon) {
	t.Helper()
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	cfg := daemon.NewConfig(t, primary)
	cfg.Proxy.ListenRO = ""
	cfg.Proxy.Pool.Mode = pool.ModeTransaction
	cfg.API.Token = token
	return primary, daemon.Start(t, cfg)
}

// ctl runs `pgbastion ctl` against the daemon's API, with token when it is not empty.
func ctl(t *testing.T, d *daemon.Daemon, token string, args ...string) (string, error) {
	argv := []string{"ctl", "--api", "http://" + d.API()}
	if token != "" {
		argv = append(argv, "--token", token)
	}
	out, err := exec.Command(daemon.Binary(t), append(argv, args...)...).CombinedOutput()
	return string(out), err
}

// TestReloadBySIGHUPAndCtl runs the pgbastion binary with a pool of one server and changes
// its configuration file while a client holds that server in a transaction and another waits
// for it. SIGHUP applies the larger pool (the waiting client is served, the transaction goes
// on); `pgbastion ctl reload` with a broken file is refused with the file's line, changes
// nothing, and the proxy keeps serving; the metrics count both.
func TestReloadBySIGHUPAndCtl(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	cfg := daemon.NewConfig(t, primary)
	cfg.Proxy.ListenRO = ""
	cfg.Proxy.Pool.Mode, cfg.Proxy.Pool.DefaultPoolSize = pool.ModeTransaction, 1
	cfg.Proxy.EventLoops = 1
	cfg.Proxy.AdminUsers = []string{"postgres"}
	cfg.API.Token = "reload-token"
	d := daemon.Start(t, cfg)
	api := daemon.APIClient{Addr: d.API()}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	holder, err := pgx.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	waiter, err := pgx.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close(ctx)
	got := make(chan error, 1)
	go func() {
		var n int
		got <- waiter.QueryRow(ctx, "SELECT 2").Scan(&n)
	}()
	pools := func() []admin.PoolStatus { return proxyStatus(t, d).Pools }
	awaitProxy(t, d, "a client waiting for the pool's only server", func(st admin.ProxyStatus) bool {
		return len(st.Pools) == 1 && st.Pools[0].ClientsWaiting == 1
	})

	next := *cfg
	next.Proxy.Pool.DefaultPoolSize = 2
	next.Log.Level = "debug"
	next.Proxy.ListenRO = daemon.FreeAddr(t) // takes a restart
	d.WriteConfig(t, &next)
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the waiting client after SIGHUP: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the waiting client got no server within 30s of SIGHUP\n%s", d.LogTail())
	}
	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("the transaction across the reload: %v", err)
	}
	if p := pools(); len(p) != 1 || p[0].Size != 2 {
		t.Fatalf("pool after SIGHUP: %+v", p)
	}
	log := d.Log()
	for _, want := range []string{"configuration reloaded", "key=proxy.pool.default_pool_size", "key=proxy.listen_ro", "takes a restart"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, d.LogTail())
		}
	}

	// A broken file, through the CLI: refused with its line, nothing changes.
	if err := os.WriteFile(d.ConfigPath(), []byte("proxy:\n  pool:\n    default_pool_sise: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, d, "reload-token", "reload")
	if err == nil || !strings.Contains(string(out), d.ConfigPath()+":3") || !strings.Contains(string(out), "default_pool_sise") ||
		!strings.Contains(string(out), "nothing changed") {
		t.Fatalf("ctl reload of a broken file: %v\n%s", err, out)
	}
	if p := pools(); len(p) != 1 || p[0].Size != 2 {
		t.Fatalf("pool after a refused reload: %+v", p)
	}
	c, err := pgx.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatalf("a new client after a refused reload: %v", err)
	}
	c.Close(ctx)

	// The file fixed again: the CLI prints what is still waiting for a restart.
	d.WriteConfig(t, &next)
	out, err = ctl(t, d, "reload-token", "reload")
	if err != nil || !strings.Contains(string(out), "proxy.listen_ro") || !strings.Contains(string(out), "takes a restart") {
		t.Fatalf("ctl reload: %v\n%s", err, out)
	}
	// The admin console's RELOAD, as in PgBouncer: the same reload, its changes as notices.
	var notices []string
	ccfg, err := pgx.ParseConfig(daemon.ConnString(d.RW(), "dbname=pgbouncer"))
	if err != nil {
		t.Fatal(err)
	}
	ccfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	console, err := pgx.ConnectConfig(ctx, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close(ctx)
	if tag, err := console.Exec(ctx, "RELOAD", pgx.QueryExecModeSimpleProtocol); err != nil || tag.String() != "RELOAD" ||
		len(notices) != 2 || !strings.Contains(notices[0], "proxy.listen_ro") || !strings.Contains(notices[1], "1 take a restart") {
		t.Fatalf("console RELOAD: %q %v, notices %q", tag, err, notices)
	}
	// Without the token the API refuses.
	out, err = ctl(t, d, "", "reload")
	if err == nil || !strings.Contains(string(out), "bearer token") {
		t.Fatalf("ctl reload without the token: %v\n%s", err, out)
	}

	metrics, err := api.Text("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`pgbastion_config_reloads_total{result="applied"} 3`, `pgbastion_config_reloads_total{result="refused"} 1`,
		"pgbastion_config_pending_restart_settings 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestPauseForAPostgreSQLRestart is the maintenance PgBouncer's PAUSE/RESUME exist for: with
// clients running transactions all along, `pgbastion ctl proxy pause`, a restart of
// PostgreSQL, `pgbastion ctl proxy resume`. No client sees an error; the transactions they
// started during the pause run after it.
func TestPauseForAPostgreSQLRestart(t *testing.T) {
	primary, d := startTransactionProxy(t, "pause-token")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const clients = 8
	var done atomic.Int64
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, daemon.ConnString(d.RW()))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for ctx.Err() == nil {
				var v int
				if err := c.QueryRow(ctx, "SELECT 1").Scan(&v); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				done.Add(1)
			}
		}()
	}
	for done.Load() < 100 {
		time.Sleep(poll)
	}

	out, err := ctl(t, d, "pause-token", "proxy", "pause", "--wait", "20s")
	if err != nil || !strings.Contains(out, "paused") {
		t.Fatalf("ctl proxy pause: %v\n%s", err, out)
	}
	awaitProxy(t, d, "every client held by the pause", func(st admin.ProxyStatus) bool { return st.Paused && st.ClientsHeld == clients })
	out, err = ctl(t, d, "pause-token", "pools")
	if err != nil || !strings.Contains(out, "PAUSED") {
		t.Fatalf("ctl pools while paused: %v\n%s", err, out)
	}
	before := done.Load()
	primary.Restart(t)
	// The proxy has let go of the connections the restart closed, and routes writes again.
	awaitProxy(t, d, "the old server connections closed and the primary known", func(st admin.ProxyStatus) bool {
		return st.WritesTo != "" && len(st.Pools) == 1 && st.Pools[0].ServersActive+st.Pools[0].ServersIdle == 0
	})
	if n := done.Load(); n != before {
		t.Fatalf("%d transactions ran during the pause", n-before)
	}
	out, err = ctl(t, d, "pause-token", "proxy", "resume")
	if err != nil || !strings.Contains(out, "resumed") {
		t.Fatalf("ctl proxy resume: %v\n%s", err, out)
	}
	for done.Load() < before+100 {
		select {
		case err := <-errs:
			t.Fatalf("a client after the resume: %v", err)
		default:
		}
		time.Sleep(poll)
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a client saw an error: %v", err)
	}
	if st := proxyStatus(t, d); st.Paused || st.ClientsHeld != 0 {
		t.Errorf("after the resume: %+v", st)
	}
}
