package tracing

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/tracing/otlptest"
)

// TestExportToCollector: with tracing.endpoint set, an operation's span and a directive under
// it reach an OTLP/HTTP collector with the IDs the replicated state gave them, the node's
// name, and the configured headers.
func TestExportToCollector(t *testing.T) {
	col := otlptest.Start()
	defer col.Close()
	stop, err := Setup(Config{Endpoint: col.URL(), Headers: map[string]string{"X-Api-Key": "k1"}}, "n1", "test", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ref := AutomaticRef()
	if ref == nil || !ref.Sampled || ref.ParentSpanID != "" {
		t.Fatalf("AutomaticRef = %+v, want a new sampled trace", ref)
	}
	start := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	op := fsm.Operation{ID: 7, Kind: fsm.OpFailover, Phase: fsm.PhaseDone, OldPrimary: "n1", NewPrimary: "n2",
		StartedAt: start, FinishedAt: start.Add(700 * time.Millisecond), Trace: ref}
	st := fsm.NewState()
	st.Directives = []fsm.Directive{{ID: 3, Type: fsm.DirectivePromote, Target: "n2", Params: fsm.DirectiveParams{OperationID: 7},
		IssuedAt: start.Add(100 * time.Millisecond), Status: fsm.DirectiveDone, FinishedAt: start.Add(600 * time.Millisecond)}}
	st.Operations = []fsm.Operation{op}
	_, span, got := StartDirective(context.Background(), st, st.Directives[0], "n2")
	if got != ref {
		t.Fatalf("StartDirective found trace %+v, want %+v", got, ref)
	}
	EndSpan(span, nil)
	RecordOperation(st, op, "n3")
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	named := func(name string) func(otlptest.Span) bool {
		return func(s otlptest.Span) bool { return s.Name == name }
	}
	opSpan, ok1 := col.Find(named("failover 7"))
	dirSpan, ok2 := col.Find(named("directive PROMOTE"))
	if !ok1 || !ok2 {
		t.Fatalf("collector got %v, without the operation's or the directive's span", col.Spans())
	}
	if opSpan.TraceID != ref.TraceID || opSpan.SpanID != ref.SpanID || opSpan.ParentID != "" {
		t.Fatalf("operation span IDs %s/%s parent %q, want %s/%s as a root", opSpan.TraceID, opSpan.SpanID, opSpan.ParentID, ref.TraceID, ref.SpanID)
	}
	if opSpan.Start != uint64(start.UnixNano()) || opSpan.End != uint64(op.FinishedAt.UnixNano()) {
		t.Fatalf("operation span from %d to %d, want the operation's own times", opSpan.Start, opSpan.End)
	}
	if len(opSpan.Events) != 2 || opSpan.Events[0] != "PROMOTE issued to n2" || opSpan.Attributes["pgbastion.recorded_by"] != "n3" {
		t.Fatalf("operation span events %v, attributes %v", opSpan.Events, opSpan.Attributes)
	}
	if dirSpan.ParentID != ref.SpanID || dirSpan.TraceID != ref.TraceID || dirSpan.Attributes["pgbastion.node"] != "n2" {
		t.Fatalf("directive span parent %s in %s (%v), want the operation's", dirSpan.ParentID, dirSpan.TraceID, dirSpan.Attributes)
	}
	if opSpan.Node != "n1" || col.Header("X-Api-Key") != "k1" {
		t.Fatalf("resource node %q, header %q", opSpan.Node, col.Header("X-Api-Key"))
	}
	if Enabled() {
		t.Fatal("still enabled after stop")
	}
}

// TestSampling: at ratio 0 an automatic failover's trace is not sampled and its operation
// span is not recorded.
func TestSampling(t *testing.T) {
	col := otlptest.Start()
	defer col.Close()
	zero := 0.0
	stop, err := Setup(Config{Endpoint: col.URL(), SampleRatio: &zero}, "n1", "test", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ref := AutomaticRef()
	if ref == nil || ref.Sampled {
		t.Fatalf("AutomaticRef at ratio 0 = %+v", ref)
	}
	RecordOperation(fsm.NewState(), fsm.Operation{ID: 1, Kind: fsm.OpFailover, Phase: fsm.PhaseDone, Trace: ref}, "n1")
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(col.Spans()); n != 0 {
		t.Fatalf("%d spans exported at ratio 0", n)
	}
}

func TestConfigValidate(t *testing.T) {
	half, neg := 0.5, -1.0
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, ""},
		{Config{Endpoint: "http://127.0.0.1:4318", SampleRatio: &half}, ""},
		{Config{Endpoint: "127.0.0.1:4318"}, "want the collector's OTLP/HTTP address"},
		{Config{Endpoint: "grpc://c:4317"}, "want the collector's OTLP/HTTP address"},
		{Config{Endpoint: "http://c:4318", SampleRatio: &neg}, "from 0 to 1"},
		{Config{Endpoint: "http://c:4318", CAFile: "/ca.pem"}, "not an https://"},
	} {
		err := c.cfg.Validate()
		if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	if u, _ := endpointURL("https://c:4318/custom/path"); u != "https://c:4318/custom/path" {
		t.Errorf("a path given is kept: %s", u)
	}
	if u, _ := endpointURL("http://c:4318"); u != "http://c:4318/v1/traces" {
		t.Errorf("default path: %s", u)
	}
	if _, err := Setup(Config{Endpoint: "https://c:4318", CAFile: "/nonexistent"}, "n", "v", slog.Default()); err == nil {
		t.Error("a missing CA file was accepted")
	}
}

func TestRequestIDs(t *testing.T) {
	a, b := NewRequestID(), NewRequestID()
	if len(a) != 16 || a == b {
		t.Fatalf("request IDs %q %q", a, b)
	}
	if OperationRef(context.Background()) != nil {
		t.Fatal("a reference without a request")
	}
	ref := OperationRef(WithRequest(context.Background(), Request{ID: "r"}))
	if ref == nil || ref.RequestID != "r" || ref.TraceID != "" {
		t.Fatalf("untraced request: %+v", ref)
	}
}

// TestCollectorDownIsCountedAndLogged: spans that cannot be exported are counted in
// pgbastion_tracing_export_errors_total and logged (once a minute at most), and nothing waits
// for them beyond the shutdown's flush.
func TestCollectorDownIsCountedAndLogged(t *testing.T) {
	col := otlptest.Start()
	url := col.URL()
	col.Close() // nobody listens there any more
	saved := exportRetry
	exportRetry.Enabled = false // fail at once rather than retry for half a minute
	defer func() { exportRetry = saved }()
	var logs syncLog
	lastLog.Store(0) // as in a fresh process
	before := exportErrors.Get()
	stop, err := Setup(Config{Endpoint: url}, "n1", "test", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		_, span := Tracer().Start(context.Background(), "lost")
		span.End()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = stop(ctx) // flushes; the export fails
		cancel()
		if stop, err = Setup(Config{Endpoint: url}, "n1", "test", slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
			t.Fatal(err)
		}
	}
	_ = stop(context.Background())
	if got := exportErrors.Get() - before; got < 2 {
		t.Fatalf("%d export errors counted, want 2", got)
	}
	if n := strings.Count(logs.String(), "spans not exported"); n != 1 {
		t.Fatalf("%d log lines for the failed exports, want 1 (rate-limited):\n%s", n, logs.String())
	}
}

type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
