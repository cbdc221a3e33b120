package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Target names. A scenario lists the targets it runs pgbench against.
const (
	Direct           = "direct"
	PGBastionSession = "pgbastion-session"
	PGBastionTxn     = "pgbastion-txn"
	PgBouncerSession = "pgbouncer-session"
	PgBouncerTxn     = "pgbouncer-txn"
	HAProxy          = "haproxy"
	// The transaction-mode proxies again, reaching PostgreSQL over TCP with TLS
	// (proxy.server.tls.mode require, server_tls_sslmode = require).
	PGBastionServerTLS = "pgbastion-txn-server-tls"
	PgBouncerServerTLS = "pgbouncer-txn-server-tls"
)

// How the proxies reach PostgreSQL (Config.Backend).
const (
	BackendUnix = "unix"
	BackendTCP  = "tcp"
)

// target is one way for pgbench to reach PostgreSQL: directly or through a proxy process.
type target struct {
	name string
	addr string
	proc *process // nil for direct PostgreSQL
	// pg is the PostgreSQL server behind the target; its CPU time is sampled on every run.
	pg *postgresServer
}

func (t *target) pid() int {
	if t.proc == nil {
		return 0
	}
	return t.proc.Pid()
}

// proxyParams are the settings every proxy gets.
type proxyParams struct {
	dir      string // work directory: configs and logs
	pg       *postgresServer
	poolSize int
	// eventLoops is PGBastion's reactor count (proxy.event_loops).
	eventLoops int
	// env is added to PGBastion's environment.
	env []string
	// overSocket makes the proxies reach PostgreSQL through its Unix socket instead of TCP.
	overSocket bool
	// serverTLS makes the proxies reach PostgreSQL over TCP with TLS required; otherwise they
	// never ask for it (both proxies' default, prefer, would take it over TCP, as PostgreSQL
	// has ssl on).
	serverTLS bool
	// tlsCert and tlsKey, when set, let clients of PGBastion and PgBouncer use TLS (sslmode
	// allow on the proxy: a client that does not ask stays in plain TCP).
	tlsCert, tlsKey string
}

func (p proxyParams) pgbastionTLS() string {
	if p.tlsCert == "" {
		return ""
	}
	return fmt.Sprintf("  tls: {mode: allow, cert: %s, key: %s}\n", p.tlsCert, p.tlsKey)
}

func (p proxyParams) pgbouncerTLS() string {
	s := "server_tls_sslmode = " + p.serverTLSMode() + "\n"
	if p.tlsCert == "" {
		return s
	}
	return s + fmt.Sprintf("client_tls_sslmode = allow\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n", p.tlsCert, p.tlsKey)
}

func (p proxyParams) serverTLSMode() string {
	if p.serverTLS {
		return "require"
	}
	return "disable"
}

// backendHost is the host the proxies give for PostgreSQL: its socket directory or 127.0.0.1.
func (p proxyParams) backendHost() string {
	if p.overSocket && !p.serverTLS {
		return p.pg.socketDir
	}
	return "127.0.0.1"
}

