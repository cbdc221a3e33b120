package engine_test

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// consoleRows runs a console command with the simple protocol and returns the column names
// and the rows as text.
func consoleRows(t *testing.T, c *pgx.Conn, q string) ([]string, [][]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := c.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var cols []string
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	var out [][]string
	for rows.Next() {
		var row []string
		for _, v := range rows.RawValues() {
			row = append(row, string(v))
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return cols, out
}

func column(t *testing.T, cols []string, row []string, name string) string {
	t.Helper()
	for i, c := range cols {
		if c == name {
			return row[i]
		}
	}
	t.Fatalf("no column %s in %v", name, cols)
	return ""
}

func TestAdminConsole(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 2
		c.AdminUsers, c.StatsUsers = []string{"postgres"}, []string{"monitor"}
	}, primary)
	ctx := context.Background()

	// Three clients of postgres/postgres, one of them inside a transaction.
	var held *pgx.Conn
	for i := range 3 {
		c := connect(t, p.dsn(p.rw))
		queryInt(t, c, "SELECT 1")
		if i == 0 {
			held = c
		}
	}
	if _, err := held.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}

	con := connect(t, strings.Replace(p.dsn(p.rw), "dbname=postgres", "dbname=pgbouncer", 1))
	cols, rows := consoleRows(t, con, "SHOW POOLS;")
	want := "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel " +
		"sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode load_balance_hosts"
	if got := strings.Join(cols, " "); got != want {
		t.Fatalf("SHOW POOLS columns:\n%s\nwant\n%s", got, want)
	}
	if len(rows) != 1 {
		t.Fatalf("SHOW POOLS: %v", rows)
	}
	r := rows[0]
	for name, want := range map[string]string{"database": "postgres", "user": "postgres", "cl_active": "3", "cl_waiting": "0",
		"sv_active": "1", "pool_mode": "transaction"} {
		if got := column(t, cols, r, name); got != want {
			t.Errorf("SHOW POOLS %s = %q, want %q (%v)", name, got, want, r)
		}
	}

	cols, rows = consoleRows(t, con, "show databases")
	if len(rows) != 1 || column(t, cols, rows[0], "name") != "postgres" || column(t, cols, rows[0], "port") != strconv.Itoa(primary.Port()) ||
		column(t, cols, rows[0], "pool_size") != "2" || column(t, cols, rows[0], "current_client_connections") != "3" {
		t.Errorf("SHOW DATABASES: %v %v", cols, rows)
	}
	// Three SELECT 1, each a prepare and an execute by pgx (a Sync and a ReadyForQuery each),
	// then the simple BEGIN: seven queries, six of them ended idle. A server was handed out
	// for each (the prepare and the execute are transactions of their own), and for logins
	// that had settings to apply.
	cols, rows = consoleRows(t, con, "SHOW STATS")
	if len(cols) != 23 || len(rows) != 1 || column(t, cols, rows[0], "database") != "postgres" ||
		column(t, cols, rows[0], "total_xact_count") != "6" || column(t, cols, rows[0], "total_query_count") != "7" ||
		column(t, cols, rows[0], "avg_recv") != "0" {
		t.Errorf("SHOW STATS: %v %v", cols, rows)
	} else if n, _ := strconv.Atoi(column(t, cols, rows[0], "total_server_assignment_count")); n < 7 || n > 10 {
		t.Errorf("SHOW STATS: %d servers assigned, want 7 to 10", n)
	}
	// Four clients (the console's own included), one pool, its servers.
	lists := map[string]string{}
	for _, r := range func() [][]string { _, r := consoleRows(t, con, "SHOW LISTS"); return r }() {
		lists[r[0]] = r[1]
	}
	if lists["databases"] != "1" || lists["pools"] != "1" || lists["used_clients"] != "4" || lists["used_servers"] == "0" || len(lists) != 12 {
		t.Errorf("SHOW LISTS: %v", lists)
	}
	if _, rows = consoleRows(t, con, "SHOW VERSION"); len(rows) != 1 || !strings.HasPrefix(rows[0][0], "PGBastion ") {
		t.Errorf("SHOW VERSION: %v", rows)
	}
	cols, rows = consoleRows(t, con, "SHOW CONFIG")
	found := false
	for _, r := range rows {
		if r[0] == "default_pool_size" {
			found = r[1] == "2" && r[2] == "20" && r[3] == "no"
		}
	}
	if !found || strings.Join(cols, " ") != "key value default changeable" {
		t.Errorf("SHOW CONFIG: %v %v", cols, rows)
	}

	// What the console cannot do gets an error that says so; the session goes on.
	var pe *pgconn.PgError
	_, err := con.Exec(ctx, "SHOW CLIENTS", pgx.QueryExecModeSimpleProtocol)
	if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Hint, "/metrics") {
		t.Errorf("SHOW CLIENTS: %v", err)
	}
	_, err = con.Exec(ctx, "PAUSE postgres", pgx.QueryExecModeSimpleProtocol)
	if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Message, "read-only") {
		t.Errorf("PAUSE: %v", err)
	}
	_, err = con.Exec(ctx, "SELECT $1::int", 1) // the extended protocol
	if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Message, "simple queries only") {
		t.Errorf("extended protocol: %v", err)
	}
	if _, err := con.Exec(ctx, "SET application_name = 'x'", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Errorf("SET application_name: %v", err)
	}
	if _, rows = consoleRows(t, con, "SHOW POOLS"); len(rows) != 1 {
		t.Errorf("SHOW POOLS after errors: %v", rows)
	}

	// A stats user gets in; anyone else is refused before reaching anything.
	mon := connect(t, strings.Replace(p.dsn(p.rw), "user=postgres dbname=postgres", "user=monitor dbname=pgbouncer", 1))
	if _, rows = consoleRows(t, mon, "SHOW POOLS"); len(rows) != 1 {
		t.Errorf("monitor's SHOW POOLS: %v", rows)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pgx.Connect(cctx, strings.Replace(p.dsn(p.rw), "user=postgres dbname=postgres", "user=mallory dbname=pgbouncer", 1))
	if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Hint, "proxy.admin_users") {
		t.Errorf("mallory: %v", err)
	}

	// psql, as an operator would.
	if psql, err := exec.LookPath("psql"); err == nil {
		host, port, _ := net.SplitHostPort(p.rw)
		out, err := exec.Command(psql, "-X", "-h", host, "-p", port, "-U", "postgres", "-d", "pgbouncer", "-c", "SHOW POOLS").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "cl_active") || !strings.Contains(string(out), "transaction") {
			t.Errorf("psql SHOW POOLS: %v\n%s", err, out)
		}
	}
}

// Without admin_users or stats_users there is no console: the name is PostgreSQL's.
func TestNoConsoleByDefault(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, nil, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, strings.Replace(p.dsn(p.rw), "dbname=postgres", "dbname=pgbouncer", 1))
	var pe *pgconn.PgError
	if err == nil {
		c.Close(ctx)
	}
	if !errors.As(err, &pe) || pe.Code != "3D000" {
		t.Fatalf("dbname=pgbouncer without a console: %v, want PostgreSQL's 3D000", err)
	}
}
