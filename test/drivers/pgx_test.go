package drivers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
)

// pgxRuns collects what the pgx clients saw.
type pgxRuns struct {
	mu       sync.Mutex
	pids     map[uint32]bool
	migrated int
	checks   int
}

func (r *pgxRuns) add(pids map[uint32]bool, checks int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p := range pids {
		r.pids[p] = true
	}
	if len(pids) > 1 {
		r.migrated++
	}
	r.checks += checks
}

// TestPgx drives the proxy with pgx v5 in its default mode (QueryExecModeCacheStatement: named
// prepared statements from its statement cache), plus its describe-cache, describe-exec, exec
// and simple-protocol modes, batches with a failing query in the middle, CopyFrom,
// transactions, and session settings that must follow each client. The proxy keeps only 8
// statements per server while the clients use more, so statements are also evicted and
// prepared again.
func TestPgx(t *testing.T) {
	t.Parallel()
	h := start(t, func(c *engine.Config) { c.Pool.MaxPreparedStatements = 8 })
	h.pg.Exec(t, `CREATE TABLE pgx_batch (client int, batch int, seq int)`)
	h.pg.Exec(t, `CREATE TABLE pgx_copy (client int, n int, label text, at timestamptz)`)
	h.pg.Exec(t, `CREATE TABLE pgx_tx (client int, n int, committed bool)`)
	h.pg.Exec(t, `CREATE SCHEMA s0; CREATE SCHEMA s1; CREATE SCHEMA s2`)
	for i := 0; i < 3; i++ {
		h.pg.Exec(t, fmt.Sprintf(`CREATE FUNCTION s%d.which() RETURNS int LANGUAGE sql AS 'SELECT %d'`, i, i))
	}

	const rounds = 8
	runs := &pgxRuns{pids: map[uint32]bool{}}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			if err := pgxClient(ctx, h, i, rounds, runs); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	pids := make([]int, 0, len(runs.pids))
	for p := range runs.pids {
		pids = append(pids, int(p))
	}
	summary{Driver: "pgx", Clients: clients - len(errs), PIDs: pids, Migrated: runs.migrated, Checks: runs.checks}.
		verify(t, clients*rounds*20)

	// Only committed work is in the tables: every successful batch, every COPY, every
	// committed transaction, nothing from failed batches or rolled-back transactions.
	want := map[string]string{
		`SELECT count(*) FROM pgx_batch`:                                                fmt.Sprint(clients * rounds * 10),
		`SELECT count(*) FROM pgx_batch WHERE batch < 0`:                                "0",
		`SELECT count(*) FROM pgx_copy`:                                                 fmt.Sprint(clients * rounds * 50),
		`SELECT count(*) FROM pgx_tx WHERE committed`:                                   fmt.Sprint(clients * rounds),
		`SELECT count(*) FROM pgx_tx WHERE NOT committed`:                               "0",
		`SELECT count(DISTINCT (client, n)) FROM pgx_tx`:                                fmt.Sprint(clients * rounds),
		`SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'`: "0",
	}
	for q, w := range want {
		if got := h.pg.QueryString(t, q); got != w {
			t.Errorf("%s = %s, want %s", q, got, w)
		}
	}
	h.checkPool(t)
}

