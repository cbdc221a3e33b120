package admin

import (
	"io"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// labelEscaper escapes a Prometheus label value (text exposition format: backslash, double
// quote and line feed).
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// Label returns name{key="value",...} with the values escaped; kv alternates keys and values.
func Label(name string, kv ...string) string {
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(kv[i])
		b.WriteString(`="`)
		b.WriteString(labelEscaper.Replace(kv[i+1]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// Bool is 1 for true and 0 for false.
func Bool(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// nodeStates are the values of pgbastion_member_state's state label: each member has a
// series for every state, 1 for the one it is in, so that a dashboard can graph them.
var nodeStates = []fsm.NodeState{fsm.StateInitializing, fsm.StateRunningPrimary, fsm.StateRunningReplica,
	fsm.StatePromoting, fsm.StateDemoting, fsm.StateFenced, fsm.StateStopped}

// writeClusterMetrics writes the cluster as this node sees it: its own roles (primary, Raft
// leader, write lease, caught up) and every member's status from the replicated state. They
// are computed at scrape time, so members that join or leave need no registration.
func writeClusterMetrics(w io.Writer, c Cluster, catchingUp bool, now time.Time) {
	st := c.State()
	self := c.Name()
	leader, _ := c.Leader()
	metrics.WriteGaugeUint64(w, "pgbastion_cluster_caught_up", Bool(!catchingUp))
	metrics.WriteGaugeUint64(w, "pgbastion_cluster_members", uint64(len(st.Members)))
	metrics.WriteGaugeUint64(w, "pgbastion_cluster_has_primary", Bool(st.Primary != ""))
	metrics.WriteGaugeUint64(w, "pgbastion_cluster_paused", Bool(st.Paused))
	metrics.WriteGaugeUint64(w, "pgbastion_cluster_operation_in_progress", Bool(st.Operation != nil))
	metrics.WriteGaugeUint64(w, "pgbastion_cluster_writes_paused", Bool(st.WritePause != nil))
	// When a switchover is booked for (Unix seconds), 0 without one: a dashboard shows it, an
	// alert can warn before a maintenance window.
	scheduled := uint64(0)
	if sch := st.ScheduledSwitchover; sch != nil && sch.At.Unix() > 0 {
		scheduled = uint64(sch.At.Unix())
	}
	metrics.WriteGaugeUint64(w, "pgbastion_cluster_switchover_scheduled_timestamp_seconds", scheduled)
	metrics.WriteCounterUint64(w, "pgbastion_cluster_raft_epoch", st.Epoch)
	metrics.WriteGaugeUint64(w, "pgbastion_node_is_primary", Bool(st.Primary == self))
	metrics.WriteGaugeUint64(w, "pgbastion_node_is_raft_leader", Bool(leader == self))
	metrics.WriteGaugeUint64(w, "pgbastion_node_write_lease_held", Bool(c.HoldsWriteLease()))
	for _, name := range st.MemberNames() {
		m := st.Members[name]
		s := m.Status
		metrics.WriteGaugeUint64(w, Label("pgbastion_member_primary", "member", name), Bool(st.Primary == name))
		metrics.WriteGaugeUint64(w, Label("pgbastion_member_healthy", "member", name), Bool(s.Healthy))
		for _, state := range nodeStates {
			metrics.WriteGaugeUint64(w, Label("pgbastion_member_state", "member", name, "state", string(state)), Bool(s.State == state))
		}
		metrics.WriteGaugeUint64(w, Label("pgbastion_member_timeline", "member", name), uint64(s.Timeline))
		metrics.WriteGaugeUint64(w, Label("pgbastion_member_lag_bytes", "member", name), s.LagBytes)
		if a := ageSeconds(now, s.ReportedAt); a != nil {
			metrics.WriteGaugeFloat64(w, Label("pgbastion_member_status_age_seconds", "member", name), *a)
		}
		if a := ageSeconds(now, m.Lease.RenewedAt); a != nil {
			metrics.WriteGaugeFloat64(w, Label("pgbastion_member_lease_age_seconds", "member", name), *a)
		}
		// Patroni's pending_restart: parameters that take effect at the next restart.
		metrics.WriteGaugeUint64(w, Label("pgbastion_member_pending_restart", "member", name), uint64(len(pendingRestart(st, name))))
		if h := st.PGHBA; h != nil {
			r := h.Nodes[name]
			metrics.WriteGaugeUint64(w, Label("pgbastion_member_pg_hba_refused", "member", name), Bool(r.Version == h.Version && r.Error != ""))
		}
	}
}

// metricHelp is printed at the top of /metrics: what the cluster series mean.
const metricHelp = `# PGBastion metrics. pgbastion_node_*: this node; pgbastion_member_*{member}: every member as
# the replicated state shows it (status_age_seconds large = the member's agent or link is down);
# pgbastion_proxy_*: this node's proxy; pgbastion_pool_*{backend,database,user}: its pools;
# pgbastion_vip_*: the floating IP on this node; pgbastion_cluster_events_total{type,severity}: the
# cluster events this node derived (GET /cluster/events); pgbastion_webhook_deliveries_total and
# pgbastion_callback_runs_total: their delivery.
`
