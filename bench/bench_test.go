package bench

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// pgbench 15's report of a run in which some clients were aborted.
const pgbenchOut = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: prepared
number of clients: 50
number of threads: 2
maximum number of tries: 1
duration: 20 s
number of transactions actually processed: 241234
number of failed transactions: 3 (0.001%)
latency average = 4.109 ms
initial connection time = 12.345 ms
tps = 12168.123456 (without initial connection time)
`

const pgbenchErr = `pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" already exists
pgbench: error: client 7 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" already exists
pgbench: error: Run was aborted; the above results are incomplete.
`

func TestParseOutput(t *testing.T) {
	var r Measurement
	parseOutput(&r, pgbenchOut, pgbenchErr, errors.New("exit status 2"))
	if r.TPS != 12168.123456 || r.Txns != 241234 || r.Failed != 3 || r.LatAvg != 4.109 || r.Aborted != 2 || r.ConnTime != 12.345 {
		t.Fatalf("parsed %+v", r)
	}
	if !strings.Contains(r.ExitErr, `prepared statement "P_0" already exists`) || r.OK() {
		t.Fatalf("error %q, OK %v", r.ExitErr, r.OK())
	}
	var clean Measurement
	parseOutput(&clean, pgbenchOut, "", nil)
	if clean.ExitErr != "" || clean.Aborted != 0 || !clean.OK() {
		t.Fatalf("clean run parsed as %+v", clean)
	}
}

func TestReadLatencies(t *testing.T) {
	dir := t.TempDir()
	// One file per pgbench thread; "failed" and "skipped" lines carry no latency.
	thread0 := "0 1 1000 0 1700000000 1\n0 2 2000 0 1700000000 2\n1 1 failed 0 1700000000 3\n"
	thread1 := "2 1 3000 0 1700000000 4\n2 2 skipped 0 1700000000 5\n3 1 100000 0 1700000000 6\n"
	if err := os.WriteFile(filepath.Join(dir, "tx.123"), []byte(thread0), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tx.123.1"), []byte(thread1), 0o644); err != nil {
		t.Fatal(err)
	}
	lat, err := readLatencies(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{1, 2, 3, 100}; !slices.Equal(lat, want) {
		t.Fatalf("latencies %v, want %v", lat, want)
	}
	if p := percentile(lat, 0.5); p != 2 {
		t.Errorf("p50 = %v, want 2", p)
	}
	if p := percentile(lat, 0.99); p != 100 {
		t.Errorf("p99 = %v, want 100", p)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestReadProcTimes(t *testing.T) {
	pt, ppid, err := readProcTimes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ppid != os.Getppid() || pt.self < 0 || pt.children < 0 {
		t.Fatalf("times %+v, ppid %d (want %d)", pt, ppid, os.Getppid())
	}
	if rss, hwm := memKiB(os.Getpid()); rss <= 0 || hwm < rss {
		t.Fatalf("rss %d, hwm %d", rss, hwm)
	}
}

func TestStartupMessage(t *testing.T) {
	b := startupMessage("user", "postgres")
	want := "\x00\x00\x00\x17\x00\x03\x00\x00user\x00postgres\x00\x00"
	if string(b) != want {
		t.Fatalf("startup message %q, want %q", b, want)
	}
}

// TestHarnessQuick runs the whole harness in quick mode: PostgreSQL, HAProxy, PgBouncer and
// PGBastion on this machine. Benchmarks are not pass/fail and take minutes, so it runs only
// when asked for; it fails when the harness cannot produce a figure for a target that should
// work.
func TestHarnessQuick(t *testing.T) {
	if os.Getenv("PGBASTION_BENCH") != "1" {
		t.Skip("set PGBASTION_BENCH=1 to smoke-test the benchmark harness (needs PostgreSQL, pgbench, PgBouncer, HAProxy)")
	}
	cfg := DefaultConfig()
	cfg.ApplyQuick()
	cfg.ModuleDir = ".."
	cfg.Markdown = filepath.Join(t.TempDir(), "RESULTS.md")
	cfg.Out = testWriter{t}
	res, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pgbenchScenarios, idleScenarios := 0, 0
	for _, sc := range Scenarios(cfg) {
		if sc.Idle {
			idleScenarios++
		} else {
			pgbenchScenarios++
		}
	}
	if len(res.Scenarios) != pgbenchScenarios || len(res.Idle) != 2*idleScenarios {
		t.Fatalf("%d scenarios and %d idle results, want %d and %d", len(res.Scenarios), len(res.Idle), pgbenchScenarios, 2*idleScenarios)
	}
	for _, sr := range res.Scenarios {
		for _, target := range sr.Scenario.Targets {
			s := Summarize(sr.Runs, target)
			// PgBouncer 1.18 cannot run -M prepared in transaction mode; that is a finding,
			// not a harness failure.
			if sr.Scenario.Name == ScenarioPrepared && target == PgBouncerTxn {
				continue
			}
			if s.OKRuns == 0 || s.TPS <= 0 {
				t.Errorf("%s/%s: no successful run: %v", sr.Scenario.Name, target, s.Errors)
			}
		}
	}
	for _, r := range res.Idle {
		if r.Opened != r.Clients || r.RSS <= 0 {
			t.Errorf("idle %s: %d of %d clients, RSS %d KiB: %s", r.Target, r.Opened, r.Clients, r.RSS, r.FirstErr)
		}
	}
	md, err := os.ReadFile(cfg.Markdown)
	if err != nil || !strings.Contains(string(md), "## Summary against the goals") {
		t.Fatalf("markdown report missing or incomplete (%v)", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Paired rounds: only rounds where both targets ran cleanly count, and each is judged alone.
func TestPairedRounds(t *testing.T) {
	sr := &ScenarioResult{Runs: []*Measurement{
		{Target: "a", Round: 1, TPS: 110, Txns: 1}, {Target: "b", Round: 1, TPS: 100, Txns: 1},
		{Target: "a", Round: 2, TPS: 90, Txns: 1}, {Target: "b", Round: 2, TPS: 100, Txns: 1},
		{Target: "a", Round: 3, TPS: 200, Txns: 1}, {Target: "b", Round: 3, TPS: 100, Txns: 1, Aborted: 2},
		{Target: "a", Round: 4, TPS: 120, Txns: 1},
	}}
	won, n := paired(sr, "a", "b", func(x, y *Measurement) bool { return x.TPS >= y.TPS })
	if won != 1 || n != 2 {
		t.Fatalf("paired = %d of %d, want 1 of 2", won, n)
	}
	if got := inRounds(won, n); got != "in 1 of 2 rounds" {
		t.Fatalf("inRounds = %q", got)
	}
	if won, n := paired(nil, "a", "b", nil); won != 0 || n != 0 {
		t.Fatalf("nil scenario: %d of %d", won, n)
	}
}
