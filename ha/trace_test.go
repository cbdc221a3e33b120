package ha

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
	"github.com/pgbastion/pgbastion/ha/tracing"
)

// tracedCluster starts a three-node cluster with this process's spans recorded in memory.
func tracedCluster(t *testing.T) (*tracetest.InMemoryExporter, *testCluster) {
	t.Helper()
	exp := installTracing(t)
	return exp, newTestCluster(t, 3, nil)
}

// asCaller returns ctx carrying an API request with ID id whose caller sent a sampled
// traceparent (IDs made from seed), and the caller's span.
func asCaller(ctx context.Context, id string, seed byte) (context.Context, trace.SpanContext) {
	var tid trace.TraceID
	var sid trace.SpanID
	for i := range tid {
		tid[i] = seed + byte(i)
	}
	for i := range sid {
		sid[i] = seed ^ byte(i+1)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
	return tracing.WithRequest(ctx, tracing.Request{ID: id, Span: sc}), sc
}

// installTracing records this process's spans in memory for the test's duration.
func installTracing(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	stop := tracing.Install(sdktrace.WithSyncer(exp), 1, "test", "dev")
	t.Cleanup(func() { _ = stop(context.Background()) })
	return exp
}

// awaitSpan waits until exp holds a span that matches, and returns it.
func awaitSpan(t *testing.T, exp *tracetest.InMemoryExporter, what string, match func(tracetest.SpanStub) bool) tracetest.SpanStub {
	t.Helper()
	var span tracetest.SpanStub
	await.True(t, 10*time.Second, func() bool {
		var ok bool
		span, ok = findSpan(exp.GetSpans(), match)
		return ok
	}, "%s", what)
	return span
}

func findSpan(spans tracetest.SpanStubs, match func(tracetest.SpanStub) bool) (tracetest.SpanStub, bool) {
	i := slices.IndexFunc(spans, match)
	if i < 0 {
		return tracetest.SpanStub{}, false
	}
	return spans[i], true
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

// TestSwitchoverIsOneTrace: a switchover asked for on a follower with a request ID and a
// caller's span carries both in the replicated state on every node from the moment it exists;
// the leader records the operation's span as the caller's child with the operation's real
// start and end, and each node's directive spans are children of it.
func TestSwitchoverIsOneTrace(t *testing.T) {
	exp, c := tracedCluster(t)
	c.settle(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rctx, caller := asCaller(ctx, "req-42", 0x41)
	// Asked on a follower: the trace goes with the forwarded command to the leader.
	follower := ""
	for _, name := range []string{"n1", "n2", "n3"} {
		if c.nodes[name].raft.State() == raft.Follower {
			follower = name
			break
		}
	}
	var id uint64
	if err := retry(ctx, func() (err error) { id, err = c.nodes[follower].Switchover(rctx, "n1", "n2"); return err }); err != nil {
		t.Fatal(err)
	}
	op, err := c.nodes[follower].WaitOperation(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if op.Phase != fsm.PhaseDone {
		t.Fatalf("switchover %s: %s", op.Phase, op.Message)
	}
	ref := op.Trace
	if ref == nil || ref.RequestID != "req-42" || ref.TraceID != caller.TraceID().String() ||
		ref.ParentSpanID != caller.SpanID().String() || ref.SpanID == "" || !ref.Sampled {
		t.Fatalf("operation trace %+v, want request req-42 under the caller's span", ref)
	}
	for name, n := range c.nodes {
		await.True(t, 10*time.Second, func() bool {
			o, ok := n.State().OperationByID(id)
			return ok && !o.Active() && o.Trace != nil && *o.Trace == *ref
		}, "%s's state to carry the same trace", name)
	}

	opSpan := awaitSpan(t, exp, "the operation's span", func(s tracetest.SpanStub) bool { return s.SpanContext.SpanID().String() == ref.SpanID })
	if opSpan.Parent.SpanID() != caller.SpanID() || opSpan.SpanContext.TraceID() != caller.TraceID() {
		t.Fatalf("operation span %q: parent %s in trace %s, want %s in %s", opSpan.Name, opSpan.Parent.SpanID(),
			opSpan.SpanContext.TraceID(), caller.SpanID(), caller.TraceID())
	}
	if !opSpan.StartTime.Equal(op.StartedAt) || !opSpan.EndTime.Equal(op.FinishedAt) || attr(opSpan, "pgbastion.request_id") != "req-42" ||
		attr(opSpan, "pgbastion.operation.new_primary") != "n2" {
		t.Fatalf("operation span %q %s–%s (operation %s–%s), attributes %v", opSpan.Name, opSpan.StartTime, opSpan.EndTime,
			op.StartedAt, op.FinishedAt, opSpan.Attributes)
	}
	if !slices.ContainsFunc(opSpan.Events, func(e sdktrace.Event) bool { return e.Name == "PROMOTE issued to n2" }) {
		t.Fatalf("operation span events %v: no PROMOTE to n2", opSpan.Events)
	}
	// The directives ran on n1 (CHECKPOINT, DEMOTE) and n2 (PROMOTE), each under the operation.
	for _, want := range []struct{ typ, node string }{{"CHECKPOINT", "n1"}, {"DEMOTE", "n1"}, {"PROMOTE", "n2"}} {
		s, ok := findSpan(exp.GetSpans(), func(s tracetest.SpanStub) bool {
			return s.Name == "directive "+want.typ && attr(s, "pgbastion.node") == want.node && s.SpanContext.TraceID() == caller.TraceID()
		})
		if !ok {
			t.Errorf("no span for %s on %s in the trace", want.typ, want.node)
			continue
		}
		if s.Parent.SpanID().String() != ref.SpanID {
			t.Errorf("%s on %s: parent %s, want the operation's %s", want.typ, want.node, s.Parent.SpanID(), ref.SpanID)
		}
	}
}

// TestAutomaticFailoverStartsATrace: a failover nobody asked for starts a trace of its own
// (no request ID), the operation's span is its root, and the PROMOTE is its child.
func TestAutomaticFailoverStartsATrace(t *testing.T) {
	exp, c := tracedCluster(t)
	c.settle(30 * time.Second)
	c.pgs.get("n1").set(func(p *fakePG) { p.running = false })
	primary := c.waitPrimary(30*time.Second, "n1")
	st := c.nodes[primary].State()
	h := st.History[len(st.History)-1]
	op, ok := st.OperationByID(h.OperationID)
	if !ok || op.Kind != fsm.OpFailover {
		t.Fatalf("no failover operation behind %+v", h)
	}
	ref := op.Trace
	if ref == nil || ref.TraceID == "" || ref.SpanID == "" || ref.ParentSpanID != "" || ref.RequestID != "" || !ref.Sampled {
		t.Fatalf("automatic failover trace %+v, want a new sampled trace", ref)
	}
	awaitSpan(t, exp, "the failover's root span", func(s tracetest.SpanStub) bool {
		return s.SpanContext.SpanID().String() == ref.SpanID && !s.Parent.IsValid()
	})
	if _, ok := findSpan(exp.GetSpans(), func(s tracetest.SpanStub) bool {
		return s.Name == "directive PROMOTE" && s.Parent.SpanID().String() == ref.SpanID && attr(s, "pgbastion.node") == primary
	}); !ok {
		t.Fatal("no PROMOTE span under the failover")
	}
}

// TestScheduledSwitchoverContinuesTheBookingsTrace: a switchover booked through the API runs
// later, started by the Raft leader, but belongs to the booking request: the operation keeps
// its request ID, and its span is a child of the booking request's span.
func TestScheduledSwitchoverContinuesTheBookingsTrace(t *testing.T) {
	exp, c := tracedCluster(t)
	c.settle(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rctx, caller := asCaller(ctx, "book-7", 0x11)
	at := time.Now().Add(time.Second)
	if err := retry(ctx, func() error { return c.nodes["n3"].ScheduleSwitchover(rctx, "n1", "n2", at) }); err != nil {
		t.Fatal(err)
	}
	var last *fsm.ScheduledSwitchover
	await.True(t, 20*time.Second, func() bool {
		last = c.nodes["n1"].State().LastScheduledSwitchover
		return last != nil
	}, "the booking to end")
	op, err := c.nodes["n3"].WaitOperation(ctx, last.OperationID)
	if err != nil || op.Phase != fsm.PhaseDone {
		t.Fatalf("the booked switchover: %+v %v", op, err)
	}
	ref := op.Trace
	if ref == nil || ref.RequestID != "book-7" || ref.TraceID != caller.TraceID().String() || ref.ParentSpanID != caller.SpanID().String() {
		t.Fatalf("booked switchover's trace %+v, want the booking request's", ref)
	}
	awaitSpan(t, exp, "the booked switchover's span under the booking request", func(s tracetest.SpanStub) bool {
		return s.SpanContext.SpanID().String() == ref.SpanID && s.Parent.SpanID() == caller.SpanID()
	})
}

// TestRestartCarriesItsRequest: an operator's restart of a replica, asked on a follower, keeps
// the API request's ID in the replicated state, and the agent's span for it is a child of the
// request's span.
func TestRestartCarriesItsRequest(t *testing.T) {
	exp, c := tracedCluster(t)
	primary := c.settle(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var replica string
	for _, name := range []string{"n1", "n2", "n3"} {
		if name != primary {
			replica = name
			break
		}
	}
	rctx, caller := asCaller(ctx, "restart-9", 0x77)
	var id uint64
	if err := retry(ctx, func() (err error) { id, err = c.nodes[primary].RequestRestart(rctx, replica, "test"); return err }); err != nil {
		t.Fatal(err)
	}
	var r fsm.RestartRequest
	await.True(t, 20*time.Second, func() bool {
		var ok bool
		r, ok = c.nodes[replica].State().Restart(id)
		return ok && r.Status != fsm.RestartPending
	}, "the restart of %s to finish", replica)
	if r.Status != fsm.RestartDone || r.Trace == nil || r.Trace.RequestID != "restart-9" || r.Trace.SpanID != caller.SpanID().String() {
		t.Fatalf("restart %d: %s (%s), trace %+v", id, r.Status, r.Message, r.Trace)
	}
	awaitSpan(t, exp, "the restart's span under the request", func(s tracetest.SpanStub) bool {
		return s.Name == "restart" && s.Parent.SpanID() == caller.SpanID() && attr(s, "pgbastion.node") == replica
	})
}
