package engine_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestUnixSocketClients: with proxy.unix_socket_dir, clients also come in through
// DIR/.s.PGSQL.<port> (psql -h DIR -p PORT), for both listeners, as PostgreSQL and PgBouncer
// name their sockets. The sockets get unix_socket_mode; a socket file a dead process left is
// replaced, a live one is refused. Socket clients need no TLS where TCP clients must use it,
// and match the hba_file's local lines, peer included (the kernel's word for the OS user).
// A socket client too slow for its result moves to the stream path like a TCP one.
func TestUnixSocketClients(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	certs := pgtest.Certs(t)
	dir, err := os.MkdirTemp("", "pgb-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	hbaPath := filepath.Join(t.TempDir(), "hba.conf")
	if err := os.WriteFile(hbaPath, []byte(`
local  all  root      peer
local  all  nobody    peer
local  all  postgres  trust
hostssl all all 127.0.0.1/32 reject
`), 0o600); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(users, []byte(`"alice" "alice-pw"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, userlist := hbaVerifier(t, users)
	var stale string
	p := startProxyWith(t, func(c *engine.Config) {
		c.UnixSocketDir, c.UnixSocketMode = dir, "0770"
		c.Auth = engine.AuthConfig{Method: "hba", HBAFile: hbaPath, AuthFile: users}
		c.TLS = engine.TLSConfig{Mode: "require", Cert: certs.ServerCert, Key: certs.ServerKey}
		c.StreamHighWater = 64 << 10
		// A socket file left by a process that died, where the rw socket goes.
		_, port, _ := net.SplitHostPort(c.ListenRW)
		stale = filepath.Join(dir, ".s.PGSQL."+port)
		l, err := net.Listen("unix", stale)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}, engine.Options{Auth: v, Secrets: userlist}, primary)
	_, rwPort, _ := net.SplitHostPort(p.rw)
	_, roPort, _ := net.SplitHostPort(p.ro)
	for _, port := range []string{rwPort, roPort} {
		fi, err := os.Stat(filepath.Join(dir, ".s.PGSQL."+port))
		if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o770 {
			t.Fatalf("socket for port %s: %v %v, want a socket with mode 0770", port, fi.Mode(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	viaSocket := func(port, user string) (*pgx.Conn, error) {
		return pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s dbname=postgres", dir, port, user))
	}
	refused := func(err error, code, msg string) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == code && strings.Contains(pe.Message, msg)
	}

	// The rw socket reaches the primary without TLS (trust by the local line).
	rw, err := viaSocket(rwPort, "postgres")
	if err != nil {
		t.Fatalf("through the rw socket: %v", err)
	}
	defer rw.Close(ctx)
	var inRecovery bool
	if err := rw.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		t.Fatalf("through the rw socket: in recovery %v, %v", inRecovery, err)
	}
	// The ro socket is the ro listener's (the primary serves reads here: no replica).
	ro, err := viaSocket(roPort, "postgres")
	if err != nil {
		t.Fatalf("through the ro socket: %v", err)
	}
	defer ro.Close(ctx)
	if v := queryInt(t, ro, "SELECT 7"); v != 7 {
		t.Fatal(v)
	}
	addrs := map[string]bool{}
	for _, c := range p.e.Conns() {
		if !c.Server {
			addrs[c.Addr] = true
		}
	}
	if !addrs["unix:"+rwPort] || !addrs["unix:"+roPort] {
		t.Fatalf("client addresses %v, want unix:%s and unix:%s", addrs, rwPort, roPort)
	}

	// peer: this test runs as root.
	if c, err := viaSocket(rwPort, "root"); err != nil {
		t.Fatalf("peer as root: %v", err)
	} else {
		c.Close(ctx)
	}
	if _, err := viaSocket(rwPort, "nobody"); !refused(err, "28000", `peer authentication failed for user "nobody"`) {
		t.Fatalf("peer as nobody from root: %v", err)
	}
	// No local line for this user: refused, in PostgreSQL's words.
	if _, err := viaSocket(rwPort, "alice"); !refused(err, "28000", `no proxy.auth.hba_file entry for local connection, user "alice"`) {
		t.Fatalf("a user without a local line: %v", err)
	}
	// TCP clients still need TLS, and then meet the host lines.
	if _, err := pgx.Connect(ctx, p.dsn(p.rw)); !refused(err, "28000", "SSL/TLS is required") {
		t.Fatalf("TCP without TLS: %v", err)
	}
	if _, err := pgx.Connect(ctx, strings.Replace(p.dsn(p.rw), "sslmode=disable", "sslmode=require", 1)); !refused(err, "28000", "rejects connection") {
		t.Fatalf("TCP with TLS: %v", err)
	}

	// A slow reader on a socket: moved to the stream path, every row arrives.
	slow, err := connectAdjusted(fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres", dir, rwPort), func(cfg *pgx.ConnConfig) {
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			_ = c.(*net.UnixConn).SetReadBuffer(32 << 10)
			return slowConn{c}, nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close(ctx)
	r, err := slow.Query(ctx, "SELECT repeat('x', 1000) FROM generate_series(1, 16000)")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for ; r.Next(); n++ {
	}
	if r.Err() != nil || n != 16000 {
		t.Fatalf("the slow socket reader got %d rows: %v", n, r.Err())
	}
	if moved := metricValue(t, p.e, "pgbastion_proxy_slow_readers_total"); moved != 1 {
		t.Fatalf("%v clients moved to the stream path, want 1", moved)
	}
	if v := queryInt(t, slow, "SELECT 8"); v != 8 {
		t.Fatal(v)
	}

	// Another proxy on the same socket (TCP on another loopback address) is refused.
	cfg := p.cfg
	cfg.ListenRW, cfg.ListenRO = "127.0.0.2:"+rwPort, ""
	e2, err := engine.New(cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Run(ctx); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("a second proxy on the same socket: %v", err)
	}
}

// local lines without client sockets could never match: refused, naming the line.
func TestHBALocalLinesNeedSockets(t *testing.T) {
	hbaPath := filepath.Join(t.TempDir(), "hba.conf")
	if err := os.WriteFile(hbaPath, []byte("host all all 0.0.0.0/0 trust\nlocal all all trust\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := engine.DefaultConfig()
	cfg.ListenRW, cfg.ListenRO = "127.0.0.1:6432", ""
	cfg.Backends = []engine.BackendConfig{{Host: "127.0.0.1", Port: 5432}}
	cfg.Auth = engine.AuthConfig{Method: "hba", HBAFile: hbaPath}
	if _, err := engine.New(cfg, engine.Options{}); err == nil || !strings.Contains(err.Error(), hbaPath+":2: a local line applies to clients on the proxy's Unix sockets") {
		t.Fatalf("local lines without unix_socket_dir: %v", err)
	}
	cfg.UnixSocketDir = t.TempDir()
	if _, err := engine.New(cfg, engine.Options{}); err != nil {
		t.Fatalf("with unix_socket_dir: %v", err)
	}
}

// proxy.application_name_add_host: the server sees each client's application_name with the
// client's address appended, also after its transactions moved between servers (transaction
// mode, one server for two clients), and one without a name gets its address.
func TestApplicationNameAddHost(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.ApplicationNameAddHost = true
		c.Pool.Mode, c.Pool.DefaultPoolSize = "transaction", 1
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	named := connect(t, p.dsn(p.rw, "application_name=billing"))
	anonymous := connect(t, p.dsn(p.rw))
	long := connect(t, p.dsn(p.rw, "application_name="+strings.Repeat("x", 70)))
	local := func(c *pgx.Conn) string { return c.PgConn().Conn().LocalAddr().String() }
	for i := 0; i < 3; i++ {
		for c, want := range map[*pgx.Conn]string{named: "billing - " + local(named), anonymous: local(anonymous), long: strings.Repeat("x", 63)} {
			var inSession, inActivity string
			err := c.QueryRow(ctx, "SELECT current_setting('application_name'), (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())").Scan(&inSession, &inActivity)
			if err != nil || inSession != want || inActivity != want {
				t.Fatalf("application_name %q, in pg_stat_activity %q (%v), want %q", inSession, inActivity, err, want)
			}
		}
	}
	// Each client's own ParameterStatus says the same.
	if got := named.PgConn().ParameterStatus("application_name"); got != "billing - "+local(named) {
		t.Fatalf("the client was told application_name %q", got)
	}
}

// lockedBuffer is a log destination the test reads while the proxy writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proxy.log_connections and log_disconnections: a line at info level for a client's login,
// with who and from where, and one when it leaves, with how long it stayed.
func TestLogConnections(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	var logs lockedBuffer
	p := startProxyWith(t, func(c *engine.Config) { c.LogConnections, c.LogDisconnections = true, true },
		engine.Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))}, primary)
	c := connect(t, p.dsn(p.rw, "application_name=billing"))
	if v := queryInt(t, c, "SELECT 1"); v != 1 {
		t.Fatal(v)
	}
	local := c.PgConn().Conn().LocalAddr().String()
	waitFor(t, "the login logged", func() bool {
		return strings.Contains(logs.String(), `msg="client logged in" user=postgres database=postgres remote=`+local+` port=rw tls=false application_name=billing`)
	})
	c.Close(context.Background())
	waitFor(t, "the disconnection logged", func() bool {
		return strings.Contains(logs.String(), `msg="client disconnected" user=postgres database=postgres remote=`+local+` connected_for=`)
	})
}

// proxy.log_stats: every stats_period a line with the period's traffic.
func TestLogStats(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	var logs lockedBuffer
	p := startProxyWith(t, func(c *engine.Config) { c.LogStats, c.StatsPeriod = true, 200*time.Millisecond },
		engine.Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))}, primary)
	c := connect(t, p.dsn(p.rw))
	busy := regexp.MustCompile(`msg=stats xacts_per_s=[1-9][0-9]* queries_per_s=[1-9][0-9]* in_bytes_per_s=[1-9][0-9]* out_bytes_per_s=[1-9][0-9]* xact_us=\d+ query_us=\d+ wait_us=\d+ clients=1`)
	waitFor(t, "a stats line with the queries", func() bool {
		if v := queryInt(t, c, "SELECT 1"); v != 1 {
			t.Fatal(v)
		}
		return busy.MatchString(logs.String())
	})
	t.Log(busy.FindString(logs.String()))
}
