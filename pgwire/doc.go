// Package pgwire frames and decodes the PostgreSQL frontend/backend protocol (version 3.0,
// negotiating down from 3.2) for the proxy's hot path.
//
// It owns: message framing with a per-message-type length limit that is checked before anything
// is allocated; the startup packet family (StartupMessage, SSLRequest, GSSENCRequest,
// CancelRequest); zero-copy decoders for the few message bodies the pooler must read (Parse, Bind,
// Describe, Close, ErrorResponse, ParameterStatus, CommandComplete, ReadyForQuery,
// BackendKeyData); and append-style encoders for the messages the proxy writes itself.
//
// Decoders return slices that alias the input buffer: they stay valid only until the caller
// discards that buffer. Encoders append to a caller-owned slice and never allocate when it has
// room. Every decoder rejects malformed input with an error and never panics; each has a fuzz
// target with its corpus under testdata/fuzz.
//
// pgwire imports nothing else of PGBastion's and does no I/O.
package pgwire
