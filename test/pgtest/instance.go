package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Superuser is the bootstrap superuser of every instance.
const Superuser = "postgres"

// DefaultSuperuserPassword is the superuser's password unless Options says otherwise.
const DefaultSuperuserPassword = "postgres"

// Timeouts. They are generous because CI machines are slow; the happy path never waits for them.
const (
	readyTimeout    = 60 * time.Second
	stopTimeout     = 60 * time.Second
	orphanTimeout   = 15 * time.Second
	connectAttempt  = 2 * time.Second
	pollInterval    = 20 * time.Millisecond
	opTimeout       = 2 * time.Minute
	maxPortAttempts = 5
)

// AuthMethod is a pg_hba.conf authentication method for TCP connections.
type AuthMethod string

// Authentication methods.
const (
	Trust    AuthMethod = "trust"
	Password AuthMethod = "password" // cleartext
	MD5      AuthMethod = "md5"
	SCRAM    AuthMethod = "scram-sha-256"
)

// Role is a login role created on a primary.
type Role struct {
	Name     string
	Password string
	// Auth, when set, adds a pg_hba.conf line giving this role its own method on TCP
	// connections; otherwise Options.Auth applies. The password is stored as an md5 secret when
	// Auth is MD5 and as a SCRAM-SHA-256 secret otherwise (so md5 really runs the md5 exchange:
	// PostgreSQL switches md5 to SCRAM when the stored secret is SCRAM).
	Auth        AuthMethod
	Superuser   bool
	Replication bool
}

// Options configure a new primary. The zero value is usable.
type Options struct {
	// Name is the instance name, used as cluster_name and in directory and log names.
	// Default "primary".
	Name string
	// Auth is the method for TCP connections (host lines, including replication). Default Trust.
	// Unix-socket connections are always trusted.
	Auth AuthMethod
	// SuperuserPassword is the password of Superuser. Default DefaultSuperuserPassword.
	SuperuserPassword string
	// Roles are created once the server is up.
	Roles []Role
	// Fsync turns fsync on. Off by default: tests kill processes, not machines, and the OS cache
	// survives a process crash.
	Fsync bool
	// TLS, when set, turns on ssl with the server certificate and CA of the set (clients then
	// may use sslmode=require/verify-full; sslmode=disable keeps working).
	TLS *CertSet
	// Settings are extra postgresql.conf settings; they override the harness's.
	Settings map[string]string
	// HBA are pg_hba.conf lines placed before the per-role and default ones (after the
	// trusted Unix-socket lines), e.g. "hostssl all all 127.0.0.1/32 trust" followed by
	// "host all all 127.0.0.1/32 reject" to accept TCP connections only over TLS.
	HBA []string
}

// Instance is one PostgreSQL server run by the harness.
type Instance struct {
	name     string
	user     osUser
	binDir   string
	base     string // instance directory: data dir, socket, log
	data     string
	port     int
	password string
	auth     AuthMethod
	roleHBA  []string // per-role pg_hba.conf lines, before the default ones
	extraHBA []string // Options.HBA, before the per-role lines
	tls      bool     // ssl is on: the harness's own connections prefer it (HBA may demand it)

	mu       sync.Mutex
	proc     *postmaster // nil when not running
	upstream *Instance   // the server this one streams from; nil for a primary
	replicas []*Instance
	nextRep  int
}

// postmaster is one run of the postgres server process.
type postmaster struct {
	pid  int
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // exit status; read after done is closed
}

// Start initialises a new data directory and starts a primary on a free 127.0.0.1 port. It
// returns when the server accepts connections and every role in opts exists. The instance is
// stopped and removed in t.Cleanup. opts may be nil.
func Start(t testing.TB, opts *Options) *Instance {
	t.Helper()
	Require(t, PostgreSQL())
	if opts == nil {
		opts = &Options{}
	}
	name := opts.Name
	if name == "" {
		name = "primary"
	}
	auth := opts.Auth
	if auth == "" {
		auth = Trust
	}
	pw := opts.SuperuserPassword
	if pw == "" {
		pw = DefaultSuperuserPassword
	}
	inst := newInstance(t, name, pw, auth)
	inst.extraHBA, inst.tls = opts.HBA, opts.TLS != nil
	for _, r := range opts.Roles {
		if r.Auth != "" {
			inst.roleHBA = append(inst.roleHBA, hbaLine("all", r.Name, r.Auth))
		}
	}
	if err := inst.initdb(opts); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	inst.startFresh(t)
	ctx, cancel := opContext(t)
	defer cancel()
	for _, r := range opts.Roles {
		if err := inst.createRole(ctx, r); err != nil {
			t.Fatalf("pgtest: %s: create role %s: %v", name, r.Name, err)
		}
	}
	return inst
}

