package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	vnetns "github.com/vishvananda/netns"
)

// Timeouts. Generous because CI machines are slow (and the daemon may carry the race
// detector); the happy path never waits for them.
const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 15 * time.Second
	pollInterval = 10 * time.Millisecond
	logTailBytes = 16 << 10
)

// Daemon is one running pgbastion process.
type Daemon struct {
	name    string
	dir     string
	logPath string
	// confPath is the configuration file it runs with (WriteConfig replaces it).
	confPath string
	cfg      *FileConfig // nil when started from raw YAML

	pid  int
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // exit status; read after done is closed
	// ended is set when the test asked for the end (Kill or Stop), so cleanup does not report
	// the exit as unexpected.
	ended atomic.Bool
}

// Start writes cfg to a file, runs `pgbastion run -c FILE` and returns once listen_rw,
// listen_ro and the API (those that are set) accept TCP connections. The daemon is stopped in
// t.Cleanup.
func Start(t testing.TB, cfg *FileConfig) *Daemon {
	t.Helper()
	data, err := cfg.Marshal()
	if err != nil {
		t.Fatalf("daemon: marshal configuration: %v", err)
	}
	var wait []string
	for _, a := range []string{cfg.Proxy.ListenRW, cfg.Proxy.ListenRO, cfg.API.Listen} {
		if a != "" {
			wait = append(wait, a)
		}
	}
	c := *cfg
	return start(t, data, &c, wait, Options{})
}

// StartYAML runs the daemon with a configuration given as YAML text and returns once every
// address in waitFor accepts TCP connections.
func StartYAML(t testing.TB, yamlText string, waitFor ...string) *Daemon {
	t.Helper()
	return start(t, []byte(yamlText), nil, waitFor, Options{})
}

// Options change where and how StartYAMLWith runs the daemon. The zero value is StartYAML's
// behaviour.
type Options struct {
	// Netns is the path of a network namespace file (e.g. /run/netns/NAME) to run the daemon
	// in; empty means the test's own namespace.
	Netns string
	// Wrapper is a command line that ends by exec'ing its trailing arguments, put in front of
	// the daemon's, e.g. {"setpriv", "--bounding-set=-net_admin", "--"}. It must keep the PID
	// (exec, not fork) so that signals and Pdeathsig still reach the daemon.
	Wrapper []string
	// Dial checks that the waitFor addresses accept connections; it must work from where the
	// daemon listens (with Netns, a dialer inside that namespace). Default: net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// StartYAMLWith is StartYAML with Options: the daemon can run in another network namespace
// and under a wrapper command (for example one that drops capabilities).
func StartYAMLWith(t testing.TB, yamlText string, opts Options, waitFor ...string) *Daemon {
	t.Helper()
	return start(t, []byte(yamlText), nil, waitFor, opts)
}

func start(t testing.TB, config []byte, cfg *FileConfig, waitFor []string, opts Options) *Daemon {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir() // removed after the cleanup below, which reads the log
	d := &Daemon{name: "pgbastion", dir: dir, logPath: filepath.Join(dir, "pgbastion.log"), cfg: cfg,
		done: make(chan struct{})}
	confPath := filepath.Join(dir, "pgbastion.yaml")
	d.confPath = confPath
	if err := os.WriteFile(confPath, config, 0o600); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("daemon: %v", err)
	}
	argv := append(append([]string(nil), opts.Wrapper...), bin, "run", "-c", confPath)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group, so signals reach everything it starts; killed with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	// Pdeathsig fires when the *thread* that forked dies: fork from a goroutine locked to its
	// thread that lives until the child is reaped.
	go func() {
		runtime.LockOSThread()
		// A thread moved into another namespace stays locked: it ends with this goroutine,
		// so no other goroutine ever runs in the daemon's namespace.
		if opts.Netns == "" {
			defer runtime.UnlockOSThread()
		}
		defer logf.Close()
		if err := enterNetns(opts.Netns); err != nil {
			started <- err
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		d.pid = cmd.Process.Pid
		started <- nil
		d.err = cmd.Wait()
		close(d.done)
	}()
	if err := <-started; err != nil {
		t.Fatalf("daemon: start %s: %v", bin, err)
	}
	t.Cleanup(func() { d.cleanup(t) })
	if err := d.waitListening(waitFor, opts.Dial); err != nil {
		t.Fatalf("daemon: %v\n%s", err, d.LogTail())
	}
	return d
}

// waitListening polls until every address accepts a TCP connection, or the daemon exits.
func (d *Daemon) waitListening(addrs []string, dial func(ctx context.Context, network, address string) (net.Conn, error)) error {
	if dial == nil {
		var dialer net.Dialer
		dial = dialer.DialContext
	}
	deadline := time.Now().Add(readyTimeout)
	for _, a := range addrs {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c, err := dial(ctx, "tcp", a)
			cancel()
			if err == nil {
				_ = c.Close()
				break
			}
			select {
			case <-d.done:
				return fmt.Errorf("pgbastion exited before listening on %s: %v", a, d.err)
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pgbastion not listening on %s after %v: %v", a, readyTimeout, err)
			}
			time.Sleep(pollInterval) // poll: a port has no readiness notification
		}
	}
	return nil
}

