package engine

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/pgbastion/pgbastion/pgwire"
)

// FuzzConsoleQuery: whatever a console user types, the answer is a sequence of well-formed
// backend messages that ends with one ReadyForQuery, and nothing panics.
func FuzzConsoleQuery(f *testing.F) {
	for _, q := range []string{"SHOW POOLS", "show databases;", "SHOW HELP", "SHOW CONFIG", "SHOW VERSION",
		"SHOW STATS", "SET client_encoding = 'UTF8'", "SET default_pool_size = 5", "PAUSE db", "", " ; ",
		"SHOW", "SHOW POOLS extra", "SET", "SET =", "\x00", "SHOW\tPOOLS\n;;"} {
		f.Add(q)
	}
	cfg := DefaultConfig()
	cfg.AdminUsers = []string{"admin"}
	e, err := New(cfg, Options{})
	if err != nil {
		f.Fatal(err)
	}
	cl := newClient(e, RoleRW)
	f.Fuzz(func(t *testing.T, q string) {
		out := cl.consoleQuery(q)
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
	cfg := DefaultConfig()
	cfg.AdminUsers = []string{"admin"}
	e, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := string(newClient(e, RoleRW).consoleQuery("BOGUS\x00SHOW POOLS"))
	if !strings.Contains(out, `unknown console command "BOGUS"`) || strings.Contains(out, "SHOW POOLS") {
		t.Fatalf("answer %q", out)
	}
}
