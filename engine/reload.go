package engine

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"

	"github.com/pgbastion/pgbastion/pgwire/auth"
	"github.com/pgbastion/pgbastion/pool"
)

// live is the part of the proxy's state that a configuration reload replaces (Engine.Reload):
// the settings in effect and what is derived from them. A reader takes the current value with
// Engine.conf where it needs a setting; a reload swaps the whole value, so a reader sees the
// old settings or the new ones, never a mix. Settings a reload cannot change (listeners, pool
// mode, event loops...) are read from Engine.cfg, which never changes.
type live struct {
	cfg    Config
	limits pool.Limits
	// verifier authenticates clients (nil: trust); secrets give the passwords to log in to
	// PostgreSQL as each client's user when proxy.server.user is empty.
	verifier *auth.Verifier
	secrets  auth.Secrets
	tlsCfg   *tls.Config // nil: TLS is off
	// backendTLS is proxy.server.tls loaded (nil: mode disable).
	backendTLS *backendTLS
	// consoleUsers may use the admin console (nil: there is none); adminUsers may also run
	// its commands that change something (RELOAD, PAUSE, RESUME).
	consoleUsers, adminUsers map[string]bool
	// creds caches server credentials by user (*auth.Credentials), so SCRAM's key derivation
	// runs once per user and settings, not per connection.
	creds *sync.Map
	// authQueryCreds log in as proxy.auth.auth_user to run the auth_query (nil without).
	authQueryCreds *auth.Credentials
	// hba chooses each client's method (method hba; nil otherwise).
	hba *auth.HBA
}

// conf returns the reloadable settings in effect.
func (e *Engine) conf() *live { return e.live.Load() }

// newLive derives the state for cfg; it reads the TLS certificate files.
func newLive(cfg Config, verifier *auth.Verifier, secrets auth.Secrets) (*live, error) {
	l := &live{cfg: cfg, limits: cfg.Pool.Limits(), verifier: verifier, secrets: secrets, creds: &sync.Map{}}
	if a := cfg.Auth; a.AuthUser != "" {
		c, err := authUserCredentials(cfg, secrets)
		if err != nil {
			return nil, err
		}
		l.authQueryCreds = c
	}
	if path := cfg.Auth.HBAFile; path != "" && cfg.Auth.Method == "hba" {
		h, err := auth.LoadHBA(path)
		if err != nil {
			return nil, fmt.Errorf("proxy.auth.hba_file: %w", err)
		}
		if m := h.Methods(); (m[auth.HBAMD5] || m[auth.HBASCRAM]) && secrets == nil && cfg.Auth.AuthUser == "" {
			return nil, fmt.Errorf("proxy.auth.hba_file %s has md5 or scram-sha-256 lines, which need passwords: set proxy.auth.auth_file, proxy.auth.auth_user, or both", path)
		}
		if n := h.LocalLine(); n > 0 && cfg.UnixSocketDir == "" {
			return nil, fmt.Errorf("proxy.auth.hba_file %s:%d: a local line applies to clients on the proxy's Unix sockets, and there are none: set proxy.unix_socket_dir, or use host lines", path, n)
		}
		if m := h.Methods(); m[auth.HBACert] && cfg.TLS.CA == "" {
			return nil, fmt.Errorf("proxy.auth.hba_file %s has cert lines, which need client certificates: set proxy.tls.ca (and proxy.tls.cert, key and mode)", path)
		}
		l.hba = h
	}
	if n := len(cfg.AdminUsers) + len(cfg.StatsUsers); n > 0 {
		l.consoleUsers = make(map[string]bool, n)
		for _, u := range slices.Concat(cfg.AdminUsers, cfg.StatsUsers) {
			l.consoleUsers[u] = true
		}
		l.adminUsers = make(map[string]bool, len(cfg.AdminUsers))
		for _, u := range cfg.AdminUsers {
			l.adminUsers[u] = true
		}
	}
	if cfg.TLS.Mode != "disable" && cfg.TLS.Mode != "" {
		tc, err := serverTLSConfig(cfg.TLS)
		if err != nil {
			return nil, err
		}
		l.tlsCfg = tc
	}
	bt, err := loadBackendTLS(cfg.Server.TLS)
	if err != nil {
		return nil, err
	}
	l.backendTLS = bt
	return l, nil
}

