package engine_test

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
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

// consoleDSN is the admin console's connection string on p's read-write port.
func consoleDSN(p *proxy) string {
	return strings.Replace(p.dsn(p.rw), "dbname=postgres", "dbname=pgbouncer", 1)
}

// overTLS makes a connection string of p.dsn ask for TLS.
func overTLS(dsn string) string { return strings.Replace(dsn, "sslmode=disable", "sslmode=require", 1) }

// consoleProxyWithTLS is a transaction-mode proxy of poolSize servers with a console for
// postgres and TLS offered to clients (TLS clients live on the event loops once their handshake is done), in front of the
// PostgreSQL it returns too.
func consoleProxyWithTLS(t *testing.T, poolSize int) (*proxy, *pgtest.Instance) {
	t.Helper()
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	certs := pgtest.Certs(t)
	return startProxy(t, func(c *engine.Config) {
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, poolSize
		c.AdminUsers = []string{"postgres"}
		c.TLS = engine.TLSConfig{Mode: "prefer", Cert: certs.ServerCert, Key: certs.ServerKey}
	}, primary), primary
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

	con := connect(t, consoleDSN(p))
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
		column(t, cols, rows[0], "total_received") == "0" || column(t, cols, rows[0], "total_sent") == "0" ||
		column(t, cols, rows[0], "total_query_time") == "0" {
		t.Errorf("SHOW STATS: %v %v", cols, rows)
	} else if n, _ := strconv.Atoi(column(t, cols, rows[0], "total_server_assignment_count")); n < 7 || n > 10 {
		t.Errorf("SHOW STATS: %d servers assigned, want 7 to 10", n)
	}
	// pgx prepares each SELECT 1 as a named statement: three Parses of clients, three Binds,
	// and one Parse per server that ran it (one text, one server-side statement; two servers).
	if c, s, b := column(t, cols, rows[0], "total_client_parse_count"), column(t, cols, rows[0], "total_server_parse_count"),
		column(t, cols, rows[0], "total_bind_count"); c != "3" || b != "3" || (s != "1" && s != "2") {
		t.Errorf("SHOW STATS parses: client %s, server %s, binds %s; want 3, 1 or 2, 3", c, s, b)
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
	_, err := con.Exec(ctx, "SHOW FDS", pgx.QueryExecModeSimpleProtocol)
	if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Hint, "/metrics") {
		t.Errorf("SHOW FDS: %v", err)
	}
	_, err = con.Exec(ctx, "PAUSE postgres other", pgx.QueryExecModeSimpleProtocol)
	if !errors.As(err, &pe) || pe.Code != pgwire.SyntaxError || !strings.Contains(pe.Message, "at most one database") {
		t.Errorf("PAUSE with two names: %v", err)
	}
	_, err = con.Exec(ctx, "SUSPEND", pgx.QueryExecModeSimpleProtocol)
	if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Message, "not available") {
		t.Errorf("SUSPEND: %v", err)
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
	c, err := pgx.Connect(ctx, consoleDSN(p))
	var pe *pgconn.PgError
	if err == nil {
		c.Close(ctx)
	}
	if !errors.As(err, &pe) || pe.Code != "3D000" {
		t.Fatalf("dbname=pgbouncer without a console: %v, want PostgreSQL's 3D000", err)
	}
}

