package engine

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/pgwire"
)

// The admin console is PgBouncer's: a virtual database named pgbouncer (or pgbastion) on the
// proxy's own ports, where the users of proxy.admin_users and proxy.stats_users run SHOW
// commands with psql or a monitoring agent (pgbouncer_exporter, Datadog's PgBouncer check).
// It is read-only and speaks the simple query protocol only, as PgBouncer's does. Its rows
// come from the same counters as GET /proxy.

// consoleDatabases are the database names that reach the console instead of PostgreSQL.
var consoleDatabases = map[string]bool{"pgbouncer": true, "pgbastion": true}

// consoleCommands answer the console's SHOW commands; see SHOW HELP.
var consoleCommands = map[string]func(*client) (consoleResult, error){
	"POOLS":          (*client).showPools,
	"STATS":          (*client).showStats,
	"STATS_TOTALS":   func(cl *client) (consoleResult, error) { return cl.showStatsPart("total_") },
	"STATS_AVERAGES": func(cl *client) (consoleResult, error) { return cl.showStatsPart("avg_") },
	"STATE":          (*client).showState,
	"TOTALS":         (*client).showTotals,
	"LISTS":          (*client).showLists,
	"DATABASES":      (*client).showDatabases,
	"USERS":          (*client).showUsers,
	"CONFIG":         (*client).showConfig,
	"VERSION":        (*client).showVersion,
}

// connCommands list connections; they need every event loop's answer (Engine.Conns).
var connCommands = map[string]func([]Conn) consoleResult{
	"CLIENTS": showClients,
	"SERVERS": showServers,
}

// consoleFields splits a console query into words, without its trailing semicolons.
func consoleFields(q string) []string {
	if i := strings.IndexByte(q, 0); i >= 0 {
		q = q[:i]
	}
	return strings.Fields(strings.TrimRight(strings.TrimSpace(q), "; \t\r\n"))
}

// consoleIdent is a database name as written in a console command: as it stands, or in double
// quotes (a quote inside doubled), as in SQL. Unquoted names keep their case.
func consoleIdent(f string) string {
	if len(f) >= 2 && f[0] == '"' && f[len(f)-1] == '"' {
		return strings.ReplaceAll(f[1:len(f)-1], `""`, `"`)
	}
	return f
}

// listsConns reports whether a console query is SHOW CLIENTS or SHOW SERVERS.
func listsConns(q string) bool {
	f := consoleFields(q)
	return len(f) == 2 && strings.EqualFold(f[0], "SHOW") && connCommands[strings.ToUpper(f[1])] != nil
}

// consoleHelp is SHOW HELP's notice.
const consoleHelp = `Console usage
	SHOW HELP
	SHOW POOLS
	SHOW STATS
	SHOW STATS_TOTALS
	SHOW STATS_AVERAGES
	SHOW TOTALS
	SHOW LISTS
	SHOW DATABASES
	SHOW USERS
	SHOW CLIENTS
	SHOW SERVERS
	SHOW CONFIG
	SHOW VERSION
	SHOW STATE
	RELOAD            (admin_users) read the configuration file and the auth_file again
	PAUSE [db]        (admin_users, standalone proxy) hold new transactions (of db), wait for those in flight
	RESUME [db]       (admin_users, standalone proxy) let them go
	RECONNECT [db]    (admin_users) replace server connections: idle ones now, busy ones once free
	KILL db           (admin_users) close a database's clients (cancelling their queries) and servers;
	                  a standalone proxy then holds its new transactions until RESUME db
	KILL_CLIENT ptr   (admin_users) close one client (ptr from SHOW CLIENTS), cancelling its query
Per-backend detail: GET /proxy or pgbastion ctl pools; counters: GET /metrics.`

// consoleResult is the answer to one command: columns (text or int8) and rows of text.
type consoleResult struct {
	cols []consoleCol
	rows [][]string
}

type consoleCol struct {
	name string
	num  bool
}

func textCols(names ...string) []consoleCol {
	out := make([]consoleCol, len(names))
	for i, n := range names {
		out[i] = consoleCol{name: n}
	}
	return out
}

