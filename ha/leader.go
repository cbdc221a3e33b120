package ha

import (
	"context"
	"log/slog"
	"time"

	"github.com/pgbastion/pgbastion/ha/controller"
	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/tracing"
)

// maxControllerPeriod: the controller runs at least this often even when nothing changes.
const maxControllerPeriod = time.Second

// monitorLeadership follows raft's NotifyCh (delivered in order, unlike LeaderCh) and runs one
// leaderLoop per term of leadership, never two at once: the previous loop has returned before
// the next starts (consul's leader.go pattern).
func (n *Node) monitorLeadership() {
	var stop chan struct{}
	var done chan struct{}
	revoke := func() {
		if stop != nil {
			close(stop)
			<-done
			stop, done = nil, nil
		}
	}
	defer revoke()
	for {
		select {
		case isLeader := <-n.notifyCh:
			if isLeader && stop == nil {
				stop, done = make(chan struct{}), make(chan struct{})
				go func(stop, done chan struct{}) {
					defer close(done)
					n.leaderLoop(stop)
				}(stop, done)
				n.log.Info("raft leadership acquired")
			} else if !isLeader && stop != nil {
				revoke()
				n.log.Info("raft leadership lost")
			}
		case <-n.ctx.Done():
			return
		}
	}
}

// leaderLoop establishes leadership and then runs the failover controller until stop closes.
func (n *Node) leaderLoop(stop chan struct{}) {
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()

	leaderSince, ok := n.establishLeadership(ctx)
	if !ok {
		return
	}
	defer n.revokeLeadership()

	sub := n.fsm.Subscribe()
	defer sub.Close()
	cfg := n.cfg.controllerConfig()
	log := n.log.With("role", "controller")
	var lastWaiting string
	defer n.waiting.Store(nil)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		st := n.fsm.State()
		d := controller.Step(st, controller.Observations{Now: n.now(), LeaderSince: leaderSince}, cfg)
		if len(d.Commands) > 0 {
			if !n.applyDecision(ctx, log, d.Commands) {
				// A command failed or was rejected: the state moved under us or Raft is in
				// trouble. Look again shortly rather than spin.
				if !sleepCtx(ctx, 50*time.Millisecond) {
					return
				}
			}
			continue
		}
		if d.Waiting != lastWaiting {
			if d.Waiting != "" {
				log.Info("controller waiting", "reason", d.Waiting)
			}
			lastWaiting = d.Waiting
			w := d.Waiting // a copy: the API reads it while this loop goes on
			n.waiting.Store(&w)
		}
		wait := maxControllerPeriod
		if !d.WakeAt.IsZero() {
			wait = min(wait, max(time.Until(d.WakeAt), time.Millisecond))
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-sub.C:
		case <-timer.C:
		case <-n.reestablish:
			if leaderSince, ok = n.establishLeadership(ctx); !ok {
				return
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// establishLeadership waits until every earlier entry is applied (Barrier), then begins a new
// epoch with LeaderEstablished, whose application supersedes directives of older epochs. It
// returns the local time the epoch began.
func (n *Node) establishLeadership(ctx context.Context) (time.Time, bool) {
	backoff := 50 * time.Millisecond
	for {
		err := n.await(ctx, n.raft.Barrier(n.cfg.Failover.DirectiveTimeout))
		if err == nil {
			var res fsm.Result
			b, _ := fsm.Encode(fsm.LeaderEstablished{Leader: n.name}, time.Time{})
			res, _, err = n.applyLocal(ctx, b)
			if err == nil && res.Err == nil {
				since := n.now()
				n.established.Store(true)
				n.log.Info("leadership established", "epoch", res.ID)
				return since, true
			}
			if err == nil {
				err = res.Err
			}
		}
		n.log.Warn("cannot establish leadership yet", "error", err)
		if !sleepCtx(ctx, backoff) {
			return time.Time{}, false
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (n *Node) revokeLeadership() {
	n.established.Store(false)
	n.log.Info("leadership revoked")
}

// applyDecision applies the controller's commands in order and reports whether all succeeded.
func (n *Node) applyDecision(ctx context.Context, log *slog.Logger, cmds []fsm.Command) bool {
	for _, c := range cmds {
		b, err := fsm.Encode(c, time.Time{})
		if err != nil {
			log.Warn("controller command not encodable", "command", c, "error", err)
			return false
		}
		actx, cancel := context.WithTimeout(ctx, defaultApplyTimeout)
		ref := n.decisionTrace(c)
		res, _, err := n.applyLocal(n.traced(actx, ref), b)
		cancel()
		if err != nil {
			log.Warn("controller command failed", "command", fsm.Describe(c), "error", err)
			return false
		}
		if res.Err != nil {
			log.Warn("controller command rejected", "command", fsm.Describe(c), "error", res.Err)
			return false
		}
		log.Info("controller", append([]any{"action", fsm.Describe(c), "index", res.Index}, tracing.LogAttrs(ref)...)...)
		if f, ok := c.(fsm.FinishOperation); ok {
			// The operation's span, from its start to now, with its directives: recorded
			// once, by the leader that ended it.
			st := n.fsm.State()
			if op, ok := st.OperationByID(f.ID); ok && !op.Active() {
				tracing.RecordOperation(st, op, n.name)
			}
		}
	}
	return true
}

// decisionTrace returns the trace for an operation the controller's command c creates: a
// booked switchover continues the booking request's trace; an automatic failover starts one.
func (n *Node) decisionTrace(c fsm.Command) *fsm.TraceRef {
	switch c.(type) {
	case fsm.StartOperation:
		return tracing.AutomaticRef()
	case fsm.RequestSwitchover: // the controller asks for one only when a booking is due
		if b := n.fsm.State().ScheduledSwitchover; b != nil && b.Trace != nil {
			return tracing.ContinueRef(b.Trace)
		}
		return tracing.AutomaticRef()
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
