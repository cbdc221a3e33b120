package admin

import (
	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// patroni answers GET /patroni with this node's status in the shape Patroni's own endpoint
// has, for monitoring built for Patroni (its Zabbix and Grafana templates, scripts that read
// role and xlog positions): state, role, timeline, xlog positions in bytes, the database
// system identifier, tags, the maintenance pause, and on the primary its streaming standbys
// with their sync_state. Everything comes from the replicated state this node holds (its own
// last report), so it answers without touching PostgreSQL. 503 when this node has no member
// record or is still replaying its Raft log.
func (s *Server) patroni(ctx *fasthttp.RequestCtx) {
	if s.catchingUp() {
		writeError(ctx, fasthttp.StatusServiceUnavailable, catchingUpMessage)
		return
	}
	m, st, ok := s.self()
	if !ok {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "not a cluster member (yet)")
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, patroniBody(m, st, s.src.Version, s.src.Scope))
}

func patroniBody(m fsm.Member, st *fsm.State, version, scope string) map[string]any {
	ns := m.Status
	body := map[string]any{
		"state":            patroniState(ns.State),
		"role":             string(ns.Role),
		"timeline":         ns.Timeline,
		"cluster_unlocked": st.Primary == "",
		"patroni":          map[string]any{"version": version, "scope": scope, "name": m.Name},
	}
	if ns.SystemID != "" {
		body["database_system_identifier"] = ns.SystemID
	}
	if st.Paused {
		body["pause"] = true
	}
	if tags := patroniTags(m.Tags); len(tags) > 0 {
		body["tags"] = tags
	}
	if !ns.ReportedAt.IsZero() {
		body["dcs_last_seen"] = ns.ReportedAt.Unix()
	}
	switch ns.Role {
	case fsm.RolePrimary:
		body["xlog"] = map[string]any{"location": uint64(ns.FlushLSN)}
		if st.Primary == m.Name {
			var repl []map[string]any
			for _, name := range ns.Streaming {
				repl = append(repl, map[string]any{"application_name": name, "state": "streaming",
					"sync_state": syncState(st, m.Name, name)})
			}
			if len(repl) > 0 {
				body["replication"] = repl
			}
		}
	case fsm.RoleReplica:
		xlog := map[string]any{"received_location": uint64(ns.ReceivedLSN), "replayed_location": uint64(ns.ReplayedLSN), "paused": false}
		body["xlog"] = xlog
		if ns.Following != "" {
			body["replication_state"] = "streaming"
		}
	}
	return body
}

// patroniState maps a node state to Patroni's words for the state of PostgreSQL.
func patroniState(s fsm.NodeState) string {
	switch s {
	case fsm.StateRunningPrimary, fsm.StateRunningReplica, fsm.StatePromoting:
		return "running"
	case fsm.StateDemoting:
		return "stopping"
	case fsm.StateInitializing:
		return "starting"
	}
	return "stopped" // STOPPED, FENCED
}

// patroniTags lists the tags that differ from the defaults, under Patroni's names.
func patroniTags(t fsm.Tags) map[string]any {
	out := map[string]any{}
	if t.NoFailover {
		out["nofailover"] = true
	}
	if t.FailoverPriority != 1 {
		out["failover_priority"] = t.FailoverPriority
	}
	if t.NoSync {
		out["nosync"] = true
	}
	if t.NoLoadBalance {
		out["noloadbalance"] = true
	}
	if t.ReplicateFrom != "" {
		out["replicatefrom"] = t.ReplicateFrom
	}
	return out
}

// syncState is pg_stat_replication's sync_state of standby on primary as the replicated
// synchronous record has it: sync (or quorum, when fewer than all listed standbys must
// confirm) for a listed standby, async otherwise.
func syncState(st *fsm.State, primary, standby string) string {
	if st.SyncPrimary != primary || st.SyncCount == 0 {
		return "async"
	}
	for _, n := range st.SyncStandbys {
		if n == standby {
			if st.SyncCount < len(st.SyncStandbys) {
				return "quorum"
			}
			return "sync"
		}
	}
	return "async"
}
