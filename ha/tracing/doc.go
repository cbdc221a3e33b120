// Package tracing connects PGBastion to OpenTelemetry: it exports spans over OTLP/HTTP to a
// collector named in the configuration's `tracing` section, and it carries one trace through a
// failover or switchover across the cluster.
//
// A switchover asked for through the API is one trace: the request's span (a child of the
// caller's W3C traceparent header when it sends one), the operation's span, recorded by the
// Raft leader when the operation ends with its real start and end times, and a span for each
// directive on the node that executed it (FENCE, CHECKPOINT, DEMOTE, PROMOTE), with the
// PostgreSQL programs it ran as children. The operation's trace IDs travel in the replicated
// state (fsm.TraceOperation), so nodes need no connection to each other for it. An automatic
// failover starts its own trace.
//
// Without a `tracing.endpoint` nothing is exported and spans cost a no-op; the request ID (the
// X-Request-ID header, or one the API makes up) still ties an operation to its request in the
// state, the API and the logs.
package tracing
