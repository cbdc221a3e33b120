package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/engine"
)

// Config selects what the harness runs and how long.
type Config struct {
	// Rounds is how many times each scenario runs every target, interleaved (target order
	// rotates each round).
	Rounds int
	// Duration is the length of one measured pgbench run; Warmup of the unmeasured run each
	// target gets before a scenario's first round.
	Duration time.Duration
	Warmup   time.Duration
	// Scale is pgbench -i -s.
	Scale int
	// Threads is pgbench -j.
	Threads int
	// PoolSize is default_pool_size in transaction mode (PGBastion and PgBouncer alike).
	PoolSize int
	// SessionPoolSize is default_pool_size in session mode; 0 means the session scenario's
	// client count (a session pool smaller than the client count leaves clients waiting for
	// the whole run).
	SessionPoolSize int
	// EventLoops is PGBastion's proxy.event_loops (default 0: the product's automatic choice).
	EventLoops int
	// Backend is how the proxies reach PostgreSQL: BackendUnix (its Unix socket, as on a
	// database host; the default) or BackendTCP (127.0.0.1). pgbench reaches every target,
	// direct PostgreSQL included, over TCP.
	Backend string
	// IdleClients is the number of idle client connections of the idle scenario.
	IdleClients int
	// ManyClients is the client count of the many-clients scenario.
	ManyClients int
	// LogSampling is pgbench's --sampling-rate for the latency percentiles.
	LogSampling float64
	// Scenarios to run (names from Scenarios()); empty means all.
	Scenarios []string
	// PGBastionBin is the daemon to measure; empty builds ./cmd/pgbastion into the work
	// directory from ModuleDir.
	PGBastionBin string
	// PGBastionEnv is added to the environment of the PGBastion processes ("GOMAXPROCS=1"),
	// for experiments with the Go runtime's settings.
	PGBastionEnv []string
	// ModuleDir is the repository root (for building PGBastion and recording the commit).
	ModuleDir string
	// PGBinDir holds postgres, initdb and pgbench; empty finds the newest installed.
	PGBinDir string
	// WorkDir is where PostgreSQL, configs and logs go; empty makes a temporary directory,
	// removed at the end unless Keep.
	WorkDir string
	Keep    bool
	// Markdown, when set, is the file the results are written to as markdown.
	Markdown string
	// ProfileDir, when set, makes the harness run one extra pgbench run per proxy and scenario
	// under `perf record -g` and `perf stat` and write the reports there.
	ProfileDir string
	// Quick shortens everything for a smoke test.
	Quick bool

	Log *slog.Logger
	// Out receives progress lines and the result tables.
	Out io.Writer
}

// DefaultConfig returns the full benchmark's settings.
func DefaultConfig() Config {
	return Config{
		Rounds: 5, Duration: 20 * time.Second, Warmup: 5 * time.Second, Scale: 10, Threads: 2,
		PoolSize: 20, EventLoops: engine.DefaultConfig().EventLoops, Backend: BackendUnix, IdleClients: 10000, ManyClients: 1000, LogSampling: 0.1,
	}
}

// ApplyQuick shortens the settings for a smoke test.
func (c *Config) ApplyQuick() {
	c.Quick = true
	c.Rounds = 1
	c.Duration = 3 * time.Second
	c.Warmup = time.Second
	c.Scale = 1
	if c.IdleClients > 1000 {
		c.IdleClients = 1000
	}
	if c.ManyClients > 200 {
		c.ManyClients = 200
	}
	c.LogSampling = 1
}

// Scenario is a pgbench workload run against a set of targets.
type Scenario struct {
	Name  string
	Title string
	// Issue names the goal it measures.
	Issue    string
	Workload Workload
	Targets  []string
	// Idle marks the idle-clients scenario, which runs no pgbench.
	Idle bool
}

// Scenario names.
const (
	ScenarioSession   = "session"
	ScenarioTxn       = "txn"
	ScenarioPrepared  = "prepared"
	ScenarioMany      = "many"
	ScenarioIdle      = "idle"
	ScenarioTLS       = "tls"
	ScenarioIdleTLS   = "idle-tls"
	ScenarioServerTLS = "server-tls"
)

func tlsWorkload(w Workload) Workload {
	w.TLS = true
	return w
}