// enterConsole admits an authenticated client to the console, or refuses it.
func (cl *client) enterConsole() error {
	if !cl.e.conf().consoleUsers[cl.user] {
		cl.e.log.Info("admin console refused", "user", cl.user, "remote", cl.remote())
		return sqlErr(pgwire.InvalidAuthorization,
			fmt.Sprintf("user %q may not use the admin console (database %q)", cl.user, cl.database),
			"list the user in proxy.admin_users or proxy.stats_users")
	}
	cl.state = csConsole
	b := cl.scratchForClient()
	for _, kv := range [][2]string{{"server_version", "PGBastion " + cl.e.version}, {"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"}, {"application_name", ""}} {
		b = pgwire.AppendParameterStatus(b, kv[0], kv[1])
	}
	b = pgwire.AppendBackendKeyData(b, cl.pid, cl.secret[:])
	b = pgwire.AppendReadyForQuery(b, pgwire.TxIdle)
	cl.send(b)
	cl.e.log.Info("admin console login", "user", cl.user, "remote", cl.remote())
	return nil
}

// handleConsole answers one message of a console client.
func (cl *client) handleConsole(buf []byte) (int, error) {
	if cl.consoleBusy {
		return 0, nil // the answer to SHOW CLIENTS/SERVERS comes first
	}
	typ, body, n, err := cl.nextMessage(buf)
	if err != nil || n == 0 {
		return 0, err
	}
	switch typ {
	case pgwire.MsgTerminate:
		cl.closeNow()
	case pgwire.MsgQuery:
		q := string(body)
		switch run := cl.consoleCommand(q); {
		case run != nil:
			cl.consoleAsync(func() func() []byte {
				out := run()
				return func() []byte { return out }
			})
		case listsConns(q):
			// Listing waits for every loop, this one included.
			cl.consoleAsync(func() func() []byte {
				var conns []Conn
				if cl.stream != nil {
					conns = cl.e.conns(cl) // the client's own goroutine holds its lock
				} else {
					conns = cl.e.Conns()
				}
				return func() []byte { return cl.consoleQuery(q, conns) }
			})
		default:
			cl.send(cl.consoleQuery(q, nil))
		}
	case pgwire.MsgSync:
		cl.send(pgwire.AppendReadyForQuery(cl.scratchForClient(), pgwire.TxIdle))
	case pgwire.MsgFlush:
	default:
		// The extended protocol: refused, as by PgBouncer's console. A Sync that follows
		// gets its ReadyForQuery above.
		cl.send(pgwire.AppendError(cl.scratchForClient(), pgwire.MsgErrorResponse, pgwire.SeverityError,
			pgwire.FeatureNotSupported, fmt.Sprintf("the admin console takes simple queries only (got message type %q)", typ),
			"use psql, or your driver's simple protocol (pgx: QueryExecModeSimpleProtocol)"))
	}
	return n, nil
}

// consoleAsync answers a console query whose work may wait (every loop's connections for SHOW
// CLIENTS, the transactions a PAUSE waits for, a RELOAD's files): work runs off the loop and
// returns the function that builds the answer where the client's buffers may be touched. On an
// event loop work runs on a goroutine and the answer goes out through the loop, the client's
// next messages waiting until then; on the stream path both run on the client's own goroutine.
func (cl *client) consoleAsync(work func() (answer func() []byte)) {
	if cl.stream != nil {
		cl.send(work()())
		return
	}
	cl.consoleBusy = true
	lp := cl.lp
	go func() {
		answer := work()
		lp.exec(func() {
			cl.consoleBusy = false
			if cl.closed {
				return
			}
			cl.send(answer())
			cl.process()
		})
	}()
}

