package ha

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

// TestRestartedNodeDoesNotActOnReplayedHistory: a restarted daemon applies its Raft log again
// from the start and its state passes through every old primary and directive. Here the log
// holds a PROMOTE of n3 (a switchover to n3, then one back to n1); n3's daemon restarts on
// that log and must neither execute the old directives (its PostgreSQL sees no promote or
// follow) nor hold a write lease for a primary of the past while it catches up.
func TestRestartedNodeDoesNotActOnReplayedHistory(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.settle(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, move := range [][2]string{{"n1", "n3"}, {"n3", "n1"}} {
		id, err := c.nodes["n2"].Switchover(ctx, move[0], move[1])
		if err != nil {
			t.Fatal(err)
		}
		if op, err := c.nodes["n2"].WaitOperation(ctx, id); err != nil || op.Phase != fsm.PhaseDone {
			t.Fatalf("switchover %s → %s: %+v %v", move[0], move[1], op, err)
		}
	}
	await.True(t, 30*time.Second, func() bool {
		m := c.nodes["n1"].State().Members["n3"]
		return c.nodes["n1"].State().Primary == "n1" && m.Status.State == fsm.StateRunningReplica && m.Status.Following == "n1"
	}, "n3 follows n1 again")

	pg := c.pgs.get("n3")
	before := len(pg.Calls())
	c.stop("n3")
	n3 := c.restart("n3")

	// While n3 replays, sample what it would route writes to: never a primary other than n1.
	stopSampling := make(chan struct{})
	sampled := make(chan []string)
	go func() {
		var wrong []string
		for {
			select {
			case <-stopSampling:
				sampled <- wrong
				return
			default:
			}
			if r := n3.WriteRoute(); r.Valid && r.Primary != "n1" {
				wrong = append(wrong, r.Primary)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	await.True(t, 30*time.Second, n3.CaughtUp, "n3 caught up with its log")
	await.True(t, 30*time.Second, func() bool {
		m := n3.State().Members["n3"]
		return m.Status.State == fsm.StateRunningReplica && m.Status.ReportIndex > n3.startIndex
	}, "n3 reports as a running replica after its restart: %+v (start index %d)", n3.State().Members["n3"].Status, n3.startIndex)
	close(stopSampling)
	if wrong := <-sampled; len(wrong) > 0 {
		t.Fatalf("the restarted node held a write lease for a past primary: %v", slices.Compact(wrong))
	}
	if calls := pg.Calls()[before:]; len(calls) > 0 {
		t.Fatalf("the restarted node acted on replayed directives: %v", calls)
	}
}
