package cluster

import (
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/daemon"
)

func TestMain(m *testing.M) { daemon.Main(m) }

// TestKillPrimaryPostmaster: kill -9 of the primary's postmaster. A replica is promoted, every
// surviving node's read-write port reaches it, and the old primary comes back as a replica.
func TestKillPrimaryPostmaster(t *testing.T) {
	c := Start(t, Options{})
	old, _ := c.WaitOneWritablePrimary(time.Minute)
	killed := time.Now()
	old.KillPostgres(t)
	primary, took := c.WaitOneWritablePrimary(2 * time.Minute)
	t.Logf("killed %s's postmaster; writable primary %s through every node after %s", old.Name, primary.Name, time.Since(killed).Round(time.Millisecond))
	_ = took
	if primary == old {
		t.Logf("the old primary came back as primary (restarted in place)")
	}
	c.WaitHealthy(2, 2*time.Minute)
	v, _ := c.AnyView()
	role, state, healthy, reason := v.Status(old.Name)
	t.Logf("old primary %s now: role=%s state=%s healthy=%v %s", old.Name, role, state, healthy, reason)
}
