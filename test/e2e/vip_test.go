package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/netlink"
	"github.com/pgbastion/pgbastion/test/netns"
)

// TestVIPFollowsPrimaryAfterLinkCut is issue 5's first acceptance test. A client in its own
// namespace writes through VIP:5432; the primary's link is cut; the VIP then answers from the
// new primary (writes through it commit there, and the client's neighbour entry for the VIP
// names the new primary's MAC); the isolated node has removed the VIP, and still has not once
// its link is back and it has rejoined; and no 100 ms sample during the whole test saw the VIP
// on two nodes.
func TestVIPFollowsPrimaryAfterLinkCut(t *testing.T) {
	c, sampler, watch, old := startVIP(t)

	writer := c.StartWriter(c.Client, VIP.String(), ProxyRWPort, 50*time.Millisecond, 2*time.Second)
	netns.Eventually(t, 10*time.Second, "the client's writer to commit through the VIP", func() error {
		if _, ok := FirstOn(writer.Attempts(), old.Addr, time.Time{}); !ok {
			return errNotYet
		}
		return nil
	})
	// The cut is the moment the link is certainly down: a write that began while `ip` was
	// still running may rightly have committed on the old primary.
	if err := old.NS.CutLink(); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	t.Logf("%s cut %s's link (the primary's)", cut.Format(timeFormat), old.Name)

	primary := waitNewPrimary(t, c, old, time.Minute)
	c.WaitWritesReach(t, c.Client, VIP.String(), ProxyRWPort, primary, time.Minute)
	netns.Eventually(t, 10*time.Second, "the client's neighbour entry to name "+primary.Name, neighbourIs(c, primary))
	netns.Eventually(t, 5*time.Second, "the isolated "+old.Name+" not to hold the VIP", holds(old, false))
	netns.Eventually(t, 30*time.Second, "the client's writer to commit through the VIP on "+primary.Name, func() error {
		if _, ok := FirstOn(writer.Attempts(), primary.Addr, cut); !ok {
			return errNotYet
		}
		return nil
	})
	if v, err := old.View(); err != nil {
		t.Errorf("%s's own /nodes while isolated: %v", old.Name, err)
	} else if st := v.LocalVIP(); st == nil || st.Held || st.Entitled {
		t.Errorf("%s's own /nodes while isolated shows VIP status %+v, want neither held nor entitled", old.Name, st)
	}
	attempts := writer.Stop()

	// Timeline.
	promoted, acked, err := c.PromotedAt(primary, primary.Name, cut)
	if err != nil {
		t.Fatal(err)
	}
	released, ok1 := watch.Released(old.Name, cut)
	held, ok2 := watch.Held(primary.Name, cut)
	neigh, ok3 := watch.Neighbour(primary.Name, cut)
	first, ok4 := FirstOn(attempts, primary.Addr, cut)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		t.Fatalf("incomplete timeline: released %v, held %v, neighbour %v, first write %v; changes:\n%v", ok1, ok2, ok3, ok4, watch.Changes())
	}
	var lastOld Attempt
	for _, a := range attempts {
		if a.Err == nil && a.Server == old.Addr {
			lastOld = a
		}
		if a.Err == nil && a.Server == old.Addr && a.Start.After(cut) {
			t.Errorf("a write that started after the cut committed on the isolated old primary: %v", a)
		}
	}
	t.Logf("timeline after cutting %s's link at %s (new primary %s):", old.Name, cut.Format(timeFormat), primary.Name)
	t.Logf("  last write through the VIP committed on %s: %s", old.Name, lastOld)
	t.Logf("  +%s  %s removed the VIP", ms(released.Sub(cut)), old.Name)
	if !acked.IsZero() {
		t.Logf("  +%s  %s acknowledged PROMOTE (writable)", ms(acked.Sub(cut)), primary.Name)
	}
	t.Logf("  +%s  %s became the primary (history: %s)", ms(promoted.At.Sub(cut)), primary.Name, promoted.Reason)
	t.Logf("  +%s  %s holds the VIP (%s after the promotion)", ms(held.Sub(cut)), primary.Name, ms(held.Sub(promoted.At)))
	t.Logf("  +%s  the client's neighbour entry names %s's MAC", ms(neigh.Sub(cut)), primary.Name)
	t.Logf("  +%s  first write through the VIP committed on %s (attempt began +%s)", ms(first.End.Sub(cut)), primary.Name, ms(first.Start.Sub(cut)))
	if !released.Before(held) {
		t.Errorf("%s took the VIP at %s, before %s released it at %s", primary.Name, held.Format(timeFormat), old.Name, released.Format(timeFormat))
	}

	// The link comes back: the old primary rejoins and never takes the VIP back.
	restored := time.Now()
	if err := old.NS.RestoreLink(); err != nil {
		t.Fatal(err)
	}
	waitRejoined(t, primary, old, 2*time.Minute)
	c.WaitHealthy(2, 2*time.Minute, primary)
	if h, ok := watch.Held(old.Name, restored); ok {
		t.Errorf("%s took the VIP at %s after its link came back", old.Name, h.Format(timeFormat))
	}
	if err := holds(old, false)(); err != nil {
		t.Error(err)
	}
	c.WaitWritesReach(t, c.Client, VIP.String(), ProxyRWPort, primary, 30*time.Second)
	if err := neighbourIs(c, primary)(); err != nil {
		t.Error(err)
	}
	t.Logf("%s rejoined %s after its link came back; the VIP stayed on %s", old.Name, ms(time.Since(restored)), primary.Name)

	checkNeverTwo(t, sampler, watch)
}