// Scenarios returns the scenarios for c, in the order they run.
func Scenarios(c Config) []Scenario {
	w := func(clients int, protocol string) Workload {
		return Workload{Clients: clients, Threads: c.Threads, Protocol: protocol, Duration: c.Duration, LogSampling: c.LogSampling}
	}
	return []Scenario{
		{Name: ScenarioSession, Title: "Session mode, simple protocol", Issue: "issue 2 item 6",
			Workload: w(50, "simple"), Targets: []string{Direct, HAProxy, PgBouncerSession, PGBastionSession}},
		{Name: ScenarioTxn, Title: "Transaction mode, simple protocol", Issue: "issue 3 item 3",
			Workload: w(50, "simple"), Targets: []string{Direct, PgBouncerTxn, PGBastionTxn}},
		{Name: ScenarioPrepared, Title: "Transaction mode, prepared statements", Issue: "issue 3 item 3",
			// HAProxy relays bytes and does no protocol work: what it reaches is about the most any
			// proxy that adds two loopback TCP hops can reach on the same machine.
			Workload: w(50, "prepared"), Targets: []string{Direct, HAProxy, PgBouncerTxn, PGBastionTxn}},
		{Name: ScenarioMany, Title: fmt.Sprintf("Transaction mode, %d clients", c.ManyClients), Issue: "issue 3 item 3",
			Workload: w(c.ManyClients, "simple"), Targets: []string{Direct, PgBouncerTxn, PGBastionTxn}},
		{Name: ScenarioTLS, Title: "Transaction mode, clients over TLS", Issue: "no goal in the issues; TLS is issue 2's",
			// sslmode=require on every client; the proxies reach PostgreSQL as in the other
			// scenarios, without TLS.
			Workload: tlsWorkload(w(50, "simple")), Targets: []string{PgBouncerTxn, PGBastionTxn}},
		{Name: ScenarioServerTLS, Title: "Transaction mode, TLS to PostgreSQL", Issue: "no goal in the issues",
			// Plain clients; the proxies reach PostgreSQL over TCP on 127.0.0.1 with TLS
			// required (whatever -backend says).
			Workload: w(50, "simple"), Targets: []string{PgBouncerServerTLS, PGBastionServerTLS}},
		{Name: ScenarioIdle, Title: fmt.Sprintf("%d idle clients, transaction mode", c.IdleClients), Issue: "issue 3 item 3",
			Idle: true, Targets: []string{PgBouncerTxn, PGBastionTxn}},
		{Name: ScenarioIdleTLS, Title: fmt.Sprintf("%d idle clients over TLS, transaction mode", c.IdleClients), Issue: "no goal in the issues",
			Idle: true, Workload: Workload{TLS: true}, Targets: []string{PgBouncerTxn, PGBastionTxn}},
	}
}

// ScenarioResult holds every run of one scenario.
type ScenarioResult struct {
	Scenario Scenario
	Runs     []*Measurement
	// Profiles are the perf summaries of the proxies, when profiling was asked for.
	Profiles []*Profile
}

// Results is everything one harness run measured.
type Results struct {
	Config Config
	Env    []string
	Notes  []string
	// Goals compares the figures with the goals of issues 2 and 3.
	Goals     []string
	Scenarios []*ScenarioResult
	Idle      []*IdleResult
	Started   time.Time
	Finished  time.Time
}

// harness holds the running processes.
type harness struct {
	cfg     Config
	log     *slog.Logger
	out     io.Writer
	dir     string
	pgbin   string
	pg      *postgresServer
	bin     string // the PGBastion binary
	targets map[string]*target
	cleanup []func()
	// tlsCert and tlsKey are the proxies' certificate for clients that ask for TLS.
	tlsCert, tlsKey string
}

