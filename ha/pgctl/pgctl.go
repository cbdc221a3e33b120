// Package pgctl runs one local PostgreSQL server: initdb, start (as a child process, so its
// death is known at once from wait), stop, promote, clone with pg_basebackup, rewind with
// pg_rewind, and follow a new primary. When PGBastion runs as root, every PostgreSQL program
// runs as the configured OS user (PostgreSQL refuses to run as root).
//
// An Instance is safe for concurrent use; operations that change the server's state are
// serialised.
package pgctl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgbastion/pgbastion/ha/tracing"
)

// Config describes the local PostgreSQL server.
type Config struct {
	// BinDir holds initdb, postgres, pg_ctl, pg_basebackup, pg_rewind. Empty: the newest
	// /usr/lib/postgresql/*/bin.
	BinDir string `yaml:"bin_dir"`
	// DataDir is the data directory.
	DataDir string `yaml:"data_dir"`
	// Host and Port are where PostgreSQL listens (the proxy owns 5432/5433, so PostgreSQL
	// normally listens elsewhere).
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// SocketDir is the Unix socket directory (default: the data directory's parent).
	SocketDir string `yaml:"socket_dir"`
	// OSUser runs PostgreSQL when PGBastion runs as root (default postgres).
	OSUser string `yaml:"os_user"`
	// Superuser and Password are the credentials PGBastion uses for its own SQL.
	Superuser string `yaml:"superuser"`
	Password  string `yaml:"password"`
	// ReplicationUser and ReplicationPassword are used by replicas to stream.
	ReplicationUser     string `yaml:"replication_user"`
	ReplicationPassword string `yaml:"replication_password"`
	// Parameters are postgresql.conf settings PGBastion writes (postgresql.pgbastion.conf).
	Parameters map[string]string `yaml:"parameters"`
	// PgHBA, when set, are the pg_hba.conf lines PGBastion writes after its own two (Unix-socket
	// connections trusted, which its agent uses), in place of its default TCP lines, before
	// every start and when it finds PostgreSQL running (Patroni's postgresql.pg_hba). Unset,
	// pg_hba.conf is written once, at initdb, and left to the operator.
	PgHBA []string `yaml:"pg_hba"`
	// PgIdent, when set, are the pg_ident.conf lines (MAPNAME SYSTEM-USERNAME PG-USERNAME)
	// PGBastion writes, as it does PgHBA (Patroni's postgresql.pg_ident). Unset, pg_ident.conf
	// is left to the operator.
	PgIdent []string `yaml:"pg_ident"`
	// RemoveDataDirectoryOnRewindFailure allows re-cloning when pg_rewind cannot rejoin.
	RemoveDataDirectoryOnRewindFailure bool `yaml:"remove_data_directory_on_rewind_failure"`
	// ReplicaMethods are the ways to create a replica, tried in order (default: basebackup).
	ReplicaMethods []ReplicaMethod `yaml:"replica_methods"`
	// Scope is the cluster's name, for replica methods' --scope (set from raft.cluster_name).
	Scope string `yaml:"-"`
}

// Validate checks the settings.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" || !filepath.IsAbs(c.DataDir) {
		errs = append(errs, fmt.Errorf("postgresql.data_dir: %q must be an absolute path", c.DataDir))
	}
	if c.BinDir != "" && !filepath.IsAbs(c.BinDir) {
		errs = append(errs, fmt.Errorf("postgresql.bin_dir: %q must be an absolute path", c.BinDir))
	}
	if c.Port <= 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("postgresql.port: %d is not a TCP port", c.Port))
	}
	if c.Superuser == "" {
		errs = append(errs, errors.New("postgresql.superuser must be set"))
	}
	if err := validateReplicaMethods(c.ReplicaMethods); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, validateHBA(c.PgHBA)...)
	errs = append(errs, validateIdent(c.PgIdent)...)
	errs = append(errs, validateParameters(c.Parameters)...)
	return errors.Join(errs...)
}