// consoleCommand returns the work of a console command that changes something (RELOAD,
// PAUSE, RESUME, KILL, KILL_CLIENT, RECONNECT), or nil for any other query. Only proxy.admin_users may run them; PAUSE and
// RESUME only on a standalone proxy (a cluster member's pools are paused by switchovers).
func (cl *client) consoleCommand(q string) func() []byte {
	fields := consoleFields(q)
	if len(fields) == 0 {
		return nil
	}
	verb := strings.ToUpper(fields[0])
	switch verb {
	case "RELOAD", "PAUSE", "RESUME", "KILL", "KILL_CLIENT", "RECONNECT":
	default:
		return nil
	}
	e := cl.e
	answer := func(notices []string, tag string, err *clientError) []byte {
		var b []byte
		for _, n := range notices {
			b = pgwire.AppendError(b, pgwire.MsgNoticeResponse, "NOTICE", pgwire.SuccessfulCompletion, n, "")
		}
		if err != nil {
			b = pgwire.AppendError(b, pgwire.MsgErrorResponse, pgwire.SeverityError, err.code, err.msg, err.hint)
		} else {
			b = pgwire.AppendCommandComplete(b, tag)
		}
		e.m.consoleCommands.Inc()
		return pgwire.AppendReadyForQuery(b, pgwire.TxIdle)
	}
	refuse := func(code, msg, hint string) func() []byte {
		return func() []byte { return answer(nil, "", &clientError{code: code, msg: msg, hint: hint}) }
	}
	if !e.conf().adminUsers[cl.user] {
		return refuse(pgwire.InsufficientPrivilege, fmt.Sprintf("%s: user %q is a stats user; only proxy.admin_users may run it", verb, cl.user),
			"list the user in proxy.admin_users")
	}
	switch {
	case verb == "RELOAD" && len(fields) == 1:
		if e.reload == nil {
			return refuse(pgwire.FeatureNotSupported, "RELOAD: this proxy was not started from a configuration file", "")
		}
		return func() []byte {
			lines, err := e.reload()
			if err != nil {
				return answer(nil, "", &clientError{code: pgwire.InvalidParameterValue, msg: "configuration not reloaded, nothing changed: " + err.Error()})
			}
			return answer(lines, "RELOAD", nil)
		}
	case verb == "RELOAD":
		return refuse(pgwire.SyntaxError, "RELOAD takes no argument", "")
	case verb == "KILL_CLIENT" && len(fields) != 2:
		return refuse(pgwire.SyntaxError, "KILL_CLIENT takes one argument: the client's ptr from SHOW CLIENTS", "")
	case verb == "KILL_CLIENT":
		id := fields[1]
		return func() []byte {
			if !e.killClient(cl, id) {
				return answer(nil, "", &clientError{code: pgwire.UndefinedObject, msg: fmt.Sprintf("KILL_CLIENT: no client %q", id),
					hint: "SHOW CLIENTS lists the clients; their ptr column is the argument"})
			}
			return answer(nil, "KILL_CLIENT", nil)
		}
	case (verb == "KILL" || verb == "RECONNECT") && len(fields) > 2,
		verb == "KILL" && len(fields) != 2:
		return refuse(pgwire.SyntaxError, verb+" takes one database name", "")
	case (verb == "KILL" || verb == "RECONNECT") && len(fields) == 2 && consoleDatabases[consoleIdent(fields[1])]:
		return refuse(pgwire.FeatureNotSupported, verb+" "+fields[1]+": the admin console has no pools", "")
	case verb == "KILL":
		db := consoleIdent(fields[1])
		return func() []byte {
			r := e.killDatabase(cl, db)
			return answer([]string{r.KillNotice(db, "RESUME "+fields[1])}, "KILL", nil)
		}
	case verb == "RECONNECT":
		db := ""
		if len(fields) == 2 {
			db = consoleIdent(fields[1])
		}
		return func() []byte {
			n := e.Reconnect(db)
			return answer([]string{fmt.Sprintf("%d server connections will be replaced: idle ones now, the others when their clients let them go", n)}, "RECONNECT", nil)
		}
	case len(e.cfg.Backends) == 0:
		return refuse(pgwire.FeatureNotSupported, verb+" is for a standalone proxy",
			"a cluster member's pools are paused and resumed by switchovers: pgbastion ctl restart (a replica), pgbastion ctl switchover (the primary)")
	case len(fields) > 2:
		return refuse(pgwire.SyntaxError, verb+" takes at most one database name", "")
	case verb == "RESUME" && len(fields) == 2:
		db := consoleIdent(fields[1])
		return func() []byte {
			if !e.ResumeDatabase(db) {
				return answer(nil, "", &clientError{code: pgwire.UndefinedObject, msg: fmt.Sprintf("RESUME: database %q is not paused", db),
					hint: "RESUME without a name ends every pause"})
			}
			return answer(nil, "RESUME", nil)
		}
	case verb == "RESUME":
		return func() []byte {
			e.Resume()
			return answer(nil, "RESUME", nil)
		}
	default: // PAUSE [db]: as PgBouncer's, it returns once no transaction holds a server
		db := ""
		if len(fields) == 2 {
			db = consoleIdent(fields[1])
		}
		return func() []byte {
			wait := e.conf().cfg.Pool.QueryWaitTimeout
			if wait <= 0 {
				wait = time.Hour
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			var n int
			var err error
			if db == "" {
				n, err = e.Pause(ctx)
			} else {
				n, err = e.PauseDatabase(ctx, db)
			}
			if err != nil {
				return answer([]string{fmt.Sprintf("paused, but %d transactions still hold a server connection after %s (in session mode a client holds one for its whole session); new transactions wait; RESUME ends the pause", n, wait)}, "PAUSE", nil)
			}
			return answer(nil, "PAUSE", nil)
		}
	}
}

// consoleQuery runs one simple query and returns its answer, ending with ReadyForQuery.
// conns are the connections listed for SHOW CLIENTS and SHOW SERVERS.
func (cl *client) consoleQuery(q string, conns []Conn) []byte {
	// A query is a C string: it ends at the first NUL, as in PostgreSQL. Echoed in errors, it
	// is cut short.
	fields := consoleFields(q)
	if i := strings.IndexByte(q, 0); i >= 0 {
		q = q[:i]
	}
	if len(q) > 200 {
		q = strings.ToValidUTF8(q[:200], "") + "…"
	}
	b := cl.scratchForClient()
	defer cl.e.m.consoleCommands.Inc()
	fail := func(code, msg, hint string) []byte {
		b = pgwire.AppendError(b, pgwire.MsgErrorResponse, pgwire.SeverityError, code, msg, hint)
		return pgwire.AppendReadyForQuery(b, pgwire.TxIdle)
	}
	switch {
	case len(fields) == 0:
		b = pgwire.AppendEmpty(b, pgwire.MsgEmptyQueryResponse)
	case strings.EqualFold(fields[0], "SET"):
		// Drivers set these on connecting; the console has nothing to change.
		// SET name = value, SET name TO value: the name ends at '=' or a space.
		name, _, _ := strings.Cut(strings.ToLower(strings.Join(fields[1:], " ")), "=")
		name, _, _ = strings.Cut(strings.TrimSpace(name), " ")
		switch name {
		case "client_encoding", "application_name", "extra_float_digits", "datestyle", "timezone", "search_path":
			b = pgwire.AppendCommandComplete(b, "SET")
		default:
			return fail(pgwire.FeatureNotSupported, fmt.Sprintf("SET %q: the admin console cannot change settings", name),
				"change the setting in the configuration file and restart pgbastion")
		}
	case strings.EqualFold(fields[0], "SHOW") && len(fields) == 2 && strings.EqualFold(fields[1], "HELP"):
		b = pgwire.AppendError(b, pgwire.MsgNoticeResponse, "NOTICE", pgwire.SuccessfulCompletion, consoleHelp, "")
		b = pgwire.AppendCommandComplete(b, "SHOW")
	case strings.EqualFold(fields[0], "SHOW") && len(fields) == 2 && connCommands[strings.ToUpper(fields[1])] != nil:
		b = connCommands[strings.ToUpper(fields[1])](conns).append(b)
		b = pgwire.AppendCommandComplete(b, "SHOW")
	case strings.EqualFold(fields[0], "SHOW") && len(fields) == 2:
		f, ok := consoleCommands[strings.ToUpper(fields[1])]
		if !ok {
			return fail(pgwire.FeatureNotSupported, fmt.Sprintf("SHOW %q is not available in PGBastion's console", fields[1]),
				"SHOW HELP lists the commands; more counters are in GET /metrics")
		}
		res, err := f(cl)
		if err != nil {
			return fail(pgwire.InternalError, err.Error(), "")
		}
		b = res.append(b)
		b = pgwire.AppendCommandComplete(b, "SHOW")
	default:
		verb := strings.ToUpper(fields[0])
		switch verb {
		case "SUSPEND", "DISABLE", "ENABLE", "SHUTDOWN", "WAIT_CLOSE":
			return fail(pgwire.FeatureNotSupported, verb+" is not available in PGBastion's console (it has SHOW, RELOAD, PAUSE, RESUME, KILL, KILL_CLIENT and RECONNECT)",
				"pools pause and resume themselves around a switchover (pgbastion ctl switchover); RELOAD or pgbastion ctl reload applies a changed configuration")
		}
		return fail(pgwire.FeatureNotSupported, fmt.Sprintf("unknown console command %q", q), "SHOW HELP lists the commands")
	}
	return pgwire.AppendReadyForQuery(b, pgwire.TxIdle)
}

// append writes RowDescription and the DataRows.
func (r consoleResult) append(b []byte) []byte {
	start := len(b)
	b = append(b, pgwire.MsgRowDescription, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.cols)))
	for _, c := range r.cols {
		oid, size := uint32(25), int16(-1) // text
		if c.num {
			oid, size = 20, 8 // int8
		}
		b = append(b, c.name...)
		b = append(b, 0)
		b = append(b, 0, 0, 0, 0, 0, 0) // table OID, column number
		b = binary.BigEndian.AppendUint32(b, oid)
		b = binary.BigEndian.AppendUint16(b, uint16(size))
		b = append(b, 0xff, 0xff, 0xff, 0xff, 0, 0) // type modifier -1, text format
	}
	pgwire.PutHeader(b[start:], pgwire.MsgRowDescription, len(b)-start-pgwire.HeaderLen)
	for _, row := range r.rows {
		start = len(b)
		b = append(b, pgwire.MsgDataRow, 0, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(len(row)))
		for _, v := range row {
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
		pgwire.PutHeader(b[start:], pgwire.MsgDataRow, len(b)-start-pgwire.HeaderLen)
	}
	return b
}