// Run sets up PostgreSQL and the proxies, runs the selected scenarios and reports.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if cfg.Rounds < 1 || cfg.Duration < time.Second || cfg.Threads < 1 || cfg.PoolSize < 1 {
		return nil, errors.New("bench: rounds, threads and pool size must be at least 1 and duration at least 1s")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	for _, s := range cfg.Scenarios {
		if !slices.ContainsFunc(Scenarios(cfg), func(sc Scenario) bool { return sc.Name == s }) {
			return nil, fmt.Errorf("bench: unknown scenario %q", s)
		}
	}
	h := &harness{cfg: cfg, log: cfg.Log, out: cfg.Out, targets: map[string]*target{}}
	defer h.close()
	res := &Results{Config: cfg, Started: time.Now()}
	if err := h.setup(ctx, res); err != nil {
		return res, err
	}
	for _, sc := range Scenarios(cfg) {
		if len(cfg.Scenarios) > 0 && !slices.Contains(cfg.Scenarios, sc.Name) {
			continue
		}
		if sc.Idle {
			idle, err := h.runIdle(ctx, sc)
			res.Idle = append(res.Idle, idle...)
			if err != nil {
				return res, err
			}
			fmt.Fprintln(h.out, idleTable(res))
			continue
		}
		sr, err := h.runScenario(ctx, sc)
		if sr != nil {
			res.Scenarios = append(res.Scenarios, sr)
			fmt.Fprintln(h.out, scenarioTable(res, sr))
		}
		if err != nil {
			return res, err
		}
	}
	res.Finished = time.Now()
	res.Goals = goals(res)
	if cfg.Markdown != "" {
		if err := os.WriteFile(cfg.Markdown, []byte(Markdown(res)), 0o644); err != nil {
			return res, err
		}
		fmt.Fprintf(h.out, "results written to %s\n", cfg.Markdown)
	}
	return res, nil
}

func (h *harness) printf(format string, args ...any) {
	fmt.Fprintf(h.out, format, args...)
}

func (h *harness) close() {
	for i := len(h.cleanup) - 1; i >= 0; i-- {
		h.cleanup[i]()
	}
}

// needs reports whether a selected scenario uses target name.
func (h *harness) needs(name string, pgbenchOnly bool) bool {
	for _, sc := range Scenarios(h.cfg) {
		if len(h.cfg.Scenarios) > 0 && !slices.Contains(h.cfg.Scenarios, sc.Name) {
			continue
		}
		if pgbenchOnly && sc.Idle {
			continue
		}
		if slices.Contains(sc.Targets, name) {
			return true
		}
	}
	return false
}

