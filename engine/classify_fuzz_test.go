package engine

import (
	"bytes"
	"testing"
)

// FuzzMayChangeSession checks the fast screen against the straightforward byte-by-byte
// version it replaced: a statement it fails to notice would let session state leak to the
// next client of the server, so the two must agree on every input.
func FuzzMayChangeSession(f *testing.F) {
	for _, q := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 42",
		"SELECT 1; SET search_path = a",
		"SELECT 'x;y'; RESET ALL",
		"SELECT \"a;b\" FROM t; LISTEN c",
		"SELECT $1; SELECT $tag$ SET x $tag$",
		"select pg_advisory_lock(1)",
		"SELECT Pg_Try_Advisory_Lock(2)",
		"SELECT set_config('a.b', 'c', false)",
		"/* c */ -- d\n DISCARD ALL",
		"SELECT 1;;; ;PREPARE p AS SELECT 1",
		"SELECT ';", "'", "\"", "$", ";", "", "/*", "SELECT 1; /*", "SET /* x",
	} {
		f.Add([]byte(q))
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		// Exact capacity: slicing past the length must not be saved by spare capacity.
		q = q[:len(q):len(q)]
		if got, want := mayChangeSession(q), mayChangeSessionRef(q); got != want {
			t.Fatalf("%q: mayChangeSession = %v, the byte-by-byte screen says %v", q, got, want)
		}
		classifyQuery(q) // must not panic on any text

	})
}

// asciiUpper upper-cases ASCII letters only (bytes.ToUpper would also fold non-ASCII runes
// such as the dotless i into ASCII ones).
func asciiUpper(q []byte) []byte {
	u := make([]byte, len(q))
	for i, c := range q {
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		u[i] = c
	}
	return u
}

// mayChangeSessionRef is the screen as it was before commit 766e9ca, with advisory locks in any
// letter case.
func mayChangeSessionRef(q []byte) bool {
	i := 0
	for i < len(q) {
		i = skipSpaceAndComments(q, i)
		start := i
		for i < len(q) && (q[i] >= 'a' && q[i] <= 'z' || q[i] >= 'A' && q[i] <= 'Z') {
			i++
		}
		w := q[start:i]
		for _, sw := range sessionWords {
			if len(w) == len(sw) && asciiEqualFold(w, sw) {
				return true
			}
		}
		// Skip to the end of this statement, stepping over quoted text.
		for i < len(q) && q[i] != ';' {
			switch c := q[i]; c {
			case '\'', '"':
				i++
				for i < len(q) && q[i] != c {
					i++
				}
			case '$':
				if i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9' {
					break // a parameter ($1): no dollar-quote tag starts with a digit
				}
				// Dollar quoting may hide anything: classify the text properly.
				return true
			}
			i++
		}
		i++
	}
	return bytes.Contains(asciiUpper(q), []byte("ADVISORY_LOCK")) || hasSetConfig(q)
}