// SHOW CLIENTS and SHOW SERVERS list every connection with PgBouncer's columns, whichever
// event loop or path it is on: a client holding a server inside a transaction is paired with
// it (ptr and link) and shows the backend's PID, a client waiting for a server shows its wait,
// a TLS client (on the stream path) shows its protocol; a console on the stream path gets the
// same answer, and commands sent together are answered in order.
func TestConsoleListsClientsAndServers(t *testing.T) {
	p, primary := consoleProxyWithTLS(t, 1)
	ctx := context.Background()

	// Logging in takes a server for a moment (the clients' settings), so all log in first.
	held := connect(t, p.dsn(p.rw, "application_name=holder"))
	secure := connect(t, overTLS(p.dsn(p.rw, "application_name=secure")))
	queryInt(t, secure, "SELECT 1")
	waiter := connect(t, p.dsn(p.rw, "application_name=waiter"))
	if _, err := held.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	pid := strconv.FormatInt(queryInt(t, held, "SELECT pg_backend_pid()"), 10)
	// The pool's one server is held: this client waits until the transaction ends.
	waited := make(chan error, 1)
	go func() { _, err := waiter.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); waited <- err }()

	con := connect(t, consoleDSN(p))
	byApp := func(cols []string, rows [][]string) map[string][]string {
		m := map[string][]string{}
		for _, r := range rows {
			m[column(t, cols, r, "application_name")+"/"+column(t, cols, r, "database")] = r
		}
		return m
	}
	var cols []string
	var clients map[string][]string
	deadline := time.Now().Add(10 * time.Second)
	for {
		var rows [][]string
		cols, rows = consoleRows(t, con, "SHOW CLIENTS")
		clients = byApp(cols, rows)
		if w := clients["waiter/postgres"]; w != nil && column(t, cols, w, "state") == "waiting" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no waiting client in SHOW CLIENTS: %v", rows)
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := "type user database state addr port local_addr local_port connect_time request_time wait wait_us " +
		"close_needed ptr link remote_pid tls application_name prepared_statements"
	if got := strings.Join(cols, " "); got != want {
		t.Fatalf("SHOW CLIENTS columns:\n%s\nwant\n%s", got, want)
	}
	if len(clients) != 4 || clients["/pgbouncer"] == nil {
		t.Fatalf("SHOW CLIENTS: want the holder, the TLS client, the waiter and the console: %v", clients)
	}
	h := clients["holder/postgres"]
	for name, want := range map[string]string{"type": "C", "user": "postgres", "state": "active", "addr": "127.0.0.1", "tls": ""} {
		if got := column(t, cols, h, name); got != want {
			t.Errorf("holder's %s = %q, want %q (%v)", name, got, want, h)
		}
	}
	if _, port, _ := net.SplitHostPort(p.rw); column(t, cols, h, "local_port") != port {
		t.Errorf("holder's local_port: %v, want %s", h, port)
	}
	if tlsCol := column(t, cols, clients["secure/postgres"], "tls"); !strings.HasPrefix(tlsCol, "TLSv1.") {
		t.Errorf("TLS client's tls column = %q", tlsCol)
	}
	if w := clients["waiter/postgres"]; column(t, cols, w, "link") != "" {
		t.Errorf("a waiting client holds no server: %v", w)
	}

	scols, srows := consoleRows(t, con, "show servers;")
	if strings.Join(scols, " ") != want || len(srows) != 1 {
		t.Fatalf("SHOW SERVERS: %v %v", scols, srows)
	}
	sv := srows[0]
	for name, want := range map[string]string{"type": "S", "state": "active", "remote_pid": pid, "port": strconv.Itoa(primary.Port()),
		"link": column(t, cols, h, "ptr"), "database": "postgres"} {
		if got := column(t, scols, sv, name); got != want {
			t.Errorf("server's %s = %q, want %q (%v)", name, got, want, sv)
		}
	}
	if column(t, cols, h, "link") != column(t, scols, sv, "ptr") {
		t.Errorf("the holder's link %q is not the server's ptr %q", column(t, cols, h, "link"), column(t, scols, sv, "ptr"))
	}

	// A console on the stream path (TLS) answers too.
	tcon := connect(t, overTLS(consoleDSN(p)))
	if c2, rows := consoleRows(t, tcon, "SHOW CLIENTS"); len(rows) != 5 || column(t, c2, byApp(c2, rows)["/pgbouncer"], "state") != "active" {
		t.Errorf("SHOW CLIENTS over TLS: %v", rows)
	}

	// Commands sent together are answered in order, the listing first.
	hj, err := con.PgConn().Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	hj.Frontend.Send(&pgproto3.Query{String: "SHOW SERVERS"})
	hj.Frontend.Send(&pgproto3.Query{String: "SHOW VERSION"})
	if err := hj.Frontend.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = hj.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var firsts []string
	for len(firsts) < 2 {
		msg, err := hj.Frontend.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if rd, ok := msg.(*pgproto3.RowDescription); ok {
			firsts = append(firsts, string(rd.Fields[0].Name))
		}
	}
	if firsts[0] != "type" || firsts[1] != "version" {
		t.Errorf("answers out of order: first columns %v", firsts)
	}

	if _, err := held.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("the waiting client: %v", err)
	}
}

