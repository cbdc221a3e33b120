package e2e

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/netns"
)

// TestOldPrimaryRefusesWritesBeforePromotion is the first half of issue 4's acceptance item 2
// (DESIGN.md invariants 1 and 2): once the primary is cut off from the others, it refuses writes
// before any other node is promoted, both through its own proxy (the write lease) and directly
// on its PostgreSQL (split-brain protection stops it after quorum_loss_timeout). Clients inside the old primary's namespace write every
// 20 ms through its local 5432 (query_wait_timeout 2 s) and straight to its PostgreSQL; the
// primary is isolated (link up, no frames pass). The test prints the timeline and checks that
// the last write the old primary took by either path, the moment its lease ran out (its log),
// the first write its proxy refused and the first its PostgreSQL refused all come before the new
// primary's PostgreSQL left recovery, that the proxy's refusal carries SQLSTATE 57P03, and that
// neither path took a write after its first refusal.
//
// The proxy's refusal needs nothing but the defaults. Fencing PostgreSQL before the promotion
// does not hold with them: quorum_loss_timeout is 30 s and a replica may be promoted 3 s
// (primary_timeout) after the old primary's last lease renewal, so its PostgreSQL keeps
// taking direct writes for about 27 s after the promotion (DESIGN.md invariant 1 covers the
// proxies and the VIP). Nor does config validation relate the two. The agent checks for quorum
// loss between its probes, and with the quorum gone each round also waits health.timeout for
// its status report, so the fence comes up to quorum_loss_timeout + health.interval +
// health.timeout (2 + 1 + 2 s here) after the last quorum contact, plus the time PostgreSQL
// takes to stop. The test therefore sets quorum_loss_timeout to 2 s (the least validation
// accepts) and primary_timeout to 6 s, where a promotion comes at the earliest
// 6 s × (1 − max_clock_drift 0.05) = 5.7 s after the last renewal.
func TestOldPrimaryRefusesWritesBeforePromotion(t *testing.T) {
	c := Start(t, Options{QueryWaitTimeout: 2 * time.Second, Extra: "failover:\n  quorum_loss_timeout: 2s\n  primary_timeout: 6s\n"})
	old := c.WaitHealthy(2, time.Minute)
	c.CreateProbeTable(t, old)
	var survivor *Node
	for _, n := range c.Nodes {
		if n != old {
			survivor = n
			break
		}
	}
	local := c.StartWriter(old.NS, "127.0.0.1", ProxyRWPort, 20*time.Millisecond, 10*time.Second)
	direct := c.StartWriter(old.NS, old.Addr.String(), PGPort, 20*time.Millisecond, 2*time.Second)
	remote := c.StartWriter(c.Client, survivor.Addr.String(), ProxyRWPort, 20*time.Millisecond, 10*time.Second)
	for _, w := range []struct {
		what string
		w    *Writer
	}{{"through " + old.Name + "'s own proxy", local}, {"straight to " + old.Name + "'s PostgreSQL", direct}} {
		netns.Eventually(t, 10*time.Second, "writes "+w.what, func() error {
			if _, ok := FirstOn(w.w.Attempts(), old.Addr, time.Time{}); !ok {
				return errNotYet
			}
			return nil
		})
	}

	// The moment a replica's PostgreSQL leaves recovery is the earliest the promotion counts.
	writable := map[*Node]func() (time.Time, error){}
	for _, n := range c.Nodes {
		if n != old {
			writable[n] = c.watchWritable(c.Client, n, 10*time.Millisecond)
		}
	}

	cut := time.Now()
	if err := old.NS.Isolate(); err != nil {
		t.Fatal(err)
	}
	primary := waitNewPrimary(t, c, old, time.Minute)
	netns.Eventually(t, time.Minute, "a write through "+survivor.Name+" to commit on the new primary "+primary.Name, func() error {
		if _, ok := FirstOn(remote.Attempts(), primary.Addr, cut); !ok {
			return errNotYet
		}
		return nil
	})
	netns.Eventually(t, 30*time.Second, old.Name+"'s proxy to refuse a write with 57P03", func() error {
		for _, a := range local.Attempts() {
			if a.Start.After(cut) && a.SQLState() == "57P03" {
				return nil
			}
		}
		return fmt.Errorf("attempts since the cut:%s", Summary(local.Attempts(), cut))
	})
	netns.Eventually(t, 30*time.Second, old.Name+"'s PostgreSQL to refuse a direct write", func() error {
		if _, ok := firstRefusal(direct.Attempts(), cut); !ok {
			return fmt.Errorf("attempts since the cut:%s", Summary(direct.Attempts(), cut))
		}
		return nil
	})
	localAttempts, directAttempts, remoteAttempts := local.Stop(), direct.Stop(), remote.Stop()

	promoted, acked, err := c.PromotedAt(primary, primary.Name, cut)
	if err != nil {
		t.Fatal(err)
	}
	// The promotion is when a replica's PostgreSQL was first seen out of recovery: the new
	// primary's, or another's if one was promoted earlier (and, say, fenced again).
	var promotion time.Time
	promotedFirst := primary
	for n, stop := range writable {
		at, err := stop()
		switch {
		case err != nil && n == primary:
			t.Fatal(err)
		case err != nil:
		case promotion.IsZero() || at.Before(promotion):
			promotion, promotedFirst = at, n
		}
	}
	if promotedFirst != primary {
		t.Logf("note: %s's PostgreSQL left recovery at %s, before the new primary %s's did: two replicas were promoted", promotedFirst.Name, promotion.Format(timeFormat), primary.Name)
	}
	firstNew, _ := FirstOn(remoteAttempts, primary.Addr, cut)
	lastOK, firstRefused := refusals(t, old.Name+"'s proxy", localAttempts, cut)
	lastDirect, firstDirectRefused := refusals(t, old.Name+"'s PostgreSQL", directAttempts, cut)
	var first57P03 Attempt
	for _, a := range localAttempts {
		if a.Start.After(cut) && a.SQLState() == "57P03" {
			first57P03 = a
			break
		}
	}
	leaseLost := logTime(old.D.Log(), `msg="write lease not held"`, cut)
	fenced := logTime(old.D.Log(), `msg="stopping postgresql: split-brain protection"`, cut)

	t.Logf("timeline (isolated %s at %s; %d writes tried through its own proxy, %d straight to its PostgreSQL, %d through %s):", old.Name, cut.Format(timeFormat),
		len(localAttempts), len(directAttempts), len(remoteAttempts), survivor.Name)
	t.Logf("  +%s  last write through %s's proxy committed (on %s)", ms(lastOK.End.Sub(cut)), old.Name, lastOK.Server)
	if !leaseLost.IsZero() {
		t.Logf("  +%s  %s's log: write lease not held", ms(leaseLost.Sub(cut)), old.Name)
	}
	t.Logf("  +%s  first refused write through %s's proxy began; it ended +%s: %v", ms(firstRefused.Start.Sub(cut)), old.Name, ms(firstRefused.End.Sub(cut)), firstRefused.Err)
	t.Logf("  +%s  first 57P03 through %s's proxy (the write began +%s)", ms(first57P03.End.Sub(cut)), old.Name, ms(first57P03.Start.Sub(cut)))
	t.Logf("  +%s  last direct write committed on %s's PostgreSQL", ms(lastDirect.End.Sub(cut)), old.Name)
	if !fenced.IsZero() {
		t.Logf("  +%s  %s's log: stopping postgresql: split-brain protection", ms(fenced.Sub(cut)), old.Name)
	}
	t.Logf("  +%s  first direct write %s's PostgreSQL refused began; it ended +%s: %v", ms(firstDirectRefused.Start.Sub(cut)), old.Name, ms(firstDirectRefused.End.Sub(cut)), firstDirectRefused.Err)
	t.Logf("  +%s  %s's PostgreSQL out of recovery (polled directly every 10 ms)", ms(promotion.Sub(cut)), promotedFirst.Name)
	if !acked.IsZero() {
		t.Logf("  +%s  %s acknowledged PROMOTE", ms(acked.Sub(cut)), primary.Name)
	}
	t.Logf("  +%s  %s named the primary (history: %s)", ms(promoted.At.Sub(cut)), primary.Name, promoted.Reason)
	t.Logf("  +%s  first write through %s committed on %s", ms(firstNew.End.Sub(cut)), survivor.Name, primary.Name)
	t.Logf("writes through %s's own proxy since the cut:%s", old.Name, Summary(localAttempts, cut))
	t.Logf("writes straight to %s's PostgreSQL since the cut:%s", old.Name, Summary(directAttempts, cut))
	t.Logf("writes through %s since the cut:%s", survivor.Name, Summary(remoteAttempts, cut))
	t.Logf("%s refused writes %s (proxy) and %s (PostgreSQL) before %s's PostgreSQL left recovery", old.Name,
		ms(promotion.Sub(firstRefused.Start)), ms(promotion.Sub(firstDirectRefused.End)), primary.Name)

	// The proxy refuses by not routing: the write is held, then answered 57P03 after
	// query_wait_timeout, so its refusal counts from when it began. PostgreSQL's counts once
	// it is an answer: the write ended with an error.
	checkRefusedBefore(t, old.Name+"'s proxy", old.Addr, lastOK, firstRefused, firstRefused.Start, promotion)
	checkRefusedBefore(t, old.Name+"'s PostgreSQL (direct)", old.Addr, lastDirect, firstDirectRefused, firstDirectRefused.End, promotion)
	if first57P03.Start.IsZero() {
		t.Errorf("no write through %s's proxy failed with SQLSTATE 57P03", old.Name)
	}
	if leaseLost.IsZero() || !leaseLost.Before(promotion) {
		t.Errorf("%s's log shows the lease lost at %v, not before the promotion at %s", old.Name, leaseLost, promotion.Format(timeFormat))
	}
	if firstNew.End.Before(lastOK.End) {
		t.Errorf("the new primary took a write (%v) before the old one took its last (%v)", firstNew, lastOK)
	}
}