// showPools is SHOW POOLS with PgBouncer's columns: one row per database and user, summed
// over the backends serving them (the per-backend detail is in GET /proxy). Cancel requests
// are forwarded at once (cl_waiting_cancel_req is 0); sv_login counts servers being connected
// and logged in; servers being tested (sv_tested) PGBastion does not count apart: 0.
func (cl *client) showPools() (consoleResult, error) {
	res := consoleResult{cols: textCols("database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
		"cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
		"sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts")}
	for i := 2; i <= 14; i++ {
		res.cols[i].num = true
	}
	mode := string(cl.e.cfg.Pool.Mode)
	pools := cl.e.Stats().Pools // ordered by database and user: a row's pools are neighbours
	for i := 0; i < len(pools); {
		first := pools[i]
		var clients, waiting, active, idle, cancels, held, login int
		var maxWait time.Duration
		for ; i < len(pools) && pools[i].Database == first.Database && pools[i].User == first.User; i++ {
			p := pools[i]
			clients, waiting, active, idle = clients+p.Clients, waiting+p.Waiting, active+p.Busy(), idle+p.IdleServers()
			cancels, held, login = cancels+p.CancelsInFlight, held+p.HeldForCancel, login+p.LoggingIn
			maxWait = max(maxWait, p.MaxWait)
		}
		us := maxWait.Microseconds()
		// A cancel travels on a connection of its own to the server (sv_active_cancel), and a
		// server waiting for one to land is sv_being_canceled rather than active.
		res.rows = append(res.rows, []string{first.Database, first.User, strconv.Itoa(max(0, clients-waiting)),
			strconv.Itoa(waiting), strconv.Itoa(cancels), "0", strconv.Itoa(max(0, active-held-login)), strconv.Itoa(cancels),
			strconv.Itoa(held), strconv.Itoa(idle), "0", "0", strconv.Itoa(login),
			strconv.FormatInt(us/1e6, 10), strconv.FormatInt(us%1e6, 10), mode, ""})
	}
	return res, nil
}

