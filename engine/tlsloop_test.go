package engine_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TLS clients live on the event loops once their handshake is done: in transaction mode a TLS
// client and a plain one share one server without moving it for every transaction (on the
// stream path each TLS transaction took the server off its loop and back), the console lists
// the TLS client's protocol, and a TLS client that stops reading a large result still moves to
// the stream path and gets every row.
func TestTLSClientsLiveOnTheLoops(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	certs := pgtest.Certs(t)
	// One event loop: the two clients share it, so a server move can only be one to or from
	// the stream path.
	p := startProxy(t, func(c *engine.Config) {
		c.EventLoops = 1
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 1
		c.AdminUsers = []string{"postgres"}
		c.TLS = engine.TLSConfig{Mode: "prefer", Cert: certs.ServerCert, Key: certs.ServerKey}
	}, primary)
	ctx := context.Background()
	plain := connect(t, p.dsn(p.rw))
	secure := connect(t, overTLS(p.dsn(p.rw)))
	if _, ok := secure.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("the client did not use TLS: %T", secure.PgConn().Conn())
	}
	before := metricValue(t, p.e, "pgbastion_proxy_server_moves_total")
	const rounds = 200
	for i := range rounds {
		for _, c := range []*pgx.Conn{plain, secure} {
			if v := queryInt(t, c, "SELECT $1::int + 1", i); v != int64(i+1) {
				t.Fatalf("round %d: %d", i, v)
			}
		}
	}
	moves := metricValue(t, p.e, "pgbastion_proxy_server_moves_total") - before
	t.Logf("server moves over %d transactions of each client: %.0f", rounds, moves)
	if moves > rounds/10 {
		t.Fatalf("the server moved %.0f times in %d alternating transactions: the TLS client is not on a loop", moves, 2*rounds)
	}

	// The console shows the TLS client's protocol.
	console := connect(t, consoleDSN(p))
	rows, err := console.Query(ctx, "SHOW CLIENTS", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	var tlsClients int
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		for i, f := range rows.FieldDescriptions() {
			if f.Name == "tls" && strings.HasPrefix(vals[i].(string), "TLSv1.") {
				tlsClients++
			}
		}
	}
	if rows.Err() != nil || tlsClients != 1 {
		t.Fatalf("SHOW CLIENTS lists %d TLS clients (%v), want 1", tlsClients, rows.Err())
	}

	// A TLS client that cannot keep up with a large result moves to the stream path.
	slow, err := connectAdjusted(overTLS(p.dsn(p.rw)), func(cfg *pgx.ConnConfig) { cfg.DialFunc = dialSlow })
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close(ctx)
	movedBefore := metricValue(t, p.e, "pgbastion_proxy_slow_readers_total")
	r, err := slow.Query(ctx, "SELECT i, repeat('x', 1000) FROM generate_series(1, 16000) i")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for r.Next() {
		var i int
		var s string
		if err := r.Scan(&i, &s); err != nil || i != n+1 || len(s) != 1000 {
			t.Fatalf("row %d: %d, %d bytes, %v", n+1, i, len(s), err)
		}
		n++
	}
	if r.Err() != nil || n != 16000 {
		t.Fatalf("the slow TLS reader got %d rows: %v", n, r.Err())
	}
	if moved := metricValue(t, p.e, "pgbastion_proxy_slow_readers_total") - movedBefore; moved != 1 {
		t.Fatalf("slow TLS reader: %.0f moves to the stream path, want 1", moved)
	}
	if v := queryInt(t, slow, "SELECT 41 + 1"); v != 42 {
		t.Fatalf("after the move: %d", v)
	}
	if v := queryInt(t, plain, "SELECT 6 * 7"); v != 42 {
		t.Fatalf("plain client after the move: %d", v)
	}
}

