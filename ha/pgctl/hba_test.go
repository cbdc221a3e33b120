package pgctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	inst.cfg.PgHBA = []string{"hostssl all all 10.0.0.0/8 scram-sha-256", "  hostssl replication all 10.0.0.0/8 scram-sha-256 "}
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