// showStats is SHOW STATS with PgBouncer's columns, one row per database (summed over its
// users and backends). PGBastion counts servers assigned, transactions, queries (a
// ReadyForQuery each), bytes received from clients and sent by servers to them, the time
// servers were assigned to clients (xact_time: in transaction mode, the transactions' time),
// the time they ran requests (query_time), the time clients waited, and named statements in
// transaction mode (parses of clients and of servers, binds). PgBouncer's avg_ columns cover its last
// stats_period; these cover the pool's life (rates per second since it was created, times
// per transaction, query or assignment).
func (cl *client) showStats() (consoleResult, error) {
	names := append([]string{"database"}, statsNames()...)
	res := consoleResult{cols: textCols(names...)}
	for i := 1; i < len(res.cols); i++ {
		res.cols[i].num = true
	}
	now := time.Now()
	pools := cl.e.Stats().Pools // ordered by database: a row's pools are neighbours
	for i := 0; i < len(pools); {
		j := i
		for j < len(pools) && pools[j].Database == pools[i].Database {
			j++
		}
		res.rows = append(res.rows, append([]string{pools[i].Database}, statsValues(pools[i:j], now)...))
		i = j
	}
	return res, nil
}

// showStatsPart is SHOW STATS_TOTALS (prefix "total_") or SHOW STATS_AVERAGES ("avg_"):
// SHOW STATS' columns of that kind, without the prefix, under PgBouncer's names for them.
func (cl *client) showStatsPart(prefix string) (consoleResult, error) {
	all, err := cl.showStats()
	if err != nil {
		return all, err
	}
	res := consoleResult{cols: []consoleCol{all.cols[0]}}
	keep := []int{0}
	for i, c := range all.cols {
		name, ok := strings.CutPrefix(c.name, prefix)
		if !ok {
			continue
		}
		switch name {
		case "received", "recv":
			name = "bytes_received"
		case "sent":
			name = "bytes_sent"
		}
		res.cols = append(res.cols, consoleCol{name: name, num: c.num})
		keep = append(keep, i)
	}
	for _, row := range all.rows {
		r := make([]string, 0, len(keep))
		for _, i := range keep {
			r = append(r, row[i])
		}
		res.rows = append(res.rows, r)
	}
	return res, nil
}

