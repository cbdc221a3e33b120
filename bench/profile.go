package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Profile is what `perf` saw of one proxy during one extra pgbench run.
type Profile struct {
	Scenario, Target string
	TPS              float64
	Txns             int64
	// SyscallsPerTx and SwitchesPerTx come from perf stat (raw_syscalls:sys_enter and
	// context-switches of the proxy process).
	SyscallsPerTx, SwitchesPerTx float64
	// BySymbol and ByDSO are the top lines of perf report (self time).
	BySymbol, ByDSO []string
	// ReportPath is the full report; DataPath the perf.data file for further digging.
	ReportPath, DataPath string
}

// Markdown renders the profile as a collapsed block.
func (p *Profile) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "<details><summary>perf profile of %s (%.0f TPS while profiled; %.1f syscalls and %.2f context switches per transaction)</summary>\n\n",
		label(p.Target), p.TPS, p.SyscallsPerTx, p.SwitchesPerTx)
	b.WriteString("```\n")
	for _, l := range p.ByDSO {
		b.WriteString(l + "\n")
	}
	b.WriteString("\n")
	for _, l := range p.BySymbol {
		b.WriteString(l + "\n")
	}
	b.WriteString("```\n\n</details>\n")
	return b.String()
}

// profileRun runs the scenario's workload once more against t with perf record and perf stat
// attached to the proxy process. The run's figures are not used in the tables: perf costs CPU
// on a machine where every core is already busy.
func profileRun(ctx context.Context, h *harness, sc Scenario, t *target) (*Profile, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, fmt.Errorf("perf not found (Debian: apt-get install linux-perf): %w", err)
	}
	if err := os.MkdirAll(h.cfg.ProfileDir, 0o755); err != nil {
		return nil, err
	}
	base := filepath.Join(h.cfg.ProfileDir, sc.Name+"-"+t.name)
	p := &Profile{Scenario: sc.Name, Target: t.name, DataPath: base + ".perf.data", ReportPath: base + ".txt"}
	pid := strconv.Itoa(t.pid())
	// Two runs: perf stat's syscall tracepoint slows every system call down, so it must not
	// be in the run that perf record samples.
	r, err := underPerf(ctx, h, sc, t, 10*time.Second, perf, "stat", "-x", ",", "-e",
		"task-clock,context-switches,raw_syscalls:sys_enter", "-p", pid, "-o", base+".stat")
	if err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(base + ".stat"); err == nil && r.Txns > 0 {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Split(line, ",")
			if len(f) < 3 {
				continue
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				continue
			}
			switch {
			case strings.HasPrefix(f[2], "raw_syscalls:sys_enter"):
				p.SyscallsPerTx = v / float64(r.Txns)
			case strings.HasPrefix(f[2], "context-switches"):
				p.SwitchesPerTx = v / float64(r.Txns)
			}
		}
	}
	r, err = underPerf(ctx, h, sc, t, 15*time.Second, perf, "record", "-F", "999", "-g", "-p", pid, "-o", p.DataPath)
	if err != nil {
		return nil, err
	}
	p.TPS, p.Txns = r.TPS, r.Txns
	report := func(sortKey string, limit string) ([]string, string, error) {
		out, err := exec.Command(perf, "report", "-i", p.DataPath, "--stdio", "--no-children", "-g", "none",
			"--sort", sortKey, "--percent-limit", limit).Output()
		if err != nil {
			return nil, "", fmt.Errorf("perf report --sort %s: %w", sortKey, err)
		}
		var top []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
				continue
			}
			top = append(top, strings.TrimRight(l, " "))
		}
		return top, string(out), nil
	}
	var full strings.Builder
	dso, text, err := report("dso", "1")
	if err != nil {
		return nil, err
	}
	full.WriteString(text)
	sym, text, err := report("dso,sym", "0.3")
	if err != nil {
		return nil, err
	}
	full.WriteString(text)
	// The caller graph of the hottest symbols, for reading where the time comes from.
	if out, err := exec.Command(perf, "report", "-i", p.DataPath, "--stdio", "--no-children", "-G",
		"--percent-limit", "2").Output(); err == nil {
		full.Write(out)
	}
	if err := os.WriteFile(p.ReportPath, []byte(full.String()), 0o644); err != nil {
		return nil, err
	}
	p.ByDSO = dso
	if len(sym) > 30 {
		sym = sym[:30]
	}
	p.BySymbol = sym
	return p, nil
}

// underPerf runs the scenario's workload (at most limit long) against t while a perf command
// watches the proxy; perf is stopped with SIGINT, as on the terminal.
func underPerf(ctx context.Context, h *harness, sc Scenario, t *target, limit time.Duration, perf string, args ...string) (*Measurement, error) {
	pc := exec.Command(perf, args...)
	if err := pc.Start(); err != nil {
		return nil, err
	}
	// perf attaches asynchronously; give it a moment so the run is covered from its start.
	time.Sleep(500 * time.Millisecond)
	w := sc.Workload
	w.Duration = min(w.Duration, limit)
	w.LogSampling = 0
	r, err := runPgbench(ctx, h.pgbin, h.dir, t, w, 0)
	_ = pc.Process.Signal(syscall.SIGINT)
	_ = pc.Wait()
	if err != nil {
		return nil, err
	}
	if r.Txns == 0 {
		return nil, fmt.Errorf("no transactions in the profiled run: %s", r.ExitErr)
	}
	return r, nil
}
