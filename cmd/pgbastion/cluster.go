package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/admin"
	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/notify"
	"github.com/pgbastion/pgbastion/ha/pgctl"
	"github.com/pgbastion/pgbastion/ha/tracing"
	"github.com/pgbastion/pgbastion/netlink"
)

// runCluster runs a cluster member: Raft node, agent, proxy, VIP and API, wired together.
// Data flows one way: the HA core publishes state; the proxy, the VIP and the API follow it.
func (d *daemon) runCluster(ctx context.Context, hc ha.Config) error {
	cfg := d.cfg
	log := d.log
	pgc := cfg.PostgreSQL.Config
	pgc.Scope = hc.Raft.ClusterName
	inst, err := pgctl.New(pgc, log.With("component", "postgresql"))
	if err != nil {
		return err
	}
	d.reloader.setHBA(inst.ReloadHBA, inst.ReloadIdent)
	advHost := cfg.PostgreSQL.AdvertiseHost
	if advHost == "" {
		advHost = inst.Config().Host
	}
	// The member record tells other nodes and operators where this node's API and proxy are:
	// a listener on every interface (0.0.0.0:8080) is published under the node's own address.
	nodeHost := advertisedHost(hc.Raft.Advertise, hc.Raft.Bind, advHost)
	node, err := ha.Open(hc, ha.NodeOptions{Logger: log, Member: ha.MemberInfo{
		APIAddress: reachable(cfg.API.Listen, nodeHost), ProxyRWAddress: reachable(cfg.Proxy.ListenRW, nodeHost),
		ProxyROAddress: reachable(cfg.Proxy.ListenRO, nodeHost),
		PGHost:         advHost, PGPort: inst.Config().Port,
	}})
	if err != nil {
		return fmt.Errorf("starting the Raft node: %w", err)
	}
	defer node.Close()

	set := metrics.NewSet()
	notifier := notify.New(cfg.PostgreSQL.Callbacks, cfg.Webhooks, notify.Options{
		Cluster: hc.Raft.ClusterName, Node: node.Name(), IsLeader: node.IsLeader, Logger: log, Metrics: set,
	})

	ctl := pgctl.NewController(inst, node.Name(), cfg.PostgreSQL.Bootstrap, node.State)
	d.reloader.setParams(ctl.ReloadParameters)
	agent := ha.NewAgent(node, ctl, hc, ha.AgentOptions{
		Logger:              log,
		InflightWrites:      d.proxy.WritesInFlight,
		SlotCleanupInterval: cfg.PostgreSQL.SlotCleanupInterval,
		PermanentSlots:      cfg.PostgreSQL.PermanentSlots,
		PrePromote:          prePromoteHook(cfg.PostgreSQL.PrePromote, cfg.PostgreSQL.Callbacks.Timeout, hc.Raft.ClusterName, node.Name(), log),
		OnSelfFence: func(reason string) {
			log.Error("PostgreSQL fenced itself", "reason", reason)
			notifier.SelfFenced(reason)
		},
	})

	var vip *netlink.Manager
	if cfg.VIP.Enabled() {
		vip, err = netlink.New(cfg.VIP, log.With("component", "vip"))
		if err != nil {
			return err
		}
	}

	api, err := admin.New(cfg.API, admin.Sources{
		Cluster:     node,
		Version:     version,
		Scope:       hc.Raft.ClusterName,
		Local:       d.localStatus(vip),
		Proxy:       d.proxyStatus,
		Connections: d.proxyConnections,
		ProxyOps:    d.proxyOps(),
		Metrics:     []*metrics.Set{d.proxy.Metrics().Set(), set, d.reloader.set, tracing.Metrics},
		Writers:     []func(io.Writer){d.writeMetrics(vip)},
		Events:      notifier.Recent,
		Reload:      d.reloader.apiReload,
		CheckPGParams: func(ctx context.Context, set map[string]string) (bool, error) {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return ctl.CheckSettings(cctx, set)
		},
	}, log.With("component", "api"))
	if err != nil {
		return err
	}

	// The parts run until runCtx ends, not ctx (the stop signal): a primary may first hand over
	// (postgresql.switchover_on_exit), which needs its agent and its proxy.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(runCtx); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	run("proxy", d.proxy.Run)
	run("agent", agent.Run)
	run("notify", func(ctx context.Context) error { return notifier.Run(ctx, node) })
	run("api", api.Run)
	run("reloads", func(ctx context.Context) error { return d.followReloads(ctx, node) })
	var localSocket string
	if cfg.Proxy.LocalSocket {
		localSocket = net.JoinHostPort(inst.Config().SocketDir, strconv.Itoa(inst.Config().Port))
	}
	run("routing", func(ctx context.Context) error { return followCluster(ctx, node, d.proxy, vip, localSocket) })
	if vip != nil {
		run("vip", vip.Run)
	}
	var result error
	select {
	case <-ctx.Done():
		log.Info("stop signal received: stopping (a second signal exits at once)")
		if cfg.PostgreSQL.SwitchoverOnExit {
			switchoverOnExit(node, log)
		}
	case <-node.Done():
		result = fmt.Errorf("the Raft node stopped: %w", node.Err())
	case result = <-errc:
	}
	cancel()
	wg.Wait()
	if vip != nil {
		rctx, c := context.WithTimeout(context.Background(), cfg.VIP.ResignTimeout)
		_ = vip.Release(rctx)
		c()
	}
	if cfg.PostgreSQL.StopOnExit {
		// The agent has stopped: nothing restarts PostgreSQL behind our back.
		if stopPostgresOnExit(inst, log) {
			reportStoppedOnExit(node, agent, log)
		}
	} else if inContainer() {
		log.Warn("pgbastion stops and leaves PostgreSQL running, but this looks like a container, which ends PostgreSQL with a kill -9; set postgresql.stop_on_exit: true")
	}
	return result
}

