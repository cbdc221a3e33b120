package drivers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// observeSQL reports, in one row, every kind of session state a client could leave behind on
// a server: settings, role, an open transaction and its writes, prepared statements, temporary
// tables, advisory locks, LISTEN channels, open cursors. $1 is echoed so that a client that got
// another client's answer (a busy server handed over) is caught too.
const observeSQL = `SELECT pg_backend_pid()::text, $1::text, current_setting('application_name'),
	coalesce(current_setting('pgb.leak', true), ''), current_setting('statement_timeout'),
	current_setting('search_path'), current_setting('TimeZone'),
	current_setting('default_transaction_isolation'), current_user::text, session_user::text,
	(txid_current_if_assigned() IS NOT NULL)::text,
	(SELECT count(*) FROM leak_t WHERE v LIKE 'uncommitted%')::text,
	(SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'leak%')::text,
	(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE 'leak%')::text,
	(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::text,
	(SELECT count(*) FROM pg_listening_channels())::text,
	(SELECT count(*) FROM pg_cursors WHERE name LIKE 'leak%')::text`

var observeFields = []string{"pid", "echo", "application_name", "pgb.leak", "statement_timeout",
	"search_path", "TimeZone", "default_transaction_isolation", "current_user", "session_user",
	"transaction open", "uncommitted rows visible", "leak* prepared statements",
	"leak* temporary tables", "advisory locks held", "LISTEN channels", "leak* cursors"}

func observe(ctx context.Context, c *pgx.Conn, token string) ([]string, error) {
	row := make([]string, len(observeFields))
	dst := make([]any, len(row))
	for i := range row {
		dst[i] = &row[i]
	}
	err := c.QueryRow(ctx, observeSQL, token).Scan(dst...)
	return row, err
}

// diff describes how an observation differs from the baseline, ignoring the per-client fields
// (pid, echo, application_name).
func diff(got, base []string) string {
	var d []string
	for i := 3; i < len(got); i++ {
		if got[i] != base[i] {
			d = append(d, fmt.Sprintf("%s = %q (clean: %q)", observeFields[i], got[i], base[i]))
		}
	}
	return strings.Join(d, ", ")
}

// leakCase is one way to leave state behind. steps run on the leaking client in order:
//
//	"OBSERVE"    the observation query, which must show the state (proves the check sees it)
//	"!SQL"       SQL that must fail
//	"x:SQL"      SQL sent with the extended protocol (as pgjdbc, or psycopg in a pipeline)
//	"SQL"        SQL sent as a simple Query
//
// then the client stays connected and idle ("stay"), terminates ("close"), or drops its TCP
// connection without a Terminate, mid-request when its last step is "busy" ("drop").
type leakCase struct {
	name    string
	options string // startup options of the leaking client
	steps   []string
	then    string
	// own, when set, is checked on the leaking client after the observers ran (its own state
	// must have survived its moves between servers).
	own func(ctx context.Context, c *pgx.Conn) error
	// other, when set, is an extra check on each observer.
	other func(ctx context.Context, c *pgx.Conn) error
}

func ownSetting(name, want string) func(ctx context.Context, c *pgx.Conn) error {
	return func(ctx context.Context, c *pgx.Conn) error {
		var got string
		if err := c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&got); err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("the leaking client lost its own %s: %q, want %q", name, got, want)
		}
		return nil
	}
}

