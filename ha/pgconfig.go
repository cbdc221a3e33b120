package ha

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// Settings is what the agent needs to apply the cluster-wide PostgreSQL configuration to its
// own PostgreSQL. pgctl.Controller implements it; without it the configuration is recorded but
// not applied on this node.
type Settings interface {
	// ApplySettings runs ALTER SYSTEM SET for every parameter of set and ALTER SYSTEM RESET
	// for every one of reset, each on its own, then reloads the configuration. It returns the
	// parameters PostgreSQL refused, with its reason, and those whose new value waits for a
	// restart. An error means nothing could be done (PostgreSQL unreachable).
	ApplySettings(ctx context.Context, set map[string]string, reset []string) (SettingsResult, error)
}

// SettingsResult is the outcome of ApplySettings.
type SettingsResult struct {
	// Refused maps a parameter to PostgreSQL's reason for refusing it.
	Refused map[string]string
	// PendingRestart lists, sorted, the parameters whose value changes at the next restart.
	PendingRestart []string
}

// UpdatePGConfig changes the cluster-wide PostgreSQL configuration: set adds or changes
// parameters, reset removes them. ifVersion, when not 0, applies the change only if the
// configuration is still at that version. It returns the new version. Every node's agent then
// applies it to its PostgreSQL and reports back (State.PGConfig.Nodes).
func (n *Node) UpdatePGConfig(ctx context.Context, set map[string]string, reset []string, ifVersion uint64) (uint64, error) {
	res, err := n.applyChecked(ctx, fsm.UpdatePGConfig{Set: set, Reset: reset, IfVersion: ifVersion})
	return res.ID, err
}

// pgConfigState is the agent's record of applying the cluster-wide configuration.
type pgConfigState struct {
	applied  uint64 // version applied to the running PostgreSQL (0: apply again)
	reported uint64 // version whose outcome the FSM has
	pending  []string
	refused  string
	lastTry  time.Time
}

// forgetPGConfig makes the agent apply the configuration again: PostgreSQL was restarted,
// re-pointed or rebuilt (a clone or a rewrite of postgresql.auto.conf may have lost it, and
// what waits for a restart may no longer).
func (a *Agent) forgetPGConfig() { a.pgc.applied = 0 }

// applyPGConfig applies the cluster-wide configuration when this node's running PostgreSQL
// does not have its current version yet, and reports the outcome.
func (a *Agent) applyPGConfig(ctx context.Context, st *fsm.State) {
	pc := st.PGConfig
	if a.settings == nil || pc == nil || ctx.Err() != nil {
		return
	}
	if a.pgc.applied != pc.Version {
		if a.fenced || a.busy != "" || a.notRunning() || st.Operation != nil {
			return // not while PostgreSQL is down, or a failover or switchover runs
		}
		now := time.Now()
		if now.Sub(a.pgc.lastTry) < a.cfg.Health.Interval {
			return // failed a moment ago: try again at the next probe
		}
		a.pgc.lastTry = now
		actx, cancel := context.WithTimeout(ctx, a.cfg.Failover.DirectiveTimeout)
		res, err := a.settings.ApplySettings(actx, maps.Clone(pc.Params), slices.Clone(pc.Reset))
		cancel()
		if err != nil {
			a.log.Warn("cannot apply the cluster-wide PostgreSQL configuration", "version", pc.Version, "error", err)
			return
		}
		a.pgc.applied, a.pgc.pending, a.pgc.refused, a.pgc.lastTry = pc.Version, res.PendingRestart, describeRefused(res.Refused), time.Time{}
		if a.pgc.refused != "" {
			a.log.Warn("postgresql refused cluster-wide parameters", "version", pc.Version, "refused", a.pgc.refused)
		} else {
			a.log.Info("cluster-wide PostgreSQL configuration applied", "version", pc.Version, "pending_restart", strings.Join(res.PendingRestart, ","))
		}
	}
	if a.pgc.reported == a.pgc.applied {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, a.cfg.Health.Timeout)
	defer cancel()
	r, err := a.c.Apply(rctx, fsm.ReportPGConfig{Node: a.c.Name(), Version: a.pgc.applied, PendingRestart: a.pgc.pending, Error: a.pgc.refused})
	if err = errors.Join(err, r.Error()); err != nil {
		a.log.Debug("configuration report not accepted", "error", err)
		return
	}
	a.pgc.reported = a.pgc.applied
}

func describeRefused(refused map[string]string) string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(refused)) {
		parts = append(parts, fmt.Sprintf("%s: %s", name, refused[name]))
	}
	return strings.Join(parts, "; ")
}
