package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// pgbenchSeconds is the length of each pgbench run: 30 s as the issue asks, shorter locally
// with PGBASTION_PGBENCH_SECONDS, never shorter in CI.
func pgbenchSeconds(t *testing.T) int {
	const full = 30
	v := os.Getenv("PGBASTION_PGBENCH_SECONDS")
	if v == "" {
		return full
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("PGBASTION_PGBENCH_SECONDS=%q is not a positive number of seconds", v)
	}
	if pgtest.InCI() && n < full {
		t.Logf("CI=true: ignoring PGBASTION_PGBENCH_SECONDS=%d, running %d s", n, full)
		return full
	}
	return n
}

// pgbenchRun is one pgbench process and what it reported.
type pgbenchRun struct {
	mode, qmode, port string
	out               bytes.Buffer
	err               error
	processed, failed int64
	tps               float64
}

var (
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
)

// TestPgbenchSelectOnly (issue 2, done-when 1): `pgbench -S` in simple, extended and prepared
// mode through the read-write and the read-only port, in session and in transaction mode:
// twelve pgbench processes at once, each for 30 s, every one with zero failed transactions, a
// clean exit and a non-zero transaction count. The servers' own transaction counters show that
// the read-only runs were served by the replica and the read-write runs by the primary.
func TestPgbenchSelectOnly(t *testing.T) {
	t.Parallel()
	pgbench := pgtest.Program(t, "pgbench")
	secs := pgbenchSeconds(t)
	c := newCluster(t, nil)
	init := exec.Command(pgbench, "-i", "-s", "1", "-q", "-h", c.primary.Host(), "-p", strconv.Itoa(c.primary.Port()),
		"-U", pgtest.Superuser, "postgres")
	init.Env = []string{"PGPASSWORD=" + c.primary.Password(), "PATH=" + os.Getenv("PATH")}
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	c.replica.WaitCatchUp(t)
	const clients = 4 // per process; session mode: 3 processes x 4 clients fit one pool of 20
	before := map[string]int64{"rw": xactCommit(t, c.primary), "ro": xactCommit(t, c.replica)}

	var runs []*pgbenchRun
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(t.Context(), time.Duration(secs)*time.Second+2*time.Minute)
	defer cancel()
	var daemons []*daemon.Daemon
	for _, mode := range []pool.Mode{pool.ModeSession, pool.ModeTransaction} {
		d := c.startProxy(t, mode, nil)
		daemons = append(daemons, d)
		for _, p := range c.ports(d) {
			for _, qmode := range []string{"simple", "extended", "prepared"} {
				r := &pgbenchRun{mode: string(mode), qmode: qmode, port: p.name}
				runs = append(runs, r)
				host, portNum := splitAddr(t, p.addr)
				cmd := exec.CommandContext(ctx, pgbench, "-n", "-S", "-M", qmode, "-c", strconv.Itoa(clients), "-j", "1",
					"-T", strconv.Itoa(secs), "-h", host, "-p", portNum, "-U", pgtest.Superuser, "postgres")
				cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10"}
				cmd.Stdout, cmd.Stderr = &r.out, &r.out
				wg.Add(1)
				go func() {
					defer wg.Done()
					r.err = cmd.Run()
				}()
			}
		}
	}
	wg.Wait()

	total := map[string]int64{}
	for _, r := range runs {
		name := fmt.Sprintf("%s/%s/%s", r.mode, r.port, r.qmode)
		out := r.out.String()
		ok := r.err == nil
		if m := reProcessed.FindStringSubmatch(out); m != nil {
			r.processed, _ = strconv.ParseInt(m[1], 10, 64)
		} else {
			ok = false
		}
		if m := reFailed.FindStringSubmatch(out); m != nil {
			r.failed, _ = strconv.ParseInt(m[1], 10, 64)
		} else {
			ok = false
		}
		if m := reTPS.FindStringSubmatch(out); m != nil {
			r.tps, _ = strconv.ParseFloat(m[1], 64)
		}
		if !ok || r.failed != 0 || r.processed == 0 || bytes.Contains(r.out.Bytes(), []byte("error")) {
			t.Errorf("pgbench %s: exit %v, %d processed, %d failed:\n%s", name, r.err, r.processed, r.failed, out)
			continue
		}
		total[r.port] += r.processed
		t.Logf("pgbench -S -M %-8s %-11s via %s: %7d transactions in %d s, 0 failed, %8.0f tps",
			r.qmode, r.mode, r.port, r.processed, secs, r.tps)
	}
	// Each select-only transaction commits once on the server that ran it. A backend reports
	// its statistics to pg_stat_database at the latest when it exits: stopping the proxies
	// (which must exit cleanly) closes their server connections.
	for _, d := range daemons {
		if err := d.Stop(t); err != nil {
			t.Errorf("pgbastion exit status after SIGTERM: %v", err)
		}
	}
	for portName, srv := range map[string]*pgtest.Instance{"rw": c.primary, "ro": c.replica} {
		want := before[portName] + total[portName]
		eventually(t, 10*time.Second, fmt.Sprintf("%s's xact_commit to reach %d", srv.Name(), want), func(context.Context) (bool, error) {
			return xactCommit(t, srv) >= want, nil
		})
	}
}

func xactCommit(t *testing.T, srv *pgtest.Instance) int64 {
	t.Helper()
	n, err := strconv.ParseInt(srv.QueryString(t, "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
