package ha

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

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
	c.switchover(ctx, "n2", "n1", "n3")
	c.switchover(ctx, "n2", "n3", "n1")
	await.True(t, 30*time.Second, func() bool {
		m := c.nodes["n1"].State().Members["n3"]
		return c.nodes["n1"].State().Primary == "n1" && m.Status.State == fsm.StateRunningReplica && m.Status.Following == "n1"
	}, "n3 follows n1 again")
	// Every directive n3 executed is acknowledged: a directive whose acknowledgement was
	// lost is legitimately executed again after a restart (they are idempotent).
	await.True(t, 30*time.Second, func() bool { return len(c.nodes["n1"].State().PendingDirectives("n3")) == 0 },
		"n3 has acknowledged its directives")

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

// replayingCluster is a Cluster on a bare FSM whose "caught up" flag the test sets: it stands
// for a restarted node whose state is still being replayed from its log.
type replayingCluster struct {
	f      *fsm.FSM
	index  uint64
	caught atomic.Bool
}

func (c *replayingCluster) Name() string                 { return "n1" }
func (c *replayingCluster) State() *fsm.State            { return c.f.State() }
func (c *replayingCluster) Subscribe() *fsm.Subscription { return c.f.Subscribe() }
func (c *replayingCluster) HoldsWriteLease() bool        { return false }
func (c *replayingCluster) LastQuorumContact() time.Time { return time.Now() }
func (c *replayingCluster) CaughtUp() bool               { return c.caught.Load() }
func (c *replayingCluster) Apply(_ context.Context, cmd fsm.Command) (fsm.Result, error) {
	b, err := fsm.Encode(cmd, time.Now())
	if err != nil {
		return fsm.Result{}, err
	}
	c.index++
	r, _ := c.f.Apply(&raft.Log{Index: c.index, Data: b}).(fsm.Result)
	return r, nil
}

// TestAgentWaitsForTheReplayBeforeActing: while the state is a replay of the past (it shows a
// PROMOTE for this node that is still pending at that point of the log), the agent only probes;
// once the node has caught up, what is pending then is executed.
func TestAgentWaitsForTheReplayBeforeActing(t *testing.T) {
	c := &replayingCluster{f: fsm.New(nil, nil)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, cmd := range []fsm.Command{
		fsm.LeaderEstablished{Leader: "n2"},
		fsm.RegisterMember{Name: "n1", RaftAddress: "n1:8300", PGHost: "n1", PGPort: 5432},
		fsm.RegisterMember{Name: "n2", RaftAddress: "n2:8300", PGHost: "n2", PGPort: 5432},
		fsm.IssueDirective{Type: fsm.DirectivePromote, Target: "n1", Params: fsm.DirectiveParams{Reason: "long ago"}},
	} {
		if r, err := c.Apply(ctx, cmd); err != nil || r.Err != nil {
			t.Fatalf("%T: %v %v", cmd, err, r.Err)
		}
	}
	if len(c.State().PendingDirectives("n1")) != 1 {
		t.Fatal("setup: no pending PROMOTE for n1")
	}
	net := newFakePGNet()
	pg := net.add("n1", fsm.RoleReplica, 1000, "n2")
	net.add("n2", fsm.RolePrimary, 1000, "")
	cfg := fastConfig("n1", []Peer{{Name: "n1", Address: "n1:8300"}, {Name: "n2", Address: "n2:8300"}})
	a := NewAgent(c, pg, cfg, AgentOptions{Logger: testLogger(t)})
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()

	await.True(t, 30*time.Second, func() bool { return pg.Probes() >= 5 }, "the agent probes while it waits")
	if calls := pg.Calls(); len(calls) > 0 {
		t.Fatalf("the agent acted on a replayed state: %v", calls)
	}
	c.caught.Store(true)
	await.True(t, 30*time.Second, func() bool { return slices.Contains(pg.Calls(), "promote") }, "the agent executes what is pending once caught up")
	cancel()
	<-done
}

// TestRestartedNodeCatchesUpWithWhatHappenedWhileAway: a node that was down while the primary
// moved must not call itself caught up with the state of the moment it went down (its own log
// ends there): its API would show the old primary and the agent would act on it. It has
// caught up only once it has applied its first registration after the restart, which the
// leader appended after everything committed in its absence.
func TestRestartedNodeCatchesUpWithWhatHappenedWhileAway(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	if p := c.settle(30 * time.Second); p != "n1" {
		t.Fatalf("setup: primary %s, want n1", p)
	}
	c.stop("n3")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.switchover(ctx, "n1", "n1", "n2") // while n3 is down
	// Plenty of entries after the switchover (as status reports are in a real cluster), so
	// that n3 receives them in many batches and its state passes through the past for a while.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if _, err := c.nodes["n1"].Apply(ctx, fsm.SetTags{Name: "n1", Tags: fsm.Tags{FailoverPriority: 1}}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	n3 := c.restart("n3")
	var stale atomic.Value
	await.True(t, 30*time.Second, func() bool {
		if !n3.CaughtUp() {
			return false
		}
		if p := n3.State().Primary; p != "n2" {
			stale.Store(p)
		}
		return true
	}, "n3 caught up")
	if p := stale.Load(); p != nil {
		t.Fatalf("n3 called itself caught up while its state named %q the primary (n2 was promoted while it was down)", p)
	}
}
