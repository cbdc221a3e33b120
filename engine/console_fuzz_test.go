package engine

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/pgbastion/pgbastion/pgwire"
)

// FuzzConsoleQuery: whatever a console user types, the answer is a sequence of well-formed
// backend messages that ends with one ReadyForQuery, and nothing panics. Commands that change
// something (RELOAD, PAUSE, RESUME, KILL...) are answered by the work consoleCommand returns; the
// fuzzed user is not an admin user, so they are refused.
func FuzzConsoleQuery(f *testing.F) {
	for _, q := range []string{"SHOW POOLS", "show databases;", "SHOW HELP", "SHOW CONFIG", "SHOW VERSION",
		"SHOW STATS", "SET client_encoding = 'UTF8'", "SET default_pool_size = 5", "PAUSE db", "", " ; ",
		"SHOW", "SHOW POOLS extra", "SET", "SET =", "\x00", "SHOW\tPOOLS\n;;", "RELOAD", "pause;", "RESUME db", "KILL db",
		"KILL_CLIENT 0x1", "RECONNECT", "reconnect \"a\"\"b\""} {
		f.Add(q)
	}
	e := consoleEngine(f)
	cl := newClient(e, RoleRW)
	f.Fuzz(func(t *testing.T, q string) {
		var out []byte
		if run := cl.consoleCommand(q); run != nil {
			out = run()
		} else {
			out = cl.consoleQuery(q, nil)
		}
		var last byte
		for len(out) > 0 {
			if len(out) < pgwire.HeaderLen {
				t.Fatalf("%q: truncated header %x", q, out)
			}
			n := int(binary.BigEndian.Uint32(out[1:5]))
			if n < 4 || n+1 > len(out) {
				t.Fatalf("%q: message %q length %d with %d bytes left", q, out[0], n, len(out))
			}
			if last == pgwire.MsgReadyForQuery {
				t.Fatalf("%q: a message after ReadyForQuery", q)
			}
			last = out[0]
			out = out[n+1:]
		}
		if last != pgwire.MsgReadyForQuery {
			t.Fatalf("%q: the answer does not end with ReadyForQuery (last %q)", q, last)
		}
	})
}

// The query ends at its first NUL, so no field of an answer carries one into the client's
// parser (a NUL would end the field early).
func TestConsoleQueryStopsAtNUL(t *testing.T) {
	e := consoleEngine(t)
	out := string(newClient(e, RoleRW).consoleQuery("BOGUS\x00SHOW POOLS", nil))
	if !strings.Contains(out, `unknown console command "BOGUS"`) || strings.Contains(out, "SHOW POOLS") {
		t.Fatalf("answer %q", out)
	}
}

// SHOW POOLS sums a database and user over the backends serving it, and SHOW STATS a
// database over its users and backends, whatever order the backends were met in.
func TestConsoleSumsOverBackends(t *testing.T) {
	e := consoleEngine(t)
	e.routeMu.Lock()
	for _, addr := range []string{"10.0.0.2:5432", "10.0.0.1:5432"} {
		b := e.backendFor(addr, nil)
		for _, k := range []poolKey{{"app", "web"}, {"app", "batch"}, {"zeta", "web"}} {
			pe := b.pool(e, k)
			pe.clients.Add(2)
			pe.counters(nil).xacts.Add(3)
		}
	}
	e.routeMu.Unlock()
	cl := newClient(e, RoleRW)
	res, err := cl.showPools()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range res.rows {
		got = append(got, r[0]+"/"+r[1]+":"+r[2])
	}
	if want := "app/batch:4 app/web:4 zeta/web:4"; strings.Join(got, " ") != want {
		t.Errorf("SHOW POOLS rows (database/user:cl_active) %v, want %s", got, want)
	}
	if res, err = cl.showStats(); err != nil || len(res.rows) != 2 || res.rows[0][0] != "app" || res.rows[0][2] != "12" ||
		res.rows[1][0] != "zeta" || res.rows[1][2] != "6" {
		t.Errorf("SHOW STATS rows %v, %v; want app with 12 transactions, zeta with 6", res.rows, err)
	}
}

// consoleEngine is an engine with an admin console that is not running: enough to answer
// console queries.
func consoleEngine(tb testing.TB) *Engine {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.AdminUsers = []string{"admin"}
	e, err := New(cfg, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return e
}
