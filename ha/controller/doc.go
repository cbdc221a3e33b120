// Package controller is the failover decision: a pure function from the replicated cluster
// state, the leader's observations and the clock to the commands the Raft leader should apply.
//
// Step never performs I/O, never reads a clock and never keeps state between calls; package ha
// runs it on the Raft leader (after Barrier, from the leader's first command of its epoch
// onwards), applies the commands it returns, and calls it again whenever the state changes or
// the Decision's WakeAt arrives. Everything it knows about time comes from Observations and from
// times stamped into the log by the leader; it measures the age of a time stamped by an earlier
// leader from the start of its own epoch, so clocks are never compared across machines.
//
// # What it decides
//
//   - A primary is lost when it renewed no lease for PrimaryTimeout, or its agent reports
//     PostgreSQL down, fenced, or not running as a primary. A failover then deposes it (no
//     node gets a write lease for it any more), publishes FENCE to it and to any other node
//     running as a primary (fencing_enabled), picks the fresh, healthy replica with the highest
//     WAL position within maximum_lag_on_failover (nofailover and failover_priority 0 never,
//     failover_priority breaks ties, only recorded synchronous standbys in synchronous modes),
//     and promotes it only when the lease gate opens: no node can still be routing writes to
//     the old primary and the old primary acknowledged FENCE or its lease has certainly run out.
//   - A switchover checkpoints the primary, pauses writes on every proxy, waits for in-flight
//     write transactions to drain, deposes and demotes the primary to follow the candidate,
//     waits until the candidate has replayed the old primary's shutdown checkpoint, promotes it
//     and lifts the pause.
//   - Directives not acknowledged within DirectiveTimeout expire; a failed promotion excludes
//     that candidate and the election continues.
//   - With a primary in place, replicas that do not follow it, and fenced or rogue primaries,
//     get DEMOTE (follow the primary).
//   - A cluster that never had a primary adopts the single member running as a primary.
//
// Golden scripts in testdata drive Step through these scenarios (go test -update rewrites them).
package controller
