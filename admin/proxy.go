package admin

import (
	"fmt"
	"time"

	"github.com/valyala/fasthttp"
)

// ProxyStatus is this node's proxy as GET /proxy shows it (and GET /nodes under
// local.proxy): what PgBouncer's SHOW POOLS tells an operator, in JSON.
type ProxyStatus struct {
	// Clients is the number of client connections open on the proxy's listeners.
	Clients int64 `json:"clients"`
	// WritesTo is the backend (host:port) the read-write listener routes to; empty while
	// there is no primary to route to (new transactions on it then fail or wait).
	WritesTo string `json:"writes_to"`
	// Paused: an operator paused the proxy (POST /proxy/pause): new transactions wait.
	// InFlight counts transactions holding a server connection; ClientsHeld the clients
	// waiting for the pause to end or for a primary (they are in no pool's clients_waiting).
	Paused      bool `json:"paused"`
	InFlight    int  `json:"transactions_in_flight"`
	ClientsHeld int  `json:"clients_held"`
	// PausedDatabases are databases paused on their own (POST /proxy/pause {"database": …}).
	PausedDatabases []string `json:"paused_databases,omitempty"`
	// Pools lists one entry per (backend, database, user) that has been used.
	Pools []PoolStatus `json:"pools"`
}

// PoolStatus is one pool of server connections.
type PoolStatus struct {
	Backend  string `json:"backend"`
	Database string `json:"database"`
	User     string `json:"user"`
	// Clients are the client connections routed to this pool, whether in a transaction,
	// waiting for a server or idle between transactions.
	Clients int `json:"clients"`
	// ServersActive are attached to a client; ServersIdle wait for one. Size and Reserve are
	// default_pool_size and reserve_pool_size: active + idle can reach Size + Reserve.
	ServersActive int `json:"servers_active"`
	ServersIdle   int `json:"servers_idle"`
	// ServersLoggingIn are being connected and logged in (not in ServersActive).
	ServersLoggingIn int `json:"servers_logging_in"`
	Size             int `json:"size"`
	Reserve          int `json:"reserve"`
	// ClientsWaiting have a transaction to run and no server yet; MaxWaitSeconds is how long
	// the oldest of them has waited (PgBouncer's maxwait). Waits near query_wait_timeout
	// end in errors: the pool is too small for the load, or the server is slow.
	ClientsWaiting int     `json:"clients_waiting"`
	MaxWaitSeconds float64 `json:"max_wait_seconds"`
	// Paused: new transactions wait (a switchover, or pause from the HA core).
	Paused bool `json:"paused"`
	// Counters since the pool was created: transactions ended, queries answered (a
	// ReadyForQuery each), servers attached to clients, the time clients waited for a server
	// and the time servers were attached (in transaction mode, the transactions' time).
	Transactions         uint64  `json:"transactions"`
	Queries              uint64  `json:"queries"`
	ServerAssignments    uint64  `json:"server_assignments"`
	WaitSecondsTotal     float64 `json:"wait_seconds_total"`
	AssignedSecondsTotal float64 `json:"assigned_seconds_total"`
	// QuerySecondsTotal is the time servers ran clients' requests (from a request reaching an
	// idle server to its ReadyForQuery); ReceivedBytes came from clients, SentBytes from
	// servers to them.
	QuerySecondsTotal float64 `json:"query_seconds_total"`
	ReceivedBytes     uint64  `json:"received_bytes"`
	SentBytes         uint64  `json:"sent_bytes"`
	// In transaction mode, named prepared statements: Parses from clients, Parses the proxy
	// sent to servers (a statement reaching a server that lacks it: few against ClientParses
	// means statements are shared across clients), and Binds of them.
	ClientParses uint64 `json:"client_parses"`
	ServerParses uint64 `json:"server_parses"`
	Binds        uint64 `json:"binds"`
	// CancelsInFlight are cancel requests being forwarded to the pool's servers;
	// ServersHeldForCancel are servers no client holds that wait for such a cancel to land
	// before another client may have them (not counted in ServersActive).
	CancelsInFlight      int `json:"cancels_in_flight"`
	ServersHeldForCancel int `json:"servers_held_for_cancel"`
	// Loops breaks servers and waiting clients down by event loop. Each loop serves its own
	// clients with its share of the pool; a loop whose clients wait far longer than another's
	// is one whose thread gets less CPU.
	Loops []PoolLoopStatus `json:"loops"`
}

// PoolLoopStatus is one event loop's part of a pool.
type PoolLoopStatus struct {
	Servers        int     `json:"servers"`
	ServersIdle    int     `json:"servers_idle"`
	ClientsWaiting int     `json:"clients_waiting"`
	MaxWaitSeconds float64 `json:"max_wait_seconds"`
}

