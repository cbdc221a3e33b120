package ha

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/tracing"
)

// RequestRestart asks node's agent to restart its PostgreSQL and returns the request's ID.
// The agent refuses (the request fails, with the reason) on the primary: switch over first.
func (n *Node) RequestRestart(ctx context.Context, node, reason string) (uint64, error) {
	res, err := n.applyChecked(n.traced(ctx, tracing.RequestRef(ctx)), fsm.RequestRestart{Node: node, Reason: reason})
	return res.ID, err
}

// RequestReinit asks node's agent to replace its data directory with a fresh clone of the
// primary (Patroni's reinit) and returns the request's ID. The agent refuses on the primary,
// and when there is no primary to clone from.
func (n *Node) RequestReinit(ctx context.Context, node, reason string) (uint64, error) {
	res, err := n.applyChecked(n.traced(ctx, tracing.RequestRef(ctx)), fsm.RequestReinit{Node: node, Reason: reason})
	return res.ID, err
}

// Reinitializer is implemented by a PostgreSQL that can replace its data directory with a
// clone of the primary.
type Reinitializer interface {
	// Reinit stops the server, replaces its data directory with a base backup of up, and
	// starts it as up's standby. It changes nothing when up cannot be reached or the data
	// directory belongs to another cluster.
	Reinit(ctx context.Context, up Upstream) error
}

// maybeRestart executes a pending restart request for this node (one at a time) and reports
// its end.
func (a *Agent) maybeRestart(ctx context.Context, st *fsm.State) {
	if ack := a.restartAck; ack != nil {
		if r, ok := st.Restart(ack.ID); !ok || r.Status != fsm.RestartPending {
			a.restartAck = nil
		} else {
			a.finishRestart(ctx, *ack)
			return
		}
	}
	r, ok := st.PendingRestart(a.c.Name())
	// st may predate the acknowledgement of the request just executed: never run one twice.
	if !ok || r.Index <= a.lastRestart || ctx.Err() != nil || a.busy != "" {
		return
	}
	a.lastRestart = r.Index
	ack := fsm.FinishRestart{ID: r.ID, Node: a.c.Name()}
	what, do := "restart", a.restart
	if r.Reinit {
		what, do = "reinitialisation", a.reinit
	}
	// The request's API request ID (and trace) in the log lines and the span.
	log := a.log.With(append([]any{"request", r.ID}, tracing.LogAttrs(r.Trace)...)...)
	sctx, span := tracing.StartRestart(ctx, r, a.c.Name())
	var err error
	if refusal := a.restartRefusal(st, r); refusal != "" {
		ack.Message = refusal
		err = errors.New(refusal)
		log.Warn(what+" refused", "reason", refusal)
	} else if err = do(sctx, st, r); err != nil {
		ack.Message = what + " failed: " + err.Error()
		a.lastErr = ack.Message
		log.Warn(what+" failed", "error", err)
	} else {
		ack.Success = true
		log.Info("postgresql " + map[bool]string{false: "restarted", true: "reinitialised"}[r.Reinit])
	}
	tracing.EndSpan(span, err)
	a.restartAck = &ack
	a.finishRestart(ctx, ack)
}

// restartRefusal says why this node's PostgreSQL may not be restarted (or reinitialised) now,
// with what to do instead, or "".
func (a *Agent) restartRefusal(st *fsm.State, r fsm.RestartRequest) string {
	if r.Reinit {
		_, reinits := a.pg.(Reinitializer)
		switch {
		case st.Primary == a.c.Name():
			return "this node is the primary: its data is the cluster's; switch over first (pgbastion ctl switchover), then reinitialise it as a replica"
		case st.Operation != nil:
			return fmt.Sprintf("a %s is in progress (operation %d); ask again when it has finished", st.Operation.Kind, st.Operation.ID)
		case st.Primary == "":
			return "the cluster has no primary to clone from; nothing was changed"
		case !reinits:
			return "this node's PostgreSQL controller cannot reinitialise"
		}
		// A fenced or stopped replica is what reinit is for.
		return ""
	}
	switch {
	case st.Primary == a.c.Name():
		return "this node is the primary: restarting it would stop every write; switch over first (pgbastion ctl switchover), then restart it as a replica"
	case st.Operation != nil:
		return fmt.Sprintf("a %s is in progress (operation %d); ask again when it has finished", st.Operation.Kind, st.Operation.ID)
	case a.fenced:
		return "this node is fenced (" + a.fenceReason + "); the cluster brings it back with a DEMOTE, not a restart"
	case a.notRunning() && !st.Paused:
		return "PostgreSQL is not running here; a replica is started by the cluster when it follows the primary (see ctl list for why it is down)"
	case a.notRunning():
		// Paused, the cluster starts no replica: the operator's restart does, as a standby
		// of the primary (what the cluster would have done), never as it happens to be.
		if _, ok := a.upstream(st); !ok {
			return "PostgreSQL is not running here and the cluster has no primary to follow; nothing was started"
		}
	}
	return ""
}

