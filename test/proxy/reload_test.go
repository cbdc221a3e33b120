package proxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/admin"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

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
	pools := func() []admin.PoolStatus {
		var st admin.ProxyStatus
		if err := api.Get("/proxy", &st); err != nil {
			t.Fatal(err)
		}
		return st.Pools
	}
	deadline := time.Now().Add(30 * time.Second)
	for p := pools(); len(p) != 1 || p[0].ClientsWaiting != 1; p = pools() {
		if time.Now().After(deadline) {
			t.Fatalf("no client waits for the pool's only server: %+v", p)
		}
		time.Sleep(poll)
	}

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
	out, err := exec.Command(daemon.Binary(t), "ctl", "--api", "http://"+d.API(), "--token", "reload-token", "reload").CombinedOutput()
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
	out, err = exec.Command(daemon.Binary(t), "ctl", "--api", "http://"+d.API(), "--token", "reload-token", "reload").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "proxy.listen_ro") || !strings.Contains(string(out), "takes a restart") {
		t.Fatalf("ctl reload: %v\n%s", err, out)
	}
	// Without the token the API refuses.
	out, err = exec.Command(daemon.Binary(t), "ctl", "--api", "http://"+d.API(), "reload").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "401") {
		t.Fatalf("ctl reload without the token: %v\n%s", err, out)
	}

	metrics, err := api.Text("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`pgbastion_config_reloads_total{result="applied"} 2`, `pgbastion_config_reloads_total{result="refused"} 1`,
		"pgbastion_config_pending_restart_settings 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