// switchoverOnExitTimeout bounds the switchover a stopping primary asks for: one normally
// takes a second or two; the runtime's stop timeout must leave room for it.
const switchoverOnExitTimeout = 30 * time.Second

// switchoverOnExit, on the primary of a cluster that is not paused, switches over to the best
// replica before the node stops (postgresql.switchover_on_exit): clients see a second of held
// writes instead of the refused ones of a failover. When no switchover is possible (no healthy
// replica, another operation running), the node stops anyway and the cluster fails over.
func switchoverOnExit(node *ha.Node, log *slog.Logger) {
	st := node.State()
	if st.Primary != node.Name() {
		return
	}
	if st.Paused {
		log.Info("postgresql.switchover_on_exit: the cluster is paused (maintenance): no switchover; it stays without a primary until this node is back or an operator fails over")
		return
	}
	// Without quorum (the last member standing) no switchover can even be asked for; without
	// a healthy replica none would be accepted: stop at once rather than wait for a refusal.
	if !node.HoldsWriteLease() {
		log.Info("postgresql.switchover_on_exit: this node is cut off from the Raft majority: no switchover")
		return
	}
	if !hasLiveReplica(st, node.Name(), time.Now()) {
		log.Info("postgresql.switchover_on_exit: no healthy replica reports: no switchover")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), switchoverOnExitTimeout)
	defer cancel()
	start := time.Now()
	log.Info("postgresql.switchover_on_exit: this node is the primary; switching over before stopping")
	// The operation's request ID says why it happened (ctl history, webhooks, the log). The
	// request itself gets a few seconds: a Raft group that cannot commit it now (the quorum
	// just went) will not do better while we wait.
	ctx = tracing.WithRequest(ctx, tracing.Request{ID: "switchover_on_exit:" + node.Name()})
	actx, acancel := context.WithTimeout(ctx, 3*time.Second)
	id, err := node.Switchover(actx, node.Name(), "")
	acancel()
	if err != nil {
		log.Warn("postgresql.switchover_on_exit: no switchover; the cluster fails over once this node has stopped", "err", err)
		return
	}
	op, err := node.WaitOperation(ctx, id)
	if err != nil {
		log.Warn("postgresql.switchover_on_exit: the switchover did not finish in time; stopping anyway", "operation", id, "err", err)
		return
	}
	log.Info("postgresql.switchover_on_exit: switchover finished", "operation", id, "phase", op.Phase, "new_primary", op.NewPrimary,
		"message", op.Message, "took", time.Since(start).Round(time.Millisecond))
}

