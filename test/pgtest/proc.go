package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// command builds an exec.Cmd for a PostgreSQL program that runs as u, in dir, with an
// environment free of the caller's PG* variables.
func (u osUser) command(ctx context.Context, dir, bin string, args []string, env ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, bin, args...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "TZ=UTC"}, env...)
	attr := &syscall.SysProcAttr{}
	if u.switchTo {
		attr.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}
	}
	cmd.SysProcAttr = attr
	return cmd
}

// run runs a short-lived PostgreSQL program to completion and returns its combined output in
// the error when it fails.
func (u osUser) run(ctx context.Context, dir, bin string, args []string, env ...string) error {
	cmd := u.command(ctx, dir, bin, args, env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String())
	}
	return nil
}

// mkdirOwned creates dir (mode perm) owned by u.
func (u osUser) mkdirOwned(dir string, perm os.FileMode) error {
	if err := os.Mkdir(dir, perm); err != nil {
		return err
	}
	return u.chown(dir)
}

func (u osUser) chown(path string) error {
	if !u.switchTo {
		return nil
	}
	return os.Chown(path, int(u.uid), int(u.gid))
}

// writeOwned writes a file owned by u.
func (u osUser) writeOwned(path string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, data, perm); err != nil {
		return err
	}
	return u.chown(path)
}

// dirProcs returns the live (non-zombie) processes whose working directory is dir. Every
// process of a PostgreSQL instance (postmaster, backends, auxiliary processes, single-user
// recovery run by pg_rewind) works in its data directory, and unlike process groups (each
// PostgreSQL child calls setsid) or parent ids (orphans are reparented) this survives the
// postmaster's death.
func dirProcs(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd")
		if err != nil || cwd != dir {
			continue
		}
		if state, ok := procState(pid); ok && state != 'Z' && state != 'X' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procState reads the state letter of pid from /proc/<pid>/stat.
func procState(pid int) (byte, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// pid (comm) state ...; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, false
	}
	return b[i+2], true
}

// killDirProcs SIGKILLs every live process working in dir and waits until none is left.
func killDirProcs(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := dirProcs(dir)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in %s survive SIGKILL", pids, dir)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(pollInterval) // poll: there is no way to wait for non-children
	}
}

// waitDirProcsGone waits until no live process works in dir.
func waitDirProcsGone(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for len(dirProcs(dir)) > 0 {
		if time.Now().After(deadline) {
			return errors.New("processes of the old postmaster are still running")
		}
		time.Sleep(pollInterval) // poll: there is no way to wait for non-children
	}
	return nil
}