// SHOW STATS counts the bytes clients send after logging in, the bytes servers send them, and
// the time requests run on servers.
func TestConsoleStatsCountBytesAndQueryTime(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 2
		c.AdminUsers = []string{"postgres"}
	}, primary)
	ctx := context.Background()
	c := connect(t, p.dsn(p.rw))
	queries := []string{"SELECT pg_sleep(0.3)", "SELECT 1", "SELECT 1", "SELECT 1"}
	sent := 0
	for _, q := range queries {
		if _, err := c.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		sent += 1 + 4 + len(q) + 1 // a Query message: type, length, the text and its NUL
	}
	con := connect(t, consoleDSN(p))
	cols, rows := consoleRows(t, con, "SHOW STATS")
	var r []string
	for _, row := range rows {
		if row[0] == "postgres" {
			r = row
		}
	}
	if r == nil {
		t.Fatalf("SHOW STATS: %v", rows)
	}
	num := func(name string) int64 {
		v, err := strconv.ParseInt(column(t, cols, r, name), 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return v
	}
	if got := num("total_received"); got != int64(sent) {
		t.Errorf("total_received = %d, want the %d bytes of the client's queries", got, sent)
	}
	// Each answer is at least a RowDescription, a DataRow, a CommandComplete and a
	// ReadyForQuery: more than the query for SELECT 1.
	if got := num("total_sent"); got < int64(sent) || got > 4096 {
		t.Errorf("total_sent = %d, want more than the %d bytes sent and under 4 KiB", got, sent)
	}
	if qt, xt := num("total_query_time"), num("total_xact_time"); qt < 300000 || qt > 10000000 || qt > xt {
		t.Errorf("total_query_time = %d µs, want pg_sleep's 0.3 s at least, and at most the xact time %d µs", qt, xt)
	}
	if avg, n := num("avg_query_time"), num("total_query_count"); n != int64(len(queries)) || avg < 300000/n {
		t.Errorf("avg_query_time %d µs over %d queries", avg, n)
	}
	// SHOW TOTALS: the same counters over every database, one per row. Only this database
	// has traffic, so the totals are its counts.
	_, totals := consoleRows(t, con, "SHOW TOTALS")
	if len(totals) != len(cols)-1 {
		t.Fatalf("SHOW TOTALS has %d rows, SHOW STATS %d counters", len(totals), len(cols)-1)
	}
	for _, tr := range totals {
		if v := strconv.FormatInt(num(tr[0]), 10); tr[1] != v && !strings.HasPrefix(tr[0], "avg_") {
			t.Errorf("SHOW TOTALS %s = %s, SHOW STATS says %s", tr[0], tr[1], v)
		}
	}
	// SHOW STATS_TOTALS and SHOW STATS_AVERAGES: SHOW STATS split in two, under PgBouncer's
	// names (bytes_received, bytes_sent).
	for prefix, cmd := range map[string]string{"total_": "SHOW STATS_TOTALS", "avg_": "SHOW STATS_AVERAGES"} {
		pcols, prows := consoleRows(t, con, cmd)
		if len(pcols) != (len(cols)-1)/2+1 || pcols[0] != "database" || !slices.Contains(pcols, "bytes_received") || !slices.Contains(pcols, "bytes_sent") {
			t.Fatalf("%s columns %q", cmd, pcols)
		}
		for _, pr := range prows {
			if pr[0] != "postgres" {
				continue
			}
			if got := column(t, pcols, pr, "query_count"); prefix == "total_" && got != strconv.FormatInt(num("total_query_count"), 10) {
				t.Errorf("%s query_count %s, SHOW STATS total_query_count %d", cmd, got, num("total_query_count"))
			}
			if got := column(t, pcols, pr, "bytes_received"); prefix == "total_" && got != strconv.Itoa(sent) {
				t.Errorf("%s bytes_received %s, want %d", cmd, got, sent)
			}
			if got := column(t, pcols, pr, "query_time"); prefix == "avg_" && got != strconv.FormatInt(num("avg_query_time"), 10) {
				t.Errorf("%s query_time %s, SHOW STATS avg_query_time %d", cmd, got, num("avg_query_time"))
			}
		}
	}
}

