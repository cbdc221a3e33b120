package netns

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a long-running command started in a member's namespace, in its own process group,
// so that Kill, Pause and Resume reach it and everything it started.
type Process struct {
	// Cmd is the underlying command; do not call Wait on it.
	Cmd  *exec.Cmd
	name string
	out  *syncBuffer
	done chan struct{}
	err  error // set before done is closed
}

// Start runs name inside the member's namespace and registers its end with t.Cleanup: the
// process group is killed and reaped, and on failure the tail of its output is logged. Adjust
// the command before it starts with the optional setup function (env, extra files).
func (n *Node) Start(t testing.TB, setup func(*exec.Cmd), name string, args ...string) *Process {
	t.Helper()
	cmd := n.Command(context.Background(), name, args...)
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if setup != nil {
		setup(cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s in %s: %v", name, n.Name, err)
	}
	p := &Process{Cmd: cmd, name: fmt.Sprintf("%s@%s", name, n.Name), out: buf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s: not reaped 10 s after SIGKILL", p.name)
		}
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", p.name, tail(p.Output(), 4000))
		}
	})
	return p
}

// Pid returns the process's PID, which is also its process group ID.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Signal sends sig to the whole process group.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil // already gone (and reaped: its PID may belong to someone else now)
	default:
	}
	if err := syscall.Kill(-p.Pid(), sig); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("%s: %v: %w", p.name, sig, err)
	}
	return nil
}

// Kill sends SIGKILL to the process group (kill -9).
func (p *Process) Kill() error { return p.Signal(syscall.SIGKILL) }

// Pause stops the process group with SIGSTOP: it keeps its sockets and addresses but does nothing.
func (p *Process) Pause() error { return p.Signal(syscall.SIGSTOP) }

// Resume continues a paused process group with SIGCONT.
func (p *Process) Resume() error { return p.Signal(syscall.SIGCONT) }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the process to exit and returns its exit error (nil for status
// 0), or an error if it is still running.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s: still running after %v", p.name, timeout)
	}
}

// Output returns everything the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(b)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