// showState is SHOW STATE: whether the proxy is paused (PAUSE without a database, or a
// switchover's hold of writes). PGBastion has no SUSPEND: suspended is always no.
func (cl *client) showState() (consoleResult, error) {
	yesNo := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	paused := cl.e.pausedAll.Load()
	res := consoleResult{cols: textCols("key", "value")}
	res.rows = [][]string{{"active", yesNo(!paused)}, {"paused", yesNo(paused)}, {"suspended", "no"},
		{"writes_held", yesNo(cl.e.pausedRW.Load())}, {"paused_databases", strings.Join(cl.e.PausedDatabases(), ",")}}
	return res, nil
}

// showTotals is SHOW TOTALS: SHOW STATS summed over every database, one name and value a row.
func (cl *client) showTotals() (consoleResult, error) {
	res := consoleResult{cols: []consoleCol{{name: "name"}, {name: "value", num: true}}}
	values := statsValues(cl.e.Stats().Pools, time.Now())
	for i, n := range statsNames() {
		res.rows = append(res.rows, []string{n, values[i]})
	}
	return res, nil
}

// statsNames are SHOW STATS' counter columns.
func statsNames() []string {
	var names []string
	for _, pre := range []string{"total_", "avg_"} {
		for _, n := range []string{"server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time",
			"query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count"} {
			if pre == "avg_" && n == "received" {
				n = "recv"
			}
			names = append(names, pre+n)
		}
	}
	return names
}

// statsValues sums pools' counts into the values of statsNames.
func statsValues(pools []PoolStats, now time.Time) []string {
	u64 := func(v uint64) string { return strconv.FormatUint(v, 10) }
	per := func(num float64, den float64) string {
		if den <= 0 {
			return "0"
		}
		return strconv.FormatInt(int64(num/den), 10)
	}
	var a PoolCounts
	var secs float64 // the oldest pool's age
	for _, p := range pools {
		a.add(p.Counts)
		secs = max(secs, now.Sub(p.Counts.Since).Seconds())
	}
	xactUS, waitUS, queryUS := float64(a.Assigned.Microseconds()), float64(a.Wait.Microseconds()), float64(a.Query.Microseconds())
	return []string{
		u64(a.Assignments), u64(a.Transactions), u64(a.Queries), u64(a.Received), u64(a.Sent),
		strconv.FormatInt(a.Assigned.Microseconds(), 10), strconv.FormatInt(a.Query.Microseconds(), 10),
		strconv.FormatInt(a.Wait.Microseconds(), 10), u64(a.ClientParses), u64(a.ServerParses), u64(a.Binds),
		per(float64(a.Assignments), secs), per(float64(a.Transactions), secs), per(float64(a.Queries), secs),
		per(float64(a.Received), secs), per(float64(a.Sent), secs),
		per(xactUS, float64(a.Transactions)), per(queryUS, float64(a.Queries)), per(waitUS, float64(a.Assignments)),
		per(float64(a.ClientParses), secs), per(float64(a.ServerParses), secs), per(float64(a.Binds), secs)}
}

// showLists is SHOW LISTS with PgBouncer's rows. PGBastion keeps no free lists of client or
// server objects and no DNS cache, so those rows are 0; login_clients (clients still logging
// in) it does not count apart, and that row is 0 too.
func (cl *client) showLists() (consoleResult, error) {
	st := cl.e.Stats()
	dbs, users := map[string]bool{}, map[string]bool{}
	servers := 0
	for _, p := range st.Pools {
		dbs[p.Database], users[p.User] = true, true
		servers += p.Open
	}
	res := consoleResult{cols: []consoleCol{{name: "list"}, {name: "items", num: true}}}
	for _, r := range []struct {
		name string
		n    int
	}{{"databases", len(dbs)}, {"users", len(users)}, {"pools", len(st.Pools)}, {"free_clients", 0},
		{"used_clients", int(max(0, st.Clients))}, {"login_clients", 0}, {"free_servers", 0}, {"used_servers", servers},
		{"dns_names", 0}, {"dns_zones", 0}, {"dns_queries", 0}, {"dns_pending", 0}} {
		res.rows = append(res.rows, []string{r.name, strconv.Itoa(r.n)})
	}
	return res, nil
}

