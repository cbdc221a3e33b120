package proxy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
)

// cancelBound is the acceptance line: a cancelled query ends within 1 s.
const cancelBound = time.Second

const sleepQuery = "SELECT pg_sleep(30)"

// TestCancel (issue 2, done-when 1): `SELECT pg_sleep(30)` cancelled by the client ends with
// SQLSTATE 57014 within 1 s, through the read-write and the read-only port, in session and in
// transaction mode, whether pgx sends the CancelRequest (context cancelled) or the test sends
// one itself, as psql does, with the BackendKeyData the proxy handed out. A CancelRequest with
// a wrong key cancels nothing. After a cancel the connection keeps working.
func TestCancel(t *testing.T) {
	t.Parallel()
	c := newCluster(t, nil)
	for _, mode := range []pool.Mode{pool.ModeSession, pool.ModeTransaction} {
		d := c.startProxy(t, mode, nil)
		for _, p := range c.ports(d) {
			t.Run(string(mode)+"/"+p.name+"/pgx", func(t *testing.T) { cancelByContext(t, p) })
			t.Run(string(mode)+"/"+p.name+"/CancelRequest", func(t *testing.T) { cancelByHand(t, p) })
		}
	}
}

// connectCancellable connects with pgx configured to send a CancelRequest when a query's
// context is cancelled (pgx's default only interrupts the socket).
func connectCancellable(t *testing.T, addr string, extra ...string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(daemon.ConnString(addr, extra...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect: %v", describe(err))
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// checkKey: the BackendKeyData the client got is the proxy's own, not the server's.
func checkKey(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	var serverPID uint32
	if err := conn.QueryRow(t.Context(), "SELECT pg_backend_pid()").Scan(&serverPID); err != nil {
		t.Fatal(err)
	}
	if conn.PgConn().PID() == serverPID {
		t.Errorf("the client got the server's process id %d as its BackendKeyData", serverPID)
	}
}

// checkCancelled asserts that err is PostgreSQL's query_canceled and came within the bound.
func checkCancelled(t *testing.T, err error, took time.Duration) {
	t.Helper()
	t.Logf("cancel to error: %v", took.Round(time.Microsecond))
	if pgCode(err) != "57014" {
		t.Fatalf("cancelled query returned %s, want SQLSTATE 57014", describe(err))
	}
	if took > cancelBound {
		t.Errorf("cancelled query took %v to return, want under %v", took, cancelBound)
	}
}

// checkUsable: the connection works after the cancel.
func checkUsable(t *testing.T, conn *pgx.Conn, p port) {
	t.Helper()
	var rec bool
	if err := conn.QueryRow(t.Context(), "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		t.Fatalf("query after the cancel: %v", describe(err))
	}
	if rec != p.recovery {
		t.Fatalf("after the cancel the session is on a server with pg_is_in_recovery() = %v", rec)
	}
}

func cancelByContext(t *testing.T, p port) {
	conn := connectCancellable(t, p.addr)
	checkKey(t, conn)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, sleepQuery)
		errc <- err
	}()
	waitActive(t, p.server, sleepQuery)
	start := time.Now()
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("the cancelled query did not return in 30 s")
	}
	checkCancelled(t, err, time.Since(start))
	checkUsable(t, conn, p)
}

func cancelByHand(t *testing.T, p port) {
	conn := connectCancellable(t, p.addr)
	pid, key := conn.PgConn().PID(), conn.PgConn().SecretKey()
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(t.Context(), sleepQuery)
		errc <- err
	}()
	backend := waitActive(t, p.server, sleepQuery)

	// A wrong key is ignored: the proxy closes that connection and the query runs on.
	bad := append([]byte(nil), key...)
	bad[0] ^= 0xff
	sendCancel(t, p.addr, pid, bad)
	if still := p.server.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", backend); still != "1" {
		t.Fatal("a CancelRequest with a wrong key ended the query")
	}
	select {
	case err := <-errc:
		t.Fatalf("the query ended after a CancelRequest with a wrong key: %v", describe(err))
	default:
	}

	start := time.Now()
	sendCancel(t, p.addr, pid, key)
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("the cancelled query did not return in 30 s")
	}
	checkCancelled(t, err, time.Since(start))
	checkUsable(t, conn, p)
}

// sendCancel sends a CancelRequest on a new connection, as libpq's PQcancel does, and waits
// until the proxy closes it (it answers nothing).
func sendCancel(t *testing.T, addr string, pid uint32, key []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 12, 12+len(key))
	binary.BigEndian.PutUint32(msg[0:], uint32(12+len(key)))
	binary.BigEndian.PutUint32(msg[4:], 80877102) // 1234 << 16 | 5678
	binary.BigEndian.PutUint32(msg[8:], pid)
	msg = append(msg, key...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the proxy did not close the cancel connection within 5 s")
		}
	}
	if n != 0 {
		t.Fatalf("the proxy answered a CancelRequest with %d bytes", n)
	}
}
