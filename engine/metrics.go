package engine

import (
	"github.com/VictoriaMetrics/metrics"
)

// Metrics are the proxy's counters, registered in a VictoriaMetrics set that the admin
// package exposes. Handles are created once; the hot path only increments them.
type Metrics struct {
	set *metrics.Set

	clientsAccepted       *metrics.Counter
	logins                *metrics.Counter
	authFailures          *metrics.Counter
	protocolErrors        *metrics.Counter
	panics                *metrics.Counter
	tlsClients            *metrics.Counter
	tlsFailures           *metrics.Counter
	serverConnects        *metrics.Counter
	serverConnectFailures *metrics.Counter
	serverParses          *metrics.Counter
	clientParses          *metrics.Counter
	settingSyncs          *metrics.Counter
	serverResets          *metrics.Counter
	clientWaits           *metrics.Counter
	waitTimeouts          *metrics.Counter
	idleTimeouts          *metrics.Counter
	slowReaders           *metrics.Counter
	cancelRequests        *metrics.Counter
	cancelsDropped        *metrics.Counter
	serverChecks          *metrics.Counter
	serverCheckFailures   *metrics.Counter
	// serverMoves counts server connections taken off their event loop to serve a client on
	// another loop or on the stream path.
	serverMoves *metrics.Counter
	// consoleCommands counts the admin console's queries.
	consoleCommands *metrics.Counter
	// primaryChanges counts routing tables that changed where writes go (including to
	// nowhere and back): a standalone proxy's flapping role checks show here.
	primaryChanges *metrics.Counter
	// clientsKilled counts clients an operator closed (KILL_CLIENT, KILL); reconnects the
	// server connections an operator retired (RECONNECT, KILL).
	clientsKilled, reconnects *metrics.Counter
	// queryTimeouts counts requests cancelled by query_timeout.
	queryTimeouts *metrics.Counter
	// authQueries counts auth_query lookups (concurrent logins of a user share one);
	// authQueryFailures those that could not run (the client got 08006).
	authQueries, authQueryFailures *metrics.Counter
}

// NewMetrics registers the proxy's metrics in set (a new set when nil).
func NewMetrics(set *metrics.Set) *Metrics {
	if set == nil {
		set = metrics.NewSet()
	}
	c := set.NewCounter
	return &Metrics{
		set:                   set,
		clientsAccepted:       c("pgbastion_proxy_client_connections_total"),
		logins:                c("pgbastion_proxy_client_logins_total"),
		authFailures:          c("pgbastion_proxy_client_auth_failures_total"),
		authQueries:           c("pgbastion_proxy_auth_queries_total"),
		authQueryFailures:     c("pgbastion_proxy_auth_query_failures_total"),
		protocolErrors:        c("pgbastion_proxy_protocol_errors_total"),
		panics:                c("pgbastion_proxy_panics_recovered_total"),
		tlsClients:            c("pgbastion_proxy_tls_clients_total"),
		tlsFailures:           c("pgbastion_proxy_tls_handshake_failures_total"),
		serverConnects:        c("pgbastion_proxy_server_connections_total"),
		serverConnectFailures: c("pgbastion_proxy_server_connect_failures_total"),
		serverParses:          c("pgbastion_proxy_server_parses_total"),
		clientParses:          c("pgbastion_proxy_client_parses_total"),
		settingSyncs:          c("pgbastion_proxy_setting_syncs_total"),
		serverResets:          c("pgbastion_proxy_server_resets_total"),
		clientWaits:           c("pgbastion_proxy_client_waits_total"),
		waitTimeouts:          c("pgbastion_proxy_query_wait_timeouts_total"),
		idleTimeouts:          c("pgbastion_proxy_idle_timeouts_total"),
		slowReaders:           c("pgbastion_proxy_slow_readers_total"),
		cancelRequests:        c("pgbastion_proxy_cancel_requests_total"),
		cancelsDropped:        c("pgbastion_proxy_cancel_requests_dropped_total"),
		serverChecks:          c("pgbastion_proxy_server_checks_total"),
		serverCheckFailures:   c("pgbastion_proxy_server_check_failures_total"),
		serverMoves:           c("pgbastion_proxy_server_moves_total"),
		consoleCommands:       c("pgbastion_proxy_console_commands_total"),
		primaryChanges:        c("pgbastion_proxy_primary_changes_total"),
		clientsKilled:         c("pgbastion_proxy_clients_killed_total"),
		reconnects:            c("pgbastion_proxy_server_reconnects_total"),
		queryTimeouts:         c("pgbastion_proxy_query_timeouts_total"),
	}
}

// Set returns the metric set, for exposition.
func (m *Metrics) Set() *metrics.Set { return m.set }

// PrimaryChanges returns how many times the proxy's idea of the primary changed (for tests).
func (m *Metrics) PrimaryChanges() uint64 { return m.primaryChanges.Get() }

// Panics returns the number of recovered panics (for tests).
func (m *Metrics) Panics() uint64 { return m.panics.Get() }
