package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/cluster"
)

// TestFailoverTimes measures, on a real three-node cluster with default failover settings:
// the time from a primary failure to the first committed write through a surviving node's
// proxy (crashed postmaster; lost node), and the longest write pause of a switchover seen by
// a client writing continuously. It prints numbers; it does not pass or fail on them.
//
// Run it with PGBASTION_BENCH=1 (PGBASTION_BENCH_RUNS sets the runs per scenario, default 5).
func TestFailoverTimes(t *testing.T) {
	if os.Getenv("PGBASTION_BENCH") == "" {
		t.Skip("benchmark: set PGBASTION_BENCH=1 to run it")
	}
	runs := 5
	if n, err := strconv.Atoi(os.Getenv("PGBASTION_BENCH_RUNS")); err == nil && n > 0 {
		runs = n
	}
	c := cluster.Start(t, cluster.Options{})
	var crashed, lost, pauses []time.Duration

	for i := 0; i < runs; i++ {
		primary := c.WaitHealthy(2, 3*time.Minute)
		entry := otherThan(c, primary)
		w := startWriter(c, entry)
		t0 := time.Now()
		primary.KillPostgres(t)
		d := w.firstCommitAfter(t, t0, primary.PGPort, 2*time.Minute)
		w.stop()
		crashed = append(crashed, d)
		t.Logf("crashed postmaster, run %d: first write through %s after %s", i+1, entry.Name, d.Round(time.Millisecond))
		if p, _ := c.WaitOneWritablePrimary(2 * time.Minute); p != primary {
			c.WaitRejoined(t, primary, 3*time.Minute)
		}
	}

	for i := 0; i < runs; i++ {
		primary := c.WaitHealthy(2, 3*time.Minute)
		entry := otherThan(c, primary)
		w := startWriter(c, entry)
		t0 := time.Now()
		primary.KillNode(t)
		d := w.firstCommitAfter(t, t0, primary.PGPort, 2*time.Minute)
		w.stop()
		lost = append(lost, d)
		t.Logf("lost node, run %d: first write through %s after %s", i+1, entry.Name, d.Round(time.Millisecond))
		primary.Restart(t)
		c.WaitRejoined(t, primary, 3*time.Minute)
	}

	for i := 0; i < runs; i++ {
		primary := c.WaitHealthy(2, 3*time.Minute)
		c.WaitOneWritablePrimary(time.Minute)
		cand := otherThan(c, primary)
		var entry *cluster.Node
		for _, n := range c.Nodes {
			if n != primary && n != cand {
				entry = n
			}
		}
		w := startWriter(c, entry)
		time.Sleep(time.Second) // a steady write stream before the switchover
		c.Switchover(t, cand.Name)
		time.Sleep(time.Second)
		gap, errs := w.stop()
		pauses = append(pauses, gap)
		t.Logf("switchover %s -> %s, run %d, writing through %s: longest write pause %s, %d client errors (last: %v)",
			primary.Name, cand.Name, i+1, entry.Name, gap.Round(time.Millisecond), errs, w.lastErr)
	}

	fmt.Printf("\nFailover times, %d runs each (3 nodes on one 2-core machine, default settings)\n\n", runs)
	fmt.Println("| scenario | min | p50 | max | target |")
	fmt.Println("|---|---:|---:|---:|---|")
	row := func(name string, ds []time.Duration, target string) {
		slices.Sort(ds)
		fmt.Printf("| %s | %s | %s | %s | %s |\n", name, ds[0].Round(time.Millisecond), ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), target)
	}
	row("crashed postmaster → first committed write via a surviving proxy", crashed, "p50 ≤ 3 s")
	row("lost node (kill -9 of pgbastion and PostgreSQL) → first committed write", lost, "p50 ≤ 5 s")
	row("switchover: longest write pause seen by a client", pauses, "≤ 2 s")
}

func otherThan(c *cluster.Cluster, n *cluster.Node) *cluster.Node {
	for _, o := range c.Nodes {
		if o != n && o.Alive() {
			return o
		}
	}
	return nil
}

// writer commits one row at a time through a node's read-write port, reconnecting after
// errors, and records when each commit succeeded.
type writer struct {
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	started []time.Time // when each successful write was begun
	ok      []time.Time // when it committed
	port    []int       // the port of the PostgreSQL that committed it
	errs    int
	lastErr error
}

func startWriter(c *cluster.Cluster, n *cluster.Node) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			begun := time.Now()
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			port, err := c.WritableThrough(cctx, n.RW)
			ccancel()
			w.mu.Lock()
			if err == nil {
				w.started = append(w.started, begun)
				w.ok = append(w.ok, time.Now())
				w.port = append(w.port, port)
			} else if ctx.Err() == nil {
				w.errs++
				w.lastErr = err
			}
			w.mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	return w
}

// firstCommitAfter waits for the first commit of a write begun after t0 on a PostgreSQL other
// than the failed one (a write can still reach the old primary in the instant between killing
// its pgbastion and its postmaster) and returns how long after t0 it committed.
func (w *writer) firstCommitAfter(t *testing.T, t0 time.Time, failedPort int, timeout time.Duration) time.Duration {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		for i, at := range w.ok {
			if w.started[i].After(t0) && w.port[i] != failedPort {
				w.mu.Unlock()
				return at.Sub(t0)
			}
		}
		w.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no committed write within %s", timeout)
	return 0
}

// stop ends the writer and returns the longest gap between consecutive commits and the number
// of failed attempts.
func (w *writer) stop() (time.Duration, int) {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	var gap time.Duration
	for i := 1; i < len(w.ok); i++ {
		gap = max(gap, w.ok[i].Sub(w.ok[i-1]))
	}
	return gap, w.errs
}