// startVIP starts a cluster, then the 100 ms sampler of the VIP's holders and the finer
// watcher, and returns once the primary holds the VIP, a write from the client through
// VIP:5432 has committed on it, and the client's neighbour entry names its MAC.
func startVIP(t *testing.T) (*Cluster, *netns.Sampler, *Watcher, *Node) {
	t.Helper()
	c := Start(t, Options{})
	sampler := c.Net.SampleHolders(VIP, 100*time.Millisecond)
	watch := c.WatchVIP(10 * time.Millisecond)
	primary := c.WaitHealthy(2, time.Minute)
	netns.Eventually(t, 30*time.Second, "the VIP on the primary "+primary.Name, holds(primary, true))
	c.CreateProbeTable(t, primary)
	c.WaitWritesReach(t, c.Client, VIP.String(), ProxyRWPort, primary, 30*time.Second)
	netns.Eventually(t, 5*time.Second, "the client's neighbour entry to name "+primary.Name, neighbourIs(c, primary))
	return c, sampler, watch, primary
}

// checkNeverTwo stops the sampler and the watcher and fails the test if either saw the VIP on
// two nodes at once (or could not look).
func checkNeverTwo(t *testing.T, sampler *netns.Sampler, watch *Watcher) {
	t.Helper()
	samples := sampler.Stop()
	if err := netns.CheckAtMostOne(samples); err != nil {
		t.Error(err)
	}
	watch.Stop()
	if err := watch.Err(); err != nil {
		t.Error(err)
	}
	t.Logf("%d samples of the VIP's holders 100 ms apart over %s, none with two holders", len(samples), ms(samples[len(samples)-1].At.Sub(samples[0].At)))
}