// reloadable lists the proxy settings a reload applies, each with the assignment that copies
// it. Keys are YAML paths under proxy; a key also covers the keys below it (tls covers
// tls.cert). Those in standaloneOnly apply to a proxy that started with backends (a cluster
// member's come from the HA core). Every other setting takes a restart: the listeners, the
// pooling mode and whether pooling is on, the event loops, the user the proxy logs in to
// PostgreSQL as (it keys the pools), max_prepared_statements (clients hold statements under
// the current scheme), local_socket, and the message and buffer bounds.
var reloadable = []struct {
	key  string
	copy func(dst, src *Config)
}{
	{"pool.max_client_conn", func(d, s *Config) { d.Pool.MaxClientConn = s.Pool.MaxClientConn }},
	{"pool.default_pool_size", func(d, s *Config) { d.Pool.DefaultPoolSize = s.Pool.DefaultPoolSize }},
	{"pool.min_pool_size", func(d, s *Config) { d.Pool.MinPoolSize = s.Pool.MinPoolSize }},
	{"pool.reserve_pool_size", func(d, s *Config) { d.Pool.ReservePoolSize = s.Pool.ReservePoolSize }},
	{"pool.reserve_pool_timeout", func(d, s *Config) { d.Pool.ReservePoolTimeout = s.Pool.ReservePoolTimeout }},
	{"pool.max_db_connections", func(d, s *Config) { d.Pool.MaxDBConnections = s.Pool.MaxDBConnections }},
	{"pool.query_wait_timeout", func(d, s *Config) { d.Pool.QueryWaitTimeout = s.Pool.QueryWaitTimeout }},
	{"pool.idle_transaction_timeout", func(d, s *Config) { d.Pool.IdleTransactionTimeout = s.Pool.IdleTransactionTimeout }},
	{"pool.client_idle_timeout", func(d, s *Config) { d.Pool.ClientIdleTimeout = s.Pool.ClientIdleTimeout }},
	{"pool.server_idle_timeout", func(d, s *Config) { d.Pool.ServerIdleTimeout = s.Pool.ServerIdleTimeout }},
	{"pool.server_lifetime", func(d, s *Config) { d.Pool.ServerLifetime = s.Pool.ServerLifetime }},
	{"pool.server_connect_timeout", func(d, s *Config) { d.Pool.ServerConnectTimeout = s.Pool.ServerConnectTimeout }},
	{"pool.server_check_delay", func(d, s *Config) { d.Pool.ServerCheckDelay = s.Pool.ServerCheckDelay }},
	{"pool.query_timeout", func(d, s *Config) { d.Pool.QueryTimeout = s.Pool.QueryTimeout }},
	{"pool.client_login_timeout", func(d, s *Config) { d.Pool.ClientLoginTimeout = s.Pool.ClientLoginTimeout }},
	{"pool.server_reset_query", func(d, s *Config) { d.Pool.ServerResetQuery = s.Pool.ServerResetQuery }},
	{"auth", func(d, s *Config) { d.Auth = s.Auth }},
	{"server.password", func(d, s *Config) { d.Server.Password = s.Server.Password }},
	// New server connections negotiate with the new settings; open ones keep theirs.
	{"server.tls", func(d, s *Config) { d.Server.TLS = s.Server.TLS }},
	{"tls", func(d, s *Config) { d.TLS = s.TLS }},
	{"admin_users", func(d, s *Config) { d.AdminUsers = s.AdminUsers }},
	{"application_name_add_host", func(d, s *Config) { d.ApplicationNameAddHost = s.ApplicationNameAddHost }},
	{"log_connections", func(d, s *Config) { d.LogConnections = s.LogConnections }},
	{"log_disconnections", func(d, s *Config) { d.LogDisconnections = s.LogDisconnections }},
	{"log_stats", func(d, s *Config) { d.LogStats = s.LogStats }},
	{"databases", func(d, s *Config) { d.Databases = s.Databases }},
	{"users", func(d, s *Config) { d.Users = s.Users }},
	{"stats_users", func(d, s *Config) { d.StatsUsers = s.StatsUsers }},
	{"health_check_user", func(d, s *Config) { d.HealthCheckUser = s.HealthCheckUser }},
	{"health_check_password", func(d, s *Config) { d.HealthCheckPassword = s.HealthCheckPassword }},
	// A backend added is probed at the next check and routed to once its role is known; one
	// removed leaves the routing table, which closes its pools and sends its clients' next
	// transactions elsewhere (as when a backend goes down).
	{"backends", func(d, s *Config) { d.Backends = s.Backends }},
	{"health_check_interval", func(d, s *Config) { d.HealthCheckInterval = s.HealthCheckInterval }},
}

var standaloneOnly = map[string]bool{"backends": true, "health_check_interval": true}

// Change is one setting that differs between the configuration in effect and a reloaded one.
type Change struct {
	// Key is the setting's YAML path, e.g. proxy.pool.default_pool_size.
	Key string `json:"key"`
	// Old and New are the values as YAML would write them; secrets read "(hidden)".
	Old string `json:"old"`
	New string `json:"new"`
	// Applied is false for a setting that takes a restart; the old value stays in effect.
	Applied bool `json:"applied"`
	// Note says more about an applied change (e.g. what PostgreSQL did with a parameter).
	Note string `json:"note,omitempty"`
}

func (c Change) String() string {
	s := fmt.Sprintf("%s: %s -> %s", c.Key, c.Old, c.New)
	if !c.Applied {
		s += " (takes a restart; the old value stays in effect)"
	} else if c.Note != "" {
		s += " (" + c.Note + ")"
	}
	return s
}

