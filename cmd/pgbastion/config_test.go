package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigUnknownKeyNamesFileAndLine(t *testing.T) {
	_, err := ParseConfig("pgbastion.yaml", []byte(`proxy:
  listen_rw: 127.0.0.1:5432
  pool:
    mode: transaction
    defualt_pool_size: 20
`))
	if err == nil || !strings.Contains(err.Error(), `pgbastion.yaml:5: unknown key "defualt_pool_size"`) {
		t.Fatalf("got %v", err)
	}
}

// TestConfigVersion: a file for a newer schema is refused as a whole, before its keys are
// read (they would be "unknown"), with what to do; version 1 and no version are read.
func TestConfigVersion(t *testing.T) {
	base := "proxy:\n  listen_rw: 127.0.0.1:5432\n  backends: [{host: 127.0.0.1, port: 5434}]\n"
	for _, ok := range []string{base, "config_version: 1\n" + base} {
		if cfg, err := ParseConfig("p.yaml", []byte(ok)); err != nil || cfg.Proxy.ListenRW != "127.0.0.1:5432" {
			t.Fatalf("%q: %v", ok, err)
		}
	}
	_, err := ParseConfig("p.yaml", []byte("config_version: 2\n"+base+"brand_new_section: {x: 1}\n"))
	if err == nil || !strings.Contains(err.Error(), "p.yaml: config_version 2 is newer than this pgbastion") ||
		!strings.Contains(err.Error(), "upgrade pgbastion") || strings.Contains(err.Error(), "unknown key") {
		t.Fatalf("a version 2 file: %v", err)
	}
	for _, bad := range []string{"0", "one", "1.5", "-3"} {
		if _, err := ParseConfig("p.yaml", []byte("config_version: "+bad+"\n"+base)); err == nil || !strings.Contains(err.Error(), "want a whole number") {
			t.Errorf("config_version %s: %v", bad, err)
		}
	}
}

func TestConfigTypeErrorNamesFileAndLine(t *testing.T) {
	_, err := ParseConfig("x.yaml", []byte("proxy:\n  pool:\n    default_pool_size: lots\n"))
	if err == nil || !strings.Contains(err.Error(), "x.yaml:3:") {
		t.Fatalf("got %v", err)
	}
}