// notRunning: PostgreSQL is down here, or has not been seen running since the agent started.
func (a *Agent) notRunning() bool { return a.down() || a.last == nil }

// upstream is the primary as a replica's upstream.
func (a *Agent) upstream(st *fsm.State) (Upstream, bool) {
	m, ok := st.Members[st.Primary]
	if !ok || st.Primary == a.c.Name() || m.PGHost == "" {
		return Upstream{}, false
	}
	return Upstream{Name: m.Name, Host: m.PGHost, Port: m.PGPort}, true
}

// CloneProgress is implemented by a Reinitializer that can tell how far the clone running now
// has come ("12.3 GiB copied of about 40.1 GiB (31 %) in 5m10s"); "" when none runs.
type CloneProgress interface {
	CloneProgress() string
}

// reinit replaces the data directory with a clone of the primary, reporting the node STOPPED
// with the reason meanwhile. A clone takes as long as the database is large: no timeout but
// the agent's own end. While it runs the agent keeps reporting, every health.interval, with
// the clone's progress in the reason: a node whose report is old looks dead (ctl list and the
// status_age metric flag it), and a clone of a large database takes hours.
func (a *Agent) reinit(ctx context.Context, st *fsm.State, r fsm.RestartRequest) error {
	m, ok := st.Members[st.Primary]
	if !ok || m.PGHost == "" {
		return fmt.Errorf("the primary %s has no PostgreSQL address registered", st.Primary)
	}
	up := Upstream{Name: m.Name, Host: m.PGHost, Port: m.PGPort}
	a.log.Info("reinitialising postgresql from the primary", "request", r.ID, "primary", up.Name, "reason", r.Reason)
	doing := fmt.Sprintf("reinitialising at an operator's request (%d): cloning from %s", r.ID, up.Name)
	a.busy, a.restarting = fsm.StateStopped, doing
	a.report(ctx)
	// The agent's loop waits in Reinit below and touches nothing else meanwhile: until this
	// goroutine has ended, it alone reads and writes the agent's reporting fields.
	done, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		prog, _ := a.pg.(CloneProgress)
		t := time.NewTicker(a.cfg.Health.Interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			a.restarting = doing
			if prog != nil {
				if p := prog.CloneProgress(); p != "" {
					a.restarting = doing + ", " + p
				}
			}
			a.report(ctx)
		}
	}()
	err := a.pg.(Reinitializer).Reinit(ctx, up)
	close(done)
	<-ended
	if err == nil {
		a.following = up.Name
		// A fenced node is fenced no more: its data is a fresh copy of the primary's.
		a.fenced, a.fenceReason = false, ""
	}
	a.busy, a.restarting = "", ""
	a.forgetPGConfig()
	a.probe(ctx)
	a.report(ctx)
	return err
}

// restart stops and starts PostgreSQL, reporting the node STOPPED with the reason meanwhile.
// A stopped replica (only asked for while the cluster is paused) is started as a standby of
// the primary, as the cluster does when it is not paused.
func (a *Agent) restart(ctx context.Context, st *fsm.State, r fsm.RestartRequest) error {
	down := a.notRunning()
	a.log.Info("restarting postgresql", "request", r.ID, "reason", r.Reason, "was_running", !down)
	a.busy, a.restarting = fsm.StateStopped, fmt.Sprintf("restarting at an operator's request (%d)", r.ID)
	a.report(ctx)
	rctx, cancel := context.WithTimeout(ctx, a.cfg.Failover.DirectiveTimeout)
	defer cancel()
	var err error
	if up, ok := a.upstream(st); down && ok {
		if _, err = a.pg.Follow(rctx, up); err == nil {
			a.following = up.Name
		}
	} else if _, err = a.pg.Stop(rctx); err == nil {
		err = a.pg.Start(rctx)
	}
	a.busy, a.restarting = "", ""
	a.forgetPGConfig()
	a.probe(ctx)
	a.report(ctx)
	return err
}

func (a *Agent) finishRestart(ctx context.Context, ack fsm.FinishRestart) {
	rctx, cancel := context.WithTimeout(ctx, a.cfg.Health.Timeout)
	defer cancel()
	res, err := a.c.Apply(rctx, ack)
	if err = errors.Join(err, res.Error()); err != nil {
		a.log.Debug("restart report not accepted", "error", err)
		return
	}
	a.restartAck = nil
}

// RequestReload asks every member to read its configuration file again (patronictl
// reload); it returns the request's ID. Each node's daemon carries it out and reports with
// ReportReload; State().Reload holds the results.
func (n *Node) RequestReload(ctx context.Context) (uint64, error) {
	res, err := n.applyChecked(ctx, fsm.RequestReload{})
	return res.ID, err
}

// ReportReload records this node's result for reload request r.ID.
func (n *Node) ReportReload(ctx context.Context, r fsm.ReportReload) error {
	r.Node = n.name
	_, err := n.applyChecked(ctx, r)
	return err
}
