// Package fsm is PGBastion's replicated state machine: the cluster state that Raft keeps
// identical on every node, the typed commands that change it, and the raft.FSM adapter.
//
// # State
//
// State holds the members (addresses, tags, each node's last PostgreSQL report and its
// write-routing lease record), the primary, the directives the leader has issued and their
// acknowledgements, the failover or switchover in progress and those finished, the history of
// primaries, the maintenance pause, the switchover write pause, and the recorded synchronous
// standby set. A *State is immutable once published: every applied command produces a new
// one (copy on write; the state is a few kilobytes), so readers share it without locks and
// Snapshot just keeps the pointer.
//
// # Commands
//
// Each log entry is an envelope: one type byte, one body-version byte, the proposer's clock
// (eight bytes, Unix nanoseconds) and a JSON body. The Raft leader stamps the time when it
// proposes (Stamp), so State.Apply never reads a clock and every node computes the same state
// from the same log. Unknown types, unknown versions, unknown fields and trailing bytes are
// decoding errors, and a decoding error halts the FSM instead of letting this node diverge.
// Rejected commands (unknown member, conflicting operation, a second acknowledgement) are not
// errors of the log: they return a Result whose Err says why, and leave the state unchanged.
//
// # What this package must not do
//
// It performs no I/O besides reading and writing snapshots, starts no goroutines, and never
// reads time.Now: it is the deterministic core that package controller plans against and
// package ha runs under Raft.
package fsm
