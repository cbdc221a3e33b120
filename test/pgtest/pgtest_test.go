package pgtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// recTB records Skip and Fatal instead of acting on them.
type recTB struct {
	testing.TB
	skipped, failed string
}

func (r *recTB) Helper()                           {}
func (r *recTB) Skip(args ...any)                  { r.skipped = fmt.Sprint(args...) }
func (r *recTB) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func TestSkipBecomesFailureInCI(t *testing.T) {
	missing := func() error { return errors.New("no frobnicator") }
	present := func() error { return nil }

	t.Setenv("CI", "")
	r := &recTB{TB: t}
	Require(r, present, missing)
	if !strings.Contains(r.skipped, "no frobnicator") || r.failed != "" {
		t.Fatalf("outside CI: skipped=%q failed=%q, want a skip naming the reason", r.skipped, r.failed)
	}

	t.Setenv("CI", "true")
	r = &recTB{TB: t}
	Require(r, missing)
	if !strings.Contains(r.failed, "no frobnicator") || r.skipped != "" {
		t.Fatalf("in CI: skipped=%q failed=%q, want a failure naming the reason", r.skipped, r.failed)
	}

	r = &recTB{TB: t}
	Require(r, present)
	if r.failed != "" || r.skipped != "" {
		t.Fatalf("all present: skipped=%q failed=%q", r.skipped, r.failed)
	}
}

func TestBinDir(t *testing.T) {
	t.Setenv("PG_BINDIR", t.TempDir())
	if _, err := BinDir(); err == nil {
		t.Fatal("PG_BINDIR without a postgres binary accepted")
	}
	t.Setenv("PG_BINDIR", "")
	Require(t, PostgreSQL())
	dir, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir + "/postgres"); err != nil {
		t.Fatal(err)
	}
}

func TestPrimaryAndReplica(t *testing.T) {
	begin := time.Now()
	p := Start(t, nil)
	t.Logf("primary ready in %v on %s", time.Since(begin), p.Addr())
	t.Cleanup(func() { p.Exec(t, "SELECT 1") }) // helpers work in cleanups (t.Context is done)
	if p.InRecovery(t) {
		t.Fatal("primary is in recovery")
	}
	if got := p.QueryString(t, "SHOW data_checksums"); got != "on" {
		t.Fatalf("data_checksums = %q, want on (pg_rewind needs it)", got)
	}
	p.Exec(t, "CREATE TABLE t (v int)")
	p.Exec(t, "INSERT INTO t VALUES (1)")

	begin = time.Now()
	r := p.AddReplica(t, &ReplicaOptions{Slot: "r1"})
	t.Logf("replica streaming in %v on %s", time.Since(begin), r.Addr())
	if r.Port() == p.Port() {
		t.Fatal("replica shares the primary's port")
	}
	if !r.InRecovery(t) {
		t.Fatal("replica is not in recovery")
	}
	if got := p.QueryString(t, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'r1'"); got != "true" {
		t.Fatalf("slot r1 active = %q", got)
	}
	p.Exec(t, "INSERT INTO t VALUES (2)")
	r.WaitCatchUp(t)
	if got := r.QueryString(t, "SELECT sum(v)::text FROM t"); got != "3" {
		t.Fatalf("replica sum = %q, want 3", got)
	}
	err := r.TryExec(t.Context(), "INSERT INTO t VALUES (3)")
	if code := sqlstate(err); code != "25006" {
		t.Fatalf("write on replica: %v (SQLSTATE %q), want 25006", err, code)
	}
}

func TestKillAndRestart(t *testing.T) {
	p := Start(t, nil)
	p.Exec(t, "CREATE TABLE t AS SELECT 42 AS v")
	conn := p.Conn(t) // a backend that outlives the postmaster for a moment
	oldPID := p.PID()
	done := p.Done()

	p.Kill(t)
	select {
	case <-done:
	default:
		t.Fatal("Done not closed after Kill")
	}
	if p.Running() || p.PID() != 0 {
		t.Fatal("instance still reported running after Kill")
	}
	if err := p.TryExec(t.Context(), "SELECT 1"); err == nil {
		t.Fatal("connected to a killed server")
	}
	if _, err := conn.Exec(t.Context(), "SELECT 1"); err == nil {
		// The backend may still answer until it notices; it must not survive the restart.
		t.Log("backend answered after postmaster kill")
	}

	p.Start(t)
	if p.PID() == oldPID {
		t.Fatal("same postmaster pid after restart")
	}
	for _, pid := range dirProcs(p.DataDir()) {
		if pid == oldPID {
			t.Fatalf("killed postmaster %d still alive", oldPID)
		}
	}
	if got := p.QueryString(t, "SELECT v::text FROM t"); got != "42" {
		t.Fatalf("after crash restart v = %q", got)
	}

	for _, mode := range []StopMode{Smart, Fast, Immediate} {
		if mode == Smart {
			_ = conn.Close(t.Context()) // smart waits for clients
		}
		p.Stop(t, mode)
		if p.Running() {
			t.Fatalf("running after Stop(%d)", mode)
		}
		p.Start(t)
	}
	p.Restart(t)
	if got := p.QueryString(t, "SELECT v::text FROM t"); got != "42" {
		t.Fatalf("after restarts v = %q", got)
	}
}

