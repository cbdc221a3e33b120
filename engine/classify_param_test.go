package engine

import "testing"

// Extended-protocol drivers (psycopg, pgjdbc, pgbench -M extended) send a Parse with $n
// parameters for every query; its text is classified each time, so the common case must stay
// on the allocation-free path, while dollar-quoted text is still classified in full.
func TestClassifyParameterisedQuery(t *testing.T) {
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND bid = $12")
	if mayChangeSession(q) {
		t.Fatalf("%q: parameters taken for dollar quoting", q)
	}
	if a := testing.AllocsPerRun(100, func() { classifyQuery(q) }); a != 0 {
		t.Fatalf("classifying %q: %v allocations, want 0", q, a)
	}
	for _, c := range []struct {
		q    string
		kind queryKind
	}{
		{"SELECT $1::int; SET x = 1", qSessionState},
		{"DO $body$ BEGIN PERFORM pg_advisory_lock(1); END $body$", qSessionState},
	} {
		if got := classifyQuery([]byte(c.q)); got.kind != c.kind {
			t.Errorf("%q: kind %d, want %d", c.q, got.kind, c.kind)
		}
	}
}

// A session-level advisory lock outlives the transaction on that server, whatever the letter
// case of the call; the transaction-level (_xact_) forms end with the transaction.
func TestClassifyAdvisoryLocks(t *testing.T) {
	for _, c := range []struct {
		q    string
		kind queryKind
	}{
		{"SELECT pg_advisory_lock(42)", qSessionState},
		{"SELECT PG_TRY_ADVISORY_LOCK(42)", qSessionState},
		{"select Pg_Advisory_Lock_Shared(42)", qSessionState},
		{"SELECT pg_advisory_xact_lock(42)", qOther},
		{"SELECT pg_try_advisory_xact_lock_shared(42)", qOther},
		{"SELECT 'advisory_lock' AS word", qSessionState}, // in quotes: conservatively a reset
		{"SELECT advisory FROM t WHERE lock_id = 1", qOther},
	} {
		if got := classifyQuery([]byte(c.q)); got.kind != c.kind {
			t.Errorf("%q: kind %d, want %d", c.q, got.kind, c.kind)
		}
	}
}

func BenchmarkMayChangeSession(b *testing.B) {
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 42")
	for i := 0; i < b.N; i++ {
		if mayChangeSession(q) {
			b.Fatal("pgbench's query taken for a session change")
		}
	}
}