func (h *harness) setup(ctx context.Context, res *Results) error {
	cfg := h.cfg
	if lim, err := raiseFileLimit(200000); err != nil || lim < uint64(cfg.IdleClients)+2000 {
		res.Notes = append(res.Notes, fmt.Sprintf("open-file limit is %d (%v): the idle and many-clients scenarios may fail", lim, err))
	}
	dir := cfg.WorkDir
	if dir == "" {
		d, err := os.MkdirTemp("", "pgbastion-bench-")
		if err != nil {
			return err
		}
		dir = d
		if !cfg.Keep {
			h.cleanup = append(h.cleanup, func() { os.RemoveAll(d) })
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	h.dir = dir
	h.printf("work directory %s\n", dir)

	bin := cfg.PGBastionBin
	if bin == "" {
		bin = filepath.Join(dir, "pgbastion")
		h.printf("building PGBastion into %s\n", bin)
		cmd := exec.CommandContext(ctx, "go", "build", "-tags", "hashicorpmetrics", "-o", bin, "./cmd/pgbastion")
		cmd.Dir = cfg.ModuleDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building PGBastion: %w\n%s", err, out)
		}
	}
	res.Env = environment(cfg, bin)
	if len(cfg.PGBastionEnv) > 0 {
		res.Env = append(res.Env, "PGBastion process environment: "+strings.Join(cfg.PGBastionEnv, " "))
	}

	_, uid, gid, err := osCredential(Superuser)
	if err != nil {
		return err
	}
	if h.tlsCert, h.tlsKey, err = makeServerCert(dir, uid, gid); err != nil {
		return fmt.Errorf("making the proxies' TLS certificate: %w", err)
	}

	h.printf("starting PostgreSQL and loading pgbench scale %d\n", cfg.Scale)
	pg, err := startPostgres(ctx, dir, cfg.PGBinDir, "bench-secret", h.tlsCert, h.tlsKey, h.log)
	if err != nil {
		return fmt.Errorf("starting PostgreSQL: %w", err)
	}
	h.pg = pg
	h.pgbin = pg.binDir
	h.cleanup = append(h.cleanup, pg.stop)
	if err := pg.pgbenchInit(ctx, cfg.Scale, io.Discard); err != nil {
		return err
	}
	h.targets[Direct] = &target{name: Direct, addr: fmt.Sprintf("127.0.0.1:%d", pg.port), pg: pg}

	sessionPool := cfg.SessionPoolSize
	if sessionPool == 0 {
		sessionPool = 50
	}
	params := func(pool int) proxyParams {
		return proxyParams{dir: dir, pg: pg, poolSize: pool, eventLoops: cfg.EventLoops, env: cfg.PGBastionEnv, overSocket: cfg.Backend == BackendUnix,
			tlsCert: h.tlsCert, tlsKey: h.tlsKey}
	}
	start := func(name string, f func() (*target, error)) error {
		if !h.needs(name, true) {
			return nil
		}
		t, err := f()
		if err != nil {
			return err
		}
		h.targets[name] = t
		h.cleanup = append(h.cleanup, func() { t.proc.stop(10 * time.Second) })
		h.printf("started %s on %s (pid %d)\n", name, t.addr, t.pid())
		return nil
	}
	steps := []struct {
		name string
		f    func() (*target, error)
	}{
		{HAProxy, func() (*target, error) {
			t, stopAPI, err := startHAProxy(ctx, params(0))
			if err == nil {
				h.cleanup = append(h.cleanup, stopAPI)
			}
			return t, err
		}},
		{PgBouncerSession, func() (*target, error) { return startPgBouncer(ctx, PgBouncerSession, "session", params(sessionPool)) }},
		{PgBouncerTxn, func() (*target, error) { return startPgBouncer(ctx, PgBouncerTxn, "transaction", params(cfg.PoolSize)) }},
		{PGBastionSession, func() (*target, error) {
			return startPGBastion(ctx, PGBastionSession, bin, "session", params(sessionPool))
		}},
		{PGBastionTxn, func() (*target, error) {
			return startPGBastion(ctx, PGBastionTxn, bin, "transaction", params(cfg.PoolSize))
		}},
		{PgBouncerServerTLS, func() (*target, error) {
			p := params(cfg.PoolSize)
			p.serverTLS = true
			return startPgBouncer(ctx, PgBouncerServerTLS, "transaction", p)
		}},
		{PGBastionServerTLS, func() (*target, error) {
			p := params(cfg.PoolSize)
			p.serverTLS = true
			return startPGBastion(ctx, PGBastionServerTLS, bin, "transaction", p)
		}},
	}
	for _, s := range steps {
		if err := start(s.name, s.f); err != nil {
			return err
		}
	}
	h.bin = bin
	res.Notes = append(res.Notes,
		fmt.Sprintf("Session-mode pools have default_pool_size %d (a session pool smaller than the 50 clients would leave clients waiting for the whole run); transaction-mode pools %d.", sessionPool, cfg.PoolSize),
		fmt.Sprintf("PostgreSQL has max_connections 1300, so direct PostgreSQL also takes the %d-client run (one backend process per client). pgbench's -T clock includes connecting, and forking that many backends can take most of a run on a busy machine (see the connect column of the raw figures); a direct run that connected too late to run a transaction counts as failed.", cfg.ManyClients),
		fmt.Sprintf("PostgreSQL, pgbench and the proxy share the same %d cores; every figure is relative to the others on this machine.", runtime.NumCPU()),
	)
	// One unmeasured run warms PostgreSQL's buffers.
	h.printf("warming up PostgreSQL\n")
	w := Workload{Clients: 10, Threads: cfg.Threads, Protocol: "simple", Duration: cfg.Warmup}
	if _, err := runPgbench(ctx, h.pgbin, dir, h.targets[Direct], w, 0); err != nil {
		return err
	}
	return nil
}

// runScenario warms every target once, then runs the rounds, rotating the target order.
func (h *harness) runScenario(ctx context.Context, sc Scenario) (*ScenarioResult, error) {
	sr := &ScenarioResult{Scenario: sc}
	h.printf("\n== %s (%s): %s\n", sc.Title, sc.Issue, sc.Workload)
	if h.cfg.Warmup > 0 {
		w := sc.Workload
		w.Duration, w.LogSampling = h.cfg.Warmup, 0
		for _, name := range sc.Targets {
			if _, err := runPgbench(ctx, h.pgbin, h.dir, h.targets[name], w, 0); err != nil {
				return sr, err
			}
		}
	}
	for round := 1; round <= h.cfg.Rounds; round++ {
		n := len(sc.Targets)
		for k := range n {
			name := sc.Targets[(k+round-1)%n]
			r, err := runPgbench(ctx, h.pgbin, h.dir, h.targets[name], sc.Workload, round)
			if r != nil {
				sr.Runs = append(sr.Runs, r)
				h.printf("  round %d %-18s %s\n", round, name, runLine(r))
			}
			if err != nil {
				return sr, err
			}
			if err := ctx.Err(); err != nil {
				return sr, err
			}
		}
	}
	if h.cfg.ProfileDir != "" {
		for _, name := range sc.Targets {
			if name == Direct {
				continue
			}
			p, err := profileRun(ctx, h, sc, h.targets[name])
			if err != nil {
				h.printf("  profiling %s: %v\n", name, err)
				continue
			}
			sr.Profiles = append(sr.Profiles, p)
			h.printf("  profile of %s: %s\n", name, p.ReportPath)
		}
	}
	return sr, nil
}

// runLine is the progress line of one run.
func runLine(r *Measurement) string {
	s := fmt.Sprintf("tps %9.0f  lat %6.3f ms  p99 %6.3f ms  proxy %5.1f µs/tx  pg %5.1f µs/tx  busy %3.0f%%  other %3.0f%%",
		r.TPS, r.LatAvg, r.P99, r.ProxyCPU, r.PGCPU, r.HostBusy*100, r.Foreign*100)
	if r.Failed > 0 || r.Aborted > 0 {
		s += fmt.Sprintf("  failed %d aborted %d", r.Failed, r.Aborted)
	}
	if r.ExitErr != "" {
		s += "  ERROR: " + r.ExitErr
	}
	return s
}

// runIdle starts fresh proxies (so earlier runs' heap does not absorb the growth) and measures
// the idle clients on each.
func (h *harness) runIdle(ctx context.Context, sc Scenario) ([]*IdleResult, error) {
	h.printf("\n== %s (%s)\n", sc.Title, sc.Issue)
	params := proxyParams{dir: h.dir, pg: h.pg, poolSize: h.cfg.PoolSize, eventLoops: h.cfg.EventLoops, env: h.cfg.PGBastionEnv, overSocket: h.cfg.Backend == BackendUnix,
		tlsCert: h.tlsCert, tlsKey: h.tlsKey}
	var out []*IdleResult
	for _, name := range sc.Targets {
		var (
			t   *target
			err error
		)
		switch name {
		case PgBouncerTxn:
			t, err = startPgBouncer(ctx, "pgbouncer-idle", "transaction", params)
		case PGBastionTxn:
			t, err = startPGBastion(ctx, "pgbastion-idle", h.bin, "transaction", params)
		default:
			continue
		}
		if err != nil {
			return out, err
		}
		t.name = name
		r, err := measureIdle(ctx, t, h.cfg.IdleClients, 2*time.Second, sc.Workload.TLS)
		t.proc.stop(10 * time.Second)
		if r != nil {
			out = append(out, r)
			h.printf("  %-18s %d clients%s: RSS %d → %d KiB, %.2f KiB per client, peak %d KiB, %d errors %s\n",
				name, r.Opened, tlsNote(r.TLS), r.BaseRSS, r.RSS, r.PerClientKiB(), r.HWM, r.Errors, r.FirstErr)
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// environment describes the machine and the programs measured.
func environment(cfg Config, bin string) []string {
	var env []string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				_, v, _ := strings.Cut(line, ":")
				env = append(env, fmt.Sprintf("CPU: %s, %d cores visible", strings.TrimSpace(v), runtime.NumCPU()))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		env = append(env, "Memory: "+strings.Join(strings.Fields(line)[1:], " "))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		env = append(env, "Load average at start (1, 5, 15 min): "+strings.Join(strings.Fields(string(b))[:3], ", "))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		env = append(env, "Kernel: "+strings.TrimSpace(string(b)))
	}
	version := func(label string, name string, args ...string) {
		p, err := findProgram(name)
		if err != nil {
			env = append(env, label+": not installed")
			return
		}
		out, _ := exec.Command(p, args...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		env = append(env, label+": "+line)
	}
	version("pgbench", "pgbench", "--version")
	version("PgBouncer", "pgbouncer", "--version")
	version("HAProxy", "haproxy", "-v")
	env = append(env, "Go: "+runtime.Version())
	if cfg.ModuleDir != "" {
		out, err := exec.Command("git", "-C", cfg.ModuleDir, "rev-parse", "--short", "HEAD").Output()
		if err == nil {
			commit := strings.TrimSpace(string(out))
			if st, _ := exec.Command("git", "-C", cfg.ModuleDir, "status", "--porcelain", "--untracked-files=no").Output(); len(st) > 0 {
				commit += " (with uncommitted changes)"
			}
			env = append(env, "PGBastion: commit "+commit+", binary "+bin)
		}
	}
	return env
}
