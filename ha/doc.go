// Package ha is PGBastion's cluster manager: the replacement for Patroni and etcd.
//
// It owns the embedded Raft group (hashicorp/raft over a mutual-TLS transport with a BoltDB log),
// the replicated state machine (members, node status, the primary, directives, history, pause),
// the failover controller that runs on the Raft leader, and the agent that probes the local
// PostgreSQL and executes the directives addressed to this node.
//
// The failover decision is a pure function of (cluster state, observations, time) to directives;
// the shell around it reads Raft, runs pg_ctl and reports back. ha never imports the proxy
// (engine, pool) or admin: it publishes what the rest of the daemon needs (routing, lease,
// events) through small interfaces that cmd/pgbastion wires up.
package ha