// newInstance creates the instance directory and registers its cleanup.
func newInstance(t testing.TB, name, password string, auth AuthMethod) *Instance {
	t.Helper()
	if strings.ContainsAny(name, "/ '\"\\") || name == "" {
		t.Fatalf("pgtest: bad instance name %q", name)
	}
	u, err := lookupOSUser()
	if err != nil {
		Skip(t, "%v", err)
	}
	bin, err := BinDir()
	if err != nil {
		Skip(t, "%v", err)
	}
	base, err := os.MkdirTemp("", "pgtest-"+name+"-")
	if err == nil {
		// dirProcs compares against /proc/<pid>/cwd, which is symlink-free.
		base, err = filepath.EvalSymlinks(base)
	}
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	inst := &Instance{name: name, user: u, binDir: bin, base: base,
		data: filepath.Join(base, "data"), password: password, auth: auth}
	t.Cleanup(func() { inst.cleanup(t) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := u.chown(base); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return inst
}

func (i *Instance) initdb(opts *Options) error {
	pwfile := filepath.Join(i.base, "pwfile")
	if err := i.user.writeOwned(pwfile, []byte(i.password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	err := i.user.run(context.Background(), i.base, i.bin("initdb"), []string{
		"-D", i.data, "-U", Superuser, "--pwfile", pwfile, "-A", "trust",
		"-E", "UTF8", "--locale=C", "--data-checksums", "--no-sync", "--no-instructions"})
	if err != nil {
		return err
	}
	if err := i.writeHBA(); err != nil {
		return err
	}
	conf := map[string]string{
		"listen_addresses":             "'127.0.0.1'",
		"fsync":                        "off",
		"full_page_writes":             "on", // pg_rewind needs it
		"wal_level":                    "replica",
		"wal_log_hints":                "on",
		"max_wal_senders":              "16",
		"max_replication_slots":        "16",
		"wal_keep_size":                "'256MB'",
		"hot_standby":                  "on",
		"wal_receiver_status_interval": "'1s'",
		"wal_retrieve_retry_interval":  "'500ms'",
		"shared_buffers":               "'32MB'",
		"max_connections":              "100",
		"password_encryption":          "'scram-sha-256'",
		"log_line_prefix":              "'%m [%p] %q%u@%d '",
		"log_checkpoints":              "off",
	}
	if opts.Fsync {
		conf["fsync"] = "on"
	}
	if c := opts.TLS; c != nil {
		for _, f := range []string{c.ServerCert, c.ServerKey, c.CACert} {
			if err := i.user.chown(f); err != nil {
				return err
			}
		}
		conf["ssl"] = "on"
		conf["ssl_cert_file"] = quote(c.ServerCert)
		conf["ssl_key_file"] = quote(c.ServerKey)
		conf["ssl_ca_file"] = quote(c.CACert)
	}
	for k, v := range opts.Settings {
		conf[k] = v
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("\n# pgtest\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, conf[k])
	}
	f, err := os.OpenFile(filepath.Join(i.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func hbaLine(db, user string, m AuthMethod) string {
	return fmt.Sprintf("host %s %s 127.0.0.1/32 %s", db, user, m)
}

// writeHBA writes pg_hba.conf: Unix sockets trusted, then per-role lines, then the default
// method for everyone on 127.0.0.1.
func (i *Instance) writeHBA() error {
	lines := []string{"# pgtest", "local all all trust", "local replication all trust"}
	lines = append(lines, i.extraHBA...)
	lines = append(lines, i.roleHBA...)
	lines = append(lines, hbaLine("all", "all", i.auth), hbaLine("replication", "all", i.auth))
	return i.user.writeOwned(filepath.Join(i.data, "pg_hba.conf"),
		[]byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// connQuote quotes a value for a libpq key/value connection string.
func connQuote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

// quote quotes a value for postgresql.conf.
func quote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
}

func (i *Instance) bin(name string) string { return filepath.Join(i.binDir, name) }

// startFresh starts a new instance on a free port, picking another port when the chosen one was
// taken in the meantime.
func (i *Instance) startFresh(t testing.TB) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("pgtest: %v", err)
		}
		i.port = port
		err = i.start()
		if err == nil {
			return
		}
		if attempt < maxPortAttempts && strings.Contains(i.LogTail(20), "could not bind") {
			continue
		}
		t.Fatalf("pgtest: %s: %v\n%s", i.name, err, i.LogTail(40))
	}
}

// FreeAddrPair returns two distinct free 127.0.0.1 addresses (a proxy's listen_rw and
// listen_ro): both listeners are held until each is known, so the kernel cannot hand the same
// port out twice.
func FreeAddrPair(t testing.TB) (string, string) {
	t.Helper()
	var addrs [2]string
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("pgtest: free address: %v", err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs[0], addrs[1]
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs the postmaster and waits until it accepts connections.
func (i *Instance) start() error {
	i.mu.Lock()
	if i.proc != nil {
		i.mu.Unlock()
		return errors.New("already running")
	}
	i.mu.Unlock()
	if err := i.waitOrphans(); err != nil {
		return err
	}
	logf, err := os.OpenFile(i.LogPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := i.user.command(nil, i.base, i.bin("postgres"), []string{
		"-D", i.data, "-p", strconv.Itoa(i.port), "-k", i.base, "-c", "cluster_name=" + i.name})
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	pm := &postmaster{done: make(chan struct{})}
	started := make(chan error, 1)
	// Pdeathsig fires when the *thread* that forked dies, so fork from a goroutine locked to its
	// thread that outlives the child: it waits for the child and only then unlocks.
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		pm.pid = cmd.Process.Pid
		started <- nil
		pm.err = cmd.Wait()
		close(pm.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	i.mu.Lock()
	i.proc = pm
	i.mu.Unlock()
	if err := i.waitReady(pm); err != nil {
		i.mu.Lock()
		i.proc = nil
		i.mu.Unlock()
		select {
		case <-pm.done:
		default:
			_ = syscall.Kill(pm.pid, syscall.SIGQUIT)
			<-pm.done
		}
		_ = killDirProcs(i.data, orphanTimeout)
		return err
	}
	return nil
}

// waitOrphans waits until no process of an earlier postmaster is left, killing stragglers.
// Backends of a SIGKILLed postmaster keep the shared memory attached and PostgreSQL refuses to
// start (and pg_rewind to recover) until they are gone; they exit on their own on noticing the
// postmaster's death.
func (i *Instance) waitOrphans() error {
	if waitDirProcsGone(i.data, orphanTimeout) == nil {
		return nil
	}
	return killDirProcs(i.data, orphanTimeout)
}

// waitReady connects until the server answers or the postmaster exits.
func (i *Instance) waitReady(pm *postmaster) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, connectAttempt)
		conn, err := i.Connect(actx)
		acancel()
		if err == nil {
			return conn.Close(context.Background())
		}
		last = err
		if permanent(err) {
			return err
		}
		select {
		case <-pm.done:
			return fmt.Errorf("postgres exited during startup: %v", pm.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v: %w", readyTimeout, last)
		case <-time.After(pollInterval):
		}
	}
}

// opContext is the context of one harness operation: the test's values without its
// cancellation, so helpers also work inside t.Cleanup (where t.Context is already done), and
// a timeout, so a stopped or hung server fails the test instead of hanging it.
func opContext(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(t.Context()), opTimeout)
}

// permanent reports whether a connection error will not go away by waiting: a bad connection
// string, or any server error other than "the database system is starting up" (57P03).
func permanent(err error) bool {
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code != "57P03"
}

// cleanup stops the server and removes its directory; on failure it shows the log tail.
func (i *Instance) cleanup(t testing.TB) {
	if t.Failed() {
		t.Logf("pgtest: %s log (%s):\n%s", i.name, i.LogPath(), i.LogTail(60))
	}
	i.mu.Lock()
	pm := i.proc
	i.proc = nil
	i.mu.Unlock()
	if pm != nil {
		pm.signal(syscall.SIGQUIT)
		select {
		case <-pm.done:
		case <-time.After(stopTimeout):
			pm.signal(syscall.SIGKILL)
			<-pm.done
		}
	}
	if err := killDirProcs(i.data, orphanTimeout); err != nil {
		t.Errorf("pgtest: %s: %v", i.name, err)
	}
	if os.Getenv("PGTEST_KEEP") == "1" {
		t.Logf("pgtest: keeping %s", i.base)
		return
	}
	if err := os.RemoveAll(i.base); err != nil {
		t.Errorf("pgtest: %v", err)
	}
}

// Name returns the instance name (also its cluster_name and the application_name its WAL
// receiver uses).
func (i *Instance) Name() string { return i.name }

// Host returns the address the server listens on.
func (i *Instance) Host() string { return "127.0.0.1" }

// Port returns the TCP port. It stays the same across restarts.
func (i *Instance) Port() int { return i.port }

// Addr returns host:port.
func (i *Instance) Addr() string { return net.JoinHostPort(i.Host(), strconv.Itoa(i.port)) }

// SocketDir returns the Unix-socket directory (connections there are always trusted).
func (i *Instance) SocketDir() string { return i.base }

// DataDir returns the data directory.
func (i *Instance) DataDir() string { return i.data }

// LogPath returns the server log file.
func (i *Instance) LogPath() string { return filepath.Join(i.base, i.name+".log") }

// Password returns the superuser's password.
func (i *Instance) Password() string { return i.password }

// ConnString returns a key/value connection string for the superuser and database postgres
// over TCP.
func (i *Instance) ConnString() string {
	return i.ConnStringFor(Superuser, i.password, "postgres")
}

// ConnStringFor returns a key/value connection string over TCP for any user and database.
// An empty password is left out. It uses TLS when the instance has it on (sslmode=prefer).
func (i *Instance) ConnStringFor(user, password, database string) string {
	mode := "disable"
	if i.tls {
		mode = "prefer"
	}
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s connect_timeout=10",
		i.Host(), i.port, connQuote(user), connQuote(database), mode)
	if password != "" {
		s += " password=" + connQuote(password)
	}
	return s
}

// Connect opens a superuser connection. Safe from any goroutine.
func (i *Instance) Connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, i.ConnString())
}

// Conn opens a superuser connection that is closed in t.Cleanup.
func (i *Instance) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := opContext(t)
	defer cancel()
	conn, err := i.Connect(ctx)
	if err != nil {
		t.Fatalf("pgtest: %s: connect: %v", i.name, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// TryExec runs one statement on a new superuser connection. Safe from any goroutine.
func (i *Instance) TryExec(ctx context.Context, sql string, args ...any) error {
	conn, err := i.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// Exec runs one statement as the superuser and fails the test on error.
func (i *Instance) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := opContext(t)
	defer cancel()
	if err := i.TryExec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %s: %v", i.name, sql, err)
	}
}

// QueryString runs a query as the superuser and returns the first column of its single row as
// text (sql NULL becomes ""). It fails the test on error.
func (i *Instance) QueryString(t testing.TB, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := opContext(t)
	defer cancel()
	s, err := i.queryString(ctx, sql, args...)
	if err != nil {
		t.Fatalf("pgtest: %s: %s: %v", i.name, sql, err)
	}
	return s
}

func (i *Instance) queryString(ctx context.Context, sql string, args ...any) (string, error) {
	conn, err := i.Connect(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var s *string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		return "", err
	}
	if s == nil {
		return "", nil
	}
	return *s, nil
}

// AddRole creates a login role on this instance (a primary) and, when r.Auth is set, adds its
// pg_hba.conf line here and on every replica created from it, reloading them.
func (i *Instance) AddRole(t testing.TB, r Role) {
	t.Helper()
	if r.Auth != "" {
		line := hbaLine("all", r.Name, r.Auth)
		for _, in := range i.withReplicas() {
			in.roleHBA = append(in.roleHBA, line)
			if err := in.writeHBA(); err != nil {
				t.Fatalf("pgtest: %s: %v", in.name, err)
			}
			if in.Running() {
				in.Exec(t, "SELECT pg_reload_conf()")
			}
		}
	}
	ctx, cancel := opContext(t)
	defer cancel()
	if err := i.createRole(ctx, r); err != nil {
		t.Fatalf("pgtest: %s: create role %s: %v", i.name, r.Name, err)
	}
}

func (i *Instance) withReplicas() []*Instance {
	i.mu.Lock()
	reps := append([]*Instance(nil), i.replicas...)
	i.mu.Unlock()
	out := []*Instance{i}
	for _, r := range reps {
		out = append(out, r.withReplicas()...)
	}
	return out
}

func (i *Instance) createRole(ctx context.Context, r Role) error {
	conn, err := i.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	enc := "scram-sha-256"
	if r.Auth == MD5 {
		enc = "md5"
	}
	if _, err := conn.Exec(ctx, "SET password_encryption = '"+enc+"'"); err != nil {
		return err
	}
	sql := "CREATE ROLE " + pgx.Identifier{r.Name}.Sanitize() + " LOGIN"
	if r.Password != "" {
		sql += " PASSWORD " + quote(r.Password)
	}
	if r.Superuser {
		sql += " SUPERUSER"
	}
	if r.Replication {
		sql += " REPLICATION"
	}
	_, err = conn.Exec(ctx, sql)
	return err
}

// Running reports whether the postmaster process is alive (not yet reaped).
func (i *Instance) Running() bool {
	i.mu.Lock()
	pm := i.proc
	i.mu.Unlock()
	if pm == nil {
		return false
	}
	select {
	case <-pm.done:
		return false
	default:
		return true
	}
}

// PID returns the postmaster's process id, or 0 when it is not running.
func (i *Instance) PID() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		return 0
	}
	return i.proc.pid
}

// Done returns a channel that is closed when the current postmaster exits, for whatever reason.
// It returns nil when the instance is not running.
func (i *Instance) Done() <-chan struct{} {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		return nil
	}
	return i.proc.done
}

// Kill sends SIGKILL to the postmaster alone, as `kill -9` would, and returns once it is
// reaped. Its backends exit on their own when they notice; Start waits for them.
func (i *Instance) Kill(t testing.TB) {
	t.Helper()
	pm := i.takeProc(t)
	_ = syscall.Kill(pm.pid, syscall.SIGKILL)
	<-pm.done
}

// signal sends sig to the postmaster unless it has exited and been reaped: its PID may belong
// to another process by then (PIDs wrap within minutes on a busy test machine), such as
// another test's pgbastion.
func (pm *postmaster) signal(sig syscall.Signal) {
	select {
	case <-pm.done:
	default:
		_ = syscall.Kill(pm.pid, sig)
	}
}

// StopMode is PostgreSQL's shutdown mode.
type StopMode int

// Shutdown modes and the signal each sends to the postmaster.
const (
	Smart     StopMode = iota // SIGTERM: wait for clients to disconnect
	Fast                      // SIGINT: disconnect clients, checkpoint
	Immediate                 // SIGQUIT: no checkpoint, crash recovery on next start
)

// Stop shuts the server down in the given mode and waits until the postmaster has exited.
func (i *Instance) Stop(t testing.TB, mode StopMode) {
	t.Helper()
	sig := map[StopMode]syscall.Signal{Smart: syscall.SIGTERM, Fast: syscall.SIGINT,
		Immediate: syscall.SIGQUIT}[mode]
	if sig == 0 {
		t.Fatalf("pgtest: bad stop mode %d", mode)
	}
	pm := i.takeProc(t)
	pm.signal(sig)
	select {
	case <-pm.done:
	case <-time.After(stopTimeout):
		_ = syscall.Kill(pm.pid, syscall.SIGKILL)
		<-pm.done
		t.Fatalf("pgtest: %s did not stop within %v; killed", i.name, stopTimeout)
	}
}

func (i *Instance) takeProc(t testing.TB) *postmaster {
	t.Helper()
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		t.Fatalf("pgtest: %s is not running", i.name)
	}
	pm := i.proc
	i.proc = nil
	return pm
}

// Start starts a stopped or killed instance on its port and waits until it accepts connections.
// After Kill it first waits for the old backends to exit.
func (i *Instance) Start(t testing.TB) {
	t.Helper()
	i.mu.Lock()
	pm := i.proc
	i.mu.Unlock()
	if pm != nil {
		select {
		case <-pm.done: // died on its own: forget it
			i.mu.Lock()
			i.proc = nil
			i.mu.Unlock()
		default:
			t.Fatalf("pgtest: %s is already running", i.name)
		}
	}
	if err := i.start(); err != nil {
		t.Fatalf("pgtest: %s: %v\n%s", i.name, err, i.LogTail(40))
	}
}

// Restart stops the server (fast) and starts it again.
func (i *Instance) Restart(t testing.TB) {
	t.Helper()
	i.Stop(t, Fast)
	i.Start(t)
}

// LogTail returns the last n lines of the server log.
func (i *Instance) LogTail(n int) string {
	b, err := os.ReadFile(i.LogPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