// SHOW CLIENTS and SHOW SERVERS run safely while clients come and go on both paths: clients
// on the event loops and over TLS (the stream path) connect, run transactions and disconnect
// while two consoles, one of them over TLS, list connections over and over. Run with -race.
func TestConsoleListsConnectionsUnderChurn(t *testing.T) {
	p, _ := consoleProxyWithTLS(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	workers := make(chan error, 8)
	for i := range 8 {
		dsn := p.dsn(p.rw)
		if i%2 == 1 {
			dsn = overTLS(dsn)
		}
		go func() {
			for ctx.Err() == nil {
				c, err := pgx.Connect(ctx, dsn)
				if err != nil {
					workers <- err
					return
				}
				for range 5 {
					if _, err := c.Exec(ctx, "BEGIN; SELECT pg_sleep(0.002); COMMIT", pgx.QueryExecModeSimpleProtocol); err != nil && ctx.Err() == nil {
						workers <- err
						return
					}
				}
				_ = c.Close(context.Background())
			}
			workers <- nil
		}()
	}
	consoles := []*pgx.Conn{
		connect(t, consoleDSN(p)),
		connect(t, overTLS(consoleDSN(p))),
	}
	done := make(chan struct{})
	for _, con := range consoles {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 40 {
				q := "SHOW CLIENTS"
				if i%2 == 1 {
					q = "SHOW SERVERS"
				}
				_, rows := consoleRows(t, con, q)
				if q == "SHOW CLIENTS" && len(rows) < 1 { // at least the console itself
					t.Errorf("%s: no rows", q)
				}
			}
		}()
	}
	<-done
	<-done
	cancel()
	for range 8 {
		if err := <-workers; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("client: %v", err)
		}
	}
	// The proxy still serves.
	if v := queryInt(t, connect(t, p.dsn(p.rw)), "SELECT 7"); v != 7 {
		t.Fatalf("after the churn: %d", v)
	}
}

// SHOW POOLS counts a server being connected and logged in as sv_login, not sv_active: here
// the backend accepts the connection and never answers, so the login lasts until
// server_connect_timeout.
func TestConsoleCountsServersLoggingIn(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.Pool.ServerConnectTimeout = time.Minute
		c.AdminUsers = []string{"postgres"}
		c.Backends = nil // routed by hand to the mute backend
	}, primary)
	p.e.SetRouting(engine.RoutingSpec{Primary: mute.Addr().String()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	con := connect(t, p.dsn(p.rw, "dbname=pgbouncer"))
	defer con.Close(ctx)
	// A client logging in needs a server's settings: its connection stays in the dial.
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		if c, err := pgx.Connect(cctx, p.dsn(p.rw)); err == nil {
			c.Close(ctx)
		}
	}()
	var cols []string
	var rows [][]string
	waitFor(t, "SHOW POOLS to show the server logging in", func() bool {
		cols, rows = consoleRows(t, con, "SHOW POOLS")
		return len(rows) == 1 && column(t, cols, rows[0], "sv_login") == "1"
	})
	if got := column(t, cols, rows[0], "sv_active"); got != "0" {
		t.Fatalf("sv_active %s while the only server logs in", got)
	}
	if st := p.e.Stats(); len(st.Pools) != 1 || st.Pools[0].LoggingIn != 1 {
		t.Fatalf("stats: %+v", st.Pools)
	}
}

