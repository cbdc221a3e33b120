// Command pgbench-compare runs pgbench against direct PostgreSQL, PGBastion (session and
// transaction pooling), PgBouncer and HAProxy on this machine, interleaved over several rounds,
// and prints throughput, latency, CPU per transaction and memory per idle client with ratios.
// `make bench` runs it with the full settings; -quick is a smoke test.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pgbastion/pgbastion/bench"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	cfg := bench.DefaultConfig()
	fs := flag.NewFlagSet("pgbench-compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "interleaved rounds per scenario")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of one measured pgbench run")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "unmeasured run per target before a scenario (0: none)")
	fs.IntVar(&cfg.Scale, "scale", cfg.Scale, "pgbench -i scale")
	fs.IntVar(&cfg.Threads, "j", cfg.Threads, "pgbench threads (-j)")
	fs.IntVar(&cfg.PoolSize, "pool", cfg.PoolSize, "default_pool_size in transaction mode (PGBastion and PgBouncer)")
	fs.IntVar(&cfg.SessionPoolSize, "session-pool", cfg.SessionPoolSize, "default_pool_size in session mode (0: the 50 clients)")
	fs.IntVar(&cfg.EventLoops, "event-loops", cfg.EventLoops, "PGBastion proxy.event_loops (0: automatic by pooling mode)")
	fs.StringVar(&cfg.Backend, "backend", cfg.Backend, "how the proxies reach PostgreSQL: unix (its socket, as on a database host) or tcp (127.0.0.1)")
	fs.IntVar(&cfg.IdleClients, "idle-clients", cfg.IdleClients, "idle client connections in the idle scenario")
	fs.IntVar(&cfg.ManyClients, "many-clients", cfg.ManyClients, "pgbench clients in the many-clients scenario")
	fs.Float64Var(&cfg.LogSampling, "sampling", cfg.LogSampling, "share of transactions logged for latency percentiles (0: no percentiles)")
	scenarios := fs.String("scenarios", "", "comma-separated scenarios: session,txn,prepared,many,tls,server-tls,idle,idle-tls (default all)")
	fs.StringVar(&cfg.PGBastionBin, "pgbastion", "", "PGBastion binary to measure (default: build ./cmd/pgbastion)")
	fs.StringVar(&cfg.PGBinDir, "pg-bin", "", "PostgreSQL bin directory (default: newest /usr/lib/postgresql/*/bin)")
	fs.StringVar(&cfg.WorkDir, "workdir", "", "work directory (default: a temporary directory)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the temporary work directory")
	fs.StringVar(&cfg.Markdown, "out", "bench/RESULTS.md", "markdown file for the results (empty: none)")
	fs.StringVar(&cfg.ProfileDir, "profile", "", "directory for perf profiles of each proxy (empty: no profiling)")
	pgbastionEnv := fs.String("pgbastion-env", "", "space-separated KEY=VALUE settings added to PGBastion's environment (e.g. GOMAXPROCS=1)")
	quick := fs.Bool("quick", false, "smoke test: one short round of everything")
	verbose := fs.Bool("v", false, "log the harness's PostgreSQL control")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.Backend != bench.BackendUnix && cfg.Backend != bench.BackendTCP {
		fmt.Fprintf(stderr, "-backend %q: use unix or tcp\n", cfg.Backend)
		return 2
	}
	if *quick {
		cfg.ApplyQuick()
	}
	if *pgbastionEnv != "" {
		cfg.PGBastionEnv = strings.Fields(*pgbastionEnv)
	}
	if *scenarios != "" {
		cfg.Scenarios = strings.Split(*scenarios, ",")
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Out = stdout
	dir, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(stderr, "pgbench-compare:", err)
		return 1
	}
	cfg.ModuleDir = dir
	if cfg.Markdown != "" && !filepath.IsAbs(cfg.Markdown) {
		cfg.Markdown = filepath.Join(dir, cfg.Markdown)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := bench.Run(ctx, cfg); err != nil {
		fmt.Fprintln(stderr, "pgbench-compare:", err)
		return 1
	}
	return 0
}

// moduleRoot finds the directory holding go.mod, upwards from the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: run from the repository")
		}
		dir = parent
	}
}
