package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// pgCertFiles copies the test CA's server certificate and key where PostgreSQL (the postgres
// OS user) can read them, and returns their paths.
func pgCertFiles(t *testing.T, certs *pgtest.CertSet) (cert, key string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgbastion-pgtls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	uid, gid := -1, -1
	if u, err := user.Lookup("postgres"); err == nil {
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	for src, dst := range map[string]string{certs.ServerCert: "server.crt", certs.ServerKey: "server.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, dst)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(path, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
}

// directTLS connects to n's PostgreSQL over TCP with the given sslmode.
func directTLS(ctx context.Context, n *Node, sslmode string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=%s connect_timeout=5",
		n.PGPort, n.c.Password, sslmode))
}

// TestTLSOnlyCluster: a cluster whose PostgreSQL servers accept TCP connections only over TLS
// (postgresql.pg_hba of hostssl lines, ssl on). Replicas clone and stream over TLS, every
// node's proxy reaches the primary over TLS with the certificate verified
// (proxy.server.tls.mode verify-full), and after a switchover the old primary rejoins as a
// standby over TLS, keeping its data directory, and the new primary enforces the same
// pg_hba.conf. (A switchover needs no pg_rewind; TestRejoinThroughRewind covers that, in
// plaintext.)
func TestTLSOnlyCluster(t *testing.T) {
	certs := pgtest.Certs(t)
	cert, key := pgCertFiles(t, certs)
	ca := filepath.Join(filepath.Dir(cert), "ca.crt")
	b, err := os.ReadFile(certs.CACert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, b, 0o644); err != nil {
		t.Fatal(err)
	}
	c := Start(t, Options{
		Parameters:      map[string]string{"ssl": "on", "ssl_cert_file": cert, "ssl_key_file": key},
		PostgreSQLExtra: `pg_hba: ["hostssl all all 127.0.0.1/32 scram-sha-256", "hostssl replication all 127.0.0.1/32 scram-sha-256"]`,
		ServerExtra:     fmt.Sprintf("tls: {mode: verify-full, ca: %s}", ca),
	})
	replLogsOnFailure(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	checkTLSOnly := func(p *Node) {
		t.Helper()
		// Plain TCP is refused by pg_hba.conf, on every node.
		for _, n := range c.Nodes {
			_, err := directTLS(ctx, n, "disable")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Message, "no encryption") {
				t.Fatalf("%s over plain TCP: %v, want 28000 no pg_hba.conf entry … no encryption", n.Name, err)
			}
		}
		// Both replicas stream over TLS.
		replAwait(t, time.Minute, "both replicas streaming from "+p.Name+" over TLS", func() (bool, string) {
			conn, err := directTLS(ctx, p, "require")
			if err != nil {
				return false, err.Error()
			}
			defer conn.Close(context.Background())
			var total, ssl int
			err = conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE s.ssl)
				FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.state = 'streaming'`).Scan(&total, &ssl)
			return err == nil && total == 2 && ssl == 2, fmt.Sprintf("%d streaming, %d over TLS, %v", total, ssl, err)
		})
		// Every node's proxy reaches the primary over TLS.
		for _, n := range c.Nodes {
			conn, err := c.Connect(ctx, n.RW)
			if err != nil {
				t.Fatalf("through %s: %v", n.Name, err)
			}
			var ssl bool
			var port int
			err = conn.QueryRow(ctx, "SELECT ssl, current_setting('port')::int FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &port)
			conn.Close(context.Background())
			if err != nil || !ssl || port != p.PGPort {
				t.Fatalf("through %s: ssl %v on port %d (primary %d): %v", n.Name, ssl, port, p.PGPort, err)
			}
		}
	}
	checkTLSOnly(primary)

	var candidate *Node
	for _, n := range c.Others(primary) {
		candidate = n
		break
	}
	c.Switchover(t, candidate.Name)
	newPrimary := c.WaitPrimaryOtherThan(t, primary, time.Minute)
	c.WaitRejoined(t, primary, 2*time.Minute)
	c.WaitOneWritablePrimary(time.Minute)
	checkTLSOnly(newPrimary)
	if log := primary.D.Log(); strings.Contains(log, "re-cloning") || strings.Contains(log, "pg_rewind failed") {
		t.Fatalf("the old primary was re-cloned or failed to rewind over TLS:\n%s", primary.D.LogTail())
	}

	// pg_hba is reloadable: every file lets plain TCP in for ordinary logins, and one node's
	// list also has a line PostgreSQL refuses. ctl reload --cluster applies the list on two
	// nodes at once; the third refuses its file, naming the line, and keeps its pg_hba.conf.
	bad := c.Nodes[2]
	for _, n := range c.Nodes {
		b, err := os.ReadFile(n.D.ConfigPath())
		if err != nil {
			t.Fatal(err)
		}
		add := `"hostnossl all all 127.0.0.1/32 scram-sha-256", `
		if n == bad {
			add = `"host all all 127.0.0.1/33 scram-sha-256", ` + add
		}
		text := strings.Replace(string(b), `pg_hba: [`, `pg_hba: [`+add, 1)
		if text == string(b) {
			t.Fatalf("%s's configuration has no pg_hba list:\n%s", n.Name, b)
		}
		if err := os.WriteFile(n.D.ConfigPath(), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(daemon.Binary(t), "ctl", "--api", "http://"+newPrimary.API, "--token", c.Token, "reload", "--cluster").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "postgresql.pg_hba[0]: invalid") || !strings.Contains(string(out), "2 members reloaded their configuration file; 1 refused theirs") {
		t.Fatalf("ctl reload --cluster with one bad pg_hba list: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		conn, err := directTLS(ctx, n, "disable")
		if n == bad {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28000" {
				t.Fatalf("%s, whose list was refused, over plain TCP: %v, want 28000 still", n.Name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s over plain TCP after the reload: %v", n.Name, err)
		}
		conn.Close(context.Background())
	}
}