// cleanup ends the process, reports crashes and races found in its log, and shows the log
// tail when the test failed.
func (d *Daemon) cleanup(t testing.TB) {
	unexpected := false
	select {
	case <-d.done:
		unexpected = !d.ended.Load()
	default:
		// Graceful first: a race-enabled binary reports at exit, and shutdown is a feature.
		d.ended.Store(true)
		_ = d.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(stopTimeout):
			t.Errorf("daemon: pgbastion (pid %d) did not stop %v after SIGTERM; killing it", d.pid, stopTimeout)
			_ = d.Signal(syscall.SIGKILL)
			<-d.done
		}
	}
	if unexpected {
		t.Errorf("daemon: pgbastion (pid %d) exited on its own: %v", d.pid, d.err)
	}
	for _, problem := range d.Problems() {
		t.Errorf("daemon: pgbastion log shows %s", problem)
	}
	if t.Failed() {
		t.Logf("daemon: pgbastion log %s (tail):\n%s", d.logPath, d.LogTail())
	}
}

// Problems scans the daemon's log for a Go panic, a fatal runtime error or a data race.
func (d *Daemon) Problems() []string { return ProblemsIn(d.logPath) }

// ProblemsIn scans a log file for lines that start a Go panic, a fatal runtime error or a data
// race report. (A panic the engine recovered from is logged differently and is not one.)
func ProblemsIn(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "panic: "), strings.HasPrefix(line, "fatal error: "),
			strings.HasPrefix(line, "WARNING: DATA RACE"):
			out = append(out, fmt.Sprintf("%q", line))
		}
	}
	return out
}

// PID returns the daemon's process id, which is also its process group id.
func (d *Daemon) PID() int { return d.pid }

// ConfigPath returns the configuration file the daemon runs with.
func (d *Daemon) ConfigPath() string { return d.confPath }

// WriteConfig replaces the daemon's configuration file with cfg (for a reload); the daemon
// reads it on SIGHUP or POST /reload.
func (d *Daemon) WriteConfig(t testing.TB, cfg *FileConfig) {
	t.Helper()
	b, err := cfg.Marshal()
	if err != nil {
		t.Fatalf("daemon: %v", err)
	}
	if err := os.WriteFile(d.confPath, b, 0o600); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	d.cfg = cfg
}

// Exited returns a channel closed once the process has exited and been reaped.
func (d *Daemon) Exited() <-chan struct{} { return d.done }

// Signal sends sig to the daemon's process group. It is a no-op once the daemon was reaped
// (its PID may belong to someone else then).
func (d *Daemon) Signal(sig syscall.Signal) error {
	select {
	case <-d.done:
		return nil
	default:
	}
	if err := syscall.Kill(-d.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgbastion (pid %d): %v: %w", d.pid, sig, err)
	}
	return nil
}

// Kill sends SIGKILL to the process group and returns once the daemon is reaped.
func (d *Daemon) Kill(t testing.TB) {
	t.Helper()
	d.ended.Store(true)
	if err := d.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	<-d.done
}

