package engine

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/pool"
)

// Config is the proxy's configuration (YAML section "proxy").
type Config struct {
	// ListenRW accepts clients routed to the primary; ListenRO clients routed to replicas
	// (the primary serves reads when no replica is healthy). Either may be empty to disable it.
	ListenRW string      `yaml:"listen_rw"`
	ListenRO string      `yaml:"listen_ro"`
	Pool     pool.Config `yaml:"pool"`
	Auth     AuthConfig  `yaml:"auth"`
	// Backends are the PostgreSQL servers of a standalone proxy. With a raft section, the HA
	// core provides the backends instead.
	Backends []BackendConfig `yaml:"backends"`
	Server   ServerConfig    `yaml:"server"`
	TLS      TLSConfig       `yaml:"tls"`

	// EventLoops is the number of reactor loops; 0 (the default) chooses by pooling mode, see
	// AutoEventLoops.
	EventLoops int `yaml:"event_loops"`
	// MaxMessageSize bounds the messages the proxy must hold whole to rewrite (Parse in
	// transaction mode, startup and auth); larger ones are refused with SQLSTATE 54000.
	// Query, Bind parameters, CopyData and result rows are streamed and not bounded by it.
	MaxMessageSize int `yaml:"max_message_size"`
	// LocalSocket, in a cluster member, makes the proxy reach this node's own PostgreSQL
	// through its Unix socket (postgresql.socket_dir) instead of its TCP address: cheaper per
	// message on the node that holds the primary. Off by default because clients then see
	// inet_server_addr() and inet_server_port() as NULL when they come in through this node.
	// A standalone proxy gives a backend's socket directory as its host instead.
	LocalSocket bool `yaml:"local_socket"`
	// UnixSocketDir, when set, also accepts clients on Unix sockets in that directory, named as
	// PostgreSQL and PgBouncer name theirs: .s.PGSQL.<port of listen_rw> for the primary and
	// .s.PGSQL.<port of listen_ro> for replicas (psql -h DIR -p PORT). PgBouncer's
	// unix_socket_dir; off by default. UnixSocketMode (octal, default 0777) and
	// UnixSocketGroup set the sockets' permissions and group (unix_socket_mode and
	// unix_socket_group). Socket clients match pg_hba's local lines (proxy.auth.hba_file) and
	// need no TLS, as with PostgreSQL.
	// ApplicationNameAddHost appends the client's address to the application_name it logs in
	// with ("app - 10.0.0.7:51234"), so that pg_stat_activity, log lines with %a and
	// PGBastion's SHOW CLIENTS say which client host runs a query (PgBouncer's setting).
	ApplicationNameAddHost bool `yaml:"application_name_add_host"`
	// LogConnections and LogDisconnections log every client's login and its end at info
	// level: user, database, address, and how long it stayed (PgBouncer's log_connections
	// and log_disconnections). Off by default: a busy proxy has many.
	LogConnections    bool `yaml:"log_connections"`
	LogDisconnections bool `yaml:"log_disconnections"`
	// LogStats logs, every StatsPeriod, the proxy's traffic over that period at info level:
	// transactions and queries a second, bytes in and out a second, and the average
	// transaction, query and wait times (PgBouncer's log_stats and stats_period).
	LogStats        bool          `yaml:"log_stats"`
	StatsPeriod     time.Duration `yaml:"stats_period"`
	UnixSocketDir   string        `yaml:"unix_socket_dir"`
	UnixSocketMode  string        `yaml:"unix_socket_mode"`
	UnixSocketGroup string        `yaml:"unix_socket_group"`
	// StreamHighWater is the amount of data queued for a client that does not read (or a server
	// that does not read) after which the pair moves to the stream path, where TCP flow control
	// holds the sender back (DESIGN.md invariant 7).
	StreamHighWater int `yaml:"stream_high_water"`
	// HealthCheckInterval is how often a standalone proxy re-checks which backend is the
	// primary (pg_is_in_recovery()); it re-checks at once after a connection error.
	HealthCheckInterval time.Duration `yaml:"health_check_interval"`
	// HealthCheckUser and HealthCheckPassword are the credentials of the role checker (default:
	// proxy.server's; needed when proxy.server.user is empty and PostgreSQL wants a password).
	HealthCheckUser     string `yaml:"health_check_user"`
	HealthCheckPassword string `yaml:"health_check_password"`
	// AdminUsers and StatsUsers may log in to the admin console, the virtual database
	// pgbouncer (or pgbastion), and run its SHOW commands (PgBouncer's admin_users and
	// stats_users; the console is read-only, so both get the same). With neither set there is
	// no console: those database names go to PostgreSQL like any other.
	AdminUsers []string `yaml:"admin_users"`
	StatsUsers []string `yaml:"stats_users"`
	// Databases and Users override pool settings for one database or one (server) user, as
	// PgBouncer's [databases] and [users] sections do. A user's pool_size wins over its
	// database's, which wins over pool.default_pool_size.
	Databases map[string]DatabasePool `yaml:"databases"`
	Users     map[string]UserPool     `yaml:"users"`
}

