package cluster

import (
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/daemon"
)

func TestMain(m *testing.M) { daemon.Main(m) }

// TestKillPrimaryPostmaster: kill -9 of the primary's postmaster. The cluster ends with exactly
// one writable primary reachable through every node's read-write port: either a promoted
// replica (and the old primary rejoins as a replica or stays fenced with a reason), or the old
// primary restarted in place if its agent got there first.
func TestKillPrimaryPostmaster(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(time.Minute)
	killed := time.Now()
	old.KillPostgres(t)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	t.Logf("killed %s's postmaster; writable primary %s through every node after %s", old.Name, primary.Name, time.Since(killed).Round(time.Millisecond))
	if primary != old {
		c.WaitRejoined(t, old, 3*time.Minute)
	}
	c.WaitHealthy(2, 2*time.Minute)
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary moved again, to %s", p.Name)
	}
}

// TestKillPrimaryNode: kill -9 of the primary's pgbastion and PostgreSQL together (a lost host).
// The survivors promote a replica; when the node comes back it rejoins as a replica.
func TestKillPrimaryNode(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(time.Minute)
	killed := time.Now()
	old.KillNode(t)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	t.Logf("killed node %s; writable primary %s through every surviving node after %s", old.Name, primary.Name, time.Since(killed).Round(time.Millisecond))
	if primary == old {
		t.Fatal("a dead node is still the primary")
	}
	old.Restart(t)
	c.WaitHealthy(2, 3*time.Minute)
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary changed to %s after the old node returned", p.Name)
	}
	v, _ := c.AnyView()
	role, state, _, _ := v.Status(old.Name)
	if role != "replica" || state != "RUNNING_REPLICA" {
		t.Fatalf("old primary after restart: %s %s", role, state)
	}
}

// TestPausePrimaryDaemon: SIGSTOP of the primary's pgbastion. Its lease runs out, a replica is
// promoted once the old primary can no longer be routing writes, and when the daemon resumes
// it finds itself deposed and rejoins as a replica — never two writable primaries.
func TestPausePrimaryDaemon(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(time.Minute)
	paused := time.Now()
	old.Pause(t)
	old.stopped = true // not reachable while paused
	// Its PostgreSQL still runs, so until the others depose it (its agent silent past the
	// lease) they keep routing writes to it; then a replica is promoted.
	c.WaitPrimaryOtherThan(t, old, 2*time.Minute)
	primary, _ := c.WaitOneWritablePrimary(2 * time.Minute)
	t.Logf("paused %s's pgbastion; writable primary %s through the others after %s", old.Name, primary.Name, time.Since(paused).Round(time.Millisecond))
	if primary == old {
		t.Fatal("the paused node is still the primary")
	}
	old.Resume(t)
	old.stopped = false
	c.WaitRejoined(t, old, 3*time.Minute)
	c.WaitHealthy(2, 3*time.Minute)
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != primary {
		t.Fatalf("primary moved to %s after %s resumed", p.Name, old.Name)
	}
}

// TestStopRaftLeaderNotPrimary: the Raft leader, when it is not the primary, stops. A new
// leader takes over; the primary does not change and writes keep working.
func TestStopRaftLeaderNotPrimary(t *testing.T) {
	c := Start(t, Options{})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	// Make sure the Raft leader is not the primary: move the primary if they coincide.
	v, err := c.AnyView()
	if err != nil {
		t.Fatal(err)
	}
	if v.RaftLeader == primary.Name {
		var cand *Node
		for _, n := range c.Nodes {
			if n != primary {
				cand = n
				break
			}
		}
		c.Switchover(t, cand.Name)
		primary, _ = c.WaitOneWritablePrimary(time.Minute)
		if v, err = c.AnyView(); err != nil {
			t.Fatal(err)
		}
	}
	if v.RaftLeader == "" || v.RaftLeader == primary.Name {
		t.Fatalf("could not arrange a non-primary Raft leader (leader %q, primary %q)", v.RaftLeader, primary.Name)
	}
	leader := c.Node(v.RaftLeader)
	leader.StopDaemon(t)
	p, took := c.WaitOneWritablePrimary(time.Minute)
	if p != primary {
		t.Fatalf("primary changed from %s to %s when the Raft leader %s stopped", primary.Name, p.Name, leader.Name)
	}
	t.Logf("stopped Raft leader %s; writes through the others after %s", leader.Name, took.Round(time.Millisecond))
	leader.Restart(t)
	c.WaitHealthy(2, 2*time.Minute)
}