// pgxClient is one client's workload.
func pgxClient(ctx context.Context, h *harness, i, rounds int, runs *pgxRuns) error {
	conn, err := pgx.Connect(ctx, h.dsn(fmt.Sprintf("application_name=pgx%d", i)))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	// Session settings, each by another mechanism: TimeZone is reported by the server
	// (ParameterStatus), search_path and a custom setting are not (replayed as SQL), and
	// application_name came with the startup packet.
	tz := fmt.Sprintf("Etc/GMT-%d", i%12)
	sp := fmt.Sprintf("s%d, public", i%3)
	for _, q := range []string{
		fmt.Sprintf("SET TimeZone = '%s'", tz),
		fmt.Sprintf("SET search_path = %s", sp),
		fmt.Sprintf("SET pgb.client = 'c%d'", i),
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}

	pids := map[uint32]bool{}
	checks := 0
	check := func(what string, got, want any) error {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("%s: got %v, want %v", what, got, want)
		}
		checks++
		return nil
	}
	for r := 0; r < rounds; r++ {
		// 1. The session follows the client (statement cache: a named statement).
		var app, gotTZ, gotSP, custom string
		var which int
		var pid uint32
		err := conn.QueryRow(ctx, `SELECT current_setting('application_name'), current_setting('TimeZone'),
			current_setting('search_path'), current_setting('pgb.client'), which(), pg_backend_pid()`).
			Scan(&app, &gotTZ, &gotSP, &custom, &which, &pid)
		if err != nil {
			return fmt.Errorf("round %d settings: %w", r, err)
		}
		pids[pid] = true
		for _, c := range []struct {
			what      string
			got, want any
		}{{"application_name", app, fmt.Sprintf("pgx%d", i)}, {"TimeZone", gotTZ, tz},
			{"search_path", gotSP, sp}, {"pgb.client", custom, fmt.Sprintf("c%d", i)}, {"which()", which, i % 3}} {
			if err := check(c.what, c.got, c.want); err != nil {
				return fmt.Errorf("round %d on server %d: %w", r, pid, err)
			}
		}

		// 2. More distinct statements than the proxy keeps per server (8), in every mode.
		for k := 0; k < 12; k++ {
			// (Describe-exec parses the unnamed statement in one round trip and binds it in
			// the next, which may run on another server.)
			mode := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheStatement,
				pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec,
				pgx.QueryExecModeSimpleProtocol}[k%6]
			var v int64
			var s string
			q := fmt.Sprintf("SELECT $1::bigint * %d, $2::text || '-%d'", k+1, k)
			if err := conn.QueryRow(ctx, q, mode, int64(r*100+i), "x").Scan(&v, &s); err != nil {
				return fmt.Errorf("round %d query %d (%v): %w", r, k, mode, err)
			}
			if err := check(q, fmt.Sprint(v, s), fmt.Sprint(int64(r*100+i)*int64(k+1), fmt.Sprintf("x-%d", k))); err != nil {
				return err
			}
		}

		// 3. A batch that succeeds.
		b := &pgx.Batch{}
		for n := 0; n < 10; n++ {
			b.Queue(`INSERT INTO pgx_batch VALUES ($1, $2, $3)`, i, r, n)
		}
		b.Queue(`SELECT count(*) FROM pgx_batch WHERE client = $1 AND batch = $2`, i, r)
		br := conn.SendBatch(ctx, b)
		for n := 0; n < 10; n++ {
			if _, err := br.Exec(); err != nil {
				br.Close()
				return fmt.Errorf("round %d batch insert %d: %w", r, n, err)
			}
		}
		var cnt int
		if err := br.QueryRow().Scan(&cnt); err != nil {
			br.Close()
			return fmt.Errorf("round %d batch count: %w", r, err)
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("round %d batch close: %w", r, err)
		}
		if err := check("rows seen inside the batch", cnt, 10); err != nil {
			return err
		}

		// 4. A batch with a failing query in the middle: the queries before it ran, it fails
		// with its own error, the ones after it are not run, and the whole implicit
		// transaction is rolled back.
		b = &pgx.Batch{}
		for n := 0; n < 5; n++ {
			b.Queue(`INSERT INTO pgx_batch VALUES ($1, $2, $3)`, i, -1-r, n)
		}
		b.Queue(`SELECT 1 / $1::int`, 0)
		for n := 5; n < 10; n++ {
			b.Queue(`INSERT INTO pgx_batch VALUES ($1, $2, $3)`, i, -1-r, n)
		}
		br = conn.SendBatch(ctx, b)
		for n := 0; n < 5; n++ {
			if _, err := br.Exec(); err != nil {
				br.Close()
				return fmt.Errorf("round %d failing batch, insert %d before the error: %w", r, n, err)
			}
		}
		_, err = br.Exec()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "22012" {
			br.Close()
			return fmt.Errorf("round %d failing batch: got %v, want division_by_zero (22012)", r, err)
		}
		checks++
		for n := 5; n < 10; n++ {
			if _, err := br.Exec(); err == nil {
				br.Close()
				return fmt.Errorf("round %d failing batch: insert %d after the error succeeded", r, n)
			}
		}
		checks++
		if err := br.Close(); err == nil || !errors.As(err, &pe) || pe.Code != "22012" {
			return fmt.Errorf("round %d failing batch close: got %v, want the batch's error", r, err)
		}
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgx_batch WHERE client = $1 AND batch = $2`, i, -1-r).Scan(&cnt); err != nil {
			return fmt.Errorf("round %d after failing batch: %w", r, err)
		}
		if err := check("rows left by the failed batch", cnt, 0); err != nil {
			return err
		}

		// 5. CopyFrom.
		rows := make([][]any, 50)
		at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
		for n := range rows {
			rows[n] = []any{i, r*50 + n, fmt.Sprintf("row %d/%d", i, n), at}
		}
		copied, err := conn.CopyFrom(ctx, pgx.Identifier{"public", "pgx_copy"}, []string{"client", "n", "label", "at"}, pgx.CopyFromRows(rows))
		if err != nil {
			return fmt.Errorf("round %d CopyFrom: %w", r, err)
		}
		if err := check("rows copied", copied, 50); err != nil {
			return err
		}

		// 6. Transactions: one committed, one rolled back after a failed statement, one
		// rolled back on purpose; a batch inside the committed one.
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgx_tx VALUES ($1, $2, true)`, i, r); err != nil {
			return fmt.Errorf("round %d tx insert: %w", r, err)
		}
		b = &pgx.Batch{}
		b.Queue(`SELECT count(*) FROM pgx_tx WHERE client = $1 AND n = $2`, i, r)
		b.Queue(`SELECT txid_current_if_assigned() IS NOT NULL`)
		br = tx.SendBatch(ctx, b)
		var inTx bool
		err1 := br.QueryRow().Scan(&cnt)
		err2 := br.QueryRow().Scan(&inTx)
		if err := errors.Join(err1, err2, br.Close()); err != nil {
			return fmt.Errorf("round %d batch in tx: %w", r, err)
		}
		if err := errors.Join(check("own row inside tx", cnt, 1), check("txid assigned inside tx", inTx, true)); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("round %d commit: %w", r, err)
		}

		tx, err = conn.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgx_tx VALUES ($1, $2, false)`, i, r); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT 1 / $1::int`, 0); err == nil {
			return fmt.Errorf("round %d: division by zero succeeded", r)
		}
		if _, err := tx.Exec(ctx, `SELECT 1`); err == nil || !errors.As(err, &pe) || pe.Code != "25P02" {
			return fmt.Errorf("round %d: statement in a failed transaction: got %v, want 25P02", r, err)
		}
		checks++
		if err := tx.Rollback(ctx); err != nil {
			return fmt.Errorf("round %d rollback: %w", r, err)
		}
		if _, err := conn.Exec(ctx, `BEGIN; INSERT INTO pgx_tx VALUES ($1, $2, false); ROLLBACK`, i, r); err == nil {
			return fmt.Errorf("round %d: multi-statement query with arguments was accepted", r)
		}
		tx, err = conn.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgx_tx VALUES ($1, $2, false)`, i, r); err != nil {
			return err
		}
		if err := tx.Rollback(ctx); err != nil {
			return err
		}
	}
	if err := conn.PgConn().SyncConn(ctx); err != nil {
		return err
	}
	runs.add(pids, checks)
	return nil
}
