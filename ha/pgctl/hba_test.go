package pgctl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/ha"
)

func TestPgHBAChecked(t *testing.T) {
	good := []string{
		"hostssl all all 10.0.0.0/8 scram-sha-256",
		"hostssl replication replicator 10.0.0.0/8 scram-sha-256",
		"host all all 10.0.0.0 255.0.0.0 reject",
		"local all app peer",
		"include_if_exists /etc/postgresql/extra_hba.conf",
	}
	if errs := validateHBA(good); len(errs) != 0 {
		t.Fatalf("valid lines refused: %v", errs)
	}
	for line, want := range map[string]string{
		"":                              "is empty or a comment",
		"# hostssl all all 0/0 md5":     "is empty or a comment",
		"hots all all 10.0.0.0/8 md5":   `"hots" is not a pg_hba.conf line kind`,
		"hostssl all all md5":           "too few fields (a hostssl line needs at least 5)",
		"local all md5":                 "too few fields",
		"host all all 0/0 md5\nlocal x": "without line breaks",
	} {
		errs := validateHBA([]string{line})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), want) {
			t.Errorf("%q: %v, want %q", line, errs, want)
		}
	}
}

// pg_hba.conf follows postgresql.pg_hba: PGBastion's socket lines first, then the list; it is
// rewritten only when it differs, and left alone when the list is unset.
func TestPgHBAWritten(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "pgdata")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(data, "pg_hba.conf")
	if err := os.WriteFile(path, []byte("# the operator's own\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inst, err := New(Config{BinDir: "/nonexistent", DataDir: data, Port: 5434, Superuser: "postgres"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := inst.writeHBA(); err != nil || changed {
		t.Fatalf("without pg_hba: changed %v, %v", changed, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "# the operator's own\n" {
		t.Fatalf("without pg_hba the file changed: %q", b)
	}
	inst.hba.local = []string{"hostssl all all 10.0.0.0/8 scram-sha-256", "  hostssl replication all 10.0.0.0/8 scram-sha-256 "}
	if changed, err := inst.writeHBA(); err != nil || !changed {
		t.Fatalf("with pg_hba: changed %v, %v", changed, err)
	}
	b, _ := os.ReadFile(path)
	want := "# written by PGBastion\nlocal all all trust\nlocal replication all trust\n# postgresql.pg_hba (changes here are overwritten)\n" +
		"hostssl all all 10.0.0.0/8 scram-sha-256\nhostssl replication all 10.0.0.0/8 scram-sha-256\n"
	if string(b) != want {
		t.Fatalf("pg_hba.conf:\n%s\nwant:\n%s", b, want)
	}
	if changed, err := inst.writeHBA(); err != nil || changed {
		t.Fatalf("unchanged list rewrote the file: %v, %v", changed, err)
	}
}

// A reload's pg_hba list reaches a running PostgreSQL at once; a list PostgreSQL's parser
// refuses changes nothing (the previous file stays, and would be the one found at a restart);
// with PostgreSQL down, the list is written before its next start.
func TestReloadHBA(t *testing.T) {
	allow := []string{"host all all 127.0.0.1/32 scram-sha-256"}
	reject := []string{"host all all 127.0.0.1/32 reject"}
	ctx, inst, overTCP, rejected := hbaServer(t, allow)
	if err := overTCP(); err != nil {
		t.Fatalf("pg_hba from the configuration at start: %v", err)
	}
	hbaPath := filepath.Join(inst.cfg.DataDir, "pg_hba.conf")

	msg, err := inst.ReloadHBA(ctx, reject)
	if err != nil || !strings.Contains(msg, "loaded by PostgreSQL") {
		t.Fatalf("reload to reject: %q, %v", msg, err)
	}
	rejected("after the reload")
	before, _ := os.ReadFile(hbaPath)

	// 127.0.0.1/33 passes PGBastion's check of the line's shape; PostgreSQL's parser refuses it.
	_, err = inst.ReloadHBA(ctx, append([]string{"host all all 127.0.0.1/33 scram-sha-256"}, allow...))
	if err == nil || !strings.Contains(err.Error(), "postgresql.pg_hba[0]: invalid") || !strings.Contains(err.Error(), "previous pg_hba.conf stays") {
		t.Fatalf("a line PostgreSQL refuses: %v", err)
	}
	if after, _ := os.ReadFile(hbaPath); string(after) != string(before) {
		t.Fatalf("a refused list changed pg_hba.conf:\n%s", after)
	}
	if got := inst.hbaLines(); !slices.Equal(got, reject) {
		t.Fatalf("a refused list became the one in effect: %q", got)
	}
	rejected("after the refused reload")

	// A list of the wrong shape is refused before anything is touched.
	if _, err := inst.ReloadHBA(ctx, []string{"hots all all 0.0.0.0/0 md5"}); err == nil || !strings.Contains(err.Error(), "not a pg_hba.conf line kind") {
		t.Fatalf("a malformed line: %v", err)
	}

	msg, err = inst.ReloadHBA(ctx, allow)
	if err != nil || !strings.Contains(msg, "loaded by PostgreSQL") {
		t.Fatalf("reload to allow: %q, %v", msg, err)
	}
	if err := overTCP(); err != nil {
		t.Fatalf("after allowing again: %v", err)
	}

	// Down: the list waits for the start.
	if err := inst.Stop(ctx, Fast); err != nil {
		t.Fatal(err)
	}
	msg, err = inst.ReloadHBA(ctx, reject)
	if err != nil || !strings.Contains(msg, "not running") {
		t.Fatalf("reload while stopped: %q, %v", msg, err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	rejected("after a start")

	// Unset: the file is the operator's again and stays as it is.
	if msg, err := inst.ReloadHBA(ctx, nil); err != nil || !strings.Contains(msg, "left as it is") {
		t.Fatalf("unset: %q, %v", msg, err)
	}
	if after, _ := os.ReadFile(hbaPath); !strings.Contains(string(after), "reject") {
		t.Fatalf("unsetting the list changed pg_hba.conf:\n%s", after)
	}
}

// hbaServer starts a PostgreSQL whose postgresql.pg_hba is local (nil: none) and returns ways
// to log in over TCP, which pg_hba.conf's host lines decide.
func hbaServer(t *testing.T, local []string) (ctx context.Context, inst *Instance, overTCP func() error, rejected func(string)) {
	t.Helper()
	ctx, inst, port := startTestServer(t, Config{Password: "s3cret", PgHBA: local})
	overTCP = func() error {
		c, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=s3cret dbname=postgres sslmode=disable", port))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	rejected = func(when string) {
		t.Helper()
		var pgErr *pgconn.PgError
		if err := overTCP(); !errors.As(err, &pgErr) || pgErr.Code != "28000" {
			t.Fatalf("%s: a login over TCP: %v, want 28000 from pg_hba.conf", when, err)
		}
	}
	return ctx, inst, overTCP, rejected
}

// The cluster-wide list applies where the node has no list of its own; a node's own list takes
// precedence while it has one; lines PostgreSQL refuses are refused for good
// (ha.ErrHBARefused) and change nothing.
func TestClusterHBA(t *testing.T) {
	ctx, inst, overTCP, rejected := hbaServer(t, nil)
	if err := overTCP(); err != nil {
		t.Fatalf("initdb's pg_hba.conf: %v", err)
	}
	reject := []string{"host all all 127.0.0.1/32 reject"}
	outcome, local, err := inst.ApplyClusterHBA(ctx, reject)
	if err != nil || local || !strings.Contains(outcome, "loaded by PostgreSQL") {
		t.Fatalf("cluster list: %q %v %v", outcome, local, err)
	}
	rejected("the cluster-wide list")

	allow := []string{"host all all 127.0.0.1/32 scram-sha-256"}
	if _, err := inst.ReloadHBA(ctx, allow); err != nil {
		t.Fatal(err)
	}
	if err := overTCP(); err != nil {
		t.Fatalf("the node's own list over the cluster's: %v", err)
	}
	reject2 := []string{"host all postgres 127.0.0.1/32 reject", "host all all 127.0.0.1/32 scram-sha-256"}
	outcome, local, err = inst.ApplyClusterHBA(ctx, reject2)
	if err != nil || !local || !strings.Contains(outcome, "takes precedence") {
		t.Fatalf("cluster list under a local one: %q %v %v", outcome, local, err)
	}
	if err := overTCP(); err != nil {
		t.Fatalf("a new cluster list changed the file of a node with its own: %v", err)
	}
	// The node's own list goes: the cluster's applies.
	if outcome, err := inst.ReloadHBA(ctx, nil); err != nil || !strings.Contains(outcome, "loaded by PostgreSQL") {
		t.Fatalf("removing the local list: %q %v", outcome, err)
	}
	rejected("the cluster-wide list after the local one went")

	_, _, err = inst.ApplyClusterHBA(ctx, []string{"host all all 127.0.0.1/33 scram-sha-256"})
	if !errors.Is(err, ha.ErrHBARefused) || !strings.Contains(err.Error(), "the cluster-wide pg_hba[0]: invalid") {
		t.Fatalf("a line PostgreSQL refuses: %v", err)
	}
	if got := inst.hbaLines(); !slices.Equal(got, reject2) {
		t.Fatalf("a refused cluster list became the one in effect: %q", got)
	}
	rejected("after the refused cluster list")
	if _, _, err := inst.ApplyClusterHBA(ctx, []string{"hots all all 0/0 md5"}); !errors.Is(err, ha.ErrHBARefused) {
		t.Fatalf("a malformed line: %v", err)
	}
}

// pgbastion started again with a pg_hba list PostgreSQL refuses, its PostgreSQL still running:
// the list is checked as a reload's is and refused, the file keeps its lines, and the next
// start of PostgreSQL does not write the refused list (which would stop it from starting).
func TestSyncHBANeverWritesARefusedList(t *testing.T) {
	allow := []string{"host all all 127.0.0.1/32 scram-sha-256"}
	ctx, inst, overTCP, _ := hbaServer(t, allow)
	hbaPath := filepath.Join(inst.cfg.DataDir, "pg_hba.conf")
	before, _ := os.ReadFile(hbaPath)
	bad := []string{"host all all 127.0.0.1/33 scram-sha-256"}
	inst.hbaMu.Lock()
	inst.hba.local = bad // as read from the file at the new start
	inst.hbaMu.Unlock()
	if err := inst.SyncHBA(ctx); !errors.Is(err, ha.ErrHBARefused) || !strings.Contains(err.Error(), "postgresql.pg_hba[0]: invalid") {
		t.Fatalf("SyncHBA with a refused list: %v", err)
	}
	if after, _ := os.ReadFile(hbaPath); string(after) != string(before) {
		t.Fatalf("the refused list reached pg_hba.conf:\n%s", after)
	}
	if err := inst.Stop(ctx, Fast); err != nil {
		t.Fatal(err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatalf("PostgreSQL does not start again: %v", err)
	}
	if err := overTCP(); err != nil {
		t.Fatalf("after the start: %v", err)
	}
}

// startTestServer initialises and starts a PostgreSQL of cfg (its data directory, host, port
// and superuser filled in) on a free port, stopped when the test ends.
func startTestServer(t *testing.T, cfg Config) (context.Context, *Instance, int) {
	t.Helper()
	if _, err := FindBinDir(); err != nil {
		t.Skip(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg.DataDir, cfg.Host, cfg.Port, cfg.Superuser = filepath.Join(openDir(t), "data"), "127.0.0.1", port, "postgres"
	inst, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	if err := inst.InitDB(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Stop(context.Background(), Fast) })
	return ctx, inst, port
}

// postgresql.pg_ident: written at start and at a reload, checked by PostgreSQL
// (pg_ident_file_mappings) as pg_hba is; a line PostgreSQL refuses (a bad regular
// expression) changes nothing, now nor at a later start.
func TestReloadIdent(t *testing.T) {
	ctx, inst, _ := startTestServer(t, Config{Password: "s3cret", PgIdent: []string{"ops  alice  app_admin"}})
	mappings := func() string {
		t.Helper()
		conn, err := inst.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		r := conn.ExecParams(ctx, `SELECT coalesce(string_agg(map_name || ' ' || sys_name || ' ' || pg_username, '; ' ORDER BY line_number), '')
			FROM pg_ident_file_mappings WHERE error IS NULL`, nil, nil, nil, nil).Read()
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return string(r.Rows[0][0])
	}
	if got := mappings(); got != "ops alice app_admin" {
		t.Fatalf("pg_ident.conf at start: %q", got)
	}
	outcome, err := inst.ReloadIdent(ctx, []string{"ops alice app_admin", `ops /^(.*)@corp$ \1`})
	if err != nil || !strings.Contains(outcome, "loaded by PostgreSQL") {
		t.Fatalf("reload: %q %v", outcome, err)
	}
	if got := mappings(); got != `ops alice app_admin; ops /^(.*)@corp$ \1` {
		t.Fatalf("after the reload: %q", got)
	}
	path := filepath.Join(inst.cfg.DataDir, "pg_ident.conf")
	before, _ := os.ReadFile(path)
	bad := []string{`ops /(( app_admin`}
	_, err = inst.ReloadIdent(ctx, bad)
	if !errors.Is(err, ha.ErrHBARefused) || !strings.Contains(err.Error(), "postgresql.pg_ident[0]: invalid regular expression") {
		t.Fatalf("a line PostgreSQL refuses: %v", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatalf("the refused list reached pg_ident.conf:\n%s", after)
	}
	if _, err := inst.ReloadIdent(ctx, []string{"ops alice"}); err == nil || !strings.Contains(err.Error(), "needs three fields") {
		t.Fatalf("a line of two fields: %v", err)
	}
	// The refused list, set again as if read at a new pgbastion start, is not written before
	// PostgreSQL starts.
	inst.hbaMu.Lock()
	inst.ident.local = bad
	inst.hbaMu.Unlock()
	if err := inst.Stop(ctx, Fast); err != nil {
		t.Fatal(err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatalf("PostgreSQL does not start again: %v", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatalf("the refused list was written at the start:\n%s", after)
	}
}
