package bench

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
)

// backendSetting describes how the proxies reached PostgreSQL.
func backendSetting(b string) string {
	if b == BackendUnix {
		return "pgbench reaches every target over TCP on 127.0.0.1; the proxies reach PostgreSQL through its Unix socket, as on a database host (`-backend unix`)"
	}
	return "pgbench and the proxies reach PostgreSQL over TCP on 127.0.0.1 (`-backend tcp`)"
}

// loopsSetting describes PGBastion's proxy.event_loops as the benchmark ran it.
func loopsSetting(loops, cpus int) string {
	if loops > 0 {
		return fmt.Sprintf("`event_loops: %d`", loops)
	}
	return fmt.Sprintf("`event_loops` automatic (%d in session mode, %d in transaction mode on %d CPUs)",
		engine.AutoEventLoops(pool.ModeSession, cpus), engine.AutoEventLoops(pool.ModeTransaction, cpus), cpus)
}

// labels name the targets in tables.
var labels = map[string]string{
	Direct:             "direct PostgreSQL",
	HAProxy:            "HAProxy (TCP, Patroni-style)",
	PgBouncerSession:   "PgBouncer (session)",
	PgBouncerTxn:       "PgBouncer (transaction)",
	PGBastionSession:   "PGBastion (session)",
	PGBastionTxn:       "PGBastion (transaction)",
	PgBouncerServerTLS: "PgBouncer (transaction, TLS to PostgreSQL)",
	PGBastionServerTLS: "PGBastion (transaction, TLS to PostgreSQL)",
}

func label(name string) string {
	if l, ok := labels[name]; ok {
		return l
	}
	return name
}

// Summary is the median of one target's runs in a scenario.
type Summary struct {
	Target string
	Runs   int
	// OKRuns ran to the end without aborted clients; the medians are over them (over all runs
	// when none did).
	OKRuns           int
	TPS              float64
	TPSMin, TPSMax   float64
	LatAvg, P50, P99 float64
	Failed           int64
	Aborted          int
	ProxyCPU, PGCPU  float64
	ClientCPU, Busy  float64
	Foreign          float64
	ProxyRSS         int64
	Errors           []string
}

// Summarize computes target's summary over runs.
func Summarize(runs []*Measurement, target string) *Summary {
	s := &Summary{Target: target, TPSMin: math.Inf(1)}
	var all, ok []*Measurement
	for _, r := range runs {
		if r.Target != target {
			continue
		}
		all = append(all, r)
		if r.OK() {
			ok = append(ok, r)
		}
		s.Failed += r.Failed
		s.Aborted += r.Aborted
		if r.ExitErr != "" && !slices.Contains(s.Errors, r.ExitErr) {
			s.Errors = append(s.Errors, r.ExitErr)
		}
		s.ProxyRSS = max(s.ProxyRSS, r.ProxyRSS)
	}
	s.Runs, s.OKRuns = len(all), len(ok)
	use := ok
	if len(use) == 0 {
		use = all
	}
	if len(use) == 0 {
		s.TPSMin = 0
		return s
	}
	col := func(f func(*Measurement) float64) float64 {
		v := make([]float64, len(use))
		for i, r := range use {
			v[i] = f(r)
		}
		return median(v)
	}
	s.TPS = col(func(r *Measurement) float64 { return r.TPS })
	for _, r := range use {
		s.TPSMin = math.Min(s.TPSMin, r.TPS)
		s.TPSMax = math.Max(s.TPSMax, r.TPS)
	}
	s.LatAvg = col(func(r *Measurement) float64 { return r.LatAvg })
	s.P50 = col(func(r *Measurement) float64 { return r.P50 })
	s.P99 = col(func(r *Measurement) float64 { return r.P99 })
	s.ProxyCPU = col(func(r *Measurement) float64 { return r.ProxyCPU })
	s.PGCPU = col(func(r *Measurement) float64 { return r.PGCPU })
	s.ClientCPU = col(func(r *Measurement) float64 { return r.ClientCPU })
	s.Busy = col(func(r *Measurement) float64 { return r.HostBusy })
	s.Foreign = col(func(r *Measurement) float64 { return r.Foreign })
	return s
}

