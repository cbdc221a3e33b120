package pgctl

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestConninfoCarriesAnyPassword: the replication connection string reads back (by pgconn's
// libpq-compatible parser) with the user, password and application name exactly as
// configured, whatever characters they hold; and redact hides the whole password.
func TestConninfoCarriesAnyPassword(t *testing.T) {
	for _, pw := range []string{"plain", "pg secret: #1", "it's", `back\slash`, "", `a'b\c d`, "tab\there", "x=y"} {
		inst := &Instance{cfg: Config{ReplicationUser: "rep user", ReplicationPassword: pw}}
		ci := inst.Conninfo("10.0.0.1", 5434, "node 2")
		cfg, err := pgconn.ParseConfig(ci)
		if err != nil {
			t.Fatalf("password %q: %q does not parse: %v", pw, ci, err)
		}
		if cfg.Password != pw || cfg.User != "rep user" || cfg.RuntimeParams["application_name"] != "node 2" || cfg.Host != "10.0.0.1" || cfg.Port != 5434 {
			t.Fatalf("password %q: %q parses as user %q password %q app %q", pw, ci, cfg.User, cfg.Password, cfg.RuntimeParams["application_name"])
		}
		red := strings.Join(redact([]string{"-d", ci}), " ")
		if pw != "" && strings.Contains(red, pw) || !strings.Contains(red, "password=******") || !strings.Contains(red, "application_name=") {
			t.Fatalf("password %q: redacted %q", pw, red)
		}
	}
}

// TestConfString: a postgresql.conf string value doubles quotes and backslashes.
func TestConfString(t *testing.T) {
	if got, want := confString(`a'b\c`), `'a''b\\c'`; got != want {
		t.Fatalf("confString: %s, want %s", got, want)
	}
}
