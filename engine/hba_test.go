package engine_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pgwire/auth"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestHBAChoosesTheMethod: with proxy.auth.method hba each client gets the method of the first
// hba_file line that matches it — reject, trust, cert (the client certificate's common name is
// the user), scram-sha-256, md5 — and no line at all refuses it with PostgreSQL's words. A
// reload reads the file again.
func TestHBAChoosesTheMethod(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	certs := pgtest.Certs(t)
	dir := t.TempDir()
	hbaPath, users := filepath.Join(dir, "hba.conf"), filepath.Join(dir, "userlist.txt")
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(users, `"alice" "alice-pw"`+"\n"+`"bob" "bob-pw"`+"\n")
	write(hbaPath, `# first match wins
host      all  rejectme  127.0.0.1/32  reject
host      all  trusted   127.0.0.1/32  trust
hostssl   all  postgres  127.0.0.1/32  cert
host      all  alice     127.0.0.1/32  scram-sha-256
host      all  bob       127.0.0.0 255.0.0.0  md5
host      all  all       10.0.0.0/8    md5
`)
	v, userlist := hbaVerifier(t, users)
	p := startProxyWith(t, func(c *engine.Config) {
		c.Auth = engine.AuthConfig{Method: "hba", HBAFile: hbaPath, AuthFile: users}
		c.TLS = engine.TLSConfig{Mode: "prefer", Cert: certs.ServerCert, Key: certs.ServerKey, CA: certs.CACert}
	}, engine.Options{Auth: v, Secrets: userlist}, primary)
	host, port, _ := net.SplitHostPort(p.rw)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	try := func(user, password string, extra ...string) error {
		dsn := "host=" + host + " port=" + port + " user=" + user + " password='" + password + "' dbname=postgres " +
			strings.Join(append([]string{"sslmode=disable"}, extra...), " ")
		c, err := pgx.Connect(ctx, dsn)
		if err == nil {
			var one int
			err = c.QueryRow(ctx, "SELECT 1").Scan(&one)
			c.Close(ctx)
		}
		return err
	}
	state := func(err error) (string, string) {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return pe.Code, pe.Message
		}
		return "", ""
	}
	for _, c := range []struct {
		user, password string
		extra          []string
		code, msg      string
	}{
		{"rejectme", "x", nil, pgwire.InvalidAuthorization, `proxy.auth.hba_file rejects connection for host "127.0.0.1", user "rejectme", database "postgres", SSL off (line 2)`},
		{"trusted", "", nil, "", ""},
		{"alice", "alice-pw", nil, "", ""},
		{"alice", "wrong", nil, pgwire.InvalidPassword, ""},
		{"bob", "bob-pw", nil, "", ""},
		{"mallory", "x", nil, pgwire.InvalidAuthorization, `no proxy.auth.hba_file entry for host "127.0.0.1", user "mallory", database "postgres", SSL off`},
		// postgres has a hostssl cert line: over TLS with the certificate (CN=postgres) it is in;
		// over TLS without one it is refused; without TLS no line matches.
		{"postgres", "", []string{"sslmode=require", "sslcert=" + certs.ClientCert, "sslkey=" + certs.ClientKey}, "", ""},
		{"postgres", "", []string{"sslmode=require"}, pgwire.InvalidAuthorization, `certificate authentication failed for user "postgres"`},
		{"postgres", "", nil, pgwire.InvalidAuthorization, `no proxy.auth.hba_file entry for host "127.0.0.1", user "postgres", database "postgres", SSL off`},
	} {
		err := try(c.user, c.password, c.extra...)
		code, msg := state(err)
		if code != c.code || c.msg != "" && msg != c.msg || c.code == "" && err != nil {
			t.Errorf("%s %v: %v, want SQLSTATE %q %q", c.user, c.extra, err, c.code, c.msg)
		}
	}
	// Reload: alice is now rejected, trusted needs a password it does not have.
	write(hbaPath, "host all alice 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 md5\n")
	if _, err := p.e.Reload(p.cfg, v, userlist); err != nil {
		t.Fatal(err)
	}
	if code, _ := state(try("alice", "alice-pw")); code != pgwire.InvalidAuthorization {
		t.Errorf("alice after the reload: %s, want 28000", code)
	}
	if code, _ := state(try("trusted", "")); code != pgwire.InvalidPassword {
		t.Errorf("trusted after the reload: %s, want 28P01", code)
	}
	if err := try("bob", "bob-pw"); err != nil {
		t.Errorf("bob after the reload: %v", err)
	}
	// A file that does not parse is refused and changes nothing.
	write(hbaPath, "host all all samenet trust\n")
	if _, err := p.e.Reload(p.cfg, v, userlist); err == nil || !strings.Contains(err.Error(), "hba.conf:1: samenet is not supported") {
		t.Errorf("reload of a bad file: %v", err)
	}
	if err := try("bob", "bob-pw"); err != nil {
		t.Errorf("bob after a refused reload: %v", err)
	}
}

// hbaVerifier is what the daemon builds for proxy.auth.method hba: the auth_file's secrets
// and a verifier that looks each client's up (the hba_file picks the method per client).
func hbaVerifier(t *testing.T, authFile string) (*auth.Verifier, auth.Secrets) {
	t.Helper()
	userlist, err := auth.LoadUserlist(authFile)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Method: auth.MethodSCRAM, Secrets: userlist, HideUnknownUsers: true, LookupByCaller: true})
	if err != nil {
		t.Fatal(err)
	}
	return v, userlist
}
