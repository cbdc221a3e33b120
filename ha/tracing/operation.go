package tracing

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// Request is what the API knows of the request it serves: its ID and its span. It travels
// in a context under RequestKey{} (the API's fasthttp.RequestCtx carries it as a user value).
type Request struct {
	ID   string
	Span trace.SpanContext
}

// RequestKey is the context key of a Request.
type RequestKey struct{}

// WithRequest returns ctx carrying r.
func WithRequest(ctx context.Context, r Request) context.Context {
	return context.WithValue(ctx, RequestKey{}, r)
}

// RequestFrom returns the request ctx carries.
func RequestFrom(ctx context.Context) (Request, bool) {
	r, ok := ctx.Value(RequestKey{}).(Request)
	return r, ok
}

// OperationRef returns the reference for an operation requested with ctx: the request's ID,
// and when the request is traced, a span ID of its own for the operation, a child of the
// request's span. Nil when ctx carries no request.
func OperationRef(ctx context.Context) *fsm.TraceRef {
	r, ok := RequestFrom(ctx)
	if !ok {
		return nil
	}
	ref := &fsm.TraceRef{RequestID: r.ID}
	if r.Span.IsValid() {
		ref.TraceID = r.Span.TraceID().String()
		ref.ParentSpanID = r.Span.SpanID().String()
		ref.SpanID = newSpanID().String()
		ref.Sampled = r.Span.IsSampled()
	}
	return ref
}

// RequestRef returns the reference for a request a node's agent carries out (a restart or a
// reinitialisation): the request's ID and, when traced, the request's own span, under which
// the agent's span goes. Nil when ctx carries no request.
func RequestRef(ctx context.Context) *fsm.TraceRef {
	r, ok := RequestFrom(ctx)
	if !ok {
		return nil
	}
	ref := &fsm.TraceRef{RequestID: r.ID}
	if r.Span.IsValid() {
		ref.TraceID, ref.SpanID, ref.Sampled = r.Span.TraceID().String(), r.Span.SpanID().String(), r.Span.IsSampled()
	}
	return ref
}

// StartRestart starts the span of restart (or reinitialisation) request r executed by node,
// under the request's span when it was traced; end it with EndSpan.
func StartRestart(ctx context.Context, r fsm.RestartRequest, node string) (context.Context, trace.Span) {
	if !Enabled() {
		return ctx, trace.SpanFromContext(context.Background())
	}
	if r.Trace != nil {
		ctx = operationContext(ctx, r.Trace)
	}
	name := "restart"
	if r.Reinit {
		name = "reinitialise"
	}
	return Tracer().Start(ctx, name, trace.WithAttributes(
		attribute.String("pgbastion.node", node),
		attribute.Int64("pgbastion.restart.id", int64(r.ID)),
		attribute.String("pgbastion.restart.reason", r.Reason),
	))
}

// ContinueRef returns the reference for an operation that continues ref's trace (a booked
// switchover's request): the same request and parent, a span of its own.
func ContinueRef(ref *fsm.TraceRef) *fsm.TraceRef {
	if ref == nil {
		return nil
	}
	c := *ref
	if c.TraceID != "" {
		c.SpanID = newSpanID().String()
	}
	return &c
}

// AutomaticRef returns the reference for an operation nobody asked for (an automatic
// failover): a new trace, sampled at tracing.sample_ratio. Nil while tracing is off.
func AutomaticRef() *fsm.TraceRef {
	sp := sampler.Load()
	if !Enabled() || sp == nil {
		return nil
	}
	t := newTraceID()
	res := (*sp).ShouldSample(sdktrace.SamplingParameters{ParentContext: context.Background(), TraceID: t, Name: "operation"})
	return &fsm.TraceRef{TraceID: t.String(), SpanID: newSpanID().String(), Sampled: res.Decision == sdktrace.RecordAndSample}
}

// spanContext returns the span context (trace, span) of ref, invalid when it has none.
func spanContext(ref *fsm.TraceRef, span string) trace.SpanContext {
	if ref == nil || ref.TraceID == "" || span == "" {
		return trace.SpanContext{}
	}
	tid, err1 := trace.TraceIDFromHex(ref.TraceID)
	sid, err2 := trace.SpanIDFromHex(span)
	if err1 != nil || err2 != nil {
		return trace.SpanContext{}
	}
	var flags trace.TraceFlags
	if ref.Sampled {
		flags = trace.FlagsSampled
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: true})
}

