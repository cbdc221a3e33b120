// Package auth authenticates PostgreSQL connections for the proxy, in both directions.
//
// Client side of the proxy (the proxy plays the server): Verifier and Exchange are an I/O-free
// state machine for the trust, md5 and scram-sha-256 methods that an event loop drives without
// blocking: Exchange.Begin returns the first authentication request to write, Exchange.Step
// consumes the body of each PasswordMessage/SASLInitialResponse/SASLResponse the client sends
// and returns the reply, until the exchange is done or fails with an *Error carrying the SQLSTATE
// and the client-facing message to send. Secrets come from a PgBouncer-format auth_file
// (ParseUserlist, LoadUserlist) or any other Secrets implementation.
//
// Server side of the proxy (the proxy logs in to PostgreSQL): Login and Credentials.Login run
// the startup and authentication exchange with blocking I/O on a net.Conn, off the event loop,
// and return every ParameterStatus, the BackendKeyData and the transaction status of the final
// ReadyForQuery. An ErrorResponse from the server becomes a *ServerError that keeps the
// original message so the proxy can forward it unchanged.
//
// Secrets never appear in an error, a log line or a formatted value: Secret and Credentials
// format as their kind only, and parse errors name the file, line and what is wrong, never the
// offending text.
//
// SCRAM-SHA-256-PLUS (channel binding) is not offered: a TLS-terminating proxy cannot bind the
// client's channel to the server's. PBKDF2 is the one expensive step: a plaintext secret's SCRAM
// credentials are derived once per Secret (lazily on first use, or ahead of time with
// Userlist.DeriveSCRAM off the event loop) and cached.
//
// auth imports only pgwire, pgproto3, xdg-go/scram and the standard library.
package auth