// DatabasePool overrides pool settings for one database; unset fields keep the pool section's.
type DatabasePool struct {
	PoolSize         *int `yaml:"pool_size"`
	MinPoolSize      *int `yaml:"min_pool_size"`
	ReservePoolSize  *int `yaml:"reserve_pool_size"`
	MaxDBConnections *int `yaml:"max_db_connections"`
}

// UserPool overrides pool settings for one user (the user the proxy logs in to PostgreSQL as).
type UserPool struct {
	PoolSize *int `yaml:"pool_size"`
	// MaxUserConnections bounds the user's server connections over all its databases, per
	// backend (PgBouncer's max_user_connections); 0 or unset: no bound.
	MaxUserConnections int `yaml:"max_user_connections"`
}

// PoolLimits returns the limits of the pool of database and user: the pool section's, with
// the database's and then the user's overrides.
func (c *Config) PoolLimits(database, user string) pool.Limits {
	l := c.Pool.Limits()
	if d, ok := c.Databases[database]; ok {
		if d.PoolSize != nil && c.Pool.Enabled {
			l.Size = *d.PoolSize
		}
		if d.MinPoolSize != nil {
			l.Min = *d.MinPoolSize
		}
		if d.ReservePoolSize != nil {
			l.Reserve = *d.ReservePoolSize
		}
	}
	if u, ok := c.Users[user]; ok && u.PoolSize != nil && c.Pool.Enabled {
		l.Size = *u.PoolSize
	}
	l.Min = min(l.Min, l.Size)
	return l
}

// MaxDBConnections returns max_db_connections for database (0: unlimited).
func (c *Config) MaxDBConnections(database string) int {
	if d, ok := c.Databases[database]; ok && d.MaxDBConnections != nil {
		return *d.MaxDBConnections
	}
	return c.Pool.MaxDBConnections
}

// MaxUserConnections returns max_user_connections for user (0: unlimited).
func (c *Config) MaxUserConnections(user string) int { return c.Users[user].MaxUserConnections }

// AuthConfig says how clients authenticate to the proxy.
type AuthConfig struct {
	// Method is trust, md5 or scram-sha-256.
	Method string `yaml:"method"`
	// AuthFile is a PgBouncer-style userlist ("user" "password-or-secret" per line).
	AuthFile string `yaml:"auth_file"`
	// AuthUser turns on password lookup in PostgreSQL (PgBouncer's auth_user): a user the
	// auth_file does not list is looked up by running AuthQuery as AuthUser, whose password is
	// AuthPassword, else its auth_file entry, else proxy.server.password when it is
	// proxy.server.user, else none.
	AuthUser     string `yaml:"auth_user"`
	AuthPassword string `yaml:"auth_password"`
	// AuthQuery returns the user name and stored password (md5 or SCRAM secret) of the user
	// given as $1 (default DefaultAuthQuery).
	AuthQuery string `yaml:"auth_query"`
	// AuthDBName is the database the auth query runs in (default: the client's).
	AuthDBName string `yaml:"auth_dbname"`
	// HBAFile, with Method hba, chooses each client's method by the first matching line of a
	// file in pg_hba.conf's format (PgBouncer's auth_hba_file; see auth.ParseHBA).
	HBAFile string `yaml:"hba_file"`
}

