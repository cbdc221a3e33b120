package engine_test

import (
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestProfileUnderPgbench writes a CPU profile of the proxy (this process) while pgbench -S
// runs through it. Set PGBASTION_PROFILE=file (and optionally PGBASTION_PROFILE_MODE=session,
// PGBASTION_PROFILE_LOOPS=n, and PGBASTION_ALLOC_PROFILE=file for every allocation made during
// the run).
func TestProfileUnderPgbench(t *testing.T) {
	out := os.Getenv("PGBASTION_PROFILE")
	if out == "" {
		t.Skip("set PGBASTION_PROFILE=cpu.out to profile the proxy under pgbench")
	}
	mode := pool.ModeTransaction
	if os.Getenv("PGBASTION_PROFILE_MODE") == "session" {
		mode = pool.ModeSession
	}
	primary := pgtest.Start(t, &pgtest.Options{Settings: map[string]string{"max_connections": "200"}})
	pgbench := pgtest.Program(t, "pgbench")
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = mode
		c.Pool.DefaultPoolSize = 20
		if n, err := strconv.Atoi(os.Getenv("PGBASTION_PROFILE_LOOPS")); err == nil {
			c.EventLoops = n
		}
		if mode == pool.ModeSession {
			c.Pool.DefaultPoolSize = 50
		}
	}, primary)
	host, port, _ := net.SplitHostPort(p.rw)
	env := append(os.Environ(), "PGPASSWORD="+primary.Password())
	init := exec.Command(pgbench, "-i", "-s", "10", "-h", primary.Host(), "-p", itoa(primary.Port()), "-U", "postgres", "postgres")
	init.Env = env
	if b, err := init.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	run := exec.Command(pgbench, "-S", "-c", "50", "-j", "2", "-T", "15", "-h", host, "-p", port, "-U", "postgres", "postgres")
	run.Env = env
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	allocs := os.Getenv("PGBASTION_ALLOC_PROFILE")
	if allocs != "" {
		// Record every allocation during the run (heap profiles sample by default).
		runtime.MemProfileRate = 1
	}
	b, err := run.CombinedOutput()
	pprof.StopCPUProfile()
	if allocs != "" {
		af, aerr := os.Create(allocs)
		if aerr != nil {
			t.Fatal(aerr)
		}
		defer af.Close()
		if aerr := pprof.Lookup("allocs").WriteTo(af, 0); aerr != nil {
			t.Fatal(aerr)
		}
	}
	if err != nil {
		t.Fatalf("%v %s", err, b)
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	t.Logf("%s\nprocess CPU since start: user %v sys %v", b, time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()))
}

func itoa(n int) string { return strconv.Itoa(n) }
