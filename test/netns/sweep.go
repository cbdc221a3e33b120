package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// netnsDir is where `ip netns add` keeps its namespace files.
const netnsDir = "/run/netns"

// Sweep removes the namespaces of clusters whose creating process no longer runs (a test binary
// that crashed or was killed before its cleanup ran) and returns their names. A cluster's ID
// carries its creator's PID, so clusters of tests running right now, in this or another package's
// test binary, are left alone.
func Sweep() ([]string, error) {
	names, err := listNamespaces(Prefix)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, name := range names {
		pid, ok := creatorPID(name)
		if !ok || processAlive(pid) {
			continue
		}
		if err := removeNamespace(name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// creatorPID parses the PID out of "pgbt-<pid>-<rand>-<member>".
func creatorPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func listNamespaces(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// removeNamespaces removes every namespace whose name starts with prefix.
func removeNamespaces(prefix string) error {
	names, err := listNamespaces(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		errs = append(errs, removeNamespace(name))
	}
	return errors.Join(errs...)
}

// removeNamespace kills the processes inside the namespace and deletes it. Veth ends inside it
// go with it, and so do their peers in other namespaces.
func removeNamespace(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output()
	if err != nil {
		return fmt.Errorf("ip netns pids %s: %w", name, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return ipCmd("netns", "del", name)
}