// A TLS client that sends garbage where records belong, or a record cut off by a close, loses
// only its own connection; the proxy goes on serving TLS clients.
func TestTLSGarbageClosesOnlyThatClient(t *testing.T) {
	p, _ := consoleProxyWithTLS(t, 2)
	keep := connect(t, overTLS(p.dsn(p.rw)))
	for _, tail := range [][]byte{
		[]byte("this is not a TLS record at all, just bytes after the handshake"),
		{23, 3, 3, 0x40, 0x00, 1, 2, 3}, // an application-data header promising 16 KiB, then a close
	} {
		raw, err := net.Dial("tcp", p.rw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Write(pgwire.AppendSSLRequest(nil)); err != nil {
			t.Fatal(err)
		}
		var answer [1]byte
		if _, err := io.ReadFull(raw, answer[:]); err != nil || answer[0] != 'S' {
			t.Fatalf("SSLRequest answered %q, %v", answer[0], err)
		}
		tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the test's own certificate
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		if _, err := tc.Write(pgwire.AppendStartupMessage(nil, "user", "postgres", "database", "postgres")); err != nil {
			t.Fatal(err)
		}
		// Past the handshake and the startup message, the raw socket gets bytes tls.Conn
		// cannot decrypt.
		if _, err := raw.Write(tail); err != nil {
			t.Fatal(err)
		}
		if len(tail) < 20 {
			_ = raw.(*net.TCPConn).CloseWrite()
		}
		_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, raw); err != nil {
			t.Fatalf("the proxy did not close the connection: %v", err)
		}
		raw.Close()
	}
	if v := queryInt(t, keep, "SELECT 40 + 2"); v != 42 {
		t.Fatalf("the other TLS client: %d", v)
	}
	if v := queryInt(t, connect(t, overTLS(p.dsn(p.rw))), "SELECT 6 * 7"); v != 42 {
		t.Fatalf("a new TLS client: %d", v)
	}
}

// recordingConn keeps every byte read from the socket.
type recordingConn struct {
	net.Conn
	got []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.got = append(c.got, p[:n]...)
	return n, err
}

// When the proxy ends a TLS client's session (here: a FATAL error for a message it refuses),
// its last TLS record is an alert (close_notify), not a bare end of the connection. (TLS 1.2,
// where an alert record keeps its outer type; Go's client accepts either end, so the test
// reads the records themselves.)
func TestTLSSessionEndsWithCloseNotify(t *testing.T) {
	p, _ := consoleProxyWithTLS(t, 2)
	conn, err := net.Dial("tcp", p.rw)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(pgwire.AppendSSLRequest(nil)); err != nil {
		t.Fatal(err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", answer[0], err)
	}
	raw := &recordingConn{Conn: conn}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}) //nolint:gosec // the test's own certificate
	if _, err := tc.Write(pgwire.AppendStartupMessage(nil, "user", "postgres", "database", "postgres")); err != nil {
		t.Fatal(err)
	}
	// Read to ReadyForQuery, then send a message type no client may send.
	_ = tc.SetReadDeadline(time.Now().Add(20 * time.Second))
	var hdr [5]byte
	for hdr[0] != 'Z' {
		if _, err := io.ReadFull(tc, hdr[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, tc, int64(binary.BigEndian.Uint32(hdr[1:]))-4); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tc.Write([]byte{'!', 0, 0, 0, 4}); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(tc)
	if err != nil || len(rest) == 0 || rest[0] != 'E' {
		t.Fatalf("after the refused message: %q, %v; want an ErrorResponse and the end", rest, err)
	}
	var last byte
	for b := raw.got; len(b) >= 5; {
		n := 5 + int(binary.BigEndian.Uint16(b[3:5]))
		if n > len(b) {
			t.Fatalf("a TLS record cut short: %d of %d bytes", len(b), n)
		}
		last, b = b[0], b[n:]
	}
	if last != 21 {
		t.Fatalf("the session's last TLS record has type %d, want 21 (an alert: close_notify)", last)
	}
}