// hasLiveReplica reports whether a member other than self could take over (the replicated
// state's own rule, fsm.HealthyReplica) and reported recently (its pgbastion has not stopped
// or gone silent).
func hasLiveReplica(st *fsm.State, self string, now time.Time) bool {
	for name, m := range st.Members {
		if name != self && m.Status.State == fsm.StateRunningReplica && fsm.HealthyReplica(m) == "" && now.Sub(m.Status.ReportedAt) < 10*time.Second {
			return true
		}
	}
	return false
}

// reportStoppedOnExit tells the cluster that this node's PostgreSQL was stopped on purpose,
// when a Raft leader is there to hear it (the last member standing has none).
func reportStoppedOnExit(node *ha.Node, agent *ha.Agent, log *slog.Logger) {
	if leader, _ := node.Leader(); leader == "" {
		log.Info("postgresql.stop_on_exit: no Raft leader to tell that PostgreSQL stopped")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := agent.ReportStopped(ctx, "pgbastion stopped (postgresql.stop_on_exit)"); err != nil {
		log.Warn("postgresql.stop_on_exit: the cluster was not told that PostgreSQL stopped; it finds out when this node's reports stop", "err", err)
	}
}

// stopOnExitTimeout bounds the fast shutdown at exit. Container runtimes kill after a grace
// period (docker: 10 s unless --stop-timeout; Kubernetes: 30 s); a fast shutdown of a busy
// primary may take that long for its checkpoint.
const stopOnExitTimeout = 2 * time.Minute

// stopPostgresOnExit stops this node's PostgreSQL in fast mode (postgresql.stop_on_exit) and
// reports whether it is stopped.
func stopPostgresOnExit(inst *pgctl.Instance, log *slog.Logger) bool {
	if !inst.PostmasterAlive() {
		log.Info("postgresql.stop_on_exit: PostgreSQL is not running")
		return true
	}
	log.Info("postgresql.stop_on_exit: stopping PostgreSQL (fast)")
	ctx, cancel := context.WithTimeout(context.Background(), stopOnExitTimeout)
	defer cancel()
	start := time.Now()
	if err := inst.Stop(ctx, pgctl.Fast); err != nil {
		log.Error("postgresql.stop_on_exit: PostgreSQL did not stop; it may be killed with its container and recover from a crash at the next start", "err", err)
		return false
	}
	log.Info("postgresql.stop_on_exit: PostgreSQL stopped", "took", time.Since(start).Round(time.Millisecond))
	return true
}

// inContainer reports whether this process runs in a container (the marker files Docker and
// Podman create). It only decides a warning.
func inContainer() bool {
	for _, f := range []string{"/.dockerenv", "/run/.containerenv"} {
		if _, err := os.Stat(f); err == nil {
			return true
		}
	}
	return false
}

// followCluster keeps the proxy's routing table, its write pause and the VIP entitlement in
// step with the write lease and the replicated state. localSocket, when set, is this node's
// own PostgreSQL as host:port with its socket directory for host (proxy.local_socket): the
// proxy reaches the local server there, whatever its role, and other nodes' servers over TCP.
func followCluster(ctx context.Context, node *ha.Node, proxy *engine.Engine, vip *netlink.Manager, localSocket string) error {
	routes, stopRoutes := node.WatchRoute()
	defer stopRoutes()
	sub := node.Subscribe()
	defer sub.Close()
	route := node.WriteRoute()
	st := node.State()
	var last string
	apply := func() {
		spec := engine.RoutingSpec{HoldWrites: true, Names: map[string]string{}}
		if route.Valid && route.Address != "" {
			a := route.Address
			if route.Local && localSocket != "" {
				a = localSocket
			}
			spec.Primary = a
			spec.Names[a] = route.Primary
		}
		for _, m := range st.ReadReplicas(0) {
			a := net.JoinHostPort(m.PGHost, strconv.Itoa(m.PGPort))
			if m.Name == node.Name() && localSocket != "" {
				a = localSocket
			}
			spec.Replicas = append(spec.Replicas, a)
			spec.Names[a] = m.Name
		}
		key := fmt.Sprint(spec.Primary, spec.Replicas)
		if key != last {
			last = key
			proxy.SetRouting(spec)
		}
		proxy.HoldWrites(route.Paused || st.WritePause != nil)
		if vip != nil {
			self := st.Members[node.Name()]
			vip.SetEntitled(route.Valid && route.Local && self.Status.Role == fsm.RolePrimary && self.Status.Healthy)
		}
	}
	apply()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-routes:
			route = r
		case s := <-sub.C:
			st = s
		}
		apply()
	}
}