// firstRefusal returns the first attempt that began after after and failed.
func firstRefusal(attempts []Attempt, after time.Time) (Attempt, bool) {
	for _, a := range attempts {
		if a.Start.After(after) && a.Err != nil {
			return a, true
		}
	}
	return Attempt{}, false
}

// refusals returns the last write that committed before the first refusal after after, and
// that refusal; it fails the test for every write that committed after it.
func refusals(t *testing.T, what string, attempts []Attempt, after time.Time) (lastOK, firstRefused Attempt) {
	t.Helper()
	firstRefused, _ = firstRefusal(attempts, after)
	for _, a := range attempts {
		switch {
		case a.Err != nil:
		case firstRefused.Start.IsZero() || a.Start.Before(firstRefused.Start):
			lastOK = a
		default:
			t.Errorf("%s took a write after it had refused one: %v (refused: %v)", what, a, firstRefused)
		}
	}
	return lastOK, firstRefused
}

// checkRefusedBefore fails the test unless the last write path took committed on server and
// ended before the promotion, and its first refusal (refused, counted at refusedAt) came before
// the promotion too.
func checkRefusedBefore(t *testing.T, path string, server netip.Addr, lastOK, refused Attempt, refusedAt, promotion time.Time) {
	t.Helper()
	switch {
	case lastOK.Start.IsZero() || lastOK.Server != server:
		t.Errorf("no write committed on %s through %s before the cut (last: %v)", server, path, lastOK)
	case !lastOK.End.Before(promotion):
		t.Errorf("%s took a write (%v) after the promotion at %s", path, lastOK, promotion.Format(timeFormat))
	}
	if refused.Start.IsZero() || !refusedAt.Before(promotion) {
		t.Errorf("%s did not refuse a write before the promotion at %s (first refusal: %v)", path, promotion.Format(timeFormat), refused)
	}
}

// logTime returns the time of the first line of a text-format daemon log after after that
// contains what (zero when there is none).
func logTime(log, what string, after time.Time) time.Time {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, what) {
			continue
		}
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		ts, _, _ = strings.Cut(ts, " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err == nil && at.After(after) {
			return at
		}
	}
	return time.Time{}
}
