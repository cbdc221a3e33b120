package pgctl

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A postmaster.pid left by a crash may name a PID the kernel gave to another process since:
// that process is not taken for the postmaster (nor stopped as one), and the file goes before
// a start. A process working in the data directory, as a postmaster does, is taken for one.
func TestStalePidFileWithAReusedPID(t *testing.T) {
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inst, err := New(Config{BinDir: "/nonexistent", DataDir: data, Port: 5434, Superuser: "postgres"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(data, "postmaster.pid")
	writePID := func(pid int) {
		t.Helper()
		if err := os.WriteFile(pidFile, []byte(fmt.Sprintf("%d\n%s\n1764300000\n5434\n", pid, data)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePID(os.Getpid()) // alive, but working elsewhere: another process
	if inst.PostmasterAlive() {
		t.Fatal("a live process outside the data directory was taken for its postmaster")
	}
	inst.clearStalePidFile()
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("stale postmaster.pid kept: %v", err)
	}

	// A process whose working directory is the data directory counts.
	cmd := exec.Command("sleep", "60")
	cmd.Dir = data
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	writePID(cmd.Process.Pid)
	if !inst.PostmasterAlive() {
		t.Fatal("a process in the data directory was not taken for the postmaster")
	}
	inst.clearStalePidFile()
	if _, err := os.Stat(pidFile); err != nil {
		t.Fatalf("a live postmaster's pid file was removed: %v", err)
	}
}