// TestSwitchoverMovesVIP is issue 5's second acceptance test: a switchover moves the VIP to
// the new primary within 1 s of its promotion. Three switchovers round the cluster (n1 -> n2
// -> n3 -> n1); for each the test prints when the candidate's PostgreSQL became writable (polled directly every 10
// ms), when it acknowledged PROMOTE and when the cluster named it the primary, when the VIP
// appeared on it and when the client's neighbour entry flipped to its MAC (polled every 10
// ms), and the first write through the VIP that committed on it. Each time the VIP must be on
// the new primary at most 1 s after the cluster made it the primary (its history entry: no
// node is entitled to the VIP earlier, and the VIP's part starts there); no 100 ms sample may
// see the VIP on two nodes. The delay from "writable" is printed too: it adds the trip of the
// PROMOTE acknowledgement through Raft (100-250 ms on a quiet machine, 1.3 s once at a load
// average of 18 on two cores).
func TestSwitchoverMovesVIP(t *testing.T) {
	const rounds = 3
	c, sampler, watch, primary := startVIP(t)

	var fromWritable, fromPromoted, neighFromWritable []time.Duration
	for i := range rounds {
		// Round the cluster: the second candidate is the node that streamed from neither
		// party of the first switchover, so it must have been re-pointed at the new primary.
		cand := c.Nodes[(slices.Index(c.Nodes, primary)+1)%len(c.Nodes)]
		waitStreaming(t, c, cand, primary, time.Minute)
		c.WaitHealthy(2, time.Minute, cand)
		writer := c.StartWriter(c.Client, VIP.String(), ProxyRWPort, 50*time.Millisecond, 5*time.Second)
		stopWritable := c.watchWritable(c.Client, cand, 10*time.Millisecond)
		began := time.Now()
		c.Switchover(t, cand, cand.Name)
		done := time.Now()
		writable, err := stopWritable()
		if err != nil {
			t.Fatal(err)
		}
		promoted, acked, err := c.PromotedAt(cand, cand.Name, began)
		if err != nil {
			t.Fatal(err)
		}
		netns.Eventually(t, 10*time.Second, "the VIP on the new primary "+cand.Name, holds(cand, true))
		netns.Eventually(t, 10*time.Second, "the client's neighbour entry to name "+cand.Name, neighbourIs(c, cand))
		netns.Eventually(t, 10*time.Second, "/metrics to show the VIP on "+cand.Name+" only", vipMetrics(map[*Node]bool{cand: true, primary: false}))
		netns.Eventually(t, 30*time.Second, "a write through the VIP to commit on "+cand.Name, func() error {
			if _, ok := FirstOn(writer.Attempts(), cand.Addr, began); !ok {
				return errNotYet
			}
			return nil
		})
		attempts := writer.Stop()
		released, ok1 := watch.Released(primary.Name, began)
		vipAt, ok2 := watch.Held(cand.Name, began)
		neighAt, ok3 := watch.Neighbour(cand.Name, began)
		first, _ := FirstOn(attempts, cand.Addr, began)
		if !ok1 || !ok2 || !ok3 {
			logChanges(t, watch)
			t.Fatalf("round %d: incomplete record: released %v, held %v, neighbour %v", i+1, ok1, ok2, ok3)
		}
		failed := 0
		for _, a := range attempts {
			if a.Err != nil {
				failed++
			}
		}
		if d := vipAt.Sub(promoted.At); d > time.Second {
			t.Errorf("switchover %d: the VIP reached %s %s after the cluster made it the primary; issue 5 asks for at most 1 s", i+1, cand.Name, ms(d))
		}
		fromWritable = append(fromWritable, vipAt.Sub(writable))
		fromPromoted = append(fromPromoted, vipAt.Sub(promoted.At))
		neighFromWritable = append(neighFromWritable, neighAt.Sub(writable))
		t.Logf("switchover %d, %s -> %s (POST /switchover took %s):", i+1, primary.Name, cand.Name, ms(done.Sub(began)))
		t.Logf("  +%s  %s released the VIP", ms(released.Sub(began)), primary.Name)
		t.Logf("  +%s  %s's PostgreSQL writable (direct poll)", ms(writable.Sub(began)), cand.Name)
		if !acked.IsZero() {
			t.Logf("  +%s  %s acknowledged PROMOTE", ms(acked.Sub(began)), cand.Name)
		}
		t.Logf("  +%s  %s named the primary (history)", ms(promoted.At.Sub(began)), cand.Name)
		t.Logf("  +%s  %s holds the VIP: %s after it became writable, %s after the history entry", ms(vipAt.Sub(began)), cand.Name, ms(vipAt.Sub(writable)), ms(vipAt.Sub(promoted.At)))
		t.Logf("  +%s  the client's neighbour entry names %s (%s after writable)", ms(neighAt.Sub(began)), cand.Name, ms(neighAt.Sub(writable)))
		t.Logf("  +%s  first write through the VIP committed on %s (%d of %d attempts through the VIP failed meanwhile)", ms(first.End.Sub(began)), cand.Name, failed, len(attempts))

		waitRejoined(t, cand, primary, 2*time.Minute)
		c.WaitHealthy(2, 2*time.Minute, cand)
		primary = cand
	}
	checkNeverTwo(t, sampler, watch)
	t.Logf("VIP on the new primary after the cluster made it the primary: %s (median %s); after its PostgreSQL became writable: %s (median %s); client's neighbour entry flipped after writable: %s (median %s)",
		msList(fromPromoted), ms(median(fromPromoted)), msList(fromWritable), ms(median(fromWritable)), msList(neighFromWritable), ms(median(neighFromWritable)))
}

// waitStreaming waits until replica's PostgreSQL streams WAL from primary's (as its
// pg_stat_wal_receiver says), so that a switchover to it starts from a replica that can catch up.
func waitStreaming(t *testing.T, c *Cluster, replica, primary *Node, timeout time.Duration) {
	t.Helper()
	netns.Eventually(t, timeout, replica.Name+" to stream from "+primary.Name, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := c.Connect(ctx, c.Client, replica.Addr.String(), PGPort)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		var status, sender string
		err = conn.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none'), coalesce((SELECT sender_host FROM pg_stat_wal_receiver), '')").Scan(&status, &sender)
		if err != nil {
			return err
		}
		if status != "streaming" || sender != primary.Addr.String() {
			return fmt.Errorf("%s's WAL receiver: %s from %q", replica.Name, status, sender)
		}
		return nil
	})
}

// logChanges logs the watcher's record (for failures and for the curious).
func logChanges(t *testing.T, w *Watcher) {
	var b strings.Builder
	for _, ch := range w.Changes() {
		fmt.Fprintln(&b, "  ", ch)
	}
	t.Logf("VIP changes:\n%s", b.String())
}