// proxy serves GET /proxy.
func (s *Server) proxy(ctx *fasthttp.RequestCtx) {
	if s.src.Proxy == nil {
		writeError(ctx, fasthttp.StatusNotFound, "this node runs no proxy")
		return
	}
	st := s.src.Proxy()
	if st.Pools == nil {
		st.Pools = []PoolStatus{} // [] rather than null: no pool has been used yet
	}
	writeJSON(ctx, fasthttp.StatusOK, st)
}

// ConnStatus is one client or server connection of this node's proxy (GET
// /proxy/connections): PgBouncer's SHOW CLIENTS and SHOW SERVERS, in JSON.
type ConnStatus struct {
	// Kind is "client" or "server". ID identifies the connection; a client's Link is the ID of
	// the server it holds, a server's the ID of the client it serves.
	Kind     string `json:"kind"`
	ID       string `json:"id"`
	Link     string `json:"link,omitempty"`
	User     string `json:"user"`
	Database string `json:"database"`
	// State: clients "login", "active" or "waiting" (for a server); servers "active"
	// (serving a client), "idle" or "used" (being reset or checked).
	State string `json:"state"`
	// Addr is the far end (a client's address, a server's PostgreSQL), Local this end.
	Addr          string    `json:"addr"`
	Local         string    `json:"local,omitempty"`
	ConnectedAt   time.Time `json:"connected_at"`
	LastRequestAt time.Time `json:"last_request_at,omitzero"`
	// WaitSeconds is how long a waiting client has waited for a server.
	WaitSeconds float64 `json:"wait_seconds"`
	// BackendPID is a server's PostgreSQL process (pg_stat_activity.pid); for a client, that
	// of the server it holds.
	BackendPID      uint32 `json:"backend_pid,omitempty"`
	TLS             string `json:"tls,omitempty"`
	ApplicationName string `json:"application_name,omitempty"`
	// PreparedStatements: a client's named statements, or those prepared on a server.
	PreparedStatements int `json:"prepared_statements"`
	// Loop is the event loop serving the connection; -1 is the stream path (TLS, slow
	// readers).
	Loop int `json:"loop"`
}

// connections serves GET /proxy/connections.
func (s *Server) connections(ctx *fasthttp.RequestCtx) {
	if s.src.Connections == nil {
		writeError(ctx, fasthttp.StatusNotFound, "this node runs no proxy")
		return
	}
	list := s.src.Connections()
	if list == nil {
		list = []ConnStatus{}
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"connections": list})
}

// databaseRequest is the body of POST /proxy/kill and POST /proxy/reconnect.
type databaseRequest struct {
	Database string `json:"database"`
}

// needProxyOps answers 404 on a node without a proxy.
func (s *Server) needProxyOps(ctx *fasthttp.RequestCtx) bool {
	if s.src.ProxyOps == nil {
		writeError(ctx, fasthttp.StatusNotFound, "this node runs no proxy")
		return false
	}
	return true
}

// proxyReconnect serves POST /proxy/reconnect: PgBouncer's RECONNECT [db].
func (s *Server) proxyReconnect(ctx *fasthttp.RequestCtx) {
	var req databaseRequest
	if !s.needProxyOps(ctx) || !decode(ctx, &req) {
		return
	}
	n := s.src.ProxyOps.Reconnect(req.Database)
	what := "every database"
	if req.Database != "" {
		what = fmt.Sprintf("database %q", req.Database)
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"database": req.Database, "servers_retired": n,
		"message": fmt.Sprintf("%d server connections of %s will be replaced: idle ones now, the others when their clients let them go", n, what)})
}

// proxyKill serves POST /proxy/kill: PgBouncer's KILL db.
func (s *Server) proxyKill(ctx *fasthttp.RequestCtx) {
	var req databaseRequest
	if !s.needProxyOps(ctx) || !decode(ctx, &req) {
		return
	}
	if req.Database == "" {
		writeError(ctx, fasthttp.StatusBadRequest, `the body must name the database: {"database": "NAME"}`)
		return
	}
	r := s.src.ProxyOps.KillDatabase(req.Database)
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"database": req.Database, "clients_closed": r.Clients,
		"servers_retired": r.Servers, "clients_unchecked": r.Busy, "paused": r.Paused, "message": r.Message})
}

// proxyKillClient serves DELETE /proxy/connections/{id}: PgBouncer's KILL_CLIENT.
func (s *Server) proxyKillClient(ctx *fasthttp.RequestCtx) {
	if !s.needProxyOps(ctx) {
		return
	}
	id, _ := ctx.UserValue("id").(string)
	if !s.src.ProxyOps.KillClient(id) {
		writeError(ctx, fasthttp.StatusNotFound, fmt.Sprintf("no client connection %q (it may have gone already): GET /proxy/connections lists them; a server connection is replaced with POST /proxy/reconnect", id))
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"closed": id,
		"message": "client connection closed; a query it was running was cancelled, an open transaction rolled back"})
}