// showDatabases is SHOW DATABASES with PgBouncer's columns: one row per pool (a database and
// user on one backend).
func (cl *client) showDatabases() (consoleResult, error) {
	conf := &cl.e.conf().cfg
	cfg := &conf.Pool // reloadable: min_pool_size, reserve_pool_size, server_lifetime...
	pools := cl.e.Stats().Pools
	res := consoleResult{cols: textCols("name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
		"reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections", "current_connections",
		"max_client_connections", "current_client_connections", "paused", "disabled")}
	for _, i := range []int{2, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16} {
		res.cols[i].num = true
	}
	for _, p := range pools {
		host, port, err := net.SplitHostPort(p.Addr)
		if err != nil {
			host, port = p.Addr, ""
		}
		res.rows = append(res.rows, []string{p.Database, host, port, p.Database, p.User, strconv.Itoa(p.Size),
			strconv.Itoa(conf.PoolLimits(p.Database, p.User).Min), strconv.Itoa(p.Reserve), strconv.Itoa(int(cfg.ServerLifetime / time.Second)),
			string(cfg.Mode), "", strconv.Itoa(conf.MaxDBConnections(p.Database)),
			strconv.Itoa(p.Open), "0", strconv.Itoa(p.Clients), boolDigit(p.Paused), "0"})
	}
	return res, nil
}

// showUsers is SHOW USERS: one row per user that has pools or a proxy.users entry, with
// PgBouncer's columns: its pool mode (the proxy's: there is no per-user mode),
// max_user_connections (0: unlimited) and the server connections it has open now.
func (cl *client) showUsers() (consoleResult, error) {
	conf := &cl.e.conf().cfg
	open := map[string]int{}
	for _, p := range cl.e.Stats().Pools {
		open[p.User] += p.Open
	}
	for name := range conf.Users {
		if _, ok := open[name]; !ok {
			open[name] = 0
		}
	}
	res := consoleResult{cols: textCols("name", "pool_mode", "max_user_connections", "current_connections")}
	res.cols[2].num, res.cols[3].num = true, true
	for _, name := range slices.Sorted(maps.Keys(open)) {
		res.rows = append(res.rows, []string{name, string(conf.Pool.Mode), strconv.Itoa(conf.MaxUserConnections(name)), strconv.Itoa(open[name])})
	}
	return res, nil
}

func boolDigit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// showConfig is SHOW CONFIG: the pool settings under PgBouncer's names, durations in seconds
// as PgBouncer writes them. changeable is "no": the console changes nothing.
func (cl *client) showConfig() (consoleResult, error) {
	c, d := &cl.e.conf().cfg, DefaultConfig()
	p, dp := &c.Pool, &d.Pool
	secs := func(t time.Duration) string { return strconv.FormatFloat(t.Seconds(), 'f', -1, 64) }
	rows := [][3]string{
		{"auth_dbname", c.Auth.AuthDBName, ""},
		{"auth_hba_file", c.Auth.HBAFile, ""},
		{"auth_query", cmp.Or(c.Auth.AuthQuery, DefaultAuthQuery), DefaultAuthQuery},
		{"auth_type", c.Auth.Method, d.Auth.Method},
		{"auth_user", c.Auth.AuthUser, ""},
		{"client_idle_timeout", secs(p.ClientIdleTimeout), secs(dp.ClientIdleTimeout)},
		{"application_name_add_host", boolNum(c.ApplicationNameAddHost), "0"},
		{"client_login_timeout", secs(p.ClientLoginTimeout), secs(dp.ClientLoginTimeout)},
		{"default_pool_size", strconv.Itoa(p.DefaultPoolSize), strconv.Itoa(dp.DefaultPoolSize)},
		{"idle_transaction_timeout", secs(p.IdleTransactionTimeout), secs(dp.IdleTransactionTimeout)},
		{"listen_addr", c.ListenRW, d.ListenRW},
		{"log_connections", boolNum(c.LogConnections), "0"},
		{"log_disconnections", boolNum(c.LogDisconnections), "0"},
		{"log_stats", boolNum(c.LogStats), "0"},
		{"max_client_conn", strconv.Itoa(p.MaxClientConn), strconv.Itoa(dp.MaxClientConn)},
		{"max_db_connections", strconv.Itoa(p.MaxDBConnections), strconv.Itoa(dp.MaxDBConnections)},
		{"max_prepared_statements", strconv.Itoa(p.MaxPreparedStatements), strconv.Itoa(dp.MaxPreparedStatements)},
		{"min_pool_size", strconv.Itoa(p.MinPoolSize), strconv.Itoa(dp.MinPoolSize)},
		{"pool_mode", string(p.Mode), string(dp.Mode)},
		{"query_timeout", secs(p.QueryTimeout), secs(dp.QueryTimeout)},
		{"query_wait_timeout", secs(p.QueryWaitTimeout), secs(dp.QueryWaitTimeout)},
		{"reserve_pool_size", strconv.Itoa(p.ReservePoolSize), strconv.Itoa(dp.ReservePoolSize)},
		{"reserve_pool_timeout", secs(p.ReservePoolTimeout), secs(dp.ReservePoolTimeout)},
		{"server_check_delay", secs(p.ServerCheckDelay), secs(dp.ServerCheckDelay)},
		{"server_connect_timeout", secs(p.ServerConnectTimeout), secs(dp.ServerConnectTimeout)},
		{"server_idle_timeout", secs(p.ServerIdleTimeout), secs(dp.ServerIdleTimeout)},
		{"server_lifetime", secs(p.ServerLifetime), secs(dp.ServerLifetime)},
		{"server_reset_query", p.ServerResetQuery, dp.ServerResetQuery},
		{"server_tls_ca_file", c.Server.TLS.CA, ""},
		{"server_tls_cert_file", c.Server.TLS.Cert, ""},
		{"server_tls_key_file", c.Server.TLS.Key, ""},
		{"server_tls_sslmode", c.Server.TLS.mode(), d.Server.TLS.mode()},
		{"stats_period", secs(cmp.Or(c.StatsPeriod, time.Minute)), secs(d.StatsPeriod)},
		{"unix_socket_dir", c.UnixSocketDir, ""},
		{"unix_socket_group", c.UnixSocketGroup, ""},
		{"unix_socket_mode", cmp.Or(c.UnixSocketMode, "0777"), "0777"},
	}
	res := consoleResult{cols: textCols("key", "value", "default", "changeable")}
	for _, r := range rows {
		res.rows = append(res.rows, []string{r[0], r[1], r[2], "no"})
	}
	return res, nil
}

