package pool

import (
	"errors"
	"fmt"
	"time"
)

// Mode is the pooling mode.
type Mode string

const (
	// ModeSession gives a client one server connection for its whole session; the connection is
	// reset (server_reset_query) and reused by the next client.
	ModeSession Mode = "session"
	// ModeTransaction attaches a server connection at the first message of a transaction and
	// releases it when the transaction ends.
	ModeTransaction Mode = "transaction"
)

// Config holds the pooling settings (YAML section proxy.pool). Names and meanings follow
// PgBouncer's; durations are Go duration strings ("30s") instead of PgBouncer's seconds.
type Config struct {
	// Enabled turns pooling on. When false every client gets its own server connection, which
	// is closed when the client leaves (HAProxy-like).
	Enabled bool `yaml:"enabled"`
	Mode    Mode `yaml:"mode"`

	MaxClientConn      int           `yaml:"max_client_conn"`
	DefaultPoolSize    int           `yaml:"default_pool_size"`
	MinPoolSize        int           `yaml:"min_pool_size"`
	ReservePoolSize    int           `yaml:"reserve_pool_size"`
	ReservePoolTimeout time.Duration `yaml:"reserve_pool_timeout"`
	MaxDBConnections   int           `yaml:"max_db_connections"`

	QueryWaitTimeout       time.Duration `yaml:"query_wait_timeout"`
	IdleTransactionTimeout time.Duration `yaml:"idle_transaction_timeout"`
	ClientIdleTimeout      time.Duration `yaml:"client_idle_timeout"`
	ServerIdleTimeout      time.Duration `yaml:"server_idle_timeout"`
	ServerLifetime         time.Duration `yaml:"server_lifetime"`
	ServerConnectTimeout   time.Duration `yaml:"server_connect_timeout"`
	ServerCheckDelay       time.Duration `yaml:"server_check_delay"`
	// QueryTimeout: a request running on a server for longer is cancelled and its client
	// disconnected (57014), as PgBouncer's query_timeout: a guard against a server or network
	// that stopped answering. Set PostgreSQL's statement_timeout a little below it for slow
	// queries. 0 disables it.
	QueryTimeout time.Duration `yaml:"query_timeout"`
	// ClientLoginTimeout: a client that has not finished logging in by then is disconnected.
	ClientLoginTimeout time.Duration `yaml:"client_login_timeout"`

	// MaxPreparedStatements is the per-server LRU size of protocol-level named prepared
	// statements in transaction mode; 0 turns the virtualisation off (named statements then
	// fail over servers exactly as with PgBouncer before 1.21).
	MaxPreparedStatements int `yaml:"max_prepared_statements"`
	// ServerResetQuery runs when a session-mode client leaves.
	ServerResetQuery string `yaml:"server_reset_query"`
}

// DefaultConfig returns the defaults, PgBouncer's where PgBouncer has one.
func DefaultConfig() Config {
	return Config{
		Enabled:               true,
		Mode:                  ModeSession,
		MaxClientConn:         10000,
		DefaultPoolSize:       20,
		ReservePoolTimeout:    5 * time.Second,
		QueryWaitTimeout:      120 * time.Second,
		ServerIdleTimeout:     600 * time.Second,
		ServerLifetime:        3600 * time.Second,
		ServerConnectTimeout:  5 * time.Second,
		ServerCheckDelay:      30 * time.Second,
		ClientLoginTimeout:    60 * time.Second,
		MaxPreparedStatements: 200,
		ServerResetQuery:      "DISCARD ALL",
	}
}

// Validate checks the settings; it is pure and fast.
func (c *Config) Validate() error {
	var errs []error
	if c.Mode != ModeSession && c.Mode != ModeTransaction {
		errs = append(errs, fmt.Errorf("pool.mode: %q is not a pooling mode; use session or transaction", c.Mode))
	}
	if c.DefaultPoolSize < 1 {
		errs = append(errs, fmt.Errorf("pool.default_pool_size: %d must be at least 1", c.DefaultPoolSize))
	}
	if c.MinPoolSize < 0 || c.MinPoolSize > c.DefaultPoolSize {
		errs = append(errs, fmt.Errorf("pool.min_pool_size: %d must be between 0 and default_pool_size (%d)", c.MinPoolSize, c.DefaultPoolSize))
	}
	if c.ReservePoolSize < 0 {
		errs = append(errs, fmt.Errorf("pool.reserve_pool_size: %d must not be negative", c.ReservePoolSize))
	}
	if c.MaxClientConn < 1 {
		errs = append(errs, fmt.Errorf("pool.max_client_conn: %d must be at least 1", c.MaxClientConn))
	}
	if c.MaxDBConnections < 0 {
		errs = append(errs, fmt.Errorf("pool.max_db_connections: %d must not be negative (0 means unlimited)", c.MaxDBConnections))
	}
	if c.MaxPreparedStatements < 0 {
		errs = append(errs, fmt.Errorf("pool.max_prepared_statements: %d must not be negative", c.MaxPreparedStatements))
	}
	if c.ServerConnectTimeout <= 0 {
		errs = append(errs, errors.New("pool.server_connect_timeout must be positive"))
	}
	for name, d := range map[string]time.Duration{
		"reserve_pool_timeout": c.ReservePoolTimeout, "query_wait_timeout": c.QueryWaitTimeout,
		"idle_transaction_timeout": c.IdleTransactionTimeout, "client_idle_timeout": c.ClientIdleTimeout,
		"server_idle_timeout": c.ServerIdleTimeout, "server_lifetime": c.ServerLifetime,
		"server_check_delay": c.ServerCheckDelay, "query_timeout": c.QueryTimeout, "client_login_timeout": c.ClientLoginTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("pool.%s: %s must not be negative (0 disables it)", name, d))
		}
	}
	return errors.Join(errs...)
}

// Limits returns the per-pool limits these settings give.
func (c *Config) Limits() Limits {
	size := c.DefaultPoolSize
	if !c.Enabled {
		// Without pooling every client has its own connection: only max_client_conn bounds it.
		size = c.MaxClientConn
	}
	return Limits{
		Size: size, Min: c.MinPoolSize, Reserve: c.ReservePoolSize,
		ReserveTimeout: c.ReservePoolTimeout, WaitTimeout: c.QueryWaitTimeout,
		IdleTimeout: c.ServerIdleTimeout, Lifetime: c.ServerLifetime,
	}
}
