package engine_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// cancelGate is a TCP relay in front of PostgreSQL that passes sessions through but keeps
// each CancelRequest at the gate until the test opens it, so a test can hold a cancel "on
// its way" for as long as it needs.
type cancelGate struct {
	addr   string
	open   chan struct{}
	once   sync.Once
	held   atomic.Int32 // cancel requests that reached the gate
	target string
}

func newCancelGate(t *testing.T, target string) *cancelGate {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &cancelGate{addr: l.Addr().String(), open: make(chan struct{}), target: target}
	t.Cleanup(func() { g.release(); _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go g.serve(c)
		}
	}()
	return g
}

func (g *cancelGate) release() { g.once.Do(func() { close(g.open) }) }

func (g *cancelGate) serve(c net.Conn) {
	defer c.Close()
	var first [8]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return
	}
	if binary.BigEndian.Uint32(first[4:]) == 80877102 { // CancelRequest
		g.held.Add(1)
		<-g.open
	}
	up, err := net.Dial("tcp", g.target)
	if err != nil {
		return
	}
	defer up.Close()
	if _, err := up.Write(first[:]); err != nil {
		return
	}
	go func() { _, _ = io.Copy(up, c); _ = up.(*net.TCPConn).CloseWrite() }()
	_, _ = io.Copy(c, up)
}

// sendCancelRequest sends a CancelRequest for (pid, key) to addr, as libpq's PQcancel does,
// and closes acked when the proxy closes the connection (libpq and pgx wait for that close).
func sendCancelRequest(t *testing.T, addr string, pid uint32, key []byte) (acked chan struct{}) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(12+len(key)))
	msg = binary.BigEndian.AppendUint32(msg, 80877102)
	msg = binary.BigEndian.AppendUint32(msg, pid)
	if _, err := c.Write(append(msg, key...)); err != nil {
		t.Fatal(err)
	}
	acked = make(chan struct{})
	go func() {
		defer close(acked)
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		var b [1]byte
		_, _ = c.Read(b[:])
	}()
	return acked
}

// A cancel still on its way to PostgreSQL when its client lets the server go (its query
// ended by itself, and the client then closed the session, idle or inside a transaction, as
// pgx does after it sends a cancel) must not cancel the next client's query on that server:
// the server stays out of the pool until the cancel has landed. And the proxy, like
// PostgreSQL, closes the cancel connection only once the cancel has been delivered.
func TestCancelOnItsWayKeepsTheServerFromTheNextClient(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	certs := pgtest.Certs(t)
	for _, tc := range []struct {
		name, sql string
		tls       bool // the first client is on the stream path, and so is its server
	}{
		{"idle", "SELECT pg_sleep(0.3)", false},
		{"in-transaction", "BEGIN; SELECT pg_sleep(0.3)", false},
		{"idle-over-TLS", "SELECT pg_sleep(0.3)", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary := pgtest.Start(t, nil)
			gate := newCancelGate(t, net.JoinHostPort(primary.Host(), strconv.Itoa(primary.Port())))
			p := startProxy(t, func(c *engine.Config) {
				c.EventLoops = 1
				c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 1
				c.TLS = engine.TLSConfig{Mode: "prefer", Cert: certs.ServerCert, Key: certs.ServerKey}
				c.AdminUsers = []string{"postgres"}
				host, port, _ := net.SplitHostPort(gate.addr)
				c.Backends[0].Host = host
				c.Backends[0].Port, _ = strconv.Atoi(port)
			}, primary)
			direct := primary.Conn(t)
			running := func(sql string) bool {
				return queryInt(t, direct, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1", sql) > 0
			}

			dsnA := p.dsn(p.rw)
			if tc.tls {
				dsnA = overTLS(dsnA)
			}
			a := connect(t, dsnA)
			pid, key := a.PgConn().PID(), a.PgConn().SecretKey()
			resA := make(chan error, 1)
			go func() {
				_, err := a.Exec(context.Background(), tc.sql, pgx.QueryExecModeSimpleProtocol)
				resA <- err
			}()
			waitFor(t, "the first client's query to run", func() bool { return running(tc.sql) })
			acked := sendCancelRequest(t, p.rw, pid, key)
			waitFor(t, "the cancel to reach the gate", func() bool { return gate.held.Load() == 1 })
			if err := <-resA; err != nil {
				t.Fatalf("the first client's query, whose cancel is held at the gate: %v", err)
			}
			select {
			case <-acked:
				t.Fatal("the proxy closed the cancel connection before the cancel reached PostgreSQL")
			default:
			}
			pools := func() engine.PoolStats { return p.e.Stats().Pools[0] }
			if st := pools(); st.CancelsInFlight != 1 {
				t.Errorf("with the cancel at the gate: %d cancels in flight, want 1", st.CancelsInFlight)
			}
			if err := a.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !tc.tls { // a stream-path server is closed instead of held
				waitFor(t, "the server to be held for the cancel", func() bool { return pools().HeldForCancel == 1 })
				cols, rows := consoleRows(t, connect(t, consoleDSN(p)), "SHOW POOLS")
				for _, c := range []string{"cl_active_cancel_req", "sv_active_cancel", "sv_being_canceled"} {
					if v := column(t, cols, rows[0], c); v != "1" {
						t.Errorf("SHOW POOLS %s = %s with one cancel on its way and its server held, want 1", c, v)
					}
				}
				if v := column(t, cols, rows[0], "sv_active"); v != "0" {
					t.Errorf("SHOW POOLS sv_active = %s, want 0 (the server is held, not active)", v)
				}
			}

			// The next client needs the one server there is.
			const next = "SELECT pg_sleep(1), 7"
			resB := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				b, err := pgx.Connect(ctx, p.dsn(p.rw))
				if err != nil {
					resB <- err
					return
				}
				defer b.Close(context.Background())
				var sleep string
				var v int
				if err := b.QueryRow(ctx, next, pgx.QueryExecModeSimpleProtocol).Scan(&sleep, &v); err != nil {
					resB <- err
					return
				}
				if v != 7 {
					err = errors.New("wrong result " + strconv.Itoa(v))
				}
				resB <- err
			}()
			// With the server held, the next client waits for it; without, its query runs
			// now and the cancel, once let through, would end it.
			waitFor(t, "the next client to wait for the server, or its query to run", func() bool {
				st := p.e.Stats()
				return (len(st.Pools) > 0 && st.Pools[0].Waiting > 0) || running(next)
			})
			gate.release()
			if err := <-resB; err != nil {
				t.Fatalf("the next client's query: %v", err)
			}
			select {
			case <-acked:
			case <-time.After(time.Minute):
				t.Fatal("the proxy did not close the cancel connection after the cancel landed")
			}
			waitFor(t, "the cancel counts to go back to 0", func() bool {
				st := pools()
				return st.CancelsInFlight == 0 && st.HeldForCancel == 0
			})
		})
	}
}