// localStatus reports this node's facts that are not in the replicated state.
func (d *daemon) localStatus(vip *netlink.Manager) func() map[string]any {
	return func() map[string]any {
		out := map[string]any{"proxy": d.proxyStatus()}
		if vip != nil {
			out["vip"] = vip.Status()
		}
		return out
	}
}

// proxyStatus is this node's proxy as the API shows it (GET /proxy, and local.proxy in GET
// /nodes).
func (d *daemon) proxyStatus() admin.ProxyStatus {
	st := d.proxy.Stats()
	out := admin.ProxyStatus{Clients: max(0, st.Clients), WritesTo: st.Primary, Paused: st.Paused, InFlight: st.InFlight,
		ClientsHeld: st.Held, PausedDatabases: st.PausedDatabases, Pools: make([]admin.PoolStatus, 0, len(st.Pools))}
	for _, p := range st.Pools {
		ps := admin.PoolStatus{Backend: p.Backend, Database: p.Database, User: p.User, Clients: p.Clients,
			ServersActive: max(0, p.Busy()-p.HeldForCancel-p.LoggingIn), ServersIdle: p.IdleServers(), ServersLoggingIn: p.LoggingIn,
			Size: p.Size, Reserve: p.Reserve,
			CancelsInFlight: p.CancelsInFlight, ServersHeldForCancel: p.HeldForCancel,
			ClientsWaiting: p.Waiting, MaxWaitSeconds: p.MaxWait.Seconds(), Paused: p.Paused,
			Transactions: p.Counts.Transactions, Queries: p.Counts.Queries, ServerAssignments: p.Counts.Assignments,
			WaitSecondsTotal: p.Counts.Wait.Seconds(), AssignedSecondsTotal: p.Counts.Assigned.Seconds(),
			QuerySecondsTotal: p.Counts.Query.Seconds(), ReceivedBytes: p.Counts.Received, SentBytes: p.Counts.Sent,
			ClientParses: p.Counts.ClientParses, ServerParses: p.Counts.ServerParses, Binds: p.Counts.Binds,
			Loops: make([]admin.PoolLoopStatus, len(p.Loops))}
		for i, l := range p.Loops {
			ps.Loops[i] = admin.PoolLoopStatus{Servers: max(0, l.Open), ServersIdle: l.Idle,
				ClientsWaiting: l.Waiting, MaxWaitSeconds: l.MaxWait.Seconds()}
		}
		out.Pools = append(out.Pools, ps)
	}
	return out
}

// proxyOps are the API's KILL_CLIENT, KILL and RECONNECT on this node's proxy.
func (d *daemon) proxyOps() *admin.ProxyOps {
	return &admin.ProxyOps{
		KillClient: d.proxy.KillClient,
		KillDatabase: func(db string) admin.KillResult {
			r := d.proxy.KillDatabase(db)
			resume, _ := json.Marshal(map[string]string{"database": db})
			return admin.KillResult{Clients: r.Clients, Servers: r.Servers, Busy: r.Busy, Paused: r.Paused,
				Message: r.KillNotice(db, "POST /proxy/resume "+string(resume)+" (pgbastion ctl proxy resume "+db+")")}
		},
		Reconnect: d.proxy.Reconnect,
	}
}

