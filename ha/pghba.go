package ha

import (
	"context"
	"errors"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// HBA is what the agent needs to apply the cluster-wide pg_hba list to its own PostgreSQL.
// pgctl.Controller implements it; without it the list is recorded but not applied on this
// node.
type HBA interface {
	// ApplyClusterHBA makes lines the cluster-wide pg_hba list on this node (empty: none) and
	// says what became of it; local is true when the node's own postgresql.pg_hba takes
	// precedence. An error that matches ErrHBARefused is final for these lines (PostgreSQL
	// refuses them, and the previous file stays); any other is worth another try.
	ApplyClusterHBA(ctx context.Context, lines []string) (outcome string, local bool, err error)
}

// ErrHBARefused marks an HBA error that trying again will not mend: PostgreSQL refuses the
// lines.
var ErrHBARefused = errors.New("pg_hba refused")

// SetPGHBA replaces the cluster-wide pg_hba list (empty lines: remove it). ifVersion, when not
// 0, applies the change only if the list is still at that version. It returns the new version;
// every node's agent then applies it and reports back (State.PGHBA.Nodes).
func (n *Node) SetPGHBA(ctx context.Context, lines []string, ifVersion uint64) (uint64, error) {
	res, err := n.applyChecked(ctx, fsm.SetPGHBA{Lines: lines, IfVersion: ifVersion})
	return res.ID, err
}

// pgHBAState is the agent's record of applying the cluster-wide pg_hba list.
type pgHBAState struct {
	applied  uint64 // version applied (with or without a refusal)
	reported uint64 // version whose outcome the FSM has
	local    bool
	outcome  string
	refused  string
	lastTry  time.Time
}

// applyPGHBA applies the cluster-wide pg_hba list when this node has not applied its current
// version yet, and reports the outcome. PostgreSQL need not run: the list is then written
// before it starts.
func (a *Agent) applyPGHBA(ctx context.Context, st *fsm.State) {
	h := st.PGHBA
	if a.hba == nil || h == nil || ctx.Err() != nil {
		return
	}
	if a.hbaState.applied != h.Version {
		if a.busy != "" || st.Operation != nil {
			return // not while a failover, switchover or clone runs
		}
		now := time.Now()
		if now.Sub(a.hbaState.lastTry) < a.cfg.Health.Interval {
			return // failed a moment ago: try again at the next probe
		}
		a.hbaState.lastTry = now
		actx, cancel := context.WithTimeout(ctx, a.cfg.Failover.DirectiveTimeout)
		outcome, local, err := a.hba.ApplyClusterHBA(actx, h.Lines)
		cancel()
		if err != nil && !errors.Is(err, ErrHBARefused) {
			a.log.Warn("cannot apply the cluster-wide pg_hba; trying again", "version", h.Version, "error", err)
			return
		}
		a.hbaState = pgHBAState{applied: h.Version, reported: a.hbaState.reported, local: local, outcome: outcome}
		if err != nil {
			a.hbaState.refused = err.Error()
			a.log.Warn("PostgreSQL refused the cluster-wide pg_hba", "version", h.Version, "error", err)
		} else {
			a.log.Info("cluster-wide pg_hba applied", "version", h.Version, "outcome", outcome)
		}
	}
	if a.hbaState.reported == a.hbaState.applied {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, a.cfg.Health.Timeout)
	defer cancel()
	s := a.hbaState
	r, err := a.c.Apply(rctx, fsm.ReportPGHBA{Node: a.c.Name(), Version: s.applied, Local: s.local, Outcome: s.outcome, Error: s.refused})
	if err = errors.Join(err, r.Error()); err != nil {
		a.log.Debug("pg_hba report not accepted", "error", err)
		return
	}
	a.hbaState.reported = a.hbaState.applied
}
