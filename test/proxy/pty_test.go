package proxy_test

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// terminal runs a program on a pseudo-terminal, as if a person sat in front of it: the program
// is a session leader whose controlling terminal is the pty, so it sees isatty() true, prints
// its prompts, and gets SIGINT when Ctrl-C is typed.
type terminal struct {
	t      testing.TB
	name   string
	master *os.File
	cmd    *exec.Cmd

	mu      sync.Mutex
	out     []byte        // everything the program wrote
	seen    int           // offset in clean(out) up to which Expect has matched
	changed chan struct{} // closed and replaced whenever out grows or the reader ends
	eof     bool

	exited chan struct{}
	err    error
}

// startTerminal starts name with args on a new pseudo-terminal of 50x200 characters.
func startTerminal(t testing.TB, env []string, name string, args ...string) *terminal {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	var ptn uint32
	var ierr error
	rc, err := master.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil { // unlockpt
				return
			}
			ptn, ierr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN) // ptsname
		})
	}
	if err == nil {
		err = ierr
	}
	if err != nil {
		master.Close()
		t.Fatalf("pty: %v", err)
	}
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(ptn)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatalf("open pty slave: %v", err)
	}
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 50, Col: 200}); err != nil {
		t.Fatalf("pty window size: %v", err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		slave.Close()
		master.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	slave.Close() // the child holds it; the reader sees EIO once the child is gone
	tm := &terminal{t: t, name: name, master: master, cmd: cmd, changed: make(chan struct{}), exited: make(chan struct{})}
	go tm.read()
	go func() {
		tm.err = cmd.Wait()
		close(tm.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-tm.exited:
		default:
			_ = cmd.Process.Kill()
			<-tm.exited
		}
		master.Close()
		if t.Failed() {
			t.Logf("%s terminal output:\n%s", name, tm.Output())
		}
	})
	return tm
}

func (tm *terminal) read() {
	buf := make([]byte, 4096)
	for {
		n, err := tm.master.Read(buf)
		tm.mu.Lock()
		tm.out = append(tm.out, buf[:n]...)
		if err != nil {
			tm.eof = true
		}
		close(tm.changed)
		tm.changed = make(chan struct{})
		tm.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// ansi matches terminal control sequences and carriage returns, which readline and the tty
// line discipline sprinkle over the output.
var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r|\a`)

func clean(b []byte) string { return ansi.ReplaceAllString(string(b), "") }

// Output returns everything the program wrote so far, without control sequences.
func (tm *terminal) Output() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return clean(tm.out)
}

// Expect waits until pattern matches the output written since the previous match and returns
// the submatches; it fails the test after timeout.
func (tm *terminal) Expect(pattern string, timeout time.Duration) []string {
	tm.t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.After(timeout)
	for {
		tm.mu.Lock()
		text := clean(tm.out)
		rest := text[tm.seen:]
		loc := re.FindStringSubmatchIndex(rest)
		changed, eof := tm.changed, tm.eof
		if loc != nil {
			tm.seen += loc[1]
			tm.mu.Unlock()
			var subs []string
			for i := 0; i+1 < len(loc); i += 2 {
				if loc[i] >= 0 {
					subs = append(subs, rest[loc[i]:loc[i+1]])
				} else {
					subs = append(subs, "")
				}
			}
			return subs
		}
		tm.mu.Unlock()
		if eof {
			tm.t.Fatalf("%s ended before printing %q; unmatched output:\n%s", tm.name, pattern, rest)
		}
		select {
		case <-changed:
		case <-deadline:
			tm.t.Fatalf("%s did not print %q within %v; unmatched output:\n%s", tm.name, pattern, timeout, rest)
		}
	}
}

// Type writes s to the terminal as keystrokes.
func (tm *terminal) Type(s string) {
	tm.t.Helper()
	if _, err := tm.master.Write([]byte(s)); err != nil {
		tm.t.Fatalf("typing into %s: %v", tm.name, err)
	}
}

// Line types s followed by Enter.
func (tm *terminal) Line(s string) { tm.t.Helper(); tm.Type(s + "\n") }

// Wait waits until the program exits and returns its exit error.
func (tm *terminal) Wait(timeout time.Duration) error {
	tm.t.Helper()
	select {
	case <-tm.exited:
		return tm.err
	case <-time.After(timeout):
		tm.t.Fatalf("%s did not exit within %v", tm.name, timeout)
		return fmt.Errorf("timeout")
	}
}