func TestConfigValidationListsEveryProblem(t *testing.T) {
	_, err := ParseConfig("x.yaml", []byte(`proxy:
  pool: {mode: statement}
  auth: {method: md5}
log: {level: loud}
`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"pool.mode", "auth_file", "log.level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
}

func TestConfigStandaloneAndCluster(t *testing.T) {
	c, err := ParseConfig("s.yaml", []byte(`proxy:
  backends: [{host: 127.0.0.1, port: 5434}]
  pool: {query_wait_timeout: 7s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, cluster := c.HA(); cluster {
		t.Fatal("no raft section but cluster mode")
	}
	if c.Proxy.Pool.QueryWaitTimeout != 7*time.Second || c.Proxy.Pool.DefaultPoolSize != 20 || c.API.Listen != "127.0.0.1:8080" {
		t.Fatalf("defaults or durations wrong: %+v", c.Proxy.Pool)
	}

	c, err = ParseConfig("c.yaml", []byte(`raft:
  node_name: n1
  bind: 127.0.0.1:8300
  data_dir: /var/lib/pgbastion/raft
  peers: [{name: n1, address: 127.0.0.1:8300}]
postgresql:
  data_dir: /var/lib/postgresql/data
  port: 5434
  password: secret
`))
	if err != nil {
		t.Fatal(err)
	}
	hc, cluster := c.HA()
	if !cluster || !hc.Failover.FencingEnabled || !hc.Failover.SplitBrainProtection || hc.Failover.LeaseTimeout == 0 {
		t.Fatalf("cluster defaults: %+v", hc.Failover)
	}

	_, err = ParseConfig("c.yaml", []byte(`raft: {node_name: n1, data_dir: /tmp/r, peers: [{name: n1, address: 127.0.0.1:8300}]}
postgresql: {data_dir: /tmp/d, port: 5434}
proxy:
  backends: [{host: 127.0.0.1, port: 5434}]
`))
	if err == nil || !strings.Contains(err.Error(), "proxy.backends must be empty") {
		t.Fatalf("backends with raft: %v", err)
	}
	_, err = ParseConfig("v.yaml", []byte("proxy: {backends: [{host: h, port: 1}]}\nvip: {address: 198.18.0.200/24, interface: eth0}\n"))
	if err == nil || !strings.Contains(err.Error(), "vip needs a raft section") {
		t.Fatalf("vip without raft: %v", err)
	}
	_, err = ParseConfig("s.yaml", []byte("proxy: {backends: [{host: h, port: 1}], local_socket: true}\n"))
	if err == nil || !strings.Contains(err.Error(), "proxy.local_socket applies to cluster members") || !strings.Contains(err.Error(), "{host: /var/run/postgresql") {
		t.Fatalf("local_socket without raft: %v", err)
	}
	c, err = ParseConfig("u.yaml", []byte("proxy: {backends: [{host: /var/run/postgresql, port: 5432}]}\n"))
	if err != nil || c.Proxy.Backends[0].Addr() != "/var/run/postgresql:5432" {
		t.Fatalf("a socket directory as a backend's host: %v", err)
	}
}

func TestCheckCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte("proxy: {backends: [{host: 127.0.0.1, port: 5434}]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"check", "-c", path}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "valid") {
		t.Fatalf("check: %d %q %q", code, out.String(), errOut.String())
	}
	if code := Main([]string{"check", "-c", filepath.Join(t.TempDir(), "missing.yaml")}, &out, &errOut); code != 1 {
		t.Fatalf("missing file exit %d", code)
	}
	if code := Main([]string{"frobnicate"}, &out, &errOut); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
	// The files authentication reads are checked too: a bad hba_file line fails with its place.
	dir := t.TempDir()
	hba, users := filepath.Join(dir, "hba.conf"), filepath.Join(dir, "users.txt")
	_ = os.WriteFile(users, []byte(`"a" "b"`+"\n"), 0o600)
	_ = os.WriteFile(hba, []byte("host all all 10.0.0.0/8 md5\nhost all all samenet md5\n"), 0o600)
	cfg := fmt.Sprintf("proxy: {auth: {method: hba, hba_file: %s, auth_file: %s}, backends: [{host: 127.0.0.1, port: 5434}]}\n", hba, users)
	_ = os.WriteFile(path, []byte(cfg), 0o600)
	errOut.Reset()
	if code := Main([]string{"check", "-c", path}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), hba+":2: samenet") {
		t.Fatalf("a bad hba_file line: exit %d, %q", code, errOut.String())
	}
	// And the certificate files: a CA for PostgreSQL's certificate that is not there.
	ca := filepath.Join(dir, "missing-ca.crt")
	cfg = fmt.Sprintf("proxy: {server: {tls: {mode: verify-full, ca: %s}}, backends: [{host: 127.0.0.1, port: 5434}]}\n", ca)
	_ = os.WriteFile(path, []byte(cfg), 0o600)
	errOut.Reset()
	if code := Main([]string{"check", "-c", path}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "proxy.server.tls.ca: open "+ca) {
		t.Fatalf("a missing proxy.server.tls.ca: exit %d, %q", code, errOut.String())
	}
	// And the directory for client sockets.
	cfg = fmt.Sprintf("proxy: {unix_socket_dir: %s/nothere, backends: [{host: 127.0.0.1, port: 5434}]}\n", dir)
	_ = os.WriteFile(path, []byte(cfg), 0o600)
	errOut.Reset()
	if code := Main([]string{"check", "-c", path}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "proxy.unix_socket_dir "+dir+"/nothere: not a directory") {
		t.Fatalf("a missing proxy.unix_socket_dir: exit %d, %q", code, errOut.String())
	}
}

func TestConfigReplicationSettings(t *testing.T) {
	c, err := ParseConfig("r.yaml", []byte(`raft: {node_name: n1, data_dir: /tmp/r, peers: [{name: n1, address: 127.0.0.1:8300}]}
failover: {synchronous_mode: quorum, synchronous_node_count: 2, synchronous_mode_strict: true}
tags: {nofailover: true, failover_priority: 3, nosync: true, noloadbalance: true}
postgresql:
  data_dir: /tmp/d
  port: 5434
  remove_data_directory_on_rewind_failure: true
  slot_cleanup_interval: 10m
  permanent_slots: [backup]
`))
	if err != nil {
		t.Fatal(err)
	}
	hc, _ := c.HA()
	f := hc.Failover
	if f.SynchronousMode != "quorum" || f.SynchronousNodeCount != 2 || !f.SynchronousModeStrict {
		t.Errorf("failover: %+v", f)
	}
	if tg := hc.Tags; !tg.NoFailover || tg.FailoverPriority != 3 || !tg.NoSync || !tg.NoLoadBalance {
		t.Errorf("tags: %+v", tg)
	}
	p := c.PostgreSQL
	if !p.RemoveDataDirectoryOnRewindFailure || p.SlotCleanupInterval != 10*time.Minute || len(p.PermanentSlots) != 1 {
		t.Errorf("postgresql: %+v", p)
	}
	for yaml, want := range map[string]string{
		"failover: {synchronous_mode: always}":                                  "failover.synchronous_mode",
		"failover: {synchronous_node_count: -1}":                                "failover.synchronous_node_count",
		"postgresql: {data_dir: /tmp/d, port: 5434, slot_cleanup_interval: 0s}": "postgresql.slot_cleanup_interval",
	} {
		base := "raft: {node_name: n1, data_dir: /tmp/r, peers: [{name: n1, address: 127.0.0.1:8300}]}\n"
		if !strings.HasPrefix(yaml, "postgresql") {
			base += "postgresql: {data_dir: /tmp/d, port: 5434}\n"
		}
		if _, err := ParseConfig("bad.yaml", []byte(base+yaml+"\n")); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error about %s", yaml, err, want)
		}
	}
}

func TestDemoConfigCarriesTheSynchronousMode(t *testing.T) {
	for _, mode := range []string{"off", "on", "quorum"} {
		c, err := ParseConfig("demo.yaml", []byte(demoConfig(1, 16000, t.TempDir(), "pw", "tok", mode)))
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if hc, _ := c.HA(); hc.Failover.SynchronousMode != mode || hc.Failover.SynchronousNodeCount != 1 {
			t.Errorf("%s: %+v", mode, hc.Failover)
		}
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"demo", "--synchronous-mode", "always"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "off, on or quorum") {
		t.Errorf("bad mode: exit %d, %q", code, errOut.String())
	}
}

func TestConfigWebhooksAndCallbacks(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "role-change")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	base := `raft: {node_name: n1, cluster_name: main, data_dir: /tmp/r, peers: [{name: n1, address: 127.0.0.1:8300}]}
`
	c, err := ParseConfig("c.yaml", []byte(base+`postgresql:
  data_dir: /tmp/d
  port: 5434
  callbacks: {on_role_change: "`+prog+` --quiet", timeout: 5s}
webhooks:
  - url: https://hooks.example.com/services/T0/B0/xyz
    format: slack
    min_severity: warning
  - {url: "http://127.0.0.1:9000/alerts", events: [primary_changed, no_primary], headers: {Authorization: Bearer t}}
`))
	if err != nil {
		t.Fatal(err)
	}
	hc, _ := c.HA()
	if hc.Raft.ClusterName != "main" || c.PostgreSQL.Callbacks.Timeout != 5*time.Second || len(c.Webhooks) != 2 ||
		c.Webhooks[0].Format != "slack" || c.Webhooks[1].Format != "json" || c.Webhooks[1].Timeout != 10*time.Second {
		t.Fatalf("parsed: %+v %+v", c.PostgreSQL.Callbacks, c.Webhooks)
	}

	_, err = ParseConfig("c.yaml", []byte(base+`postgresql:
  data_dir: /tmp/d
  port: 5434
  callbacks: {on_stop: notify-me}
  pre_promote: fence-old-primary
webhooks:
  - {url: "https://hooks.example.com/secret-token", events: [failover]}
  - {url: "", format: teams}
`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{`postgresql.callbacks.on_stop: "notify-me" must be an absolute path`,
		`postgresql.pre_promote: "fence-old-primary" must be an absolute path`,
		`webhooks[0].events: "failover" is not an event type`, "webhooks[1].url: required", `webhooks[1].format: "teams" is not json, slack or pagerduty`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %s:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "secret-token") {
		t.Errorf("the error shows the webhook URL:\n%v", err)
	}

	_, err = ParseConfig("s.yaml", []byte("proxy: {backends: [{host: h, port: 1}]}\nwebhooks: [{url: http://x/y}]\n"))
	if err == nil || !strings.Contains(err.Error(), "webhooks and postgresql.callbacks need a raft section") {
		t.Fatalf("webhooks without raft: %v", err)
	}
	_, err = ParseConfig("s.yaml", []byte(base+"postgresql: {data_dir: /tmp/d, port: 5434}\nwebhooks: [{url: http://x/y, retries: 3}]\n"))
	if err == nil || !strings.Contains(err.Error(), `unknown key "retries"`) {
		t.Fatalf("unknown webhook key: %v", err)
	}
}