// proxyConnections lists this node's proxy connections (GET /proxy/connections). A client
// shows the backend PID of the server it holds, for pg_stat_activity.
func (d *daemon) proxyConnections() []admin.ConnStatus {
	conns := d.proxy.Conns()
	pids := make(map[string]uint32)
	for _, c := range conns {
		if c.Server {
			pids[c.ID] = c.RemotePID
		}
	}
	out := make([]admin.ConnStatus, 0, len(conns))
	for _, c := range conns {
		cs := admin.ConnStatus{Kind: "client", ID: c.ID, Link: c.Link, User: c.User, Database: c.Database, State: c.State,
			Addr: c.Addr, Local: c.Local, ConnectedAt: c.Connected, LastRequestAt: c.Request, WaitSeconds: c.Wait.Seconds(),
			BackendPID: c.RemotePID, TLS: c.TLS, ApplicationName: c.AppName, PreparedStatements: c.Prepared, Loop: c.Loop}
		if c.Server {
			cs.Kind = "server"
		} else if c.Link != "" {
			cs.BackendPID = pids[c.Link]
		}
		out = append(out, cs)
	}
	return out
}

// writeMetrics writes the gauges computed at scrape time: the proxy's clients and pools, and
// the VIP (vip may be nil).
func (d *daemon) writeMetrics(vip *netlink.Manager) func(io.Writer) {
	return func(w io.Writer) {
		st := d.proxyStatus()
		metrics.WriteGaugeUint64(w, "pgbastion_proxy_clients", uint64(st.Clients))
		metrics.WriteGaugeUint64(w, "pgbastion_proxy_routes_writes", admin.Bool(st.WritesTo != ""))
		metrics.WriteGaugeUint64(w, "pgbastion_proxy_paused", admin.Bool(st.Paused))
		metrics.WriteGaugeUint64(w, "pgbastion_proxy_held_clients", uint64(st.ClientsHeld))
		for _, p := range st.Pools {
			kv := []string{"backend", p.Backend, "database", p.Database, "user", p.User}
			metrics.WriteGaugeUint64(w, admin.Label("pgbastion_pool_server_connections", append(kv, "state", "active")...), uint64(p.ServersActive))
			metrics.WriteGaugeUint64(w, admin.Label("pgbastion_pool_server_connections", append(kv, "state", "idle")...), uint64(p.ServersIdle))
			metrics.WriteGaugeUint64(w, admin.Label("pgbastion_pool_waiting_clients", kv...), uint64(p.ClientsWaiting))
			metrics.WriteGaugeFloat64(w, admin.Label("pgbastion_pool_max_wait_seconds", kv...), p.MaxWaitSeconds)
			metrics.WriteGaugeUint64(w, admin.Label("pgbastion_pool_paused", kv...), admin.Bool(p.Paused))
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_transactions_total", kv...), p.Transactions)
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_queries_total", kv...), p.Queries)
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_server_assignments_total", kv...), p.ServerAssignments)
			metrics.WriteCounterFloat64(w, admin.Label("pgbastion_pool_client_wait_seconds_total", kv...), p.WaitSecondsTotal)
			metrics.WriteCounterFloat64(w, admin.Label("pgbastion_pool_server_assigned_seconds_total", kv...), p.AssignedSecondsTotal)
			metrics.WriteCounterFloat64(w, admin.Label("pgbastion_pool_query_seconds_total", kv...), p.QuerySecondsTotal)
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_received_bytes_total", kv...), p.ReceivedBytes)
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_sent_bytes_total", kv...), p.SentBytes)
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_client_parses_total", kv...), p.ClientParses)
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_server_parses_total", kv...), p.ServerParses)
			metrics.WriteCounterUint64(w, admin.Label("pgbastion_pool_binds_total", kv...), p.Binds)
			for i, l := range p.Loops {
				lkv := append(kv[:len(kv):len(kv)], "loop", strconv.Itoa(i))
				metrics.WriteGaugeUint64(w, admin.Label("pgbastion_pool_loop_server_connections", lkv...), uint64(l.Servers))
				metrics.WriteGaugeUint64(w, admin.Label("pgbastion_pool_loop_waiting_clients", lkv...), uint64(l.ClientsWaiting))
				metrics.WriteGaugeFloat64(w, admin.Label("pgbastion_pool_loop_max_wait_seconds", lkv...), l.MaxWaitSeconds)
			}
		}
		if vip == nil {
			return
		}
		vs := vip.Status()
		metrics.WriteGaugeUint64(w, "pgbastion_vip_held", admin.Bool(vs.Held))
		metrics.WriteGaugeUint64(w, "pgbastion_vip_entitled", admin.Bool(vs.Entitled))
		if !vs.Since.IsZero() {
			metrics.WriteGaugeFloat64(w, "pgbastion_vip_held_changed_timestamp_seconds", float64(vs.Since.UnixMilli())/1000)
		}
		metrics.WriteGaugeUint64(w, "pgbastion_vip_error", admin.Bool(vs.Error != ""))
		metrics.WriteGaugeUint64(w, "pgbastion_vip_privileges_missing", admin.Bool(vs.PrivilegeProblem != ""))
		metrics.WriteCounterUint64(w, "pgbastion_vip_acquisitions_total", vs.Acquisitions)
		metrics.WriteCounterUint64(w, "pgbastion_vip_releases_total", vs.Releases)
		metrics.WriteCounterUint64(w, "pgbastion_vip_foreign_removals_total", vs.ForeignRemovals)
		metrics.WriteCounterUint64(w, "pgbastion_vip_announcements_total", vs.Announcements)
	}
}

