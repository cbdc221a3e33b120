package drivers

import (
	"testing"
	"time"
)

// TestPsycopg runs python/psycopg_client.py (Debian's python3-psycopg): simple and extended
// queries, server-side prepared statements (more than prepared_max, so psycopg DEALLOCATEs
// with the extended protocol), pipeline mode with an error inside, COPY in and
// out, transactions, settings that follow the client.
func TestPsycopg(t *testing.T) {
	t.Parallel()
	py := python(t, "psycopg")
	h := start(t, nil)
	h.pg.Exec(t, `CREATE TABLE psy_pipe (client int, round int, n int)`)
	h.pg.Exec(t, `CREATE TABLE psy_copy (client int, n int, label text)`)
	h.pg.Exec(t, `CREATE TABLE psy_tx (client int, n int, committed bool)`)
	const rounds = 6
	s := runDriver(t, 2*time.Minute, "python", append(h.env(), "DRIVER_ROUNDS="+itoa(rounds)), py, "psycopg_client.py")
	s.verify(t, clients*rounds*20)
	for q, want := range map[string]string{
		`SELECT count(*) FROM psy_pipe WHERE n >= 0`:      itoa(clients * rounds * 20),
		`SELECT count(*) FROM psy_pipe WHERE n < 0`:       itoa(clients * rounds), // only n = -1, synced before the error
		`SELECT count(*) FROM psy_pipe WHERE n < -1`:      "0",
		`SELECT count(*) FROM psy_copy`:                   itoa(clients * rounds * 50),
		`SELECT count(*) FROM psy_tx WHERE committed`:     itoa(clients * (rounds + 1)),
		`SELECT count(*) FROM psy_tx WHERE NOT committed`: "0",
	} {
		if got := h.pg.QueryString(t, q); got != want {
			t.Errorf("%s = %s, want %s", q, got, want)
		}
	}
	h.checkPool(t)
}

// TestAsyncpg runs python/asyncpg_client.py (Debian's python3-asyncpg): prepared statements
// and the statement cache (Parse/Describe before Bind), executemany, copy_records_to_table,
// transactions and savepoints, a few binary types, an asyncpg pool, many concurrent
// connections.
func TestAsyncpg(t *testing.T) {
	t.Parallel()
	py := python(t, "asyncpg")
	h := start(t, nil)
	h.pg.Exec(t, `CREATE TABLE apg_many (client int, round int, n int)`)
	h.pg.Exec(t, `CREATE TABLE apg_copy (client int, n int, label text)`)
	h.pg.Exec(t, `CREATE TABLE apg_tx (client int, n int, committed bool)`)
	const rounds = 6
	s := runDriver(t, 2*time.Minute, "python", append(h.env(), "DRIVER_ROUNDS="+itoa(rounds)), py, "asyncpg_client.py")
	s.verify(t, clients*rounds*15)
	for q, want := range map[string]string{
		`SELECT count(*) FROM apg_many WHERE round >= 0`:  itoa(clients * rounds * 20),
		`SELECT count(*) FROM apg_many WHERE round < 0`:   "0",
		`SELECT count(*) FROM apg_copy`:                   itoa(clients * rounds * 50),
		`SELECT count(*) FROM apg_tx WHERE committed`:     itoa(clients*rounds + 3*clients),
		`SELECT count(*) FROM apg_tx WHERE NOT committed`: "0",
	} {
		if got := h.pg.QueryString(t, q); got != want {
			t.Errorf("%s = %s, want %s", q, got, want)
		}
	}
	h.checkPool(t)
}