// RELOAD, PAUSE and RESUME in the console: for proxy.admin_users only (a stats user gets
// 42501); RELOAD runs the daemon's reload and lists the changes as notices, or fails with why
// nothing changed; PAUSE and RESUME pause the whole standalone proxy; a cluster member's
// console refuses them.
func TestConsoleReloadPauseResume(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	var (
		mu        sync.Mutex // the reload runs on a goroutine of the proxy
		reloadErr error
		reloads   int
	)
	reloaded := func() int { mu.Lock(); defer mu.Unlock(); return reloads }
	p := startProxyWith(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.AdminUsers, c.StatsUsers = []string{"postgres"}, []string{"watcher"}
	}, engine.Options{Reload: func() ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		reloads++
		if reloadErr != nil {
			return nil, reloadErr
		}
		return []string{"proxy.pool.default_pool_size: 20 -> 30"}, nil
	}}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var notices []string
	admin, err := connectAdjusted(p.dsn(p.rw, "dbname=pgbouncer"), func(c *pgx.ConnConfig) {
		c.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	watcher := connect(t, p.dsn(p.rw, "dbname=pgbouncer user=watcher"))
	defer watcher.Close(ctx)
	simple := pgx.QueryExecModeSimpleProtocol

	var pe *pgconn.PgError
	for _, cmd := range []string{"RELOAD", "PAUSE", "RESUME"} {
		if _, err := watcher.Exec(ctx, cmd, simple); !errors.As(err, &pe) || pe.Code != pgwire.InsufficientPrivilege {
			t.Errorf("%s as a stats user: %v", cmd, err)
		}
	}
	if reloaded() != 0 {
		t.Fatalf("a stats user's RELOAD ran the reload")
	}
	tag, err := admin.Exec(ctx, "RELOAD;", simple)
	if err != nil || tag.String() != "RELOAD" || reloaded() != 1 || len(notices) != 1 || !strings.Contains(notices[0], "default_pool_size: 20 -> 30") {
		t.Fatalf("RELOAD: %q %v, %d reloads, notices %q", tag, err, reloaded(), notices)
	}
	mu.Lock()
	reloadErr = errors.New("/etc/pgbastion/pgbastion.yaml:3: unknown key")
	mu.Unlock()
	if _, err := admin.Exec(ctx, "reload", simple); !errors.As(err, &pe) || !strings.Contains(pe.Message, "nothing changed") || !strings.Contains(pe.Message, "yaml:3") {
		t.Errorf("a refused RELOAD: %v", err)
	}

	state := func() string {
		t.Helper()
		_, rows := consoleRows(t, watcher, "SHOW STATE")
		var kv []string
		for _, r := range rows {
			kv = append(kv, r[0]+"="+r[1])
		}
		return strings.Join(kv, " ")
	}
	if got := state(); got != "active=yes paused=no suspended=no writes_held=no paused_databases=" {
		t.Fatalf("SHOW STATE before PAUSE: %s", got)
	}
	if tag, err := admin.Exec(ctx, "PAUSE", simple); err != nil || tag.String() != "PAUSE" || !p.e.Stats().Paused {
		t.Fatalf("PAUSE: %q %v, paused %v", tag, err, p.e.Stats().Paused)
	}
	if got := state(); got != "active=no paused=yes suspended=no writes_held=no paused_databases=" {
		t.Fatalf("SHOW STATE after PAUSE: %s", got)
	}
	if tag, err := admin.Exec(ctx, "RESUME", simple); err != nil || tag.String() != "RESUME" || p.e.Stats().Paused {
		t.Fatalf("RESUME: %q %v, paused %v", tag, err, p.e.Stats().Paused)
	}
	if got := state(); !strings.HasPrefix(got, "active=yes paused=no") {
		t.Fatalf("SHOW STATE after RESUME: %s", got)
	}
	// The console still answers after the commands that ran on a goroutine.
	if _, rows := consoleRows(t, admin, "SHOW VERSION"); len(rows) != 1 {
		t.Fatalf("SHOW VERSION after the commands: %v", rows)
	}

	member := startProxy(t, func(c *engine.Config) {
		c.AdminUsers = []string{"postgres"}
		c.Backends = nil // routed by the HA core, as in a cluster
	}, primary)
	member.e.SetRouting(engine.RoutingSpec{Primary: primary.Addr()})
	mc := connect(t, member.dsn(member.rw, "dbname=pgbouncer"))
	defer mc.Close(ctx)
	if _, err := mc.Exec(ctx, "PAUSE", simple); !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Hint, "switchover") {
		t.Errorf("PAUSE on a cluster member: %v", err)
	}
}

// SHOW DATABASES and SHOW CONFIG show the settings in effect after a reload.
func TestConsoleShowsReloadedSettings(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) { c.AdminUsers = []string{"postgres"} }, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connect(t, p.dsn(p.rw))
	defer c.Close(ctx)
	con := connect(t, p.dsn(p.rw, "dbname=pgbouncer"))
	defer con.Close(ctx)
	next := p.cfg
	next.Pool.ServerLifetime, next.Pool.ReservePoolSize = time.Minute, 3
	if _, err := p.e.Reload(next, nil, nil); err != nil {
		t.Fatal(err)
	}
	cols, rows := consoleRows(t, con, "SHOW DATABASES")
	if len(rows) != 1 || column(t, cols, rows[0], "server_lifetime") != "60" || column(t, cols, rows[0], "reserve_pool_size") != "3" {
		t.Errorf("SHOW DATABASES after the reload: %v %v", cols, rows)
	}
	_, rows = consoleRows(t, con, "SHOW CONFIG")
	for _, r := range rows {
		if r[0] == "server_lifetime" && r[1] != "60" {
			t.Errorf("SHOW CONFIG server_lifetime %q after the reload", r[1])
		}
	}
}
