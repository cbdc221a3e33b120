package pgctl

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// openDir returns a new directory that the PostgreSQL OS user can enter (the methods run as
// that user when the tests run as root).
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgctl-replica-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCreateReplicaTriesTheMethodsInOrder(t *testing.T) {
	if _, err := FindBinDir(); err != nil {
		t.Skip(err)
	}
	dir := openDir(t)
	record := filepath.Join(dir, "record")
	if err := os.WriteFile(record, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(record, 0o666)
	failing := writeScript(t, dir, "failing", `echo "no backup for stanza main" >&2; exit 3`)
	empty := writeScript(t, dir, "empty", `exit 0`)
	// A restore: writes a data directory, and records its arguments and the password.
	good := writeScript(t, dir, "restore", `
datadir=""
for a in "$@"; do case "$a" in --datadir=*) datadir="${a#--datadir=}";; esac; done
echo "$*" >> `+record+`
echo "PGPASSWORD=$PGPASSWORD" >> `+record+`
test -e "$datadir/old-file" && echo "kept old-file" >> `+record+`
echo 15 > "$datadir/PG_VERSION"
echo "# restored" > "$datadir/postgresql.conf"`)
	cfg := Config{DataDir: filepath.Join(dir, "data"), Port: 5999, Superuser: "postgres", ReplicationUser: "repl",
		ReplicationPassword: "s3cret", Scope: "main",
		ReplicaMethods: []ReplicaMethod{
			{Name: "failing", Command: failing},
			{Name: "empty", Command: empty},
			{Name: "pgbackrest", Command: good + " --stanza=main --delta restore", KeepData: true},
		}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	inst, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// A file in the old directory: the methods that do not keep data start without it.
	if err := inst.mkdirOwned(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := inst.writeOwned(filepath.Join(cfg.DataDir, "old-file"), nil); err != nil {
		t.Fatal(err)
	}
	if err := inst.CreateReplica(context.Background(), "10.0.0.1", 5432, "db2", "db2"); err != nil {
		t.Fatalf("CreateReplica: %v\n%s", err, logs.String())
	}
	rec, _ := os.ReadFile(record)
	want := "--stanza=main --delta restore --scope=main --datadir=" + cfg.DataDir +
		" --role=replica --connstring=host=10.0.0.1 port=5432 user=repl application_name=db2\nPGPASSWORD=s3cret\n"
	if !strings.HasPrefix(string(rec), want) {
		t.Errorf("the restore ran with:\n%s\nwant\n%s", rec, want)
	}
	// The restore ran in the directory the empty method had started afresh.
	if strings.Contains(string(rec), "kept old-file") {
		t.Errorf("the old file survived a method without keep_data:\n%s", rec)
	}
	conf, _ := os.ReadFile(filepath.Join(cfg.DataDir, "postgresql.conf"))
	if !strings.Contains(string(conf), "include_if_exists = 'postgresql.pgbastion.conf'") {
		t.Errorf("PGBastion's settings are not included:\n%s", conf)
	}
	out := logs.String()
	for _, w := range []string{"method=failing next=empty", "no backup for stanza main", "method=empty next=pgbackrest",
		"left no PostgreSQL data directory", `msg="replica data directory created" method=pgbackrest`} {
		if !strings.Contains(out, w) {
			t.Errorf("the log does not say %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "s3cret") {
		t.Errorf("the log shows the password:\n%s", out)
	}

	// keep_data alone: the old directory is there for the restore (pgBackRest --delta).
	if err := inst.writeOwned(filepath.Join(cfg.DataDir, "old-file"), nil); err != nil {
		t.Fatal(err)
	}
	inst.cfg.ReplicaMethods = cfg.ReplicaMethods[2:]
	if err := inst.CreateReplica(context.Background(), "10.0.0.1", 5432, "db2", "db2"); err != nil {
		t.Fatal(err)
	}
	if rec, _ := os.ReadFile(record); !strings.HasSuffix(string(rec), "kept old-file\n") {
		t.Errorf("keep_data: the restore did not find the old directory:\n%s", rec)
	}

	// When every method fails, the error names each.
	inst.cfg.ReplicaMethods = cfg.ReplicaMethods[:2]
	err = inst.CreateReplica(context.Background(), "10.0.0.1", 5432, "db2", "db2")
	if err == nil || !strings.Contains(err.Error(), "no replica creation method succeeded") ||
		!strings.Contains(err.Error(), "method failing:") || !strings.Contains(err.Error(), "method empty:") {
		t.Fatalf("all failed: %v", err)
	}
}

func TestReplicaMethodValidation(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	_ = os.WriteFile(plain, nil, 0o644)
	for _, tc := range []struct {
		ms   []ReplicaMethod
		want string
	}{
		{[]ReplicaMethod{{Command: "/bin/true"}}, "replica_methods[0].name: required"},
		{[]ReplicaMethod{{Name: "basebackup"}, {Name: "basebackup"}}, `"basebackup" is listed twice`},
		{[]ReplicaMethod{{Name: "basebackup", Command: "/bin/true"}}, "basebackup is built in"},
		{[]ReplicaMethod{{Name: "wal-g"}}, `command: required for method "wal-g"`},
		{[]ReplicaMethod{{Name: "wal-g", Command: "wal-g backup-fetch"}}, `"wal-g" must be an absolute path`},
		{[]ReplicaMethod{{Name: "x", Command: plain}}, "is not an executable file"},
	} {
		err := validateReplicaMethods(tc.ms)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.ms, err, tc.want)
		}
	}
	if err := validateReplicaMethods([]ReplicaMethod{{Name: "r", Command: "/bin/true --x"}, {Name: "basebackup"}}); err != nil {
		t.Errorf("valid methods: %v", err)
	}
}
