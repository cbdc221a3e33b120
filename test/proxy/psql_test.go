package proxy_test

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// step bounds how long psql may take to answer one command.
const step = 10 * time.Second

// TestPsqlInteractive (issue 2, done-when 1): psql on a terminal, through the read-write and
// the read-only port, in session and transaction mode: the banner and prompt, \d, a query, a
// transaction (the prompt shows its state), a failed statement, Ctrl-C cancelling a running
// query (psql sends a CancelRequest with the BackendKeyData the proxy gave it), and \q.
func TestPsqlInteractive(t *testing.T) {
	t.Parallel()
	psql := pgtest.Program(t, "psql")
	c := newCluster(t, nil)
	c.primary.Exec(t, "CREATE TABLE psql_items (id serial PRIMARY KEY, name text NOT NULL)")
	c.replica.WaitCatchUp(t)
	wrote := 0
	for _, mode := range []pool.Mode{pool.ModeSession, pool.ModeTransaction} {
		d := c.startProxy(t, mode, nil)
		for _, p := range c.ports(d) {
			if t.Run(string(mode)+"/"+p.name, func(t *testing.T) {
				runPsql(t, psql, p, string(mode))
			}) && !p.recovery {
				wrote++
			}
		}
	}
	// Every row written through the read-write port is on the primary.
	if n := c.primary.QueryString(t, "SELECT count(*) FROM psql_items WHERE name LIKE 'from-psql-%'"); n != strconv.Itoa(wrote) {
		t.Errorf("primary has %s rows written through psql, want %d", n, wrote)
	}
}

func runPsql(t *testing.T, psql string, p port, mode string) {
	env := []string{"TERM=dumb", "HOME=" + t.TempDir(), "PSQL_HISTORY=/dev/null", "PAGER=cat", "PSQL_PAGER=cat",
		"LC_ALL=C", "PATH=" + os.Getenv("PATH")}
	tm := startTerminal(t, env, psql, "-X", daemon.ConnString(p.addr))
	prompt := func(state string) { t.Helper(); tm.Expect(`postgres=`+regexp.QuoteMeta(state)+`# $`, step) }

	tm.Expect(`psql \(\d+.*\)\s+Type "help" for help\.`, step)
	prompt("")

	tm.Line(`\d`)
	tm.Expect(`(?m)^ public \| psql_items\s+\| table\s+\| postgres`, step)
	prompt("")

	tm.Line(`SELECT 6 * 7 AS answer, pg_is_in_recovery() AS standby;`)
	standby := "f"
	if p.recovery {
		standby = "t"
	}
	tm.Expect(`(?m)^\s+42 \| `+standby+`\s*$`, step)
	tm.Expect(`\(1 row\)`, step)
	prompt("")

	tm.Line(`BEGIN;`)
	tm.Expect(`(?m)^BEGIN$`, step)
	prompt("*")
	if p.recovery {
		tm.Line(`INSERT INTO psql_items (name) VALUES ('from-psql-ro');`)
		tm.Expect(`ERROR:  cannot execute INSERT in a read-only transaction`, step)
		prompt("!")
		tm.Line(`ROLLBACK;`)
		tm.Expect(`(?m)^ROLLBACK$`, step)
	} else {
		tm.Line(`INSERT INTO psql_items (name) VALUES ('from-psql-` + mode + `');`)
		tm.Expect(`(?m)^INSERT 0 1$`, step)
		prompt("*")
		tm.Line(`SELECT count(*) AS mine FROM psql_items WHERE name = 'from-psql-` + mode + `';`)
		tm.Expect(`(?m)^\s+1\s*$`, step)
		prompt("*")
		tm.Line(`COMMIT;`)
		tm.Expect(`(?m)^COMMIT$`, step)
	}
	prompt("")

	tm.Line(`SELECT nosuchcolumn;`)
	tm.Expect(`ERROR:  column "nosuchcolumn" does not exist`, step)
	prompt("")

	// Ctrl-C: psql sends a CancelRequest on a new connection with the proxy's key.
	const sleep = "SELECT pg_sleep(30);"
	tm.Line(sleep)
	waitActive(t, p.server, sleep)
	start := time.Now()
	tm.Type("\x03")
	tm.Expect(`ERROR:  canceling statement due to user request`, step)
	took := time.Since(start)
	prompt("")
	t.Logf("Ctrl-C to psql's cancel error: %v", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("Ctrl-C took %v to cancel the query, want under 1 s", took)
	}

	// The session is still usable after the cancel.
	tm.Line(`SELECT 'still' || 'alive' AS s;`)
	tm.Expect(`(?m)^ stillalive$`, step)
	prompt("")

	tm.Line(`\q`)
	if err := tm.Wait(step); err != nil {
		t.Fatalf("psql exited with %v", err)
	}
}