// FindBinDir returns the newest /usr/lib/postgresql/*/bin holding postgres.
func FindBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return verOf(dirs[i]) > verOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries found: install postgresql (Debian: apt-get install postgresql) or set postgresql.bin_dir")
}

func verOf(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// Instance controls the local PostgreSQL server.
type Instance struct {
	cfg      Config
	log      *slog.Logger
	bin      string
	cred     *syscall.Credential
	uid, gid int
	// userEnv is the environment that names os_user (HOME, USER, LOGNAME) for the programs
	// run as that user; empty when PGBastion runs as its own user.
	userEnv []string

	// hba and ident are the sources of pg_hba.conf's and pg_ident.conf's lists (under
	// hbaMu); hbaFileMu serialises the writes of those files.
	hbaMu, hbaFileMu sync.Mutex
	hba, ident       authList
	// parameters is postgresql.parameters in effect (cfg.Parameters, then as reloaded);
	// settingsMu serialises it and the writes of postgresql.pgbastion.conf.
	settingsMu sync.Mutex
	parameters map[string]string

	mu   sync.Mutex
	proc *exec.Cmd
	done chan struct{}
	err  error
}

// New prepares control of the server described by cfg.
func New(cfg Config, log *slog.Logger) (*Instance, error) {
	if cfg.BinDir == "" {
		d, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		cfg.BinDir = d
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.SocketDir == "" {
		cfg.SocketDir = filepath.Dir(cfg.DataDir)
	}
	if cfg.OSUser == "" {
		cfg.OSUser = "postgres"
	}
	if cfg.ReplicationUser == "" {
		cfg.ReplicationUser, cfg.ReplicationPassword = cfg.Superuser, cfg.Password
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	i := &Instance{cfg: cfg, log: log, bin: cfg.BinDir, uid: os.Getuid(), gid: os.Getgid(), hba: authList{local: cfg.PgHBA}, ident: authList{local: cfg.PgIdent}, parameters: cfg.Parameters}
	if os.Geteuid() == 0 {
		u, err := user.Lookup(cfg.OSUser)
		if err != nil {
			return nil, fmt.Errorf("PGBastion runs as root, so PostgreSQL must run as postgresql.os_user %q, which does not exist: %w", cfg.OSUser, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		i.uid, i.gid = uid, gid
		i.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		// Not root's: libpq in pg_basebackup, pg_rewind and the walreceiver looks for
		// ~/.postgresql/postgresql.crt whenever TLS is on, and fails the connection when
		// it may not even look (root's home is closed to postgres).
		i.userEnv = []string{"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username}
	}
	return i, nil
}

// Config returns the configuration in use.
func (i *Instance) Config() Config { return i.cfg }

// Addr returns host:port of the server.
func (i *Instance) Addr() string { return net.JoinHostPort(i.cfg.Host, strconv.Itoa(i.cfg.Port)) }

func (i *Instance) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return i.commandAt(ctx, filepath.Join(i.bin, name), args...)
}

// commandAt runs the program at path the way PostgreSQL's own programs run: as os_user, in
// its own process group, without PGBastion's capabilities.
func (i *Instance) commandAt(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = "/"
	cmd.Env = append(append(os.Environ(), "LC_ALL=C", "PGTZ=UTC"), i.userEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: i.cred, Setpgid: true}
	// Do not hand PGBastion's VIP capabilities down to PostgreSQL.
	cmd.SysProcAttr.AmbientCaps = nil
	return cmd
}

func (i *Instance) run(ctx context.Context, name string, args ...string) (err error) {
	ctx, span := tracing.Tracer().Start(ctx, name, trace.WithAttributes(attribute.String("process.command_line", name+" "+strings.Join(redact(args), " "))))
	defer func() { tracing.EndSpan(span, err) }()
	cmd := i.command(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(redact(args), " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// redact hides passwords in connection strings before they reach an error or a log, quoted
// ones (password='two words') included.
func redact(args []string) []string {
	out := make([]string, len(args))
	for k, a := range args {
		out[k] = passwordInConninfo.ReplaceAllString(a, "${1}password=******")
	}
	return out
}

// passwordInConninfo matches a password keyword and its value, quoted (with backslash
// escapes) or not, in a libpq keyword/value string.
var passwordInConninfo = regexp.MustCompile(`(^|[\s=])password\s*=\s*(?:'(?:[^'\\]|\\.)*'?|\S*)`)

// conninfoValue quotes v for a libpq keyword/value connection string when it needs it: an
// empty value, or one with a space, a quote or a backslash (a password may have any).
func conninfoValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\f\v'\\") {
		return v
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, `'`, `\'`) + "'"
}

// confString quotes v as a string value in postgresql.conf: single quotes doubled, and
// backslashes doubled since the file's parser reads them as escapes.
func confString(v string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", "''") + "'"
}

// mkdirOwned creates dir owned by the PostgreSQL OS user.
func (i *Instance) mkdirOwned(dir string, perm os.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	if err := os.Chmod(dir, perm); err != nil {
		return err
	}
	return os.Chown(dir, i.uid, i.gid)
}

// writeOwned replaces the file at path with data, owned by the PostgreSQL OS user. The new
// content appears at once (a rename), so a PostgreSQL reading the file meanwhile (a reload)
// sees the old or the new one, never part of it. A symbolic link stays one: its target is
// replaced.
func (i *Instance) writeOwned(path string, data []byte) error {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	tmp := path + ".pgbastion-new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chown(tmp, i.uid, i.gid)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// HasData reports whether the data directory holds a cluster.
func (i *Instance) HasData() bool {
	_, err := os.Stat(filepath.Join(i.cfg.DataDir, "PG_VERSION"))
	return err == nil
}

// InitDB creates a new cluster with data checksums (so pg_rewind works), the superuser's
// password and a replication role, and PGBastion's settings.
func (i *Instance) InitDB(ctx context.Context) error {
	if err := i.mkdirOwned(filepath.Dir(i.cfg.DataDir), 0o755); err != nil {
		return err
	}
	if err := i.mkdirOwned(i.cfg.DataDir, 0o700); err != nil {
		return err
	}
	pwfile := filepath.Join(filepath.Dir(i.cfg.DataDir), ".pgbastion-initdb-pw")
	if err := i.writeOwned(pwfile, []byte(i.cfg.Password+"\n")); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	args := []string{"-D", i.cfg.DataDir, "-U", i.cfg.Superuser, "--data-checksums", "-E", "UTF8", "--locale=C",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile=" + pwfile}
	if err := i.run(ctx, "initdb", args...); err != nil {
		return err
	}
	hba := hbaHeader +
		"host all all 127.0.0.1/32 scram-sha-256\n" +
		"host all all ::1/128 scram-sha-256\n" +
		"host replication all 127.0.0.1/32 scram-sha-256\n" +
		"host all all 0.0.0.0/0 scram-sha-256\n" +
		"host replication all 0.0.0.0/0 scram-sha-256\n"
	if err := i.writeOwned(filepath.Join(i.cfg.DataDir, "pg_hba.conf"), []byte(hba)); err != nil {
		return err
	}
	return i.writeSettings()
}

// writeSettings writes postgresql.pgbastion.conf and includes it from postgresql.conf.
func (i *Instance) writeSettings() error {
	i.settingsMu.Lock()
	err := i.writeOwned(filepath.Join(i.cfg.DataDir, settingsFile), i.settingsContent(i.parameters))
	i.settingsMu.Unlock()
	if err != nil {
		return err
	}
	if _, err := i.writeHBA(); err != nil {
		return err
	}
	if err := i.writeIdent(); err != nil {
		return err
	}
	conf := filepath.Join(i.cfg.DataDir, "postgresql.conf")
	cur, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	if !strings.Contains(string(cur), "include_if_exists = '"+settingsFile+"'") {
		cur = append(cur, []byte("\ninclude_if_exists = '"+settingsFile+"'\n")...)
		if err := i.writeOwned(conf, cur); err != nil {
			return err
		}
	}
	return nil
}

// settingsFile is the file in the data directory that holds PGBastion's settings and
// postgresql.parameters; postgresql.conf includes it.
const settingsFile = "postgresql.pgbastion.conf"

// settingsContent is postgresql.pgbastion.conf for params (postgresql.parameters) over
// PGBastion's own settings.
func (i *Instance) settingsContent(params map[string]string) []byte {
	p := map[string]string{
		"listen_addresses":        i.cfg.Host,
		"port":                    strconv.Itoa(i.cfg.Port),
		"unix_socket_directories": i.cfg.SocketDir,
		"wal_level":               "replica",
		"hot_standby":             "on",
		"max_wal_senders":         "10",
		"max_replication_slots":   "10",
		"wal_log_hints":           "on",
		"wal_keep_size":           "256MB",
		"hot_standby_feedback":    "on",
		"max_connections":         "200",
	}
	for k, v := range params {
		p[k] = v
	}
	var b strings.Builder
	b.WriteString("# written by PGBastion; changes here are overwritten\n")
	for _, k := range slices.Sorted(maps.Keys(p)) {
		fmt.Fprintf(&b, "%s = %s\n", k, confString(p[k]))
	}
	return []byte(b.String())
}

// Start runs the postmaster as a child process and waits until it accepts connections (or
// reports that it is starting up as a standby and accepting read-only connections).
func (i *Instance) Start(ctx context.Context) (err error) {
	ctx, span := tracing.Tracer().Start(ctx, "postgres start", trace.WithAttributes(attribute.String("pgbastion.data_dir", i.cfg.DataDir)))
	defer func() { tracing.EndSpan(span, err) }()
	i.mu.Lock()
	if i.proc != nil {
		i.mu.Unlock()
		return nil
	}
	if err := i.writeSettings(); err != nil {
		i.mu.Unlock()
		return err
	}
	i.clearStalePidFile()
	logPath := filepath.Join(filepath.Dir(i.cfg.DataDir), filepath.Base(i.cfg.DataDir)+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		i.mu.Unlock()
		return err
	}
	_ = os.Chown(logPath, i.uid, i.gid)
	cmd := i.command(context.Background(), "postgres", "-D", i.cfg.DataDir)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		i.mu.Unlock()
		return fmt.Errorf("starting postgres: %w", err)
	}
	done := make(chan struct{})
	i.proc, i.done, i.err = cmd, done, nil
	go func() {
		err := cmd.Wait()
		// Backends outlive a postmaster that died (kill -9, OOM killer) until they notice, and
		// one in the middle of a transaction can still commit. They are in the postmaster's
		// process group: end them now. After a clean stop the group is empty and this is a
		// no-op; a group with a live member cannot have its id reused.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		lf.Close()
		i.mu.Lock()
		i.err = err
		if i.proc == cmd {
			i.proc = nil
		}
		i.mu.Unlock()
		close(done)
	}()
	i.mu.Unlock()
	return i.waitReady(ctx, done, logPath)
}

func (i *Instance) waitReady(ctx context.Context, done chan struct{}, logPath string) error {
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		if i.Ping(ctx) == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("postgres exited during start-up; see %s", logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("postgres did not accept connections within 60s; see %s", logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Ping connects to the server and runs an empty query.
func (i *Instance) Ping(ctx context.Context) error {
	c, err := i.Connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return c.Exec(ctx, "").Close()
}

// Connect opens a control-plane connection as the superuser over the Unix socket.
func (i *Instance) Connect(ctx context.Context) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port = i.cfg.SocketDir, uint16(i.cfg.Port)
	cfg.User, cfg.Password, cfg.Database = i.cfg.Superuser, i.cfg.Password, "postgres"
	cfg.RuntimeParams = map[string]string{"application_name": "pgbastion"}
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = 2 * time.Second
	return pgconn.ConnectConfig(ctx, cfg)
}

// Running reports whether the child postmaster is alive.
func (i *Instance) Running() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.proc != nil
}

// PostmasterAlive reports whether a postmaster runs on the data directory: one this process
// started, or one postmaster.pid names that is alive (left running by an earlier PGBastion
// process and adopted, or started by hand). Running sees only the first kind.
func (i *Instance) PostmasterAlive() bool {
	if i.Running() {
		return true
	}
	pid, ok := i.pidFilePID()
	return ok && i.isPostmaster(pid)
}

// isPostmaster reports whether pid is a live postmaster of this data directory. The PID in a
// postmaster.pid left behind by a crash (kill -9, the OOM killer) may since belong to another
// process — the kernel reuses PIDs, within minutes on a busy host — which must be neither
// taken for PostgreSQL nor sent its stop signal. A postmaster works in its data directory, so
// its /proc/PID/cwd names it; when that cannot be read, a live PID counts.
func (i *Instance) isPostmaster(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return true
	}
	want, err := filepath.EvalSymlinks(i.cfg.DataDir)
	if err != nil {
		want = i.cfg.DataDir
	}
	return filepath.Clean(cwd) == filepath.Clean(want)
}

// clearStalePidFile removes a postmaster.pid whose process is not a postmaster of this data
// directory: PostgreSQL would refuse to start ("lock file already exists") while that PID
// lives on in another process.
func (i *Instance) clearStalePidFile() {
	pid, ok := i.pidFilePID()
	if !ok || i.isPostmaster(pid) {
		return
	}
	if err := os.Remove(filepath.Join(i.cfg.DataDir, "postmaster.pid")); err == nil {
		i.log.Warn("removed a stale postmaster.pid: the process it names is not a postmaster of this data directory", "pid", pid)
	}
}

// pidFilePID returns the process ID postmaster.pid names.
func (i *Instance) pidFilePID() (int, bool) {
	b, err := os.ReadFile(filepath.Join(i.cfg.DataDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	return postmasterPID(b)
}

// Exited returns a channel closed when the current postmaster exits (nil when not running).
func (i *Instance) Exited() <-chan struct{} {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		return nil
	}
	return i.done
}

// StopMode is how to stop the server.
type StopMode int

const (
	// Fast rolls back sessions and checkpoints (SIGINT).
	Fast StopMode = iota
	// Immediate aborts without a checkpoint (SIGQUIT): used to fence.
	Immediate
)

// String is the mode's pg_ctl name.
func (m StopMode) String() string {
	if m == Immediate {
		return "immediate"
	}
	return "fast"
}

// Stop stops the server and waits for the postmaster to exit.
func (i *Instance) Stop(ctx context.Context, mode StopMode) (err error) {
	ctx, span := tracing.Tracer().Start(ctx, "postgres stop", trace.WithAttributes(attribute.String("pgbastion.stop_mode", mode.String())))
	defer func() { tracing.EndSpan(span, err) }()
	i.mu.Lock()
	cmd, done := i.proc, i.done
	i.mu.Unlock()
	if cmd == nil {
		return i.stopForeign(ctx, mode)
	}
	sig := syscall.SIGINT
	if mode == Immediate {
		sig = syscall.SIGQUIT
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("postgres did not stop in time; killed: %w", ctx.Err())
	}
}

// stopForeign stops a postmaster this process did not start (found through postmaster.pid).
func (i *Instance) stopForeign(ctx context.Context, mode StopMode) error {
	pidFile := filepath.Join(i.cfg.DataDir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil
	}
	if pid, ok := postmasterPID(b); ok && !i.isPostmaster(pid) {
		// A postmaster that died and left its pid file behind (crash, kill -9): nothing runs,
		// so it is stopped. pg_ctl would fail on it ("could not send stop signal"), and a
		// fence that fails makes a failover wait for the old primary's lease to run out —
		// or, when the PID now belongs to another process, send that process SIGINT.
		return nil
	}
	return i.run(ctx, "pg_ctl", "stop", "-D", i.cfg.DataDir, "-m", mode.String(), "-w", "-t", "60")
}

// postmasterPID reads the postmaster's process id from the first line of postmaster.pid.
func postmasterPID(b []byte) (int, bool) {
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

// Kill sends SIGKILL to the postmaster (tests and fencing of last resort).
func (i *Instance) Kill() {
	i.mu.Lock()
	cmd := i.proc
	i.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
	}
}

// Promote promotes a standby and waits until it accepts writes.
func (i *Instance) Promote(ctx context.Context) error {
	if err := i.run(ctx, "pg_ctl", "promote", "-D", i.cfg.DataDir, "-w", "-t", "60"); err != nil {
		return err
	}
	for {
		rec, err := i.InRecovery(ctx)
		if err == nil && !rec {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promoted server still in recovery: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// InRecovery asks pg_is_in_recovery().
func (i *Instance) InRecovery(ctx context.Context) (bool, error) {
	c, err := i.Connect(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close(context.Background())
	res := c.ExecParams(ctx, "SELECT pg_catalog.pg_is_in_recovery()", nil, nil, nil, nil).Read()
	if res.Err != nil {
		return false, res.Err
	}
	return len(res.Rows) == 1 && string(res.Rows[0][0]) == "t", nil
}

// Conninfo returns a libpq connection string to the server at addr for replication.
func (i *Instance) Conninfo(host string, port int, appName string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=%s sslmode=prefer",
		conninfoValue(host), port, conninfoValue(i.cfg.ReplicationUser), conninfoValue(i.cfg.ReplicationPassword), conninfoValue(appName))
}

// BaseBackup clones the data directory from a primary and configures streaming from it.
func (i *Instance) BaseBackup(ctx context.Context, host string, port int, appName, slot string) error {
	if err := i.mkdirOwned(filepath.Dir(i.cfg.DataDir), 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(i.cfg.DataDir); err != nil {
		return err
	}
	if err := i.mkdirOwned(i.cfg.DataDir, 0o700); err != nil {
		return err
	}
	args := []string{"-D", i.cfg.DataDir, "-d", i.Conninfo(host, port, appName), "-X", "stream", "-c", "fast", "-R", "-w"}
	if slot != "" {
		args = append(args, "-S", slot)
	}
	if err := i.run(ctx, "pg_basebackup", args...); err != nil {
		return err
	}
	return i.writeSettings()
}

// Follow configures the server as a standby of host:port (standby.signal and
// primary_conninfo); the caller restarts it. Other settings in postgresql.auto.conf (the
// cluster-wide configuration, applied with ALTER SYSTEM) stay; synchronous_standby_names,
// which only a primary has a use for, goes.
func (i *Instance) Follow(host string, port int, appName, slot string) error {
	path := filepath.Join(i.cfg.DataDir, "postgresql.auto.conf")
	cur, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	conf := keepAutoConf(string(cur))
	conf += fmt.Sprintf("primary_conninfo = %s\nrecovery_target_timeline = 'latest'\n", confString(i.Conninfo(host, port, appName)))
	if slot != "" {
		conf += fmt.Sprintf("primary_slot_name = %s\n", confString(slot))
	}
	if err := i.writeOwned(path, []byte(conf)); err != nil {
		return err
	}
	return i.writeOwned(filepath.Join(i.cfg.DataDir, "standby.signal"), nil)
}

// followOwned are the postgresql.auto.conf settings Follow writes or removes.
var followOwned = map[string]bool{
	"primary_conninfo": true, "primary_slot_name": true, "recovery_target_timeline": true, "synchronous_standby_names": true,
}

// keepAutoConf returns the lines of postgresql.auto.conf that Follow keeps: comments and every
// setting it does not own.
func keepAutoConf(cur string) string {
	var b strings.Builder
	for _, line := range strings.Split(cur, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || t == "# written by PGBastion" {
			continue
		}
		if !strings.HasPrefix(t, "#") {
			name, _, _ := strings.Cut(t, "=")
			if followOwned[strings.ToLower(strings.TrimSpace(name))] {
				continue
			}
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// Rewind synchronises the (stopped) data directory with a new primary.
func (i *Instance) Rewind(ctx context.Context, host string, port int) error {
	src := fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=prefer",
		conninfoValue(host), port, conninfoValue(i.cfg.Superuser), conninfoValue(i.cfg.Password))
	return i.run(ctx, "pg_rewind", "-D", i.cfg.DataDir, "--source-server="+src, "--no-sync")
}
