package ha

import (
	"context"
	"errors"
	"fmt"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// RequestRestart asks node's agent to restart its PostgreSQL and returns the request's ID.
// The agent refuses (the request fails, with the reason) on the primary: switch over first.
func (n *Node) RequestRestart(ctx context.Context, node, reason string) (uint64, error) {
	res, err := n.applyChecked(ctx, fsm.RequestRestart{Node: node, Reason: reason})
	return res.ID, err
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
	if !ok || ctx.Err() != nil || a.busy != "" {
		return
	}
	ack := fsm.FinishRestart{ID: r.ID, Node: a.c.Name()}
	if refusal := a.restartRefusal(st); refusal != "" {
		ack.Message = refusal
		a.log.Warn("restart refused", "request", r.ID, "reason", refusal)
	} else if err := a.restart(ctx, r); err != nil {
		ack.Message = "restart failed: " + err.Error()
		a.lastErr = ack.Message
		a.log.Warn("restart failed", "request", r.ID, "error", err)
	} else {
		ack.Success = true
		a.log.Info("postgresql restarted", "request", r.ID)
	}
	a.restartAck = &ack
	a.finishRestart(ctx, ack)
}

// restartRefusal says why this node's PostgreSQL may not be restarted now, with what to do
// instead, or "".
func (a *Agent) restartRefusal(st *fsm.State) string {
	switch {
	case st.Primary == a.c.Name():
		return "this node is the primary: restarting it would stop every write; switch over first (pgbastion ctl switchover), then restart it as a replica"
	case st.Operation != nil:
		return fmt.Sprintf("a %s is in progress (operation %d); ask again when it has finished", st.Operation.Kind, st.Operation.ID)
	case a.fenced:
		return "this node is fenced (" + a.fenceReason + "); the cluster brings it back with a DEMOTE, not a restart"
	case a.down() || a.last == nil:
		return "PostgreSQL is not running here; a replica is started by the cluster when it follows the primary (see ctl list for why it is down)"
	}
	return ""
}

// restart stops and starts PostgreSQL, reporting the node STOPPED with the reason meanwhile.
func (a *Agent) restart(ctx context.Context, r fsm.RestartRequest) error {
	a.log.Info("restarting postgresql", "request", r.ID, "reason", r.Reason)
	a.busy, a.restarting = fsm.StateStopped, fmt.Sprintf("restarting at an operator's request (%d)", r.ID)
	a.report(ctx)
	rctx, cancel := context.WithTimeout(ctx, a.cfg.Failover.DirectiveTimeout)
	defer cancel()
	_, err := a.pg.Stop(rctx)
	if err == nil {
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