// reference returns the scenario's target of the given kind (direct, PgBouncer, HAProxy).
func reference(sc Scenario, kind string) string {
	for _, t := range sc.Targets {
		if strings.HasPrefix(t, kind) {
			return t
		}
	}
	return ""
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func fnum(v float64, prec int) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// scenarioTable renders one scenario's medians as a markdown table.
func scenarioTable(res *Results, sr *ScenarioResult) string {
	var b strings.Builder
	sc := sr.Scenario
	fmt.Fprintf(&b, "### %s — `%s` (%s)\n\n", sc.Title, sc.Workload, sc.Issue)
	fmt.Fprintf(&b, "Medians over %d interleaved rounds.\n\n", res.Config.Rounds)
	refs := []struct{ kind, head string }{{Direct, "× direct"}, {"pgbouncer", "× PgBouncer"}, {HAProxy, "× HAProxy"}}
	b.WriteString("| target | TPS | TPS min–max |")
	var used []string
	for _, r := range refs {
		if t := reference(sc, r.kind); t != "" {
			b.WriteString(" " + r.head + " |")
			used = append(used, t)
		}
	}
	b.WriteString(" lat avg ms | p50 ms | p99 ms | failed / aborted | proxy CPU µs/tx | PG CPU µs/tx | pgbench CPU µs/tx | host busy | other load | proxy RSS MiB | runs ok |\n")
	b.WriteString("|---|---:|---:|")
	for range used {
		b.WriteString("---:|")
	}
	b.WriteString("---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	sums := map[string]*Summary{}
	for _, t := range sc.Targets {
		sums[t] = Summarize(sr.Runs, t)
	}
	for _, t := range sc.Targets {
		s := sums[t]
		fmt.Fprintf(&b, "| %s | %.0f | %.0f–%.0f |", label(t), s.TPS, s.TPSMin, s.TPSMax)
		for _, u := range used {
			fmt.Fprintf(&b, " %s |", ratio(s.TPS, sums[u].TPS))
		}
		rss := "–"
		if s.ProxyRSS > 0 {
			rss = fmt.Sprintf("%.1f", float64(s.ProxyRSS)/1024)
		}
		fmt.Fprintf(&b, " %s | %s | %s | %d / %d | %s | %s | %s | %.0f%% | %.0f%% | %s | %d/%d |\n",
			fnum(s.LatAvg, 3), fnum(s.P50, 3), fnum(s.P99, 3), s.Failed, s.Aborted,
			fnum(s.ProxyCPU, 1), fnum(s.PGCPU, 1), fnum(s.ClientCPU, 1), s.Busy*100, s.Foreign*100, rss, s.OKRuns, s.Runs)
	}
	for _, t := range sc.Targets {
		for _, e := range sums[t].Errors {
			fmt.Fprintf(&b, "\n%s: `%s`\n", label(t), e)
		}
		if s := sums[t]; s.Runs > 0 && s.OKRuns == 0 {
			fmt.Fprintf(&b, "\n%s: no run completed without errors, so its row is the median of failed runs (the clients that survived, over a shortened run); its ratios and CPU figures do not compare with the others.\n", label(t))
		}
	}
	for _, p := range sr.Profiles {
		b.WriteString("\n" + p.Markdown())
	}
	return b.String()
}

// idleTable renders the idle-clients results.
func idleTable(res *Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %d idle client connections (issue 3 item 3; over TLS: no goal)\n\n", res.Config.IdleClients)
	b.WriteString("Each client logs in (trust; over TLS it first negotiates TLS as sslmode=require does) and then sends nothing. Baseline: a freshly started proxy with one client logged in (over TLS for the TLS rows).\n\n")
	b.WriteString("| target | clients idle | errors | RSS baseline KiB | RSS with clients KiB | KiB per client | peak RSS KiB | proxy CPU to log them in | time |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range res.Idle {
		fmt.Fprintf(&b, "| %s%s | %d | %d | %d | %d | %.2f | %d | %.0f ms | %s |\n", label(r.Target), tlsNote(r.TLS), r.Opened, r.Errors,
			r.BaseRSS, r.RSS, r.PerClientKiB(), r.HWM, r.CPUms, r.Elapsed.Round(time.Millisecond))
	}
	for _, r := range res.Idle {
		if r.FirstErr != "" {
			fmt.Fprintf(&b, "\n%s%s: `%s`\n", label(r.Target), tlsNote(r.TLS), r.FirstErr)
		}
	}
	return b.String()
}

func (res *Results) scenario(name string) *ScenarioResult {
	for _, sr := range res.Scenarios {
		if sr.Scenario.Name == name {
			return sr
		}
	}
	return nil
}

// paired counts the rounds in which targets a and b both ran without errors (n) and a's run
// beat b's by better (won). Rounds are interleaved, so on a host whose speed drifts from
// minute to minute "ahead in 4 of 5 rounds" says more than the ratio of two medians.
func paired(sr *ScenarioResult, a, b string, better func(x, y *Measurement) bool) (won, n int) {
	if sr == nil {
		return 0, 0
	}
	byRound := func(t string) map[int]*Measurement {
		m := map[int]*Measurement{}
		for _, r := range sr.Runs {
			if r.Target == t && r.OK() {
				m[r.Round] = r
			}
		}
		return m
	}
	ra, rb := byRound(a), byRound(b)
	for round, x := range ra {
		if y, ok := rb[round]; ok {
			n++
			if better(x, y) {
				won++
			}
		}
	}
	return won, n
}

// inRounds renders paired's count.
func inRounds(won, n int) string {
	if n == 0 {
		return "no paired rounds"
	}
	return fmt.Sprintf("in %d of %d rounds", won, n)
}

// goals compares the results with the goals of issues 2 and 3.
func goals(res *Results) []string {
	var out []string
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	sum := func(scen, target string) *Summary {
		sr := res.scenario(scen)
		if sr == nil || !slices.Contains(sr.Scenario.Targets, target) {
			return nil
		}
		return Summarize(sr.Runs, target)
	}
	if b, h := sum(ScenarioSession, PGBastionSession), sum(ScenarioSession, HAProxy); b != nil && h != nil {
		sr := res.scenario(ScenarioSession)
		tw, tn := paired(sr, PGBastionSession, HAProxy, func(x, y *Measurement) bool { return x.TPS >= y.TPS })
		cw, cn := paired(sr, PGBastionSession, HAProxy, func(x, y *Measurement) bool { return x.ProxyCPU > 0 && x.ProxyCPU <= y.ProxyCPU })
		out = append(out, fmt.Sprintf("Issue 2 item 6, session mode: PGBastion throughput %.0f vs HAProxy %.0f (%s; goal ≥ 1.00×): %s (at least HAProxy's %s). CPU %.1f vs %.1f µs/tx (goal ≤ HAProxy's): %s (at most HAProxy's %s).",
			b.TPS, h.TPS, ratio(b.TPS, h.TPS), verdict(b.TPS >= h.TPS && b.OKRuns > 0), inRounds(tw, tn),
			b.ProxyCPU, h.ProxyCPU, verdict(b.ProxyCPU <= h.ProxyCPU && b.ProxyCPU > 0), inRounds(cw, cn)))
	}
	if b, p := sum(ScenarioTxn, PGBastionTxn), sum(ScenarioTxn, PgBouncerTxn); b != nil && p != nil {
		sr := res.scenario(ScenarioTxn)
		tw, tn := paired(sr, PGBastionTxn, PgBouncerTxn, func(x, y *Measurement) bool { return x.TPS >= 1.1*y.TPS })
		cw, cn := paired(sr, PGBastionTxn, PgBouncerTxn, func(x, y *Measurement) bool { return x.ProxyCPU > 0 && x.ProxyCPU <= y.ProxyCPU })
		out = append(out, fmt.Sprintf("Issue 3, `-c 50` transaction mode: PGBastion %.0f vs PgBouncer %.0f TPS (%s; goal ≥ 1.10×): %s (≥ 1.10× %s). CPU %.1f vs %.1f µs/tx (goal ≤ PgBouncer's): %s (at most PgBouncer's %s).",
			b.TPS, p.TPS, ratio(b.TPS, p.TPS), verdict(b.TPS >= 1.1*p.TPS && b.OKRuns > 0), inRounds(tw, tn),
			b.ProxyCPU, p.ProxyCPU, verdict(b.ProxyCPU <= p.ProxyCPU && b.ProxyCPU > 0), inRounds(cw, cn)))
	}
	if b, d := sum(ScenarioPrepared, PGBastionTxn), sum(ScenarioPrepared, Direct); b != nil && d != nil {
		w, n := paired(res.scenario(ScenarioPrepared), PGBastionTxn, Direct, func(x, y *Measurement) bool { return x.TPS >= 0.85*y.TPS })
		line := fmt.Sprintf("Issue 3, `-M prepared` transaction mode: PGBastion %.0f TPS with %d failed / %d aborted, %s of direct (goal: works at ≥ 0.85×): %s (≥ 0.85× %s).",
			b.TPS, b.Failed, b.Aborted, ratio(b.TPS, d.TPS), verdict(b.OKRuns == b.Runs && b.Failed == 0 && b.TPS >= 0.85*d.TPS), inRounds(w, n))
		if p := sum(ScenarioPrepared, PgBouncerTxn); p != nil {
			if p.OKRuns < p.Runs || p.Failed > 0 {
				line += fmt.Sprintf(" PgBouncer fails here: %d of %d runs had errors (%d aborted clients).", p.Runs-p.OKRuns, p.Runs, p.Aborted)
			} else {
				line += fmt.Sprintf(" PgBouncer ran without errors at %.0f TPS.", p.TPS)
			}
		}
		if h := sum(ScenarioPrepared, HAProxy); h != nil && h.OKRuns > 0 {
			line += fmt.Sprintf(" A plain TCP relay (HAProxy, which parses nothing) reaches %s of direct on these cores, and PGBastion %s of HAProxy",
				ratio(h.TPS, d.TPS), ratio(b.TPS, h.TPS))
			if h.TPS < 0.85*d.TPS && b.TPS < 0.85*d.TPS {
				line += ": two more loopback TCP hops per query cost more CPU than the goal leaves room for"
			}
			line += "."
		}
		out = append(out, line)
	}
	if b, p := sum(ScenarioMany, PGBastionTxn), sum(ScenarioMany, PgBouncerTxn); b != nil && p != nil {
		w, n := paired(res.scenario(ScenarioMany), PGBastionTxn, PgBouncerTxn, func(x, y *Measurement) bool { return x.P99 > 0 && x.P99 <= y.P99 })
		line := fmt.Sprintf("Issue 3, `-c %d` transaction mode: PGBastion %d failed / %d aborted (goal 0): %s; p99 %.3f ms vs PgBouncer %.3f ms (goal ≤): %s (at most PgBouncer's %s).",
			res.Config.ManyClients, b.Failed, b.Aborted, verdict(b.Failed == 0 && b.Aborted == 0 && b.OKRuns > 0), b.P99, p.P99, verdict(b.P99 > 0 && b.P99 <= p.P99), inRounds(w, n))
		if own := sum(ScenarioTxn, PGBastionTxn); own != nil {
			line += fmt.Sprintf(" Throughput %.0f vs its own `-c 50` %.0f (%s; goal ≥ 0.90×): %s.", b.TPS, own.TPS, ratio(b.TPS, own.TPS), verdict(b.TPS >= 0.9*own.TPS))
			// The same ratio for the others shows how much of the drop is the machine's: pgbench
			// itself spends more CPU per transaction on 1,000 connections, on the same cores.
			var ctx []string
			for _, t := range []string{Direct, PgBouncerTxn} {
				if m, c := sum(ScenarioMany, t), sum(ScenarioTxn, t); m != nil && c != nil {
					ctx = append(ctx, fmt.Sprintf("%s %s", label(t), ratio(m.TPS, c.TPS)))
				}
			}
			if len(ctx) > 0 {
				line += " Same ratio for " + strings.Join(ctx, ", ") + "."
			}
		}
		out = append(out, line)
	}
	if b, p := sum(ScenarioTLS, PGBastionTxn), sum(ScenarioTLS, PgBouncerTxn); b != nil && p != nil {
		sr := res.scenario(ScenarioTLS)
		tw, tn := paired(sr, PGBastionTxn, PgBouncerTxn, func(x, y *Measurement) bool { return x.TPS >= y.TPS })
		out = append(out, fmt.Sprintf("Clients over TLS, transaction mode (no goal in the issues): PGBastion %.0f vs PgBouncer %.0f TPS (%s; at least PgBouncer's %s), CPU %.1f vs %.1f µs/tx.",
			b.TPS, p.TPS, ratio(b.TPS, p.TPS), inRounds(tw, tn), b.ProxyCPU, p.ProxyCPU))
	}
	if b, p := sum(ScenarioServerTLS, PGBastionServerTLS), sum(ScenarioServerTLS, PgBouncerServerTLS); b != nil && p != nil {
		sr := res.scenario(ScenarioServerTLS)
		tw, tn := paired(sr, PGBastionServerTLS, PgBouncerServerTLS, func(x, y *Measurement) bool { return x.TPS >= y.TPS })
		out = append(out, fmt.Sprintf("TLS to PostgreSQL, transaction mode (no goal in the issues): PGBastion %.0f vs PgBouncer %.0f TPS (%s; at least PgBouncer's %s), CPU %.1f vs %.1f µs/tx.",
			b.TPS, p.TPS, ratio(b.TPS, p.TPS), inRounds(tw, tn), b.ProxyCPU, p.ProxyCPU))
	}
	var tlsIdle [2]*IdleResult // PGBastion, PgBouncer
	for _, r := range res.Idle {
		switch {
		case r.TLS && r.Target == PGBastionTxn:
			tlsIdle[0] = r
		case r.TLS && r.Target == PgBouncerTxn:
			tlsIdle[1] = r
		case r.Target == PGBastionTxn:
			out = append(out, fmt.Sprintf("Issue 3, %d idle clients: PGBastion %.2f KiB per client (goal ≤ 8 KiB): %s.", r.Clients, r.PerClientKiB(),
				verdict(r.Opened == r.Clients && r.PerClientKiB() <= 8)))
		}
	}
	if b, p := tlsIdle[0], tlsIdle[1]; b != nil && p != nil {
		out = append(out, fmt.Sprintf("Idle clients over TLS (no goal in the issues): PGBastion %.2f vs PgBouncer %.2f KiB per client (%d and %d of %d clients idle).",
			b.PerClientKiB(), p.PerClientKiB(), b.Opened, p.Opened, b.Clients))
	}
	return out
}

// Markdown renders all results as a markdown document.
func Markdown(res *Results) string {
	var b strings.Builder
	cfg := res.Config
	b.WriteString("# PGBastion benchmark results\n\n")
	fmt.Fprintf(&b, "Generated by `go run -tags hashicorpmetrics ./bench/cmd/pgbench-compare` (package `bench`) on %s; took %s.\n\n",
		res.Started.UTC().Format("2006-01-02 15:04 MST"), res.Finished.Sub(res.Started).Round(time.Second))
	if cfg.Quick {
		b.WriteString("**Quick mode (smoke test): runs are too short for the figures to mean anything.**\n\n")
	}
	fmt.Fprintf(&b, "Settings: %d rounds, %s per run (each target warmed for %s before a scenario's first round), pgbench scale %d, `-j %d`, latency percentiles from a %.0f%% sample of transactions (`pgbench -l --sampling-rate`), PGBastion %s, HAProxy `nbthread 2`, PgBouncer single-threaded; %s.\n\n",
		cfg.Rounds, cfg.Duration, cfg.Warmup, cfg.Scale, cfg.Threads, cfg.LogSampling*100, loopsSetting(cfg.EventLoops, runtime.NumCPU()), backendSetting(cfg.Backend))
	b.WriteString("Environment:\n\n")
	for _, e := range res.Env {
		b.WriteString("- " + e + "\n")
	}
	b.WriteString("\nColumns: TPS is pgbench's figure without connection time; CPU µs/tx is utime+stime from /proc/PID/stat over the run divided by the transactions processed (proxy: the proxy process; PG: the postmaster and all backends; pgbench: its own rusage); host busy is the share of all cores in use during the run; other load is the share of all cores used by processes other than the proxy, PostgreSQL and pgbench (work outside the benchmark competing for the same cores — the figures are only comparable when it is near 0).\n\n")
	if len(res.Goals) > 0 {
		b.WriteString("## Summary against the goals\n\n")
		for _, n := range res.Goals {
			b.WriteString("- " + n + "\n")
		}
		b.WriteString("\n")
	}
	if len(res.Notes) > 0 {
		b.WriteString("Notes:\n\n")
		for _, n := range res.Notes {
			b.WriteString("- " + n + "\n")
		}
		b.WriteString("\n")
	}
	b.WriteString("## Scenarios\n\n")
	for _, sr := range res.Scenarios {
		b.WriteString(scenarioTable(res, sr) + "\n")
	}
	if len(res.Idle) > 0 {
		b.WriteString(idleTable(res) + "\n")
	}
	b.WriteString("## Every run\n\n<details><summary>raw figures</summary>\n\n")
	b.WriteString("| scenario | round | target | TPS | txns | failed | aborted | lat avg ms | p50 ms | p99 ms | samples | proxy µs/tx | PG µs/tx | pgbench µs/tx | busy | other | RSS KiB | connect ms | error |\n")
	b.WriteString("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, sr := range res.Scenarios {
		for _, r := range sr.Runs {
			fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %d | %d | %d | %.3f | %.3f | %.3f | %d | %.1f | %.1f | %.1f | %.0f%% | %.0f%% | %d | %.0f | %s |\n",
				sr.Scenario.Name, r.Round, r.Target, r.TPS, r.Txns, r.Failed, r.Aborted, r.LatAvg, r.P50, r.P99, r.Samples,
				r.ProxyCPU, r.PGCPU, r.ClientCPU, r.HostBusy*100, r.Foreign*100, r.ProxyRSS, r.ConnTime, strings.ReplaceAll(r.ExitErr, "|", "\\|"))
		}
	}
	b.WriteString("\n</details>\n")
	return b.String()
}
