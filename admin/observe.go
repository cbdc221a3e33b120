package admin

import (
	"context"
	"fmt"
	"time"

	"github.com/fasthttp/router"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgbastion/pgbastion/ha/tracing"
)

// Request IDs and traces. Every answer carries X-Request-ID: the caller's, when it sent a
// usable one, or one made up here. A mutation (and a read that shows who is connected) is
// also logged with it and, with tracing on, is a span, the child of the caller's W3C
// traceparent when it sent one. A switchover or failover it asks for carries both IDs in the
// replicated state (GET /cluster, /history of operations), into the logs of every node that
// executes part of it, and into its trace.

// maxRequestIDLen bounds a caller's X-Request-ID; a longer or unprintable one is replaced.
const maxRequestIDLen = 64

// requestID returns the caller's X-Request-ID when it is usable, else a new one.
func requestID(ctx *fasthttp.RequestCtx) string {
	id := ctx.Request.Header.Peek("X-Request-ID")
	if len(id) == 0 || len(id) > maxRequestIDLen {
		return tracing.NewRequestID()
	}
	for _, c := range id {
		if c <= ' ' || c > '~' {
			return tracing.NewRequestID()
		}
	}
	return string(id)
}

type requestIDKey struct{}

// withRequestID gives every request its ID and answers it in X-Request-ID.
func withRequestID(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		id := requestID(ctx)
		ctx.SetUserValue(requestIDKey{}, id)
		ctx.Response.Header.Set("X-Request-ID", id)
		h(ctx)
	}
}

// headerCarrier reads and writes W3C trace context headers of a fasthttp request.
type headerCarrier struct{ h *fasthttp.RequestHeader }

func (c headerCarrier) Get(key string) string { return string(c.h.Peek(key)) }
func (c headerCarrier) Set(key, value string) { c.h.Set(key, value) }
func (c headerCarrier) Keys() []string {
	var keys []string
	for k := range c.h.All() {
		keys = append(keys, string(k))
	}
	return keys
}

var traceContext = propagation.TraceContext{}

// observe wraps a handler that changes something or shows who is connected: the request gets
// an ID, a span and an access log line (also when it is refused, for want of a token).
func (s *Server) observe(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		// Set for every request by withRequestID and the router (SaveMatchedRoutePath).
		id, _ := ctx.UserValue(requestIDKey{}).(string)
		route, _ := ctx.UserValue(router.MatchedRoutePathParam).(string)
		method := string(ctx.Method())
		parent := traceContext.Extract(context.Background(), headerCarrier{&ctx.Request.Header})
		_, span := tracing.Tracer().Start(parent, method+" "+route, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(
				attribute.String("http.request.method", method),
				attribute.String("http.route", route),
				attribute.String("url.path", string(ctx.Path())),
				attribute.String("client.address", ctx.RemoteIP().String()),
				attribute.String("pgbastion.request_id", id),
			))
		sc := span.SpanContext()
		ctx.SetUserValue(tracing.RequestKey{}, tracing.Request{ID: id, Span: sc})
		h(ctx)
		status := ctx.Response.StatusCode()
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		if status >= 500 {
			span.SetStatus(codes.Error, fmt.Sprintf("HTTP %d", status))
		}
		span.End()
		attrs := []any{"method", method, "path", string(ctx.Path()), "status", status,
			"duration", time.Since(start).Round(time.Microsecond), "remote", ctx.RemoteIP().String(), "request_id", id}
		if sc.IsValid() {
			attrs = append(attrs, "trace_id", sc.TraceID().String())
		}
		if status >= 400 {
			s.log.Warn("api request", attrs...)
		} else {
			s.log.Info("api request", attrs...)
		}
	}
}