// prePromoteHook runs postgresql.pre_promote (nil when unset) as
// `PROGRAM [ARGS] pre_promote replica CLUSTER`, Patroni's calling convention, with
// PGBASTION_NODE, PGBASTION_CLUSTER, PGBASTION_OPERATION_ID, PGBASTION_OPERATION_KIND,
// PGBASTION_OLD_PRIMARY and PGBASTION_REASON in its environment. A non-zero exit, or no exit
// within timeout, refuses the promotion; its output goes to the log and into the refusal.
func prePromoteHook(cmdline string, timeout time.Duration, cluster, node string, log *slog.Logger) func(context.Context, ha.PrePromoteInfo) error {
	if cmdline == "" {
		return nil
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return func(ctx context.Context, p ha.PrePromoteInfo) error {
		start := time.Now()
		out, err := notify.RunProgram(ctx, cmdline, []string{"pre_promote", "replica", cluster}, []string{
			"PGBASTION_NODE=" + node, "PGBASTION_CLUSTER=" + cluster, "PGBASTION_OPERATION_ID=" + strconv.FormatUint(p.OperationID, 10),
			"PGBASTION_OPERATION_KIND=" + p.Kind, "PGBASTION_OLD_PRIMARY=" + p.OldPrimary, "PGBASTION_REASON=" + p.Reason,
		}, timeout)
		attrs := []any{"program", strings.Fields(cmdline)[0], "operation", p.OperationID, "took", time.Since(start).Round(time.Millisecond), "output", out}
		if err != nil {
			log.Error("pre_promote refused the promotion of this node", append(attrs, "error", err)...)
			if out != "" {
				return fmt.Errorf("%v: %s", err, out)
			}
			return err
		}
		log.Info("pre_promote allowed the promotion of this node", attrs...)
		return nil
	}
}

// advertisedHost is the first of the given addresses' hosts (host:port or a bare host) that
// names one interface: the address other nodes know this node by.
func advertisedHost(addrs ...string) string {
	for _, a := range addrs {
		h := a
		if host, _, err := net.SplitHostPort(a); err == nil {
			h = host
		}
		if !wildcardHost(h) {
			return h
		}
	}
	return ""
}

// reachable is the listen address listen as other nodes reach it: a wildcard host (empty,
// 0.0.0.0, ::) becomes host.
func reachable(listen, host string) string {
	h, port, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return listen
	}
	if wildcardHost(h) {
		return net.JoinHostPort(host, port)
	}
	return listen
}

// wildcardHost reports whether a listen address's host means every interface (empty, 0.0.0.0,
// ::) rather than one.
func wildcardHost(h string) bool {
	ip := net.ParseIP(h)
	return h == "" || (ip != nil && ip.IsUnspecified())
}
