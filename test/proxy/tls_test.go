package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestTLS (issue 2, done-when 2): with proxy.tls.mode require and certificates made by the
// test, psql connects through both ports with sslmode=require and verify-full (by name and by
// IP address, both in the certificate) and its connection is encrypted; verify-full against
// another CA fails; a plaintext client is refused with SQLSTATE 28000 and a message that says
// why; a client that sends plaintext right after SSLRequest, before reading the answer, is
// refused. In transaction mode, pgx clients with sslmode=require share a pool of two server
// connections, and a query of theirs is cancelled over TLS within 1 s.
func TestTLS(t *testing.T) {
	t.Parallel()
	psql := pgtest.Program(t, "psql")
	certs := pgtest.Certs(t)
	c := newCluster(t, nil)
	// The transaction-mode clients use a database of their own, so that the server
	// connections of their pool can be told apart from every other.
	c.primary.Exec(t, "CREATE DATABASE tls_txn")
	execIn(t, c.primary, "tls_txn", "CREATE TABLE tls_rows (client int, n int)")
	c.replica.WaitCatchUp(t)
	withTLS := func(poolSize int) func(*daemon.FileConfig) {
		return func(cfg *daemon.FileConfig) {
			cfg.Proxy.TLS.Mode = "require"
			cfg.Proxy.TLS.Cert, cfg.Proxy.TLS.Key, cfg.Proxy.TLS.CA = certs.ServerCert, certs.ServerKey, certs.CACert
			cfg.Proxy.Pool.DefaultPoolSize = poolSize
		}
	}
	session := c.startProxy(t, pool.ModeSession, withTLS(20))
	txn := c.startProxy(t, pool.ModeTransaction, withTLS(2))

	for _, p := range c.ports(session) {
		t.Run("psql/"+p.name, func(t *testing.T) { tlsPsql(t, psql, certs, p) })
		t.Run("plaintext/"+p.name, func(t *testing.T) { tlsPlaintextRefused(t, p) })
		t.Run("data-after-SSLRequest/"+p.name, func(t *testing.T) { tlsDataAfterSSLRequest(t, p) })
	}
	t.Run("pgx-transaction-mode", func(t *testing.T) { tlsSharedPool(t, c, txn) })
}

// runPsql runs psql non-interactively with a connection string and returns its output.
func runPsqlOnce(t *testing.T, psql, conninfo string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, append([]string{"-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func tlsPsql(t *testing.T, psql string, certs *pgtest.CertSet, p port) {
	_, portNum := splitAddr(t, p.addr)
	want := fmt.Sprint(p.recovery)[:1] // psql prints booleans as t/f
	for _, tc := range []struct{ name, conninfo string }{
		{"require", "host=127.0.0.1 sslmode=require"},
		{"verify-full/localhost", "host=localhost sslmode=verify-full sslrootcert=" + certs.CACert},
		{"verify-full/127.0.0.1", "host=127.0.0.1 sslmode=verify-full sslrootcert=" + certs.CACert},
	} {
		conninfo := tc.conninfo + " port=" + portNum + " user=postgres dbname=postgres connect_timeout=10"
		out, err := runPsqlOnce(t, psql, conninfo, "-c", `\conninfo`, "-c", "SELECT pg_is_in_recovery()")
		if err != nil {
			t.Errorf("%s: psql failed: %v\n%s", tc.name, err, out)
			continue
		}
		if !strings.Contains(out, "SSL connection (protocol: TLSv1.") || !strings.HasSuffix(strings.TrimSpace(out), "\n"+want) {
			t.Errorf("%s: want an SSL connection and pg_is_in_recovery() = %s; psql printed:\n%s", tc.name, want, out)
		}
	}
	// The client really verifies: a certificate from another CA is rejected.
	out, err := runPsqlOnce(t, psql, "host=localhost sslmode=verify-full sslrootcert="+certs.OtherCACert+" port="+portNum+
		" user=postgres dbname=postgres connect_timeout=10", "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "certificate verify failed") {
		t.Errorf("verify-full with the wrong CA: want a verification failure, got %v:\n%s", err, out)
	}
	// A plaintext psql learns why it was turned away.
	out, err = runPsqlOnce(t, psql, "host=127.0.0.1 sslmode=disable port="+portNum+" user=postgres dbname=postgres connect_timeout=10",
		"-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "SSL/TLS is required") {
		t.Errorf("plaintext psql: want a refusal saying TLS is required, got %v:\n%s", err, out)
	}
}

func tlsPlaintextRefused(t *testing.T, p port) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, daemon.ConnString(p.addr, "sslmode=disable"))
	if err == nil {
		conn.Close(context.Background())
		t.Fatal("a plaintext client was let in although proxy.tls.mode is require")
	}
	if pgCode(err) != "28000" || !strings.Contains(err.Error(), "SSL/TLS is required") {
		t.Fatalf("plaintext client: got %s, want SQLSTATE 28000 saying TLS is required", describe(err))
	}
	t.Logf("plaintext client refused: %s", describe(err))
}

// sslRequest and startup are the first bytes a client sends.
func sslRequest() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:], 8)
	binary.BigEndian.PutUint32(b[4:], 80877103) // 1234 << 16 | 5679
	return b
}

func startupMessage() []byte {
	params := "user\x00postgres\x00database\x00postgres\x00\x00"
	b := make([]byte, 8, 8+len(params))
	binary.BigEndian.PutUint32(b[0:], uint32(8+len(params)))
	binary.BigEndian.PutUint32(b[4:], 3<<16)
	return append(b, params...)
}

