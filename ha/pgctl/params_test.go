package pgctl

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParametersChecked(t *testing.T) {
	if errs := validateParameters(map[string]string{"work_mem": "64MB", "pg_stat_statements.max": "10000", "hot_standby": "on", "Shared_Buffers": "1GB"}); len(errs) != 0 {
		t.Fatalf("valid parameters refused: %v", errs)
	}
	for name, want := range map[string]string{
		"port":                      "set by postgresql.port",
		"listen_addresses":          "set by postgresql.host",
		"synchronous_standby_names": "failover.synchronous_mode",
		"recovery_target_time":      "recovery target",
		"work mem":                  "not a PostgreSQL parameter name",
		"hot_standby":               "leave it on",
		"wal_level":                 "minimal would stop replication",
	} {
		v := "1"
		switch name {
		case "hot_standby":
			v = "off"
		case "wal_level":
			v = "minimal"
		}
		errs := validateParameters(map[string]string{name: v})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), want) {
			t.Errorf("%s = %s: %v, want %q", name, v, errs, want)
		}
	}
}

// A reload's postgresql.parameters reach a running PostgreSQL; what PostgreSQL's parser refuses
// changes nothing (the file it would have to start with stays as it was); the outcome names
// what waits for a restart and what the cluster-wide configuration overrides; with PostgreSQL
// down, the parameters are what it starts with.
func TestReloadParameters(t *testing.T) {
	ctx, inst, _ := startTestServer(t, Config{Password: "s3cret", Parameters: map[string]string{"work_mem": "8MB", "log_line_prefix": `%m a\b `}})
	c := NewController(inst, "n1", false, nil)
	show := func(name string) string {
		t.Helper()
		conn, err := inst.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		r := conn.ExecParams(ctx, "SELECT current_setting($1)", [][]byte{[]byte(name)}, nil, nil, nil).Read()
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return string(r.Rows[0][0])
	}
	if got := show("work_mem"); got != "8MB" {
		t.Fatalf("work_mem at start: %s", got)
	}
	if got := show("log_line_prefix"); got != `%m a\b ` {
		t.Fatalf("a backslash in a value: %q", got)
	}
	outcome, err := c.ReloadParameters(ctx, map[string]string{"work_mem": "16MB", "shared_buffers": "64MB"})
	if err != nil || !strings.Contains(outcome, "loaded by PostgreSQL") || !strings.Contains(outcome, "waiting for a restart of PostgreSQL: shared_buffers") {
		t.Fatalf("reload: %q %v", outcome, err)
	}
	if got := show("work_mem"); got != "16MB" {
		t.Fatalf("work_mem after the reload: %s", got)
	}
	path := filepath.Join(inst.cfg.DataDir, settingsFile)
	before, _ := os.ReadFile(path)
	for params, want := range map[string]map[string]string{
		`invalid value for parameter "work_mem": "lots"`:               {"work_mem": "lots"},
		`unrecognized configuration parameter "bogus_x"`:               {"bogus_x": "1"},
		`outside the valid range for parameter "max_connections"`:      {"max_connections": "100000000"},
		`invalid value for parameter "shared_buffers": "a lot"`:        {"shared_buffers": "a lot"},
		"postgresql.parameters.port: set by postgresql.port, not here": {"port": "6000"},
	} {
		_, err := c.ReloadParameters(ctx, want)
		if err == nil || !strings.Contains(err.Error(), params) {
			t.Errorf("%v: %v, want %q", want, err, params)
		}
		if after, _ := os.ReadFile(path); string(after) != string(before) {
			t.Fatalf("refused parameters %v changed %s:\n%s", want, settingsFile, after)
		}
	}
	if got := show("work_mem"); got != "16MB" {
		t.Fatalf("work_mem after refused reloads: %s", got)
	}

	// The cluster-wide configuration (ALTER SYSTEM) wins; the outcome says so.
	conn, err := inst.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"ALTER SYSTEM SET work_mem = '32MB'", "SELECT pg_reload_conf()"} {
		if _, err := conn.Exec(ctx, q).ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close(ctx)
	outcome, err = c.ReloadParameters(ctx, map[string]string{"work_mem": "4MB", "shared_buffers": "64MB"})
	if err != nil || !strings.Contains(outcome, "the cluster-wide configuration (ctl config) overrides work_mem") {
		t.Fatalf("reload under a cluster-wide value: %q %v", outcome, err)
	}

	// Down: the parameters are what PostgreSQL starts with (and were checked all the same).
	if err := inst.Stop(ctx, Fast); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReloadParameters(ctx, map[string]string{"work_mem": "lots"}); err == nil {
		t.Fatal("a bad value was taken while PostgreSQL was down")
	}
	outcome, err = c.ReloadParameters(ctx, map[string]string{"shared_buffers": "48MB"})
	if err != nil || !strings.Contains(outcome, "not running") {
		t.Fatalf("reload while down: %q %v", outcome, err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := show("shared_buffers"); got != "48MB" {
		t.Fatalf("shared_buffers after the start: %s", got)
	}
}