func TestFailoverPromoteRewind(t *testing.T) {
	p := Start(t, nil)
	r := p.AddReplica(t, nil)
	p.Exec(t, "CREATE TABLE t (v text)")
	p.Exec(t, "INSERT INTO t VALUES ('before')")
	r.WaitCatchUp(t)

	p.Kill(t)
	r.Promote(t)
	if r.InRecovery(t) {
		t.Fatal("promoted replica still in recovery")
	}
	r.Exec(t, "INSERT INTO t VALUES ('after')")

	p.Rewind(t, r)
	if !p.InRecovery(t) {
		t.Fatal("rewound old primary is not a standby")
	}
	p.WaitCatchUp(t)
	if got := p.QueryString(t, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); got != "after,before" {
		t.Fatalf("old primary after rewind sees %q", got)
	}
}

func TestNoLeakedProcesses(t *testing.T) {
	var dirs []string
	t.Run("cluster", func(t *testing.T) {
		p := Start(t, nil)
		r := p.AddReplica(t, nil)
		p.Conn(t)
		r.Conn(t)
		for _, in := range []*Instance{p, r} {
			dirs = append(dirs, in.DataDir())
			if procs := dirProcs(in.DataDir()); len(procs) < 3 || !slices.Contains(procs, in.PID()) {
				t.Fatalf("%s: processes %v, want the postmaster %d and its children", in.Name(), procs, in.PID())
			}
		}
		r.Kill(t) // leaves orphaned backends for the cleanup to find
	})
	for _, d := range dirs {
		if procs := dirProcs(d); len(procs) != 0 {
			t.Errorf("processes %v of %s still alive after cleanup", procs, d)
		}
		if _, err := os.Stat(filepath.Dir(d)); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", d, err)
		}
	}
}

func TestAuthMethods(t *testing.T) {
	p := Start(t, &Options{Auth: SCRAM, SuperuserPassword: "s3cret'x", Roles: []Role{
		{Name: "md5user", Password: "md5pw", Auth: MD5},
		{Name: "scramuser", Password: "scrampw"},
		{Name: "trustuser", Auth: Trust},
	}})
	p.AddRole(t, Role{Name: "clear", Password: "clearpw", Auth: Password})
	ctx := t.Context()
	try := func(user, pw string) error {
		c, err := pgx.Connect(ctx, p.ConnStringFor(user, pw, "postgres"))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	for _, c := range []struct{ user, pw string }{
		{Superuser, "s3cret'x"}, {"md5user", "md5pw"}, {"scramuser", "scrampw"},
		{"trustuser", ""}, {"clear", "clearpw"},
	} {
		if err := try(c.user, c.pw); err != nil {
			t.Errorf("%s with the right password: %v", c.user, err)
		}
	}
	for _, user := range []string{Superuser, "md5user", "scramuser", "clear"} {
		if code := sqlstate(try(user, "wrong")); code != "28P01" {
			t.Errorf("%s with a wrong password: SQLSTATE %q, want 28P01", user, code)
		}
	}
	if got := p.QueryString(t, "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'md5user'"); got != "md5" {
		t.Errorf("md5user secret starts %q, want an md5 secret", got)
	}
	if got := p.QueryString(t, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'scramuser'"); got != "SCRAM-SHA-256$" {
		t.Errorf("scramuser secret starts %q, want a SCRAM secret", got)
	}
	// Replicas inherit the hba lines and the superuser password.
	r := p.AddReplica(t, nil)
	if err := func() error {
		c, err := pgx.Connect(ctx, r.ConnStringFor("md5user", "md5pw", "postgres"))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}(); err != nil {
		t.Errorf("md5user on replica: %v", err)
	}
}

func TestCerts(t *testing.T) {
	c := Certs(t)
	handshake := func(srv, cli *tls.Config) (error, error) {
		// Real sockets: net.Pipe is unbuffered and deadlocks when one side aborts mid-flight.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		errc := make(chan error, 1)
		go func() {
			a, err := l.Accept()
			if err != nil {
				errc <- err
				return
			}
			defer a.Close()
			_ = a.SetDeadline(time.Now().Add(10 * time.Second))
			errc <- tls.Server(a, srv).Handshake()
		}()
		b, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = b.SetDeadline(time.Now().Add(10 * time.Second))
		cerr := tls.Client(b, cli).Handshake()
		b.Close() // a TLS 1.3 server rejects the client certificate after the client finished
		return <-errc, cerr
	}
	if serr, cerr := handshake(c.ServerTLS(t, true), c.ClientTLS(t)); serr != nil || cerr != nil {
		t.Fatalf("mTLS with matching CA: server %v, client %v", serr, cerr)
	}
	other := c.ClientTLS(t)
	otherCert, err := tls.LoadX509KeyPair(c.OtherClientCert, c.OtherClientKey)
	if err != nil {
		t.Fatal(err)
	}
	other.Certificates = []tls.Certificate{otherCert}
	if serr, _ := handshake(c.ServerTLS(t, true), other); serr == nil {
		t.Fatal("server accepted a client certificate from the other CA")
	}
	distrust := c.ClientTLS(t)
	distrust.RootCAs = c.pool(t, c.OtherCACert)
	if _, cerr := handshake(c.ServerTLS(t, false), distrust); cerr == nil {
		t.Fatal("client trusting only the other CA accepted the server")
	}

	// PostgreSQL serves the same certificate.
	p := Start(t, &Options{TLS: c})
	conn, err := pgx.Connect(t.Context(), p.ConnString()+
		" sslmode=verify-full sslrootcert="+c.CACert)
	if err != nil {
		t.Fatalf("verify-full to PostgreSQL: %v", err)
	}
	defer conn.Close(context.Background())
	var ssl bool
	if err := conn.QueryRow(t.Context(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("connection not encrypted: ssl=%v err=%v", ssl, err)
	}
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