// operationContext returns ctx with the operation's span as the parent of new spans.
func operationContext(ctx context.Context, ref *fsm.TraceRef) context.Context {
	if sc := spanContext(ref, ref.SpanID); sc.IsValid() {
		return trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	return ctx
}

// LogAttrs returns the slog attributes that tie a log line to ref.
func LogAttrs(ref *fsm.TraceRef) []any {
	if ref == nil {
		return nil
	}
	var a []any
	if ref.RequestID != "" {
		a = append(a, "request_id", ref.RequestID)
	}
	if ref.TraceID != "" {
		a = append(a, "trace_id", ref.TraceID)
	}
	return a
}

// StartDirective starts the span of directive d executed by node, a child of its
// operation's span; end it with EndSpan. The operation is looked up in st.
func StartDirective(ctx context.Context, st *fsm.State, d fsm.Directive, node string) (context.Context, trace.Span, *fsm.TraceRef) {
	var ref *fsm.TraceRef
	if d.Params.OperationID != 0 {
		if op, ok := st.OperationByID(d.Params.OperationID); ok {
			ref = op.Trace
		}
	}
	if !Enabled() {
		return ctx, trace.SpanFromContext(context.Background()), ref
	}
	if ref != nil {
		ctx = operationContext(ctx, ref)
	}
	ctx, span := Tracer().Start(ctx, fmt.Sprintf("directive %s", d.Type), trace.WithAttributes(
		attribute.String("pgbastion.node", node),
		attribute.Int64("pgbastion.directive.id", int64(d.ID)),
		attribute.String("pgbastion.directive.type", string(d.Type)),
		attribute.Int64("pgbastion.operation.id", int64(d.Params.OperationID)),
		attribute.String("pgbastion.directive.upstream", d.Params.Upstream),
		attribute.String("pgbastion.directive.reason", d.Params.Reason),
	))
	return ctx, span, ref
}

// EndSpan ends span, marking it failed with err when err is not nil.
func EndSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// RecordOperation records the span of operation op, which has ended, as node saw it in st:
// from its start to its end, with its directives as events. The Raft leader records it once,
// when it applies the operation's end.
func RecordOperation(st *fsm.State, op fsm.Operation, node string) {
	ref := op.Trace
	if !Enabled() || ref == nil || ref.TraceID == "" || ref.SpanID == "" || !ref.Sampled {
		return
	}
	tid, err1 := trace.TraceIDFromHex(ref.TraceID)
	sid, err2 := trace.SpanIDFromHex(ref.SpanID)
	if err1 != nil || err2 != nil {
		return
	}
	ctx := context.WithValue(context.Background(), fixedKey{}, fixedIDs{trace: tid, span: sid})
	// Without a parent the span is a trace's root, sampled as AutomaticRef decided.
	if parent := spanContext(ref, ref.ParentSpanID); parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	attrs := []attribute.KeyValue{
		attribute.Int64("pgbastion.operation.id", int64(op.ID)),
		attribute.String("pgbastion.operation.kind", string(op.Kind)),
		attribute.String("pgbastion.operation.phase", string(op.Phase)),
		attribute.String("pgbastion.operation.reason", op.Reason),
		attribute.String("pgbastion.operation.old_primary", op.OldPrimary),
		attribute.String("pgbastion.operation.candidate", op.Candidate),
		attribute.String("pgbastion.operation.new_primary", op.NewPrimary),
		attribute.Bool("pgbastion.operation.requested", op.Requested),
		attribute.String("pgbastion.operation.message", op.Message),
		attribute.String("pgbastion.recorded_by", node),
	}
	if ref.RequestID != "" {
		attrs = append(attrs, attribute.String("pgbastion.request_id", ref.RequestID))
	}
	if op.MayLose != "" {
		attrs = append(attrs, attribute.String("pgbastion.operation.may_lose", op.MayLose))
	}
	_, span := Tracer().Start(ctx, fmt.Sprintf("%s %d", op.Kind, op.ID),
		trace.WithTimestamp(op.StartedAt), trace.WithAttributes(attrs...), trace.WithSpanKind(trace.SpanKindInternal))
	for _, d := range st.Directives {
		if d.Params.OperationID != op.ID {
			continue
		}
		da := trace.WithAttributes(attribute.Int64("pgbastion.directive.id", int64(d.ID)), attribute.String("pgbastion.directive.target", d.Target))
		span.AddEvent(fmt.Sprintf("%s issued to %s", d.Type, d.Target), trace.WithTimestamp(d.IssuedAt), da)
		if d.Finished() {
			span.AddEvent(fmt.Sprintf("%s on %s %s", d.Type, d.Target, d.Status), trace.WithTimestamp(d.FinishedAt), da,
				trace.WithAttributes(attribute.String("pgbastion.directive.message", d.Message)))
		}
	}
	if op.Phase == fsm.PhaseFailed {
		span.SetStatus(codes.Error, op.Message)
	}
	span.End(trace.WithTimestamp(op.FinishedAt))
}