// TestVIPWithoutCapNetAdmin is issue 5's third acceptance test. n1, which bootstraps the
// cluster and so becomes the primary, runs its pgbastion without CAP_NET_ADMIN and CAP_NET_RAW
// (setpriv drops them from the bounding set). It logs the problem at start-up, /nodes shows it
// in n1's VIP status (entitled but not held, with the reason), it keeps retrying without
// crashing, nobody else takes the VIP, its proxy still takes writes and reads, and it shuts
// down cleanly.
func TestVIPWithoutCapNetAdmin(t *testing.T) {
	c := Start(t, Options{Unprivileged: []string{"n1"}})
	n1 := c.Node("n1")
	if p := c.WaitHealthy(2, time.Minute); p != n1 {
		c.Switchover(t, n1, n1.Name)
		c.WaitHealthy(2, 2*time.Minute, n1)
	}
	log := n1.D.Log()
	if !strings.Contains(log, "vip will not work") || !strings.Contains(log, "missing CAP_NET_ADMIN") {
		t.Errorf("n1's log has no start-up line about the missing CAP_NET_ADMIN:\n%s", log)
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "vip will not work") {
			t.Logf("n1's start-up log: %s", line)
		}
	}
	var st *netlink.Status
	netns.Eventually(t, 30*time.Second, "n1's /nodes to report the VIP entitled, not held, and why", func() error {
		v, err := n1.View()
		if err != nil {
			return err
		}
		st = v.LocalVIP()
		switch {
		case st == nil:
			return errors.New("no local vip status in /nodes")
		case !st.Entitled || st.Held || !strings.Contains(st.Error, "needs CAP_NET_ADMIN"):
			return fmt.Errorf("vip status %+v", st)
		}
		return nil
	})
	if st.Privileges.NetAdmin || st.Privileges.NetRaw || !strings.Contains(st.PrivilegeProblem, "CAP_NET_ADMIN (cannot add or remove the VIP)") ||
		!strings.Contains(st.PrivilegeProblem, "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW") {
		t.Errorf("n1's vip status does not say clearly what is missing and what to do: %+v", st)
	}
	t.Logf("n1's /nodes vip status: entitled=%v held=%v error=%q privilege_problem=%q", st.Entitled, st.Held, st.Error, st.PrivilegeProblem)
	if v, err := c.Node("n2").View(); err != nil {
		t.Error(err)
	} else if s := v.LocalVIP(); s == nil || s.PrivilegeProblem != "" || !s.Privileges.NetAdmin || s.Entitled || s.Held {
		t.Errorf("n2 (privileged replica) reports vip status %+v", s)
	}
	if h, err := c.Net.Holders(VIP); err != nil || len(h) != 0 {
		t.Errorf("VIP holders %v (%v), want none: n1 cannot add it and nobody else is entitled", h, err)
	}

	// The proxy works: writes through n1's own 5432 commit on n1, reads through its 5433 work.
	c.CreateProbeTable(t, n1)
	c.WaitWritesReach(t, c.Client, n1.Addr.String(), ProxyRWPort, n1, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ro, err := c.Connect(ctx, c.Client, n1.Addr.String(), ProxyROPort)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = ro.QueryRow(ctx, "SELECT count(*) FROM e2e_probe").Scan(&n)
	ro.Close(context.Background())
	if err != nil {
		t.Fatalf("read through n1's 5433: %v", err)
	}

	// It keeps retrying (the error is stamped again) and keeps running.
	first := st.ErrorAt
	netns.Eventually(t, 30*time.Second, "n1 to retry adding the VIP for 2 s", func() error {
		v, err := n1.View()
		if err != nil {
			return err
		}
		if s := v.LocalVIP(); s == nil || s.ErrorAt.Sub(first) < 2*time.Second {
			return errNotYet
		}
		return nil
	})
	select {
	case <-n1.D.Exited():
		t.Fatal("n1's pgbastion exited")
	default:
	}
	if err := n1.D.Stop(t); err != nil {
		t.Errorf("n1's pgbastion did not shut down cleanly: %v", err)
	}
	t.Logf("n1 served writes and reads without the VIP, retried adding it for 2 s, and stopped cleanly")
}

// vipMetrics checks each node's /metrics: pgbastion_vip_held and pgbastion_node_is_primary are
// 1 on the nodes mapped to true and 0 on the others.
func vipMetrics(want map[*Node]bool) func() error {
	return func() error {
		for n, held := range want {
			body, err := n.api.Text("/metrics")
			if err != nil {
				return err
			}
			v := "0"
			if held {
				v = "1"
			}
			for _, line := range []string{"pgbastion_vip_held " + v + "\n", "pgbastion_node_is_primary " + v + "\n"} {
				if !strings.Contains(body, line) {
					return fmt.Errorf("%s's /metrics lacks %q", n.Name, strings.TrimSpace(line))
				}
			}
		}
		return nil
	}
}