// Reload applies a new proxy configuration to the running proxy, with the client verifier
// and secrets built from its auth settings (the auth_file is read again on every reload, as
// PgBouncer's RELOAD does, and so are the TLS certificate files, so a renewed certificate
// takes effect without a change to the YAML). It returns every setting that differs from the
// configuration in effect; the reloadable ones (see reloadable) are applied at once: new pool
// limits and timeouts hold for every pool, waiting clients get servers a raised pool size
// allows, new logins use the new auth, TLS and console settings. Connections already open
// stay. A setting that takes a restart is reported with Applied false and left as it is. An
// invalid configuration or unreadable certificate changes nothing and returns the error.
func (e *Engine) Reload(cfg Config, verifier *auth.Verifier, secrets auth.Secrets) ([]Change, error) {
	if cfg.EventLoops == 0 {
		cfg.EventLoops = AutoEventLoops(cfg.Pool.Mode, runtime.NumCPU())
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	cur := e.conf()
	changes, err := DiffSettings("proxy", cur.cfg, cfg)
	if err != nil {
		return nil, err
	}
	next := cur.cfg
	for i := range changes {
		key := strings.TrimPrefix(changes[i].Key, "proxy.")
		for _, r := range reloadable {
			if standaloneOnly[r.key] && (len(e.cfg.Backends) == 0 || len(cfg.Backends) == 0) {
				continue
			}
			if key == r.key || strings.HasPrefix(key, r.key+".") {
				r.copy(&next, &cfg)
				changes[i].Applied = true
				break
			}
		}
	}
	if err := next.Validate(); err != nil {
		return nil, fmt.Errorf("the reloadable settings do not fit the ones that take a restart: %w", err)
	}
	l, err := newLive(next, verifier, secrets)
	if err != nil {
		return nil, err
	}
	e.live.Store(l)
	// Kept auth_query connections may belong to an auth_user or password that changed.
	e.authq.close()
	// Every pool, and every max_db_connections counter, takes the new limits; a pool whose
	// size went up serves its waiting clients at its next sweep.
	for _, pe := range e.poolEntries() {
		pe.p.SetLimits(next.PoolLimits(pe.key.database, pe.key.user))
	}
	e.dbMu.Lock()
	for k, c := range e.dbCounters {
		_, db, _ := strings.Cut(k, "\x00")
		c.SetMax(next.MaxDBConnections(db))
	}
	for k, c := range e.userCounters {
		_, user, _ := strings.Cut(k, "\x00")
		c.SetMax(next.MaxUserConnections(user))
	}
	e.dbMu.Unlock()
	if len(e.cfg.Backends) > 0 {
		e.requestHealthCheck() // a backend added or removed counts from now
	}
	return changes, nil
}

// DiffSettings returns the settings that differ between two values of one configuration
// section (YAML paths under section, sorted). Values that may be secrets are hidden: keys named
// like a password, token or secret, and webhooks (their URLs and headers often carry tokens).
func DiffSettings(section string, old, new any) ([]Change, error) {
	a, err := flattenSettings(section, old)
	if err != nil {
		return nil, err
	}
	b, err := flattenSettings(section, new)
	if err != nil {
		return nil, err
	}
	var out []Change
	for k, nv := range b {
		if ov, ok := a[k]; !ok || ov != nv {
			out = append(out, Change{Key: k, Old: orNone(ov, ok), New: nv})
		}
	}
	for k, ov := range a {
		if _, ok := b[k]; !ok {
			out = append(out, Change{Key: k, Old: ov, New: "(none)"})
		}
	}
	for i := range out {
		if secretKey(out[i].Key) {
			out[i].Old, out[i].New = "(hidden)", "(hidden)"
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func orNone(v string, ok bool) string {
	if !ok {
		return "(none)"
	}
	return v
}

func secretKey(key string) bool {
	if key == "webhooks" || strings.HasPrefix(key, "webhooks.") || strings.Contains(key, "headers") {
		return true
	}
	last := key[strings.LastIndexByte(key, '.')+1:]
	return strings.Contains(last, "password") || strings.Contains(last, "token") || strings.Contains(last, "secret")
}

// flattenSettings writes v as YAML and maps each scalar's path to its value; lists are kept
// whole, as JSON.
func flattenSettings(section string, v any) (map[string]string, error) {
	data, err := yaml.Marshal(v)
	if err != nil {
		return nil, err
	}
	var tree any
	if err := yaml.Unmarshal(data, &tree); err != nil {
		return nil, err
	}
	out := make(map[string]string)
	var walk func(prefix string, n any) error
	walk = func(prefix string, n any) error {
		switch x := n.(type) {
		case map[string]any:
			for k, c := range x {
				if prefix != "" {
					k = prefix + "." + k
				}
				if err := walk(k, c); err != nil {
					return err
				}
			}
		case nil:
			out[prefix] = "null"
		case string:
			out[prefix] = x
		case []any:
			j, err := json.Marshal(x)
			if err != nil {
				return err
			}
			out[prefix] = string(j)
		default:
			out[prefix] = fmt.Sprint(x)
		}
		return nil
	}
	if err := walk(section, tree); err != nil {
		return nil, errors.New("comparing configurations: " + err.Error())
	}
	return out, nil
}