// Stop asks the daemon to shut down (SIGTERM) and waits until it has exited; it returns the
// exit status (nil for exit code 0). After stopTimeout it kills the daemon and fails the test.
func (d *Daemon) Stop(t testing.TB) error {
	t.Helper()
	d.ended.Store(true)
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		_ = d.Signal(syscall.SIGKILL)
		<-d.done
		t.Fatalf("daemon: pgbastion did not stop within %v of SIGTERM; killed", stopTimeout)
	}
	return d.err
}

// Pause stops the daemon with SIGSTOP: it keeps its sockets (the kernel still completes TCP
// handshakes on its listeners) but runs no code.
//
// SIGSTOP takes effect asynchronously: Pause returns once every thread of the process is in
// the stopped state, so that nothing the daemon does afterwards can be mistaken for running
// while paused.
func (d *Daemon) Pause(t testing.TB) {
	t.Helper()
	if err := d.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		running, err := d.runningThreads()
		if err != nil {
			t.Fatalf("daemon: %v", err)
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon: %d threads of pid %d still not stopped %s after SIGSTOP", running, d.pid, readyTimeout)
		}
		time.Sleep(pollInterval) // poll: /proc has no notification of a stop
	}
}

// runningThreads counts the daemon's threads that are not stopped (state T in
// /proc/PID/task/TID/stat).
func (d *Daemon) runningThreads() (int, error) {
	dir := "/proc/" + strconv.Itoa(d.pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if err != nil {
			continue // the thread exited
		}
		// The state follows the command name, which is in parentheses and may contain spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			return 0, fmt.Errorf("unexpected %s/%s/stat: %q", dir, task.Name(), b)
		}
		if b[i+2] != 'T' {
			n++
		}
	}
	return n, nil
}

// Resume continues a paused daemon with SIGCONT.
func (d *Daemon) Resume(t testing.TB) {
	t.Helper()
	if err := d.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("daemon: %v", err)
	}
}

// RSS returns the daemon's resident set size in bytes (VmRSS in /proc/PID/status).
func (d *Daemon) RSS() (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(d.pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest)) // "123456 kB"
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		return kb << 10, nil
	}
	return 0, errors.New("no VmRSS in /proc/PID/status (process gone?)")
}

// LogPath returns the file that holds the daemon's stdout and stderr.
func (d *Daemon) LogPath() string { return d.logPath }

// Log returns the daemon's output so far.
func (d *Daemon) Log() string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// LogTail returns the last logTailBytes of the daemon's output.
func (d *Daemon) LogTail() string {
	s := d.Log()
	if len(s) > logTailBytes {
		s = s[len(s)-logTailBytes:]
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
		s = "...\n" + s
	}
	return s
}

// Config returns the configuration the daemon was started with (nil for StartYAML).
func (d *Daemon) Config() *FileConfig { return d.cfg }

// RW returns the read-write listen address ("" for StartYAML).
func (d *Daemon) RW() string {
	if d.cfg == nil {
		return ""
	}
	return d.cfg.Proxy.ListenRW
}

// API returns the REST API's listen address ("" for StartYAML).
func (d *Daemon) API() string {
	if d.cfg == nil {
		return ""
	}
	return d.cfg.API.Listen
}

// RO returns the read-only listen address ("" for StartYAML).
func (d *Daemon) RO() string {
	if d.cfg == nil {
		return ""
	}
	return d.cfg.Proxy.ListenRO
}

// ConnString returns a libpq key/value connection string for the PostgreSQL superuser and
// database postgres at addr (one of the daemon's listeners), with sslmode=disable unless extra
// says otherwise. extra holds further key=value pairs, appended in order (later ones win).
func ConnString(addr string, extra ...string) string {
	host, port, _ := net.SplitHostPort(addr)
	s := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable connect_timeout=10", host, port)
	if len(extra) > 0 {
		s += " " + strings.Join(extra, " ")
	}
	return s
}

// enterNetns moves the calling (locked) thread into the network namespace at path; "" is a
// no-op.
func enterNetns(path string) error {
	if path == "" {
		return nil
	}
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("daemon: opening network namespace %s: %w", path, err)
	}
	defer ns.Close()
	if err := vnetns.Set(ns); err != nil {
		return fmt.Errorf("daemon: entering network namespace %s: %w", path, err)
	}
	return nil
}
