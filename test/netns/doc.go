// Package netns builds throwaway network topologies for PGBastion's end-to-end tests: one
// network namespace per node and per client, all cabled to one bridge, with helpers to run
// processes inside a namespace and to inject the faults the failure tests need.
//
// Topology of a Cluster with ID pgbt-<pid>-<rand>:
//
//	namespace <ID>-sw:     br0 ── p-<name> (one veth end per member)
//	namespace <ID>-<name>: lo, eth0 = 198.18.0.<n>/24 and 2001:2::<n>/64
//
// Nodes get host numbers 1, 2, ...; clients 101, 102, .... Addresses come from 198.18.0.0/15 and
// its IPv6 twin 2001:2::/48 (RFC 2544 and RFC 5180 benchmarking ranges). Nothing is created in
// the host's own namespace and no namespace has a default route, so a test cannot reach the
// outside world and a crashed test leaves only namespaces behind; Sweep (run by New) deletes
// those whose creating process is gone.
//
// Faults: CutLink/RestoreLink take the switch side of a member's cable down (the member sees
// carrier loss), Isolate/Rejoin detach its cable from the bridge (the link stays up and frames
// vanish, like a silently dead path; this kernel has no netem), and a Process can be killed, paused and
// resumed as a process group.
//
// Everything a test creates is removed in t.Cleanup, also after a failure. Tests that need root
// or iproute2 call Require, which skips them, or fails them when CI=true (SkipOrFail).
//
// Concurrency: a Cluster's methods may be called from several goroutines (the holder sampler
// runs in its own); creation and cleanup happen on the test goroutine.
package netns