// BackendConfig is one PostgreSQL server.
type BackendConfig struct {
	// Host is a host name or address, or (starting with a slash, as in libpq) the directory
	// of PostgreSQL's Unix socket: the cheaper way to reach PostgreSQL on the same host.
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// Name labels the backend in logs and metrics (default host:port).
	Name string `yaml:"name"`
}

// Addr returns host:port.
func (b BackendConfig) Addr() string { return net.JoinHostPort(b.Host, strconv.Itoa(b.Port)) }

// ServerConfig holds the credentials the proxy logs in to PostgreSQL with. When User is empty
// the proxy logs in as the client's user with the password from the auth_file.
type ServerConfig struct {
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// TLS is how the proxy's connections to PostgreSQL over TCP use TLS (PgBouncer's
	// server_tls_*). Unix-socket connections never do, as with libpq.
	TLS ServerTLSConfig `yaml:"tls"`
}

// ServerTLSConfig configures TLS towards PostgreSQL.
type ServerTLSConfig struct {
	// Mode is disable, prefer (the default: TLS when PostgreSQL offers it, unverified),
	// require (TLS or no connection, unverified), verify-ca (the certificate must chain to CA)
	// or verify-full (and name the backend's host), as libpq's sslmode.
	Mode string `yaml:"mode"`
	// CA verifies PostgreSQL's certificate (verify-ca, verify-full).
	CA string `yaml:"ca"`
	// Cert and Key are a client certificate to present (for PostgreSQL's cert method or
	// clientcert=verify-full in pg_hba.conf).
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// TLSConfig configures TLS towards clients.
type TLSConfig struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// CA verifies client certificates (modes verify-ca and verify-full).
	CA string `yaml:"ca"`
	// Mode is disable, allow, prefer, require, verify-ca or verify-full (PgBouncer's
	// client_tls_sslmode). require and stronger refuse clients that do not use TLS.
	Mode string `yaml:"mode"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		ListenRW:            "127.0.0.1:5432",
		ListenRO:            "127.0.0.1:5433",
		Pool:                pool.DefaultConfig(),
		Auth:                AuthConfig{Method: "trust"},
		MaxMessageSize:      16 << 20,
		StreamHighWater:     4 << 20,
		HealthCheckInterval: time.Second,
		StatsPeriod:         time.Minute,
		TLS:                 TLSConfig{Mode: "disable"},
		Server:              ServerConfig{TLS: ServerTLSConfig{Mode: "prefer"}},
	}
}

// AutoEventLoops is the number of reactor loops used when proxy.event_loops is 0: one per CPU,
// at most 4, in both pooling modes. PGBastion runs on the database host, whose cores
// PostgreSQL's backends need too, and a second loop keeps the proxy running while the first
// waits to be scheduled. On the 2-core benchmark machine (pgbench -S -c 50, raw-send writer):
//
//   - Session pooling: a client and its server stay on one loop for the whole session. Two
//     loops beat one in 8 of 8 interleaved rounds, by 1-26 % in throughput, at about the same
//     CPU per transaction.
//   - Transaction pooling: servers are shared, and each loop keeps its share of the pool (see
//     pool.Pool for when a server moves between loops). Two loops beat one in 5 of 5 rounds,
//     by 6-30 % in throughput, with less CPU per transaction in 4 of 5. (Before servers stayed
//     on their loop, lending every momentarily idle one made two loops cost 37-55 % more CPU.)
func AutoEventLoops(mode pool.Mode, cpus int) int {
	return min(max(cpus, 1), 4)
}

// TLSModes lists the accepted values of tls.mode.
var tlsModes = map[string]bool{"disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// Validate checks the configuration without touching the network or the disk.
func (c *Config) Validate() error {
	var errs []error
	if c.ListenRW == "" && c.ListenRO == "" {
		errs = append(errs, errors.New("proxy: set listen_rw, listen_ro or both"))
	}
	for name, a := range map[string]string{"listen_rw": c.ListenRW, "listen_ro": c.ListenRO} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("proxy.%s: %q is not host:port: %v", name, a, err))
		}
	}
	if c.ListenRW != "" && c.ListenRW == c.ListenRO {
		errs = append(errs, fmt.Errorf("proxy: listen_rw and listen_ro are both %s; they must differ", c.ListenRW))
	}
	errs = append(errs, c.validateUnixSockets()...)
	if err := c.Pool.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.Auth.Method {
	case "trust":
	case "hba":
		if c.Auth.HBAFile == "" {
			errs = append(errs, errors.New("proxy.auth.method hba needs proxy.auth.hba_file (rules in pg_hba.conf's format)"))
		}
	case "md5", "scram-sha-256":
		if c.Auth.AuthFile == "" && c.Auth.AuthUser == "" {
			errs = append(errs, fmt.Errorf("proxy.auth.method %s needs proxy.auth.auth_file (a userlist of \"user\" \"password\" lines), proxy.auth.auth_user (to look passwords up in PostgreSQL), or both", c.Auth.Method))
		}
	default:
		errs = append(errs, fmt.Errorf("proxy.auth.method: %q is not supported; use trust, md5, scram-sha-256 or hba", c.Auth.Method))
	}
	if c.Auth.HBAFile != "" && c.Auth.Method != "hba" {
		errs = append(errs, fmt.Errorf("proxy.auth.hba_file is read only with proxy.auth.method hba (it is %s)", c.Auth.Method))
	}
	if c.Auth.Method == "trust" && c.Auth.AuthUser != "" {
		errs = append(errs, errors.New("proxy.auth.auth_user looks passwords up to check them, which trust does not do: set proxy.auth.method to md5 or scram-sha-256, or remove auth_user"))
	}
	if c.Auth.AuthUser == "" && (c.Auth.AuthQuery != "" || c.Auth.AuthDBName != "" || c.Auth.AuthPassword != "") {
		errs = append(errs, errors.New("proxy.auth: auth_query, auth_dbname and auth_password take effect only with auth_user; set auth_user (the role that runs the query)"))
	}
	if q := c.Auth.AuthQuery; q != "" && !strings.Contains(q, "$1") {
		errs = append(errs, errors.New("proxy.auth.auth_query must take the user name as $1, e.g. SELECT usename, passwd FROM pg_shadow WHERE usename = $1"))
	}
	for i, b := range c.Backends {
		if b.Host == "" || b.Port <= 0 || b.Port > 65535 {
			errs = append(errs, fmt.Errorf("proxy.backends[%d]: needs host and a port between 1 and 65535", i))
		}
	}
	if !tlsModes[c.TLS.Mode] {
		errs = append(errs, fmt.Errorf("proxy.tls.mode: %q is not one of disable, allow, prefer, require, verify-ca, verify-full", c.TLS.Mode))
	}
	if c.TLS.Mode != "disable" && c.TLS.Mode != "" && (c.TLS.Cert == "" || c.TLS.Key == "") {
		errs = append(errs, fmt.Errorf("proxy.tls.mode %s needs proxy.tls.cert and proxy.tls.key", c.TLS.Mode))
	}
	if (c.TLS.Mode == "verify-ca" || c.TLS.Mode == "verify-full") && c.TLS.CA == "" {
		errs = append(errs, fmt.Errorf("proxy.tls.mode %s needs proxy.tls.ca to verify client certificates", c.TLS.Mode))
	}
	errs = append(errs, c.Server.TLS.validate()...)
	for name, d := range c.Databases {
		key := "proxy.databases." + name
		switch {
		case name == "":
			errs = append(errs, errors.New("proxy.databases: a database name is empty"))
		case d.PoolSize != nil && *d.PoolSize < 1:
			errs = append(errs, fmt.Errorf("%s.pool_size: %d must be at least 1", key, *d.PoolSize))
		case d.MinPoolSize != nil && *d.MinPoolSize < 0, d.ReservePoolSize != nil && *d.ReservePoolSize < 0,
			d.MaxDBConnections != nil && *d.MaxDBConnections < 0:
			errs = append(errs, fmt.Errorf("%s: min_pool_size, reserve_pool_size and max_db_connections must not be negative", key))
		}
	}
	for name, u := range c.Users {
		key := "proxy.users." + name
		switch {
		case name == "":
			errs = append(errs, errors.New("proxy.users: a user name is empty"))
		case u.PoolSize != nil && *u.PoolSize < 1:
			errs = append(errs, fmt.Errorf("%s.pool_size: %d must be at least 1", key, *u.PoolSize))
		case u.MaxUserConnections < 0:
			errs = append(errs, fmt.Errorf("%s.max_user_connections: %d must not be negative (0 means unlimited)", key, u.MaxUserConnections))
		}
	}
	if c.EventLoops < 0 || c.EventLoops > 256 {
		errs = append(errs, fmt.Errorf("proxy.event_loops: %d must be between 1 and 256, or 0 to choose by pooling mode", c.EventLoops))
	}
	if c.MaxMessageSize < 64<<10 {
		errs = append(errs, fmt.Errorf("proxy.max_message_size: %d is below the minimum of 65536", c.MaxMessageSize))
	}
	if c.StreamHighWater < 64<<10 {
		errs = append(errs, fmt.Errorf("proxy.stream_high_water: %d is below the minimum of 65536", c.StreamHighWater))
	}
	for name, users := range map[string][]string{"admin_users": c.AdminUsers, "stats_users": c.StatsUsers} {
		for i, u := range users {
			if strings.TrimSpace(u) == "" {
				errs = append(errs, fmt.Errorf("proxy.%s[%d] is empty; list user names", name, i))
			}
		}
	}
	if c.HealthCheckInterval <= 0 {
		errs = append(errs, errors.New("proxy.health_check_interval must be positive"))
	}
	if c.StatsPeriod != 0 && c.StatsPeriod < 100*time.Millisecond {
		errs = append(errs, errors.New("proxy.stats_period must be at least 100ms (PgBouncer's default is 60s)"))
	}
	return errors.Join(errs...)
}

// unixSocketModeDefault is PgBouncer's unix_socket_mode default: anyone on the host may
// connect (pg_hba's local lines, or the auth method, decide who logs in).
const unixSocketModeDefault = 0o777

// UnixSocketPaths returns the client socket paths for listen_rw and listen_ro ("" for a
// listener that is off, or without unix_socket_dir).
func (c *Config) UnixSocketPaths() (rw, ro string) {
	if c.UnixSocketDir == "" {
		return "", ""
	}
	path := func(addr string) string {
		_, port, err := net.SplitHostPort(addr)
		if addr == "" || err != nil {
			return ""
		}
		return filepath.Join(c.UnixSocketDir, ".s.PGSQL."+port)
	}
	return path(c.ListenRW), path(c.ListenRO)
}

// unixSocketMode is unix_socket_mode as a file mode.
func (c *Config) unixSocketMode() (os.FileMode, error) {
	if c.UnixSocketMode == "" {
		return unixSocketModeDefault, nil
	}
	m, err := strconv.ParseUint(c.UnixSocketMode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("proxy.unix_socket_mode: %q is not an octal permission such as 0777 or 0770", c.UnixSocketMode)
	}
	return os.FileMode(m), nil
}

func (c *Config) validateUnixSockets() []error {
	if c.UnixSocketDir == "" {
		if c.UnixSocketMode != "" || c.UnixSocketGroup != "" {
			return []error{errors.New("proxy.unix_socket_mode and unix_socket_group need proxy.unix_socket_dir")}
		}
		return nil
	}
	var errs []error
	if !filepath.IsAbs(c.UnixSocketDir) {
		errs = append(errs, fmt.Errorf("proxy.unix_socket_dir: %q is not an absolute path", c.UnixSocketDir))
	}
	if _, err := c.unixSocketMode(); err != nil {
		errs = append(errs, err)
	}
	const maxPath = 107 // sun_path holds 108 bytes with the terminating NUL
	rw, ro := c.UnixSocketPaths()
	for _, p := range []string{rw, ro} {
		if len(p) > maxPath {
			errs = append(errs, fmt.Errorf("proxy.unix_socket_dir: the socket path %s is %d bytes; the kernel allows %d: choose a shorter directory", p, len(p), maxPath))
		}
	}
	return errs
}