// Cancels in transaction mode, under churn, hit only the query they were sent for: clients
// whose queries time out share two servers with clients that never cancel anything, over
// plain TCP and TLS, on both event loops. Of the clients that time out, one kind sends a
// CancelRequest and waits for the query to end (pgx's CancelRequestContextWatcherHandler),
// the other sends one and closes the session at once (pgx's default). A cancel that reached
// another client's query would show as 57014 on a client that never cancelled. Run with
// -race.
func TestCancelsHitOnlyTheirOwnQueries(t *testing.T) {
	p, _ := consoleProxyWithTLS(t, 2)
	ctx, stop := context.WithTimeout(context.Background(), 4*time.Second)
	defer stop()
	connectWith := func(dsn string, waits bool) (*pgx.Conn, error) {
		return connectAdjusted(dsn, func(cfg *pgx.ConnConfig) {
			if waits {
				cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
					return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
				}
			}
		})
	}
	var cancelled, ran atomic.Int64
	errs := make(chan error, 8)
	for i := range 8 {
		dsn := p.dsn(p.rw)
		if i >= 4 {
			dsn = overTLS(dsn)
		}
		canceller, waits := i%4 < 2, i%4 == 0
		go func() {
			var c *pgx.Conn
			defer func() {
				if c != nil {
					_ = c.Close(context.Background())
				}
			}()
			for n := 0; ctx.Err() == nil; n++ {
				if c == nil || c.IsClosed() {
					var err error
					if c, err = connectWith(dsn, waits); err != nil {
						errs <- fmt.Errorf("connect: %w", err)
						return
					}
				}
				if !canceller {
					var v int
					err := c.QueryRow(context.Background(), "SELECT 1 FROM pg_sleep(0.003)", pgx.QueryExecModeSimpleProtocol).Scan(&v)
					if err == nil {
						_, err = c.Exec(context.Background(), "BEGIN; SELECT pg_sleep(0.002); COMMIT", pgx.QueryExecModeSimpleProtocol)
					}
					if err != nil {
						errs <- fmt.Errorf("a client that cancels nothing: %w", err)
						return
					}
					ran.Add(1)
					continue
				}
				// Time out after 1–20 ms a query that would take 10 ms: some end first, some
				// are cancelled mid-query, some cancels arrive as the query ends.
				qctx, cancel := context.WithTimeout(ctx, time.Duration(1+n%20)*time.Millisecond)
				_, err := c.Exec(qctx, "SELECT pg_sleep(0.01)", pgx.QueryExecModeSimpleProtocol)
				cancel()
				if sqlState(err) == "57014" || c.IsClosed() {
					cancelled.Add(1)
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d queries cancelled or sessions closed mid-query, %d transactions of the other clients", cancelled.Load(), ran.Load())
	if cancelled.Load() == 0 || ran.Load() == 0 {
		t.Fatalf("the test did not exercise cancels (%d) against other clients' work (%d)", cancelled.Load(), ran.Load())
	}
	if v := queryInt(t, connect(t, p.dsn(p.rw)), "SELECT 7"); v != 7 {
		t.Fatalf("after the churn: %d", v)
	}
}
