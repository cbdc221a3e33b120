// Package pool holds the pooling rules of the proxy, free of I/O: which server connection a
// client may use and when it must give it back.
//
// It owns:
//   - the release rule of transaction pooling (Tracker): a server stays attached to a client
//     until ReadyForQuery reports 'I' and no request the client sent is still unanswered;
//   - prepared-statement virtualisation (Statements, ServerStatements): one server-side name per
//     statement text, a per-server LRU, and the bookkeeping that lets the engine inject Parse
//     where a server lacks a statement and synthesize ParseComplete/CloseComplete where the
//     client's message was absorbed;
//   - session-setting tracking (Params): which reportable settings a client has, so they can be
//     replayed with SET on another server;
//   - pool accounting (Pool): limits, idle lists per event loop, waiting clients and timeouts,
//     with PgBouncer's setting names and meanings.
//
// Everything here runs on the goroutine that owns the connection (a gnet event loop, or a
// stream-path goroutine) except Pool, whose methods are safe for concurrent use. Nothing here
// blocks, dials, or writes to a socket: the engine does I/O and asks this package what to do.
package pool
