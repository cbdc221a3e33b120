package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeFile(t *testing.T, name, text string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// daemonFrom builds (without running it) the daemon of the configuration file at path.
func daemonFrom(t *testing.T, path string) (*daemon, *slog.LevelVar) {
	t.Helper()
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	log, level := newLogger(cfg.Log, io.Discard)
	d, err := newDaemon(path, cfg, log, level)
	if err != nil {
		t.Fatal(err)
	}
	return d, level
}

// TestReloaderAppliesReportsAndRefuses drives the daemon's reloader against a proxy that is
// not started: log.level and the auth_file change at once, sections outside the proxy are
// reported as taking a restart (their secrets hidden), and a file that does not load (a typo,
// an auth_file that went missing) is refused, counted and changes nothing.
func TestReloaderAppliesReportsAndRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgbastion.yaml")
	users := filepath.Join(dir, "userlist.txt")
	write := func(name, text string) { writeFile(t, name, text) }
	base := `proxy:
  listen_rw: 127.0.0.1:0
  listen_ro: ""
  backends: [{host: 127.0.0.1, port: 1}]
  auth: {method: md5, auth_file: ` + users + `}
  pool: {mode: transaction, default_pool_size: 20}
api: {listen: "127.0.0.1:0", token: first-token}
log: {level: info}
`
	write(users, `"alice" "a"`+"\n")
	write(path, base)
	d, level := daemonFrom(t, path)
	r := d.reloader

	changed := strings.NewReplacer("default_pool_size: 20", "default_pool_size: 35", "level: info", "level: debug",
		"first-token", "second-token").Replace(base)
	write(path, changed)
	write(users, `"alice" "a"`+"\n"+`"bob" "b"`+"\n")
	res, err := r.reload()
	if err != nil {
		t.Fatal(err)
	}
	keys := func(applied bool) []string {
		var out []string
		for _, c := range res.Changes {
			if c.Applied == applied {
				out = append(out, c.Key)
			}
		}
		return out
	}
	if got := keys(true); !slices.Equal(got, []string{"proxy.pool.default_pool_size", "log.level"}) {
		t.Errorf("applied %v", got)
	}
	if got := keys(false); !slices.Equal(got, []string{"api.token"}) || !slices.Equal(res.RestartRequired, got) {
		t.Errorf("restart required %v / %v", got, res.RestartRequired)
	}
	for _, c := range res.Changes {
		if c.Key == "api.token" && (c.Old != "(hidden)" || c.New != "(hidden)") {
			t.Errorf("the token was shown: %+v", c)
		}
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("log level %v after the reload, want debug", level.Level())
	}
	if got := d.proxy.Stats(); got.Clients != 0 {
		t.Errorf("stats %+v", got)
	}
	var out bytes.Buffer
	printReload(&out, res)
	for _, want := range []string{path + " reloaded:", "proxy.pool.default_pool_size: 20 -> 35", "api.token: (hidden) -> (hidden) (takes a restart",
		"2 applied; 1 takes a restart"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("ctl output lacks %q:\n%s", want, out.String())
		}
	}

	// Refused: a typo, then a missing auth_file. Nothing changes, each is counted.
	write(path, strings.Replace(changed, "level: debug", "levl: error", 1))
	if _, err := r.reload(); err == nil || !strings.Contains(err.Error(), path+":8") || !strings.Contains(err.Error(), "levl") {
		t.Fatalf("typo: %v, want the file and line", err)
	}
	write(path, strings.Replace(changed, "level: debug", "level: error", 1))
	if err := os.Remove(users); err != nil {
		t.Fatal(err)
	}
	if _, err := r.reload(); err == nil || !strings.Contains(err.Error(), "auth_file") {
		t.Fatalf("missing auth_file: %v", err)
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("log level %v after refused reloads, want debug still", level.Level())
	}
	if r.refused.Get() != 2 || r.applied.Get() != 1 {
		t.Errorf("counters: %d refused, %d applied", r.refused.Get(), r.applied.Get())
	}
}

