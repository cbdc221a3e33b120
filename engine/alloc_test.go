package engine

import (
	"runtime"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pool"
)

// fakeConn stands in for a gnet connection: writes are accepted and dropped, nothing is
// buffered. Only the methods the relay uses are implemented. It has no descriptor, so the
// loopWriter's direct send fails (EBADF) and hands every write to Write.
type fakeConn struct{ gnet.Conn }

func (fakeConn) Fd() int { return -1 }

func (fakeConn) Context() any { return struct{}{} }

func (fakeConn) Write(b []byte) (int, error) { return len(b), nil }
func (fakeConn) OutboundBuffered() int       { return 0 }
func (fakeConn) InboundBuffered() int        { return 0 }
func (fakeConn) Close() error                { return nil }

// pair builds a logged-in transaction-mode client and one idle pooled server on loop 0,
// without sockets, so the relay can be driven directly.
func pair(t testing.TB, mode pool.Mode) (*Engine, *client, *server) {
	cfg := DefaultConfig()
	cfg.EventLoops = 1
	cfg.Pool.Mode = mode
	e, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.SetRouting(RoutingSpec{Primary: "127.0.0.1:1"})
	lp := &loop{e: e, idx: 0, clients: map[*client]struct{}{}, servers: map[*server]struct{}{}}
	e.loops = append(e.loops, lp)
	cl := newClient(e, RoleRW)
	cl.lw.c = fakeConn{}
	cl.lp, cl.conn, cl.out = lp, fakeConn{}, &cl.lw
	cl.user, cl.database, cl.serverUser = "u", "d", "u"
	cl.state = csReady
	cl.pid = e.cancels.add(cl)
	cl.stmts = map[string]*pool.Stmt{}
	pe, err := cl.route()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{e: e, pe: pe, b: pe.b, tr: pool.NewTracker(), login: pool.NewParams(), params: pool.NewParams(),
		stmts: pool.NewServerStatements(200), born: time.Now(), lastUsed: time.Now(), key: []byte{1, 2, 3, 4}}
	s.lw.c = fakeConn{}
	s.conn, s.out, s.lp = fakeConn{}, &s.lw, lp
	s.tr.Dropped = s.forget
	s.login.Set("TimeZone", "UTC")
	s.params.CopyFrom(s.login)
	s.initCancelTarget()
	pe.b.addServer(s)
	cl.params = pool.NewParams()
	cl.params.CopyFrom(s.login)
	kind, _, _ := pe.p.Acquire(0, cl, time.Now())
	if kind != pool.GrantDial {
		t.Fatalf("grant %v", kind)
	}
	pe.p.Release(0, s, s.born, time.Now())
	return e, cl, s
}

