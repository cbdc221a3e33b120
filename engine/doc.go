// Package engine is the proxy's data plane: a gnet epoll reactor that accepts PostgreSQL clients
// on the read-write and read-only listeners, authenticates them, attaches pooled server
// connections, and relays protocol messages between the two.
//
// Lifecycle: New validates the Config; Run starts the listeners and blocks until Stop. The
// routing table (which backend is the primary, which are replicas) is an immutable value
// published with SetRouting and read with one atomic load on every attach; it is never locked.
//
// Threading: each event loop owns its connections. A client and the server it uses share one
// loop, so relaying is Peek/Write/Discard with no copy. Server connections are dialled and
// logged in off-loop (with a timeout) and enrolled on the loop that needs them. A TLS client's
// handshake runs on a goroutine; then the client lives on a loop like any other, its tls.Conn
// reading ciphertext from memory (tlsloop.go). A pair whose peer stops reading (the slow-reader
// rule, DESIGN.md invariant 7) moves to the stream path: a goroutine with blocking I/O on a
// duplicated descriptor, where TCP flow control bounds memory.
//
// The engine must never block an event loop: no dialling, no DNS, no disk, no lock held by the
// control plane. A panic in any callback closes only the connection it concerns and is counted.
package engine