// TestNoStateLeaks (issue 3, item 2): a client leaves state on a server (an open transaction,
// a SET, prepared statements, temporary tables, an advisory lock, ...), and other clients,
// which share the pool's two servers with it, must never see any of it. The observers run
// until each of the two servers, including the one the leaking client used last, has served
// them several times.
func TestNoStateLeaks(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	h.pg.Exec(t, `CREATE TABLE leak_t (v text)`)
	h.pg.Exec(t, `CREATE ROLE leak_role NOLOGIN`)
	h.pg.Exec(t, `GRANT SELECT ON leak_t TO leak_role`)
	ctx := t.Context()
	direct := h.direct(t)
	base, err := observe(ctx, direct, "base")
	if err != nil {
		t.Fatal(err)
	}
	// LISTEN takes effect at commit, so a client cannot observe its own LISTEN in the
	// transaction that ran it, and through the proxy not after it either (the server is reset
	// once the transaction ends). Show on a direct connection that the check sees it.
	if _, err := direct.Exec(ctx, "LISTEN leak_chan"); err != nil {
		t.Fatal(err)
	}
	if row, err := observe(ctx, direct, "base"); err != nil || diff(row, base) == "" {
		t.Fatalf("the observation does not show a LISTEN (%v)", err)
	}
	if _, err := direct.Exec(ctx, "UNLISTEN *"); err != nil {
		t.Fatal(err)
	}
	cases := []leakCase{
		{name: "open transaction, Terminate", then: "close",
			steps: []string{"BEGIN", "INSERT INTO leak_t VALUES ('uncommitted 1')", "OBSERVE"}},
		{name: "open transaction, connection dropped", then: "drop",
			steps: []string{"BEGIN", "x:INSERT INTO leak_t VALUES ('uncommitted 2')", "OBSERVE"}},
		{name: "failed transaction, connection dropped", then: "drop",
			steps: []string{"BEGIN", "INSERT INTO leak_t VALUES ('uncommitted 3')", "OBSERVE", "!SELECT 1/0"}},
		{name: "busy server, connection dropped", then: "drop",
			steps: []string{"BEGIN", "INSERT INTO leak_t VALUES ('uncommitted 4')", "OBSERVE", "busy"}},
		{name: "SET", then: "stay",
			steps: []string{"SET pgb.leak = 'set'", "SET statement_timeout = '4321ms'",
				"SET search_path = pg_catalog, public", "SET TimeZone = 'Asia/Tokyo'", "OBSERVE"},
			own: ownSetting("pgb.leak", "set")},
		{name: "SET, extended protocol", then: "stay",
			steps: []string{"x:SET pgb.leak = 'set extended'", "x:SET statement_timeout TO 4322", "OBSERVE"},
			own:   ownSetting("statement_timeout", "4322ms")},
		{name: "SET, client leaves", then: "close",
			steps: []string{"SET pgb.leak = 'gone'", "x:SET search_path = pg_catalog, public", "OBSERVE"}},
		{name: "startup options", options: "-c statement_timeout=4323 -c pgb.leak=startup", then: "stay",
			steps: []string{"OBSERVE"}, own: ownSetting("pgb.leak", "startup")},
		{name: "SET inside a committed transaction", then: "stay",
			steps: []string{"BEGIN", "SET pgb.leak = 'in tx'", "SET statement_timeout = 4324", "OBSERVE", "COMMIT"}},
		{name: "SET ROLE and SESSION CHARACTERISTICS", then: "stay",
			steps: []string{"BEGIN", "SET ROLE leak_role", "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", "OBSERVE", "COMMIT"}},
		{name: "SET ROLE, extended protocol", then: "stay",
			steps: []string{"BEGIN", "x:SET ROLE leak_role", "OBSERVE", "COMMIT"}},
		{name: "set_config", then: "stay",
			steps: []string{"SELECT set_config('pgb.leak', 'set_config', false)", "SELECT set_config('statement_timeout', '4325', false)", "OBSERVE"},
			own:   ownSetting("pgb.leak", "set_config")},
		{name: "set_config, extended protocol", then: "stay",
			steps: []string{"x:SELECT pg_catalog.set_config('pgb.leak', 'set_config extended', false)", "OBSERVE"},
			own:   ownSetting("pgb.leak", "set_config extended")},
		{name: "set_config inside a committed transaction", then: "stay",
			steps: []string{"BEGIN", "SELECT set_config('pgb.leak', 'set_config in tx', false)", "OBSERVE", "COMMIT"}},
		// Not followed (the client loses it when its transaction ends; README), but reset.
		{name: "set_config the proxy cannot read", then: "stay",
			steps: []string{"BEGIN", "SELECT set_config('pgb.leak', 'computed ' || 1, false)", "OBSERVE", "COMMIT"}},
		{name: "protocol-level named prepared statement", then: "stay",
			steps: []string{"OBSERVE:prepare"},
			other: func(ctx context.Context, c *pgx.Conn) error {
				err := c.PgConn().ExecPrepared(ctx, "leakstmt", nil, nil, nil).Read().Err
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "26000" {
					return fmt.Errorf("another client's statement leakstmt: got %v, want 26000 (does not exist)", err)
				}
				return nil
			},
			own: func(ctx context.Context, c *pgx.Conn) error {
				return c.PgConn().ExecPrepared(ctx, "leakstmt", nil, nil, nil).Read().Err
			}},
		{name: "SQL PREPARE", then: "stay",
			steps: []string{"BEGIN", "PREPARE leakq AS SELECT 'leaked'", "OBSERVE", "COMMIT"}},
		{name: "SQL PREPARE, extended protocol", then: "close",
			steps: []string{"BEGIN", "x:PREPARE leakq2 AS SELECT 'leaked'", "OBSERVE", "COMMIT"}},
		{name: "temporary table ON COMMIT DROP", then: "stay",
			steps: []string{"BEGIN", "CREATE TEMP TABLE leak_tmp (x int) ON COMMIT DROP", "INSERT INTO leak_tmp VALUES (1)", "OBSERVE", "COMMIT"}},
		{name: "temporary table", then: "stay",
			steps: []string{"BEGIN", "CREATE TEMP TABLE leak_tmp2 (x int)", "OBSERVE", "COMMIT"}},
		{name: "temporary table, extended protocol", then: "stay",
			steps: []string{"BEGIN", "x:CREATE TEMPORARY TABLE leak_tmp3 (x int)", "OBSERVE", "COMMIT"}},
		{name: "session advisory lock", then: "stay",
			steps: []string{"BEGIN", "SELECT pg_advisory_lock(4242)", "OBSERVE", "COMMIT"}},
		{name: "session advisory lock, extended protocol", then: "stay",
			steps: []string{"BEGIN", "x:SELECT pg_try_advisory_lock(4243)", "OBSERVE", "COMMIT"}},
		{name: "LISTEN", then: "stay", steps: []string{"LISTEN leak_chan"}},
		{name: "LISTEN, extended protocol", then: "close", steps: []string{"x:LISTEN leak_chan2"}},
		{name: "cursor WITH HOLD", then: "stay",
			steps: []string{"BEGIN", "DECLARE leakc CURSOR WITH HOLD FOR SELECT 1", "OBSERVE", "COMMIT"}},
	}
	for _, lc := range cases {
		t.Run(lc.name, func(t *testing.T) {
			runLeakCase(t, h, base, lc)
		})
	}
	// Nothing uncommitted ever became visible, and no server was left inside a transaction.
	for q, want := range map[string]string{
		`SELECT count(*) FROM leak_t`: "0",
		`SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'`: "0",
	} {
		if got := h.pg.QueryString(t, q); got != want {
			t.Errorf("%s = %s, want %s", q, got, want)
		}
	}
	h.checkPool(t)
}