// tlsDataAfterSSLRequest: plaintext sent right behind SSLRequest, before the client has read
// the proxy's answer (CVE-2021-23214: such bytes could be taken as coming from inside TLS).
func tlsDataAfterSSLRequest(t *testing.T, p port) {
	// In one segment: the proxy sees the plaintext together with the SSLRequest and refuses
	// with PostgreSQL's own error.
	reply := exchange(t, p.addr, append(sslRequest(), startupMessage()...))
	if len(reply) == 0 || reply[0] != 'E' || !bytes.Contains(reply, []byte("08P01")) ||
		!bytes.Contains(reply, []byte("unencrypted data after SSL request")) {
		t.Errorf("plaintext in the same segment as SSLRequest: got %q, want ErrorResponse 08P01 and a close", reply)
	}
	// In a second write before reading: the plaintext reaches the TLS handshake, which fails.
	c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(sslRequest()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(startupMessage()); err != nil {
		t.Fatal(err)
	}
	reply = readAll(t, c)
	t.Logf("plaintext written after SSLRequest (separate write) got %q, then the connection closed", reply)
	if len(reply) > 0 && reply[0] == 'S' {
		reply = reply[1:] // the answer to SSLRequest; what follows may be a TLS alert
	}
	if bytes.Contains(reply, []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0}) || bytes.Contains(reply, []byte{'Z', 0, 0, 0, 5}) {
		t.Errorf("plaintext after SSLRequest (separate write) was accepted: %q", reply)
	}
}

// exchange sends b on a new connection and returns everything the proxy sends until it closes.
func exchange(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	return readAll(t, c)
}

// readAll reads until the peer closes; it fails the test when that takes more than 5 s.
func readAll(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var out bytes.Buffer
	_, err := io.Copy(&out, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the proxy kept the connection open for 5 s; received %q", out.Bytes())
	}
	return out.Bytes()
}

// tlsSharedPool: eight TLS clients in transaction mode share two server connections per
// backend, write and read correctly, and one of their queries is cancelled over TLS.
func tlsSharedPool(t *testing.T, c *cluster, d *daemon.Daemon) {
	const clients, rounds = 8, 25
	var wg sync.WaitGroup
	conns := map[string][]*pgx.Conn{}
	for _, p := range c.ports(d) {
		for i := range clients {
			conn := connectCancellable(t, p.addr, "sslmode=require", "dbname=tls_txn")
			if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
				t.Fatalf("client %d on %s: connection is %T, not TLS", i, p.name, conn.PgConn().Conn())
			}
			conns[p.name] = append(conns[p.name], conn)
		}
	}
	errs := make(chan error, 2*clients)
	for _, p := range c.ports(d) {
		for i, conn := range conns[p.name] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- tlsClientWork(t.Context(), conn, p, i, rounds)
			}()
		}
	}
	// While they run, each backend serves them with at most the pool's two connections.
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	most := map[string]int{}
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(poll):
		}
		for _, p := range c.ports(d) {
			var n int
			if _, err := fmt.Sscan(p.server.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'tls_txn'"), &n); err != nil {
				t.Fatal(err)
			}
			most[p.name] = max(most[p.name], n)
		}
	}
	for _, p := range c.ports(d) {
		t.Logf("%s: %d TLS clients were served by at most %d server connections", p.name, clients, most[p.name])
		if most[p.name] < 1 || most[p.name] > 2 {
			t.Errorf("%s: %d server connections for %d clients in transaction mode with pool size 2", p.name, most[p.name], clients)
		}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var rows int
	if err := conns["rw"][0].QueryRow(t.Context(), "SELECT count(*) FROM tls_rows").Scan(&rows); err != nil || rows != clients*rounds {
		t.Errorf("primary holds %d rows (%v), want %d", rows, err, clients*rounds)
	}

	// Cancel over TLS: pgx sends the CancelRequest inside TLS too, as PostgreSQL 17's libpq.
	for _, p := range c.ports(d) {
		conn := conns[p.name][0]
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, sleepQuery)
			errc <- err
		}()
		waitActive(t, p.server, sleepQuery)
		start := time.Now()
		cancel()
		select {
		case err := <-errc:
			checkCancelled(t, err, time.Since(start))
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the cancelled query did not return in 30 s", p.name)
		}
		checkUsable(t, conn, p)
	}
}

func tlsClientWork(ctx context.Context, conn *pgx.Conn, p port, i, rounds int) error {
	for n := range rounds {
		if p.recovery {
			var rec bool
			var sum int
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), $1::int + 1", n).Scan(&rec, &sum); err != nil {
				return fmt.Errorf("%s client %d: %s", p.name, i, describe(err))
			}
			if !rec || sum != n+1 {
				return fmt.Errorf("%s client %d: got (%v, %d)", p.name, i, rec, sum)
			}
			continue
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("%s client %d: begin: %s", p.name, i, describe(err))
		}
		if _, err := tx.Exec(ctx, "INSERT INTO tls_rows VALUES ($1, $2)", i, n); err != nil {
			return fmt.Errorf("%s client %d: insert: %s", p.name, i, describe(err))
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("%s client %d: commit: %s", p.name, i, describe(err))
		}
	}
	return nil
}

// execIn runs one statement as the superuser in database db, directly on the server.
func execIn(t *testing.T, srv *pgtest.Instance, db, sql string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), srv.ConnStringFor(pgtest.Superuser, srv.Password(), db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s in %s: %v", sql, db, err)
	}
}
