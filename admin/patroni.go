package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"

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
	if pending := pendingRestart(st, m.Name); len(pending) > 0 {
		// Patroni's reason has the old and new value of each; the cluster-wide configuration
		// knows the new one.
		reason := map[string]any{}
		for _, name := range pending {
			r := map[string]string{}
			if v, ok := st.PGConfig.Params[name]; ok {
				r["new_value"] = v
			}
			reason[name] = r
		}
		body["pending_restart"] = true
		body["pending_restart_reason"] = reason
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

// patroniConfig answers GET /config (Patroni's dynamic configuration) with what is
// cluster-wide in PGBastion: postgresql.parameters, postgresql.pg_hba and the maintenance
// pause. Failover timings
// and modes are each node's pgbastion.yaml, not replicated settings.
func (s *Server) patroniConfig(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, patroniConfigOf(s.src.Cluster.State()))
}

func patroniConfigOf(st *fsm.State) map[string]any {
	params := map[string]string{}
	if st.PGConfig != nil {
		params = st.PGConfig.Params
	}
	pg := map[string]any{"parameters": params}
	if st.PGHBA != nil && len(st.PGHBA.Lines) > 0 {
		pg["pg_hba"] = st.PGHBA.Lines
	}
	out := map[string]any{"postgresql": pg}
	if st.Paused {
		out["pause"] = true
	}
	return out
}

// patchPatroniConfig is PATCH /config (patronictl edit-config and the tools built for it):
// postgresql.parameters change the cluster-wide parameters (null removes one; numbers and
// booleans are taken as PostgreSQL writes them), postgresql.pg_hba replaces the cluster-wide
// pg_hba list (null or [] removes it), pause turns maintenance mode on or off. With replace
// (PUT /config) the body is the whole configuration: parameters not given are removed, and so
// is the pg_hba list when the body has none. Any other key is refused, naming where PGBastion
// keeps it.
func (s *Server) patchPatroniConfig(replace bool) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !s.needCluster(ctx) {
			return
		}
		var body map[string]json.RawMessage
		if err := json.Unmarshal(ctx.PostBody(), &body); err != nil || body == nil {
			writeError(ctx, fasthttp.StatusBadRequest, `/config: the body must be a JSON object such as {"postgresql": {"parameters": {"work_mem": "64MB"}}}`)
			return
		}
		var pause *bool
		var params map[string]json.RawMessage
		var hba []string
		hbaGiven := false
		for key, raw := range body {
			switch key {
			case "pause":
				var p bool
				if err := json.Unmarshal(raw, &p); err != nil {
					writeError(ctx, fasthttp.StatusBadRequest, "/config: pause must be true or false")
					return
				}
				pause = &p
			case "postgresql":
				var pg map[string]json.RawMessage
				if err := json.Unmarshal(raw, &pg); err != nil {
					writeError(ctx, fasthttp.StatusBadRequest, "/config: postgresql must be an object")
					return
				}
				for k, v := range pg {
					if k == "pg_hba" {
						if err := json.Unmarshal(v, &hba); err != nil {
							writeError(ctx, fasthttp.StatusBadRequest, "/config: postgresql.pg_hba must be a list of pg_hba.conf lines (strings), or null to remove it")
							return
						}
						hbaGiven = true
						continue
					}
					if k != "parameters" {
						writeError(ctx, fasthttp.StatusBadRequest, "/config: postgresql."+k+" is not a cluster-wide setting in PGBastion: set it in each node's pgbastion.yaml (postgresql section); only postgresql.parameters, postgresql.pg_hba and pause change here")
						return
					}
					if err := json.Unmarshal(v, &params); err != nil {
						writeError(ctx, fasthttp.StatusBadRequest, "/config: postgresql.parameters must be an object")
						return
					}
				}
			default:
				writeError(ctx, fasthttp.StatusBadRequest, "/config: "+key+" is not a cluster-wide setting in PGBastion: failover timings and modes are set in each node's pgbastion.yaml (failover section); only postgresql.parameters, postgresql.pg_hba and pause change here")
				return
			}
		}
		set := map[string]string{}
		var reset []string
		for name, raw := range params {
			v, isNull, err := parameterValue(raw)
			if err != nil {
				writeError(ctx, fasthttp.StatusBadRequest, "/config: postgresql.parameters."+name+": "+err.Error())
				return
			}
			if isNull {
				reset = append(reset, name)
			} else {
				set[name] = v
			}
		}
		if replace && params != nil {
			if pc := s.src.Cluster.State().PGConfig; pc != nil {
				for name := range pc.Params {
					if _, ok := set[name]; !ok && !slices.Contains(reset, name) {
						reset = append(reset, name)
					}
				}
			}
		}
		slices.Sort(reset)
		// A PUT without a pg_hba list removes the one there is; a list equal to the current one
		// is not a change.
		cur := s.src.Cluster.State().PGHBA
		haveHBA := cur != nil && len(cur.Lines) > 0
		if replace && !hbaGiven && haveHBA {
			hbaGiven = true
		}
		if hbaGiven && ((len(hba) == 0 && !haveHBA) || (haveHBA && slices.Equal(hba, cur.Lines))) {
			hbaGiven = false
		}
		if hbaGiven {
			// Checked before anything is committed, so that a bad line changes nothing.
			if err := fsm.CheckHBALines("postgresql.pg_hba", hba); err != nil {
				writeError(ctx, fasthttp.StatusBadRequest, "/config: "+err.Error())
				return
			}
		}
		if len(set) > 0 || len(reset) > 0 {
			if _, _, ok := s.applyPGConfig(ctx, set, reset, 0); !ok {
				return
			}
		}
		if hbaGiven {
			if _, ok := s.applyPGHBA(ctx, hba, 0); !ok {
				return
			}
		}
		if pause != nil {
			if err := s.src.Cluster.SetPause(ctx, *pause); err != nil {
				writeFSMError(ctx, "pause", err)
				return
			}
		}
		writeJSON(ctx, fasthttp.StatusOK, patroniConfigOf(s.src.Cluster.State()))
	}
}

// parameterValue reads a parameter's JSON value as PostgreSQL would take it: a string as it
// is, a number as written, a boolean as on or off; null removes the parameter.
func parameterValue(raw json.RawMessage) (v string, isNull bool, err error) {
	var x any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&x); err != nil {
		return "", false, err
	}
	switch x := x.(type) {
	case nil:
		return "", true, nil
	case string:
		return x, false, nil
	case json.Number:
		return x.String(), false, nil
	case bool:
		if x {
			return "on", false, nil
		}
		return "off", false, nil
	}
	return "", false, errors.New("must be a string, a number, a boolean or null")
}