// startPGBastion runs bin as a standalone proxy in the given pool mode.
func startPGBastion(ctx context.Context, name, bin, mode string, p proxyParams) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cfg := fmt.Sprintf(`# written by the PGBastion benchmark harness
proxy:
  listen_rw: %s
  listen_ro: ""
  pool: {enabled: true, mode: %s, default_pool_size: %d, max_client_conn: 15000}
  auth: {method: trust}
  backends: [{host: %s, port: %d}]
  server: {user: %s, password: %q, tls: {mode: %s}}
  event_loops: %d
%slog: {level: warn}
`, addr, mode, p.poolSize, p.backendHost(), p.pg.port, Superuser, p.pg.password, p.serverTLSMode(), p.eventLoops, p.pgbastionTLS())
	path := filepath.Join(p.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	proc, err := startProcess(name, filepath.Join(p.dir, name+".log"), nil, p.env, bin, "run", "-c", path)
	if err != nil {
		return nil, err
	}
	t := &target{name: name, addr: addr, proc: proc, pg: p.pg}
	if err := waitReady(ctx, addr, p.pg.password, proc, 30*time.Second); err != nil {
		proc.stop(5 * time.Second)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return t, nil
}

// findProgram looks for a program in PATH and in the Debian sbin directories (which root's PATH
// has, but not every user's).
func findProgram(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install it (Debian: apt-get install %s)", name, name)
}

// startPgBouncer runs the Debian PgBouncer in the given pool mode, as the postgres OS user.
func startPgBouncer(ctx context.Context, name, mode string, p proxyParams) (*target, error) {
	bin, err := findProgram("pgbouncer")
	if err != nil {
		return nil, err
	}
	cred, uid, gid, err := osCredential(Superuser)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	users := filepath.Join(p.dir, name+".users")
	if err := os.WriteFile(users, []byte(fmt.Sprintf("%q %q\n", Superuser, p.pg.password)), 0o600); err != nil {
		return nil, err
	}
	// auth_type trust still needs the user in auth_file; PgBouncer logs in to PostgreSQL with
	// the password from it (SCRAM needs the plain password there).
	cfg := fmt.Sprintf(`; written by the PGBastion benchmark harness
[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = 15000
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
%s`, p.backendHost(), p.pg.port, port, users, mode, p.poolSize, p.pgbouncerTLS())
	path := filepath.Join(p.dir, name+".ini")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	for _, f := range []string{users, path} {
		if err := os.Chown(f, uid, gid); err != nil {
			return nil, err
		}
	}
	proc, err := startProcess(name, filepath.Join(p.dir, name+".log"), cred, nil, bin, path)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t := &target{name: name, addr: addr, proc: proc, pg: p.pg}
	if err := waitReady(ctx, addr, p.pg.password, proc, 30*time.Second); err != nil {
		proc.stop(5 * time.Second)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return t, nil
}

// startHAProxy runs HAProxy in TCP mode the way Patroni's documentation sets it up: one listen
// section per role, an HTTP check against the cluster manager's REST API that answers 200 only
// on the primary. A tiny HTTP server in the harness stands in for Patroni's REST API.
func startHAProxy(ctx context.Context, p proxyParams) (*target, func(), error) {
	bin, err := findProgram("haproxy")
	if err != nil {
		return nil, nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	api := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/primary" || r.URL.Path == "/master" {
				w.WriteHeader(http.StatusOK)
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = api.Serve(hl) }()
	stopAPI := func() { _ = api.Close() }
	server := fmt.Sprintf("127.0.0.1:%d", p.pg.port)
	if p.overSocket {
		server = "unix@" + filepath.Join(p.pg.socketDir, fmt.Sprintf(".s.PGSQL.%d", p.pg.port))
	}
	cfg := fmt.Sprintf(`# written by the PGBastion benchmark harness (Patroni-style)
global
    maxconn 5000
    nbthread 2

defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s

listen primary
    bind 127.0.0.1:%d
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
    server postgresql_%d %s maxconn 2000 check addr 127.0.0.1 port %d
`, port, p.pg.port, server, hl.Addr().(*net.TCPAddr).Port)
	path := filepath.Join(p.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		stopAPI()
		return nil, nil, err
	}
	proc, err := startProcess(HAProxy, filepath.Join(p.dir, "haproxy.log"), nil, nil, bin, "-f", path, "-db")
	if err != nil {
		stopAPI()
		return nil, nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t := &target{name: HAProxy, addr: addr, proc: proc, pg: p.pg}
	if err := waitReady(ctx, addr, p.pg.password, proc, 30*time.Second); err != nil {
		proc.stop(5 * time.Second)
		stopAPI()
		return nil, nil, fmt.Errorf("haproxy: %w", err)
	}
	return t, stopAPI, nil
}

// signalName is for messages about a child's end.
func signalName(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal().String()
		}
	}
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}