// A cluster member's reload applies the proxy's pool settings and reports the HA sections as
// taking a restart.
func TestReloaderInAClusterMember(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgbastion.yaml")
	base := `raft: {node_name: n1, bind: "127.0.0.1:8300", data_dir: ` + dir + `/raft, peers: [{name: n1, address: "127.0.0.1:8300"}]}
postgresql: {data_dir: ` + dir + `/data, port: 5434}
proxy: {listen_rw: "127.0.0.1:0", listen_ro: "", pool: {mode: transaction, default_pool_size: 20}}
failover: {maximum_lag_on_failover: 1048576}
`
	writeFile(t, path, base)
	d, _ := daemonFrom(t, path)
	writeFile(t, path, strings.NewReplacer("default_pool_size: 20", "default_pool_size: 40", "1048576", "2097152").Replace(base))
	res, err := d.reloader.reload()
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied != 1 || !slices.Equal(res.RestartRequired, []string{"failover.maximum_lag_on_failover"}) {
		t.Fatalf("applied %d, restart required %v (%v)", res.Applied, res.RestartRequired, res.Changes)
	}
}

// TestReloadReportsTracingAsRestart: the tracing section is read at start only; a reload says
// each change takes a restart, hiding the collector's headers.
func TestReloadReportsTracingAsRestart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgbastion.yaml")
	base := `proxy:
  listen_rw: 127.0.0.1:0
  listen_ro: ""
  backends: [{host: 127.0.0.1, port: 1}]
api: {listen: "127.0.0.1:0"}
tracing: {endpoint: "http://a:4318", sample_ratio: 0.5, headers: {x-api-key: key-one}}
`
	writeFile(t, path, base)
	d, _ := daemonFrom(t, path)
	writeFile(t, path, strings.NewReplacer("http://a:4318", "http://b:4318", "0.5", "1", "key-one", "key-two").Replace(base))
	res, err := d.reloader.reload()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.RestartRequired, []string{"tracing.endpoint", "tracing.headers.x-api-key", "tracing.sample_ratio"}) || res.Applied != 0 {
		t.Fatalf("applied %d, restart required %v", res.Applied, res.RestartRequired)
	}
	for _, c := range res.Changes {
		if strings.Contains(c.Old+c.New, "key-") {
			t.Errorf("a tracing header was shown: %+v", c)
		}
	}
	// A bad value is refused with the key named.
	writeFile(t, path, strings.Replace(base, "0.5", "2", 1))
	if _, err := d.reloader.reload(); err == nil || !strings.Contains(err.Error(), "tracing.sample_ratio") {
		t.Fatalf("a sample ratio of 2: %v", err)
	}
}

// A cluster member's reload hands a changed postgresql.pg_hba to its PostgreSQL before
// anything else changes; when PostgreSQL refuses the lines, the whole reload is refused.
func TestReloaderAppliesPgHBA(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgbastion.yaml")
	base := `raft: {node_name: n1, bind: "127.0.0.1:8300", data_dir: ` + dir + `/raft, peers: [{name: n1, address: "127.0.0.1:8300"}]}
postgresql: {data_dir: ` + dir + `/data, port: 5434, pg_hba: ["hostssl all all 10.0.0.0/8 scram-sha-256"]}
proxy: {listen_rw: "127.0.0.1:0", listen_ro: "", pool: {mode: transaction, default_pool_size: 20}}
`
	writeFile(t, path, base)
	d, _ := daemonFrom(t, path)
	var got [][]string
	refuse := false
	d.reloader.setHBA(func(_ context.Context, lines []string) (string, error) {
		got = append(got, lines)
		if refuse {
			return "", errors.New("PostgreSQL refuses postgresql.pg_hba[0]: invalid IP mask")
		}
		return "loaded", nil
	}, nil)
	// Unchanged: PostgreSQL is not asked.
	if _, err := d.reloader.reload(); err != nil || len(got) != 0 {
		t.Fatalf("unchanged file: %v, hba calls %q", err, got)
	}
	two := strings.Replace(base, `pg_hba: [`, `pg_hba: ["hostssl all all 192.168.0.0/16 scram-sha-256", `, 1)
	writeFile(t, path, two)
	res, err := d.reloader.reload()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[0]) != 2 || res.Applied != 1 || len(res.RestartRequired) != 0 {
		t.Fatalf("applied %d, restart %v, hba calls %q", res.Applied, res.RestartRequired, got)
	}
	// Reloading the same file again asks nothing more.
	if _, err := d.reloader.reload(); err != nil || len(got) != 1 {
		t.Fatalf("second reload of the same file: %v, hba calls %q", err, got)
	}
	// Refused lines refuse the reload: the pool size in the same file does not change.
	refuse = true
	writeFile(t, path, strings.Replace(strings.Replace(two, "192.168.0.0/16", "192.168.0.0/33", 1), "default_pool_size: 20", "default_pool_size: 30", 1))
	if _, err := d.reloader.reload(); err == nil || !strings.Contains(err.Error(), "postgresql.pg_hba not applied: PostgreSQL refuses postgresql.pg_hba[0]") {
		t.Fatalf("refused lines: %v", err)
	}
	// The next good file shows the pool size changing from 20: the refused one left it.
	refuse = false
	writeFile(t, path, strings.Replace(two, "default_pool_size: 20", "default_pool_size: 30", 1))
	res, err = d.reloader.reload()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) != 1 || res.Changes[0].String() != "proxy.pool.default_pool_size: 20 -> 30" {
		t.Fatalf("after the refused reload: %v", res.Changes)
	}
}

