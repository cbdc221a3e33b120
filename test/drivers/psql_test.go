package drivers

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestPsql runs psql/client.sql in clients psql processes at once (-f, with -v client=N) and
// compares each output with psql/client.expected; then a run with several -c options. The script
// covers settings that follow the client, multi-round-trip and multi-statement transactions,
// COPY in both directions, \gset, errors inside a transaction, and SQL-level PREPARE.
func TestPsql(t *testing.T) {
	t.Parallel()
	psql := pgtest.Program(t, "psql")
	h := start(t, nil)
	h.pg.Exec(t, `CREATE TABLE psql_t (client int DEFAULT current_setting('pgb.client')::int, n int)`)
	want, err := os.ReadFile("psql/client.expected")
	if err != nil {
		t.Fatal(err)
	}
	pidLine := regexp.MustCompile(`^pid\|(\d+)\|`)
	var mu sync.Mutex
	pids := map[string]bool{}
	migrated := 0
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			env := append(h.env(), fmt.Sprintf("PGAPPNAME=psql%d", i))
			out, _, err := runProgram(90*time.Second, "psql", env, psql, "-X", "-q", "-v", fmt.Sprintf("client=%d", i), "-f", "client.sql")
			if err != nil {
				t.Errorf("client %d: %v", i, err)
				return
			}
			exp := strings.Split(strings.ReplaceAll(strings.TrimSpace(string(want)), "{client}", strconv.Itoa(i)), "\n")
			got := strings.Split(strings.TrimSpace(out), "\n")
			mine := map[string]bool{}
			for n := 0; n < max(len(exp), len(got)); n++ {
				var e, g string
				if n < len(exp) {
					e = exp[n]
				}
				if n < len(got) {
					g = got[n]
				}
				if m := pidLine.FindStringSubmatch(g); m != nil && strings.HasPrefix(e, "pid|*|") {
					mine[m[1]] = true
					g = "pid|*|" + strings.TrimPrefix(g, m[0])
				}
				if g != e {
					t.Errorf("client %d: output line %d is %q, want %q\nwhole output:\n%s", i, n+1, g, e, out)
					return
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for p := range mine {
				pids[p] = true
			}
			if len(mine) > 1 {
				migrated++
			}
		}(i)
	}
	wg.Wait()
	s := summary{Driver: "psql -f", Clients: clients, Migrated: migrated, Checks: clients * len(strings.Split(string(want), "\n"))}
	for p := range pids {
		n, _ := strconv.Atoi(p)
		s.PIDs = append(s.PIDs, n)
	}
	if !t.Failed() {
		s.verify(t, clients*15)
	}

	// Several -c options run one after another in one session.
	out := run(t, time.Minute, "psql", h.env(), psql, "-X", "-At",
		"-c", "SET pgb.c = 'multi'",
		"-c", "BEGIN; INSERT INTO psql_t VALUES (-1, 1); INSERT INTO psql_t VALUES (-1, 2); COMMIT",
		"-c", "SELECT count(*), current_setting('pgb.c') FROM psql_t WHERE client = -1")
	if got, want := strings.TrimSpace(out), "SET\nBEGIN\nINSERT 0 1\nINSERT 0 1\nCOMMIT\n2|multi"; got != want {
		t.Errorf("psql -c: got %q, want %q", got, want)
	}
	if got := h.pg.QueryString(t, `SELECT count(*) FROM psql_t WHERE n >= 100`); got != "0" {
		t.Errorf("rows from rolled-back transactions: %s", got)
	}
	h.checkPool(t)
}

// TestPgbench runs pgbench -S with 20 clients in the simple, extended and prepared protocol
// modes (and one short TPC-B-like run in prepared mode, which has transactions) and requires
// that no transaction failed and none aborted a client.
func TestPgbench(t *testing.T) {
	t.Parallel()
	pgbench := pgtest.Program(t, "pgbench")
	h := start(t, nil)
	direct := append(os.Environ(), "PGHOST="+h.pg.Host(), "PGPORT="+strconv.Itoa(h.pg.Port()),
		"PGUSER="+pgtest.Superuser, "PGPASSWORD="+h.pg.Password(), "PGDATABASE=postgres", "PGSSLMODE=disable")
	if _, _, err := runProgram(time.Minute, ".", direct, pgbench, "-i", "-q", "-s", "1"); err != nil {
		t.Fatal(err)
	}
	processed := regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	failed := regexp.MustCompile(`number of failed transactions: (\d+)`)
	for _, tc := range []struct {
		name, mode string
		args       []string
		min        int // transactions that show the clients got through, not a speed goal
	}{
		{"select-only/simple", "simple", []string{"-S", "-j", "2", "-T", "5"}, 100},
		{"select-only/extended", "extended", []string{"-S", "-j", "2", "-T", "5"}, 100},
		{"select-only/prepared", "prepared", []string{"-S", "-j", "2", "-T", "5"}, 100},
		// TPC-B-like (BEGIN, updates, END: servers stay attached over several round trips),
		// one thread per client. With fewer threads than clients pgbench deadlocks itself in
		// prepared mode behind any transaction pooler smaller than its client count: it
		// prepares each statement with the synchronous PQprepare, which blocks the whole
		// thread (and so the other clients of the thread, which hold the servers in their
		// open transactions) until a server is free. Every transaction updates the one branch
		// row, so they run one at a time: on a CI machine busy with other tests this did 99 in
		// 3 s where a quiet one does 3,500. A deadlock does none; each client committing once
		// shows there is none.
		{"tpcb/prepared", "prepared", []string{"-j", strconv.Itoa(clients), "-T", "3"}, clients},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-n", "-c", strconv.Itoa(clients), "-M", tc.mode}, tc.args...)
			out := run(t, time.Minute, ".", h.env(), pgbench, args...)
			m := processed.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("pgbench printed no transaction count:\n%s", out)
			}
			if n, _ := strconv.Atoi(m[1]); n < tc.min {
				t.Errorf("only %d transactions in %s mode (want at least %d)", n, tc.mode, tc.min)
			}
			if f := failed.FindStringSubmatch(out); f == nil || f[1] != "0" {
				t.Errorf("pgbench reports failed transactions (%v):\n%s", f, out)
			}
			t.Logf("pgbench -M %s %v: %s transactions", tc.mode, tc.args, m[1])
		})
	}
	h.checkPool(t)
}
