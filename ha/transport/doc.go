// Package transport owns PGBastion's Raft port: one TCP listener, TLS 1.3 (mutual when a CA is
// configured: RequireAndVerifyClientCert, so a node with a certificate from another CA is
// refused during the handshake), and a first-byte multiplexer that carries two protocols:
//
//   - 'R': hashicorp/raft's NetworkTransport, through the raft.StreamLayer from RaftLayer;
//   - 'F': a small request/response RPC (length-prefixed frames, bounded by MaxFrame before
//     any allocation) that package ha uses to forward followers' writes to the leader.
//
// Sharing the port means one address per node, one firewall rule and one TLS identity for both.
// The handshake and the protocol byte are read off the accept loop under a deadline, so a slow
// or hostile peer only ties up its own goroutine. Mux.Close stops everything it started.
//
// This package knows nothing about the cluster state or the FSM: it moves bytes.
package transport