// showVersion is SHOW VERSION. The PgBouncer version named is the one whose console columns
// SHOW POOLS and SHOW DATABASES reproduce, for tools that choose columns by it.
func (cl *client) showVersion() (consoleResult, error) {
	return consoleResult{cols: textCols("version"),
		rows: [][]string{{"PGBastion " + cl.e.version + " (console columns of PgBouncer 1.21.0)"}}}, nil
}

// connCols are SHOW CLIENTS' and SHOW SERVERS' columns, PgBouncer 1.21's.
var connCols = func() []consoleCol {
	cols := textCols("type", "user", "database", "state", "addr", "port", "local_addr", "local_port", "connect_time",
		"request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls", "application_name",
		"prepared_statements")
	for _, i := range []int{5, 7, 10, 11, 12, 15, 18} {
		cols[i].num = true
	}
	return cols
}()

// showClients is SHOW CLIENTS: one row per client connection, the console's own included.
// ptr and link pair a client with the server it holds (SHOW SERVERS' ptr).
func showClients(conns []Conn) consoleResult { return connRows(conns, false) }

// showServers is SHOW SERVERS: one row per server connection. A server off the event loops
// (serving a TLS or slow client) shows active when its client is listed holding it, idle
// otherwise; its local address and request time are not read there.
func showServers(conns []Conn) consoleResult { return connRows(conns, true) }

func connRows(conns []Conn, servers bool) consoleResult {
	res := consoleResult{cols: connCols}
	kind := "C"
	if servers {
		kind = "S"
	}
	stamp := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05 MST")
	}
	for _, c := range conns {
		if c.Server != servers {
			continue
		}
		host, port := splitAddr(c.Addr)
		lhost, lport := splitAddr(c.Local)
		us := c.Wait.Microseconds()
		res.rows = append(res.rows, []string{kind, c.User, c.Database, c.State, host, port, lhost, lport,
			stamp(c.Connected), stamp(c.Request), strconv.FormatInt(us/1e6, 10), strconv.FormatInt(us%1e6, 10), "0",
			c.ID, c.Link, strconv.FormatUint(uint64(c.RemotePID), 10), c.TLS, c.AppName, strconv.Itoa(c.Prepared)})
	}
	return res
}

// splitAddr splits host:port; a numeric column gets "0" rather than an empty string.
func splitAddr(a string) (host, port string) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return a, "0"
	}
	return host, port
}

// boolNum is a boolean as PgBouncer's SHOW CONFIG writes one.
func boolNum(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
