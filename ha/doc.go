// Package ha is PGBastion's cluster manager: the replacement for Patroni and etcd.
//
// # Layout
//
//   - ha/fsm: the replicated state (members, each node's PostgreSQL status and lease record,
//     the primary, directives and their acknowledgements, failover/switchover operations,
//     history, pause, the switchover write pause, the synchronous standby set), the typed and
//     versioned commands that change it, and the raft.FSM adapter. Deterministic: times come
//     from the command, stamped by the Raft leader.
//   - ha/controller: the failover decision, a pure function (state, observations, config) →
//     commands, with golden scripts and a randomized safety simulation as tests.
//   - ha/transport: the Raft port: TLS 1.3 (mutual with a CA), one listener multiplexing
//     hashicorp/raft and the RPC that forwards followers' writes to the leader.
//   - ha (this package): Config; Node, which runs Raft (BoltDB log behind a LogCache, file
//     snapshots, bootstrap once), forwards writes, runs the controller on the leader and keeps
//     this node's write lease; Agent, which drives the local PostgreSQL through the
//     PostgreSQL interface; backup and restore.
//
// # Wiring (cmd/pgbastion)
//
//	node, err := ha.Open(cfg, ha.NodeOptions{Logger: log, Member: ha.MemberInfo{...}})
//	agent := ha.NewAgent(node, pgControl, cfg, ha.AgentOptions{InflightWrites: pool.WritesInFlight})
//	go agent.Run(ctx)
//	routes, stop := node.WatchRoute()      // proxy routing for writes, lease loss at once
//	sub := node.Subscribe()                // every new *fsm.State: replicas, /nodes, SSE, VIP
//	...
//	<-node.Done()                          // the node stops itself if its FSM halts: exit
//	node.Close()
//
// The VIP belongs on a node only while node.HoldsWriteLease() and its PostgreSQL runs as a
// primary. Operator actions are Node methods: Switchover, Failover, SetPause, SetTags,
// AddVoter, RemoveMember, Backup, Restore, WaitOperation; rejections are *fsm.Error values
// (errors.Is with fsm.ErrPrecondition, fsm.ErrConflict, ...), which the API maps to HTTP codes.
//
// # Safety (DESIGN.md invariants 1-5)
//
//  1. A node routes writes only while its lease holds: a renewal it sent less than
//     failover.lease_timeout ago was committed by a Raft quorum and named the primary its state
//     still names (lease.go). Config.Validate rejects timings under which a replica could be
//     promoted before every such lease has run out: lease·(1+drift) + margin < primary_timeout·(1−drift).
//     Leases are timed on each node's monotonic clock; the leader stamps commands and runs the
//     controller on a clock that system-clock steps do not move (Node.now), and times stamped by
//     an earlier leader are measured from the start of the current leader's epoch.
//  2. Lease loss is published at once (a timer fires at expiry; WatchRoute), and a primary cut
//     off from the quorum stops PostgreSQL itself after quorum_loss_timeout (Agent).
//  3. The controller publishes FENCE to the old primary before PROMOTE and promotes only after
//     FENCE (or DEMOTE) was acknowledged, or once the old primary's lease has certainly run
//     out, and once no other node can still be routing writes to it.
//  4. Candidates are fresh, reachable, healthy replicas, highest WAL position first, within
//     maximum_lag_on_failover of the best known position; nofailover / failover_priority 0
//     never; in synchronous modes only recorded synchronous standbys. A forced failover records
//     how many bytes it may lose.
//  5. Directives carry the epoch (counted per Raft leadership) that issued them; a new
//     leader's first command supersedes older pending ones, agents ignore older epochs, and the
//     FSM accepts exactly one acknowledgement per directive.
//
// # What ha must never do
//
// Import engine, pool, admin or cmd; keep package-level mutable state; read the clock inside
// the FSM; wait on a raft future without a bound (Node.await); promote without the lease gate.
package ha