func runLeakCase(t *testing.T, h *harness, base []string, lc leakCase) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	extra := []string{"application_name=leaker"}
	if lc.options != "" {
		extra = append(extra, "options='"+lc.options+"'")
	}
	leaker := h.connect(t, extra...)
	leakPID := ""
	for _, step := range lc.steps {
		var err error
		switch {
		case step == "OBSERVE" || step == "OBSERVE:prepare":
			if step == "OBSERVE:prepare" {
				if _, err := leaker.PgConn().Prepare(ctx, "leakstmt", "SELECT 'leaked' AS v", nil); err != nil {
					t.Fatal(err)
				}
				if err := lc.own(ctx, leaker); err != nil {
					t.Fatalf("the leaking client cannot use its own statement: %v", err)
				}
				row, err := observe(ctx, leaker, "leaker")
				if err != nil {
					t.Fatal(err)
				}
				leakPID = row[0]
				continue
			}
			row, err := observe(ctx, leaker, "leaker")
			if err != nil {
				t.Fatalf("observe on the leaking client: %v", err)
			}
			leakPID = row[0]
			if d := diff(row, base); d == "" {
				t.Fatalf("the leaking client's own observation shows nothing: the check cannot see this state")
			} else {
				t.Logf("leaking client on server %s: %s", leakPID, d)
			}
		case step == "busy":
			// A request the client never waits for: the server is busy when the client goes.
			_, err = leaker.PgConn().Conn().Write([]byte("Q\x00\x00\x00\x25SELECT pg_sleep(0.3), 'busy'\x00"))
		case strings.HasPrefix(step, "!"):
			if _, err := leaker.Exec(ctx, step[1:]); err == nil {
				t.Fatalf("%s: succeeded, want an error", step[1:])
			}
		case strings.HasPrefix(step, "x:"):
			_, err = leaker.PgConn().ExecParams(ctx, step[2:], nil, nil, nil, nil).Close()
		default:
			_, err = leaker.Exec(ctx, step)
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	switch lc.then {
	case "close":
		if err := leaker.Close(ctx); err != nil {
			t.Fatal(err)
		}
	case "drop":
		if err := leaker.PgConn().Conn().Close(); err != nil {
			t.Fatal(err)
		}
	}

	// Observers share the two servers (the leaking client, when it stays, is idle and holds
	// none). They stop once every server, the leaking client's included, served them several
	// times.
	const observers, perServer, maxRounds = 6, 4, 150
	var mu sync.Mutex
	seen := map[string]int{}
	covered := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) < poolSize {
			return false
		}
		for _, n := range seen {
			if n < perServer {
				return false
			}
		}
		if leakPID != "" && seen[leakPID] < perServer && h.serverAlive(ctx, leakPID) {
			return false
		}
		return true
	}
	var wg sync.WaitGroup
	errs := make(chan error, observers)
	for o := 0; o < observers; o++ {
		wg.Add(1)
		go func(o int) {
			defer wg.Done()
			c, err := pgx.Connect(ctx, h.dsn(fmt.Sprintf("application_name=observer%d", o)))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for r := 0; r < maxRounds && !covered(); r++ {
				token := fmt.Sprintf("o%d-%d", o, r)
				row, err := observe(ctx, c, token)
				if err != nil {
					errs <- fmt.Errorf("observer %d: %w", o, err)
					return
				}
				if row[1] != token || row[2] != fmt.Sprintf("observer%d", o) {
					errs <- fmt.Errorf("observer %d got another client's answer or session: echo %q, application_name %q", o, row[1], row[2])
					return
				}
				if d := diff(row, base); d != "" {
					errs <- fmt.Errorf("observer %d on server %s sees leaked state: %s", o, row[0], d)
					return
				}
				if lc.other != nil {
					if err := lc.other(ctx, c); err != nil {
						errs <- fmt.Errorf("observer %d: %w", o, err)
						return
					}
				}
				mu.Lock()
				seen[row[0]]++
				mu.Unlock()
			}
		}(o)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if !t.Failed() && !covered() {
		t.Errorf("observers ran on servers %v, never covering the leaking client's server %s %d times", seen, leakPID, perServer)
	}
	if lc.own != nil && lc.then == "stay" {
		if err := lc.own(ctx, leaker); err != nil {
			t.Error(err)
		}
	}
	t.Logf("observers' transactions per server: %v (leaking client last on %s)", seen, leakPID)
}

// serverAlive reports whether the PostgreSQL backend pid still exists (the proxy may have
// closed the server the leaking client abandoned mid-request).
func (h *harness) serverAlive(ctx context.Context, pid string) bool {
	c, err := h.pg.Connect(ctx)
	if err != nil {
		return true
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid::text = $1", pid).Scan(&n); err != nil {
		return true
	}
	return n > 0
}