// postgresql.parameters changes go to the local PostgreSQL at a reload, noted with what
// PostgreSQL did; refused, they refuse the whole reload, and a pg_hba list applied in the same
// reload is put back.
func TestReloaderAppliesParameters(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgbastion.yaml")
	base := `raft: {node_name: n1, bind: "127.0.0.1:8300", data_dir: ` + dir + `/raft, peers: [{name: n1, address: "127.0.0.1:8300"}]}
postgresql: {data_dir: ` + dir + `/data, port: 5434, parameters: {work_mem: 8MB}, pg_hba: ["host all all 10.0.0.0/8 scram-sha-256"]}
proxy: {listen_rw: "127.0.0.1:0", listen_ro: "", pool: {mode: transaction, default_pool_size: 20}}
`
	writeFile(t, path, base)
	d, _ := daemonFrom(t, path)
	var params []map[string]string
	var hba [][]string
	refuse := false
	d.reloader.setParams(func(_ context.Context, p map[string]string) (string, error) {
		params = append(params, p)
		if refuse {
			return "", errors.New(`PostgreSQL refuses postgresql.parameters: invalid value for parameter "work_mem": "lots"`)
		}
		return "loaded by PostgreSQL; waiting for a restart of PostgreSQL: shared_buffers", nil
	})
	var ident [][]string
	d.reloader.setHBA(func(_ context.Context, lines []string) (string, error) {
		hba = append(hba, lines)
		return "loaded", nil
	}, func(_ context.Context, lines []string) (string, error) {
		ident = append(ident, lines)
		return "loaded", nil
	})
	writeFile(t, path, strings.Replace(base, "{work_mem: 8MB}", "{work_mem: 16MB, shared_buffers: 1GB}", 1))
	res, err := d.reloader.reload()
	if err != nil {
		t.Fatal(err)
	}
	if len(params) != 1 || params[0]["work_mem"] != "16MB" || res.Applied != 2 || len(res.RestartRequired) != 0 {
		t.Fatalf("applied %d, restart %v, params calls %v", res.Applied, res.RestartRequired, params)
	}
	var out bytes.Buffer
	printReload(&out, res)
	if !strings.Contains(out.String(), "postgresql.parameters.work_mem: 8MB -> 16MB (loaded by PostgreSQL; waiting for a restart of PostgreSQL: shared_buffers)") {
		t.Fatalf("ctl output:\n%s", out.String())
	}
	// Refused, with a pg_hba change in the same file: the pg_hba list goes back.
	refuse = true
	writeFile(t, path, strings.NewReplacer("{work_mem: 8MB}", "{work_mem: lots}", "10.0.0.0/8", "10.1.0.0/16").Replace(base))
	if _, err := d.reloader.reload(); err == nil || !strings.Contains(err.Error(), `invalid value for parameter "work_mem"`) {
		t.Fatalf("refused parameters: %v", err)
	}
	if len(hba) != 2 || hba[0][0] != "host all all 10.1.0.0/16 scram-sha-256" || hba[1][0] != "host all all 10.0.0.0/8 scram-sha-256" {
		t.Fatalf("pg_hba calls %q, want the new list and then the previous one back", hba)
	}
	// pg_ident goes to PostgreSQL too.
	refuse = false
	writeFile(t, path, strings.Replace(base, "pg_hba: [", `pg_ident: ["ops alice app_admin"], pg_hba: [`, 1))
	if res, err := d.reloader.reload(); err != nil || len(ident) != 1 || ident[0][0] != "ops alice app_admin" || res.Applied < 1 {
		t.Fatalf("pg_ident: %v, ident calls %q", err, ident)
	}
	// A parameter PGBastion owns is refused when the file is read.
	writeFile(t, path, strings.Replace(base, "{work_mem: 8MB}", "{port: 6000}", 1))
	if _, err := d.reloader.reload(); err == nil || !strings.Contains(err.Error(), "postgresql.parameters.port: set by postgresql.port") {
		t.Fatalf("port in parameters: %v", err)
	}
}
