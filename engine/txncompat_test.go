package engine_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// Minimal reproductions of driver failures found by test/drivers. Each uses a pool of one
// server connection, so two clients share it turn by turn.

func onePoolProxy(t *testing.T, mutate func(*engine.Config)) *proxy {
	t.Helper()
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	return startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.DefaultPoolSize = 1
		if mutate != nil {
			mutate(c)
		}
	}, primary)
}

func execOK(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func setting(t *testing.T, c *pgx.Conn, name string) string {
	t.Helper()
	var v *string
	if err := c.QueryRow(context.Background(), "SELECT current_setting($1, true)", name).Scan(&v); err != nil {
		t.Fatalf("current_setting(%s): %v", name, err)
	}
	if v == nil {
		return ""
	}
	return *v
}

// The RESET the proxy sends while replaying one client's settings must not make it forget the
// client's other settings (it did: the RESET's CommandComplete was taken for the client's own
// RESET ALL, the client's SQL-replayed settings were dropped from both sides' bookkeeping while
// the server kept them, and they then leaked to the next client).
func TestTxnReplayResetKeepsSettings(t *testing.T) {
	p := onePoolProxy(t, nil)
	a, b := connect(t, p.dsn(p.rw)), connect(t, p.dsn(p.rw))
	execOK(t, a, "SET pgb.a = 'a'")
	execOK(t, b, "SET pgb.b = 'b'")
	// a lands on the server b left: the proxy sets pgb.a and resets pgb.b.
	if got := setting(t, a, "pgb.a"); got != "a" {
		t.Fatalf("a: pgb.a = %q, want a", got)
	}
	if got := setting(t, a, "pgb.b"); got != "" {
		t.Fatalf("a sees b's pgb.b = %q", got)
	}
	if got := setting(t, b, "pgb.a"); got != "" {
		t.Fatalf("b sees a's pgb.a = %q", got)
	}
	if got := setting(t, b, "pgb.b"); got != "b" {
		t.Fatalf("b: pgb.b = %q, want b", got)
	}
	if got := setting(t, a, "pgb.a"); got != "a" {
		t.Fatalf("a lost pgb.a: %q", got)
	}
}

// A SET of a setting the server reports, spelt in another case than the server spells it
// ("timezone" for "TimeZone"), is the same setting: it must not be replayed as SQL too, where
// the proxy's RESET of it undid another client's TimeZone.
func TestTxnSetReportedSettingAnyCase(t *testing.T) {
	p := onePoolProxy(t, nil)
	a := connect(t, p.dsn(p.rw))
	d := connect(t, p.dsn(p.rw, "TimeZone=Etc/GMT-7", "DateStyle=SQL,DMY"))
	execOK(t, a, "SET timezone = 'Etc/GMT-3'")
	execOK(t, a, "SET datestyle TO German")
	for i := 0; i < 2; i++ {
		if got := setting(t, d, "TimeZone"); got != "Etc/GMT-7" {
			t.Fatalf("d: TimeZone = %q, want its startup value Etc/GMT-7", got)
		}
		if got := setting(t, d, "DateStyle"); got != "SQL, DMY" {
			t.Fatalf("d: DateStyle = %q, want its startup value SQL, DMY", got)
		}
		if got := setting(t, a, "TimeZone"); got != "Etc/GMT-3" {
			t.Fatalf("a: TimeZone = %q, want Etc/GMT-3", got)
		}
		if got := setting(t, a, "DateStyle"); got != "German, DMY" {
			t.Fatalf("a: DateStyle = %q, want German, DMY", got)
		}
	}
}

// When an error earlier in a pipeline makes the server skip the Close the proxy injected to
// evict a statement, the server still has that statement: preparing it again later must not
// fail with "prepared statement already exists".
func TestTxnSkippedEvictionClose(t *testing.T) {
	p := onePoolProxy(t, func(c *engine.Config) { c.Pool.MaxPreparedStatements = 1 })
	c := connect(t, p.dsn(p.rw))
	pc := c.PgConn()
	ctx := context.Background()
	if _, err := pc.Prepare(ctx, "a", "SELECT 1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx, "b", "SELECT 2", nil); err != nil { // evicts a on the server
		t.Fatal(err)
	}
	// One pipeline: an error, then a statement the server lacks. The proxy injects "Close b,
	// Parse a" behind the error, and the server skips both.
	batch := &pgconn.Batch{}
	batch.ExecParams("SELECT 1/0", nil, nil, nil, nil)
	batch.ExecPrepared("a", nil, nil, nil)
	_, err := pc.ExecBatch(ctx, batch).ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "22012" {
		t.Fatalf("batch: got %v, want division_by_zero", err)
	}
	for _, name := range []string{"b", "a", "b"} {
		res := pc.ExecPrepared(ctx, name, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatalf("execute %s after the failed pipeline: %v", name, res.Err)
		}
	}
}

// execParams runs sql with the extended protocol (unnamed statement), as pgjdbc and psycopg's
// pipeline mode send every statement.
func execParams(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	if _, err := c.PgConn().ExecParams(context.Background(), sql, nil, nil, nil, nil).Close(); err != nil {
		t.Fatalf("%s (extended protocol): %v", sql, err)
	}
}

// A SET sent with the extended protocol (pgjdbc sends every statement so) is session state
// like a simple-query SET: it follows its client and never reaches another client. It used to
// pass unnoticed, stay on the server for the next client, and be lost for its own client.
func TestTxnExtendedProtocolSet(t *testing.T) {
	p := onePoolProxy(t, nil)
	a, b := connect(t, p.dsn(p.rw)), connect(t, p.dsn(p.rw))
	execParams(t, a, "SET pgb.a = 'a'")
	execParams(t, a, "SET pgb.c TO 'c'")
	if got := setting(t, b, "pgb.a"); got != "" {
		t.Fatalf("b sees a's pgb.a = %q", got)
	}
	execParams(t, b, "SET pgb.b = 'b'")
	if got := setting(t, a, "pgb.a"); got != "a" {
		t.Fatalf("a: pgb.a = %q, want a", got)
	}
	if got := setting(t, a, "pgb.b"); got != "" {
		t.Fatalf("a sees b's pgb.b = %q", got)
	}
	execParams(t, a, "RESET pgb.a")
	if got := setting(t, b, "pgb.b"); got != "b" {
		t.Fatalf("b: pgb.b = %q, want b", got)
	}
	if got, got2 := setting(t, a, "pgb.a"), setting(t, a, "pgb.c"); got != "" || got2 != "c" {
		t.Fatalf("a after RESET pgb.a: pgb.a = %q (want empty), pgb.c = %q (want c)", got, got2)
	}
	// A SET whose implicit transaction fails later in the same Sync is rolled back: it must not
	// be replayed either.
	batch := &pgconn.Batch{}
	batch.ExecParams("SET pgb.a = 'rolled back'", nil, nil, nil, nil)
	batch.ExecParams("SELECT 1/0", nil, nil, nil, nil)
	if _, err := a.PgConn().ExecBatch(context.Background(), batch).ReadAll(); err == nil {
		t.Fatal("batch with a division by zero succeeded")
	}
	if got := setting(t, b, "pgb.b"); got != "b" {
		t.Fatalf("b: pgb.b = %q, want b", got)
	}
	if got := setting(t, a, "pgb.a"); got != "" {
		t.Fatalf("a: pgb.a = %q after its SET was rolled back", got)
	}
	// A named prepared SET, executed after the client moved to another server.
	if _, err := a.PgConn().Prepare(context.Background(), "setx", "SET pgb.x = 'x'", nil); err != nil {
		t.Fatal(err)
	}
	setting(t, b, "pgb.b")
	if _, err := a.PgConn().ExecPrepared(context.Background(), "setx", nil, nil, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if got := setting(t, b, "pgb.x"); got != "" {
		t.Fatalf("b sees a's pgb.x = %q", got)
	}
	if got := setting(t, a, "pgb.x"); got != "x" {
		t.Fatalf("a: pgb.x = %q, want x", got)
	}
}

// RESET of one setting forgets that setting only; the client's other settings still follow it.
func TestTxnResetOneSetting(t *testing.T) {
	p := onePoolProxy(t, nil)
	a, b := connect(t, p.dsn(p.rw)), connect(t, p.dsn(p.rw))
	execOK(t, a, "SET pgb.a = 'a'")
	execOK(t, a, "SET pgb.c = 'c'")
	execOK(t, a, "RESET pgb.a")
	execOK(t, b, "SET pgb.b = 'b'")
	if got, got2 := setting(t, a, "pgb.a"), setting(t, a, "pgb.c"); got != "" || got2 != "c" {
		t.Fatalf("a after RESET pgb.a: pgb.a = %q (want empty), pgb.c = %q (want c)", got, got2)
	}
	if got := setting(t, b, "pgb.c"); got != "" {
		t.Fatalf("b sees a's pgb.c = %q", got)
	}
}

// DEALLOCATE of a client's protocol-level statement sent with the extended protocol (psycopg
// sends its DEALLOCATEs so once it has more than prepared_max statements) is the client's own
// business: the server knows the statement under another name and answered "does not exist".
func TestTxnExtendedProtocolDeallocate(t *testing.T) {
	p := onePoolProxy(t, nil)
	c := connect(t, p.dsn(p.rw))
	pc := c.PgConn()
	ctx := context.Background()
	if _, err := pc.Prepare(ctx, "_pg3_0", "SELECT 41 + $1::int", nil); err != nil {
		t.Fatal(err)
	}
	// Parse, Bind, Describe portal, Execute, Sync, as libpq's PQsendQueryParams sends it; and
	// then the statement-describing form.
	res := pc.ExecParams(ctx, "DEALLOCATE _pg3_0", nil, nil, nil, nil).Read()
	if res.Err != nil || res.CommandTag.String() != "DEALLOCATE" {
		t.Fatalf("DEALLOCATE (extended protocol): tag %q, %v", res.CommandTag, res.Err)
	}
	err := pc.ExecPrepared(ctx, "_pg3_0", [][]byte{[]byte("1")}, nil, nil).Read().Err
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "26000" {
		t.Fatalf("the deallocated statement: got %v, want 26000", err)
	}
	if _, err := pc.Prepare(ctx, "_pg3_0", "SELECT 40 + $1::int", nil); err != nil {
		t.Fatalf("prepare the name again: %v", err)
	}
	sd, err := pc.Prepare(ctx, "", "DEALLOCATE _pg3_0", nil)
	if err != nil || len(sd.Fields) != 0 || len(sd.ParamOIDs) != 0 {
		t.Fatalf("describe DEALLOCATE: %+v %v", sd, err)
	}
	if res := pc.ExecPrepared(ctx, "", nil, nil, nil).Read(); res.Err != nil || res.CommandTag.String() != "DEALLOCATE" {
		t.Fatalf("execute the unnamed DEALLOCATE: tag %q, %v", res.CommandTag, res.Err)
	}
	// A DEALLOCATE of a name the client does not have is PostgreSQL's to answer.
	err = pc.ExecParams(ctx, "DEALLOCATE _pg3_0", nil, nil, nil, nil).Read().Err
	if !errors.As(err, &pe) || pe.Code != "26000" {
		t.Fatalf("DEALLOCATE of an unknown name: got %v, want 26000", err)
	}
	if got := queryInt(t, c, "SELECT 1"); got != 1 {
		t.Fatalf("after: %d", got)
	}
}

// The unnamed statement belongs to the client that parsed it, also when it binds it in a later
// round trip (pgx's QueryExecModeDescribeExec, sqlx, libpq's PQprepare("") then
// PQexecPrepared("")): another client's unnamed statement or a settings replay on that server
// in between must not make it run someone else's SQL, nor fail.
func TestTxnUnnamedStatementAcrossSyncs(t *testing.T) {
	p := onePoolProxy(t, nil)
	a, b := connect(t, p.dsn(p.rw)), connect(t, p.dsn(p.rw))
	ctx := context.Background()
	execOK(t, b, "SET pgb.b = 'b'") // so that a's next attach replays settings (a simple Query)
	if _, err := a.PgConn().Prepare(ctx, "", "SELECT 'a'::text || $1::text", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.PgConn().Prepare(ctx, "", "SELECT 'b'::text || $1::text", nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		conn *pgx.Conn
		want string
	}{{a, "a1"}, {b, "b1"}, {a, "a1"}} {
		res := c.conn.PgConn().ExecPrepared(ctx, "", [][]byte{[]byte("1")}, nil, nil).Read()
		if res.Err != nil {
			t.Fatalf("execute the unnamed statement: %v", res.Err)
		}
		if len(res.Rows) != 1 || string(res.Rows[0][0]) != c.want {
			t.Fatalf("execute the unnamed statement: got %q, want %q", res.Rows, c.want)
		}
	}
}