func TestRelayAllocatesNothingPerTransaction(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mode   pool.Mode
		client []byte
		server []byte
	}{
		{
			name:   "simple query",
			mode:   pool.ModeTransaction,
			client: pgwire.AppendQuery(nil, "SELECT abalance FROM pgbench_accounts WHERE aid = 42"),
			server: serverReply(),
		},
		{
			name:   "prepared",
			mode:   pool.ModeTransaction,
			client: preparedExec(),
			server: append([]byte{'2', 0, 0, 0, 4}, serverReply()[len(rowDesc()):]...),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cl, _ := pair(t, tc.mode)
			// Prepare "s1" once (Parse/Sync), as pgbench -M prepared does per connection.
			if _, err := cl.handle(append(pgwire.AppendParse(nil, []byte("s1"), []byte("SELECT abalance FROM pgbench_accounts WHERE aid = $1"), []byte{0, 0, 0, 23}, 1), 'S', 0, 0, 0, 4)); err != nil {
				t.Fatal(err)
			}
			if cl.srv == nil {
				t.Fatal("no server attached")
			}
			s := cl.srv
			if _, err := s.handle([]byte{'1', 0, 0, 0, 4, 'Z', 0, 0, 0, 5, 'I'}); err != nil {
				t.Fatal(err)
			}
			if cl.srv != nil {
				t.Fatal("server not released after the transaction")
			}
			run := func() {
				n, err := cl.handle(tc.client)
				if err != nil || n != len(tc.client) || cl.srv == nil {
					t.Fatalf("client: n=%d err=%v attached=%v", n, err, cl.srv != nil)
				}
				s := cl.srv
				n, err = s.handle(tc.server)
				if err != nil || n != len(tc.server) {
					t.Fatalf("server: n=%d err=%v", n, err)
				}
				if cl.srv != nil {
					t.Fatal("server not released")
				}
				cl.lp.runDeferred()
			}
			run()
			if a := testing.AllocsPerRun(1000, run); a != 0 {
				t.Fatalf("%.1f allocations per transaction", a)
			}
			// AllocsPerRun rounds the average down; an allocation every few dozen
			// transactions (a growing queue, say) shows only in the total. The counter is
			// process-wide, so the odd allocation of another goroutine is forgiven by
			// taking the fewest of five runs: one the relay makes shows up in every run.
			least := ^uint64(0)
			for trial := 0; trial < 5; trial++ {
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				for i := 0; i < 10000; i++ {
					run()
				}
				runtime.ReadMemStats(&after)
				least = min(least, after.Mallocs-before.Mallocs)
			}
			if least != 0 {
				t.Fatalf("%d allocations in 10000 transactions (fewest of five runs)", least)
			}
		})
	}
}

func rowDesc() []byte {
	b := []byte{'T', 0, 0, 0, 0, 0, 1}
	b = append(b, "abalance\x00"...)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0)
	pgwire.PutHeader(b, 'T', len(b)-5)
	return b
}

func serverReply() []byte {
	b := rowDesc()
	b = append(b, 'D', 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, '0')
	b = pgwire.AppendCommandComplete(b, "SELECT 1")
	return pgwire.AppendReadyForQuery(b, 'I')
}

func preparedExec() []byte {
	b := []byte{'B', 0, 0, 0, 0}
	b = append(b, 0, 's', '1', 0, 0, 0, 0, 1, 0, 0, 0, 2, '4', '2', 0, 0)
	pgwire.PutHeader(b, 'B', len(b)-5)
	b = append(b, 'E', 0, 0, 0, 9, 0, 0, 0, 0, 0)
	return append(b, 'S', 0, 0, 0, 4)
}

func BenchmarkRelayTransaction(b *testing.B) {
	_, cl, _ := pair(b, pool.ModeTransaction)
	q := pgwire.AppendQuery(nil, "SELECT abalance FROM pgbench_accounts WHERE aid = 42")
	reply := serverReply()
	b.ReportAllocs()
	b.SetBytes(int64(len(q) + len(reply)))
	for i := 0; i < b.N; i++ {
		cl.handle(q)
		cl.srv.handle(reply)
		cl.lp.runDeferred()
	}
}

// The loop's clock is read once per callback and forgotten when the callback's deferred work
// is done: a value kept from an earlier callback would make idle and lifetime timeouts fire
// early (or late) by however long the loop slept.
func TestLoopClockLastsOneCallback(t *testing.T) {
	_, cl, _ := pair(t, pool.ModeTransaction)
	lp := cl.lp
	first := lp.clock()
	if again := lp.clock(); !again.Equal(first) {
		t.Fatalf("second read in one callback: %v, want the cached %v", again, first)
	}
	stale := time.Now().Add(-time.Hour)
	lp.now = stale
	if got := lp.clock(); !got.Equal(stale) {
		t.Fatalf("clock = %v, want the callback's %v", got, stale)
	}
	lp.runDeferred()
	if got := lp.clock(); time.Since(got) > time.Minute {
		t.Fatalf("after the callback ended the clock still reads %v", got)
	}
	// Off the loops (the stream path) there is no callback clock.
	if got := clockOf(nil); time.Since(got) > time.Minute {
		t.Fatalf("clockOf(nil) = %v", got)
	}
}
