package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Workload is one pgbench invocation, minus the target.
type Workload struct {
	Clients int
	Threads int
	// Protocol is pgbench's -M: simple, extended or prepared.
	Protocol string
	// Duration is pgbench's -T.
	Duration time.Duration
	// LogSampling is the share of transactions logged (--sampling-rate) for latency
	// percentiles; 0 turns the per-transaction log off.
	LogSampling float64
	// TLS makes the clients connect with sslmode=require (otherwise disable).
	TLS bool
}

func (w Workload) String() string {
	s := fmt.Sprintf("pgbench -S -M %s -c %d -j %d -T %s", w.Protocol, w.Clients, w.Threads, w.Duration)
	if w.TLS {
		s = "PGSSLMODE=require " + s
	}
	return s
}

// Measurement is the measurement of one pgbench run against one target.
type Measurement struct {
	Target string
	Round  int
	// TPS is pgbench's figure without the initial connection time.
	TPS float64
	// Txns is the number of transactions processed; Failed the failed ones; Aborted the clients
	// pgbench gave up on (a non-retryable error ends a client).
	Txns    int64
	Failed  int64
	Aborted int
	// Latencies in milliseconds: pgbench's average, and percentiles of the sampled log.
	LatAvg, P50, P99 float64
	Samples          int
	// CPU microseconds per transaction of the proxy process, of PostgreSQL (postmaster and all
	// backends) and of pgbench.
	ProxyCPU, PGCPU, ClientCPU float64
	// HostBusy is the share of all cores that was busy during the run; Foreign the share used by
	// processes other than the proxy, PostgreSQL and pgbench (other work on the machine).
	HostBusy, Foreign float64
	// ProxyRSS and ProxyHWM are the proxy's resident and peak resident memory after the run, KiB.
	ProxyRSS, ProxyHWM int64
	// ExitErr is pgbench's failure, with the first error line it printed.
	ExitErr string
	Elapsed time.Duration
	// ConnTime is pgbench's "initial connection time" in milliseconds: its -T clock includes
	// it, so slow logins (1,000 direct backends to fork) shorten the measured part of the run.
	ConnTime float64
}

// OK reports whether the run produced a usable throughput figure.
func (r *Measurement) OK() bool { return r.ExitErr == "" && r.Aborted == 0 && r.Txns > 0 }

var (
	reTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)`)
	reTxns    = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed  = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reConn    = regexp.MustCompile(`(?m)^initial connection time = ([0-9.]+) ms`)
	reAborted = regexp.MustCompile(`client \d+ (?:script \d+ )?aborted`)
)

// runPgbench runs w against t and samples the CPU and memory of the processes involved.
func runPgbench(ctx context.Context, binDir, workDir string, t *target, w Workload, round int) (*Measurement, error) {
	logDir, err := os.MkdirTemp(workDir, "pgbench-log-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(logDir)
	host, port, _ := strings.Cut(t.addr, ":")
	args := []string{"-n", "-S", "-M", w.Protocol, "-c", strconv.Itoa(w.Clients), "-j", strconv.Itoa(w.Threads),
		"-T", strconv.Itoa(int(math.Max(1, w.Duration.Round(time.Second).Seconds()))),
		"-h", host, "-p", port, "-U", Superuser}
	if w.LogSampling > 0 {
		args = append(args, "-l", "--log-prefix", filepath.Join(logDir, "tx"))
		if w.LogSampling < 1 {
			args = append(args, "--sampling-rate", strconv.FormatFloat(w.LogSampling, 'f', -1, 64))
		}
	}
	args = append(args, "postgres")
	// A stuck run (a pool too small for session mode, a hung proxy) must not hang the harness.
	rctx, cancel := context.WithTimeout(ctx, w.Duration+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, filepath.Join(binDir, "pgbench"), args...)
	cmd.Env = pgEnv(t.pg.password)
	if w.TLS {
		cmd.Env = append(cmd.Env, "PGSSLMODE=require") // the later setting wins
	}
	cmd.Dir = logDir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	pgPID := t.pg.postmasterPID()
	pid := t.pid()
	var proxy0 int64
	if pid != 0 {
		proxy0 = cpuTicks(pid)
	}
	pg0 := treeTicks(pgPID)
	host0 := readHostCPU()
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)
	var proxy1 int64
	if pid != 0 {
		proxy1 = cpuTicks(pid)
	}
	// PostgreSQL and the host are sampled together once the backends of direct clients are gone.
	waitSettled(pgPID, 5*time.Second)
	pg1 := treeTicks(pgPID)
	host1 := readHostCPU()

	r := &Measurement{Target: t.name, Round: round, Elapsed: elapsed, HostBusy: busyFraction(host0, host1)}
	parseOutput(r, stdout.String(), stderr.String(), runErr)
	own := (proxy1 - proxy0) + (pg1 - pg0)
	if cmd.ProcessState != nil {
		own += (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Microseconds() * clockTicks / 1e6
	}
	r.Foreign = foreignFraction(host0, host1, own)
	if r.Txns > 0 {
		per := func(ticks int64) float64 { return float64(ticks) * 1e6 / clockTicks / float64(r.Txns) }
		if pid != 0 {
			r.ProxyCPU = per(proxy1 - proxy0)
		}
		r.PGCPU = per(pg1 - pg0)
		if cmd.ProcessState != nil {
			r.ClientCPU = float64((cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Microseconds()) / float64(r.Txns)
		}
	}
	if pid != 0 {
		r.ProxyRSS, r.ProxyHWM = memKiB(pid)
		if done, err := t.proc.exited(); done {
			return r, fmt.Errorf("%s died during the run (%s):\n%s", t.name, signalName(err), t.proc.logTail())
		}
	}
	if w.LogSampling > 0 {
		lat, err := readLatencies(logDir)
		if err != nil {
			return r, err
		}
		r.Samples = len(lat)
		r.P50, r.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	}
	return r, nil
}

// parseOutput fills r from pgbench's report (stdout), its messages (stderr) and exit status.
func parseOutput(r *Measurement, out, errText string, runErr error) {
	if m := reTPS.FindStringSubmatch(out); m != nil {
		r.TPS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reTxns.FindStringSubmatch(out); m != nil {
		r.Txns, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		r.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reLatency.FindStringSubmatch(out); m != nil {
		r.LatAvg, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reConn.FindStringSubmatch(out); m != nil {
		r.ConnTime, _ = strconv.ParseFloat(m[1], 64)
	}
	r.Aborted = len(reAborted.FindAllString(errText, -1))
	if runErr != nil {
		r.ExitErr = fmt.Sprintf("%v: %s", runErr, firstErrorLine(errText))
	} else if r.Aborted > 0 {
		r.ExitErr = firstErrorLine(errText)
	}
}

// firstErrorLine picks pgbench's first error message.
func firstErrorLine(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "error") || strings.Contains(line, "aborted") || strings.Contains(line, "FATAL") {
			return strings.TrimSpace(line)
		}
	}
	return strings.TrimSpace(s)
}

// readLatencies reads pgbench's per-transaction logs (one file per thread). Each line is
// "client_id transaction_no time script_no time_epoch time_us ..." where time is the latency in
// microseconds, or "failed"/"skipped". The result is in milliseconds, sorted.
func readLatencies(dir string) ([]float64, error) {
	files, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil {
		return nil, err
	}
	var lat []float64
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fs[2], 10, 64)
			if err != nil {
				continue // failed or skipped
			}
			lat = append(lat, float64(us)/1000)
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	sort.Float64s(lat)
	return lat, nil
}

// percentile returns the q-quantile of sorted values (nearest rank).
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// median of values (0 when empty).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
