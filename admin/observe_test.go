package admin

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/tracing"
)

// syncBuffer is a log destination the server's goroutines may write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
)

func send(t *testing.T, method, url, token string, header map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(`{"leader":"n1","candidate":"n2"}`))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestRequestIDsAndTraces: every answer has an X-Request-ID (the caller's when usable); a
// mutation is logged with it, whether it was allowed or not; the switchover it asks for
// carries it and the caller's trace (traceparent) to the cluster; with tracing on the request
// is a span under the caller's and the operation's parent is that span.
func TestRequestIDsAndTraces(t *testing.T) {
	c := newCluster(t, "n1")
	var logs syncBuffer
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", "s3cret"
	s, err := New(cfg, Sources{Cluster: c}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)

	// Reads get an ID too; an unusable one from the caller is replaced.
	resp := send(t, "GET", u+"/cluster", "", map[string]string{"X-Request-ID": "has spaces in it"})
	if id := resp.Header.Get("X-Request-ID"); len(id) != 16 || strings.Contains(id, " ") {
		t.Fatalf("GET /cluster X-Request-ID %q, want a made-up one", id)
	}

	traceparent := "00-" + callerTrace + "-" + callerSpan + "-01"
	// Tracing off: the operation still carries the request ID and the caller's trace.
	resp = send(t, "POST", u+"/switchover", "s3cret", map[string]string{"X-Request-ID": "ops-123", "traceparent": traceparent})
	if resp.StatusCode != 200 || resp.Header.Get("X-Request-ID") != "ops-123" {
		t.Fatalf("POST /switchover: %d, X-Request-ID %q", resp.StatusCode, resp.Header.Get("X-Request-ID"))
	}
	ref := c.lastRef
	if ref == nil || ref.RequestID != "ops-123" || ref.TraceID != callerTrace || ref.ParentSpanID != callerSpan || !ref.Sampled {
		t.Fatalf("operation trace with tracing off: %+v", ref)
	}
	if l := logs.String(); !strings.Contains(l, `msg="api request" method=POST path=/switchover status=200`) ||
		!strings.Contains(l, "request_id=ops-123 trace_id="+callerTrace) {
		t.Fatalf("no access log line for the switchover:\n%s", l)
	}
	// A refused mutation is logged too (a wrong token), and never with the token.
	resp = send(t, "POST", u+"/switchover", "wrong", map[string]string{"X-Request-ID": "intruder-1"})
	if resp.StatusCode != 401 || !strings.Contains(logs.String(), "status=401") || !strings.Contains(logs.String(), "request_id=intruder-1") {
		t.Fatalf("refused request: %d\n%s", resp.StatusCode, logs.String())
	}
	if strings.Contains(logs.String(), "s3cret") || strings.Contains(logs.String(), "wrong") {
		t.Fatal("a token reached the log")
	}

	// Tracing on: the request is a span, the caller's child, and the operation's parent.
	exp := tracetest.NewInMemoryExporter()
	stop := tracing.Install(sdktrace.WithSyncer(exp), 1, "n1", "test")
	defer stop(context.Background())
	resp = send(t, "POST", u+"/switchover", "s3cret", map[string]string{"X-Request-ID": "ops-124", "traceparent": traceparent})
	if resp.StatusCode != 200 {
		t.Fatalf("POST /switchover: %d", resp.StatusCode)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want the request's", len(spans))
	}
	sp := spans[0]
	if sp.Name != "POST /switchover" || sp.Parent.SpanID().String() != callerSpan || sp.SpanContext.TraceID().String() != callerTrace {
		t.Fatalf("request span %q parent %s trace %s", sp.Name, sp.Parent.SpanID(), sp.SpanContext.TraceID())
	}
	ref = c.lastRef
	if ref.RequestID != "ops-124" || ref.ParentSpanID != sp.SpanContext.SpanID().String() || ref.TraceID != callerTrace {
		t.Fatalf("operation trace %+v, want the request span %s as parent", ref, sp.SpanContext.SpanID())
	}
	var status string
	for _, a := range sp.Attributes {
		if a.Key == "http.response.status_code" {
			status = a.Value.Emit()
		}
	}
	if status != "200" {
		t.Fatalf("request span attributes %v", sp.Attributes)
	}
}

// TestClusterReloadCollectsEveryMembersResult: POST /reload {"cluster": true} asks every member
// through the replicated state and answers with each one's result once all reported (200), or
// with those still missing when the wait runs out (202).
func TestClusterReloadCollectsEveryMembersResult(t *testing.T) {
	c := newCluster(t, "n1")
	report := func(id uint64, node string, applied int, errMsg string) {
		if _, err := c.propose(fsm.ReportReload{ID: id, Node: node, Applied: applied, Error: errMsg}, time.Now()); err != nil {
			t.Error(err)
		}
	}
	c.onReload = func(id uint64) {
		report(id, "n1", 1, "")
		report(id, "n2", 0, "pgbastion.yaml:7: unknown key \"defualt_pool_size\"")
	}
	u := startAPI(t, "tok", c)
	code, body := do(t, "POST", u+"/reload", "tok", `{"cluster": true}`)
	if code != 200 || !strings.Contains(body, `"applied": 1`) || !strings.Contains(body, "defualt_pool_size") ||
		!strings.Contains(body, "1 members reloaded their configuration file; 1 refused theirs") {
		t.Fatalf("cluster reload: %d %s", code, body)
	}
	c.onReload = func(id uint64) { report(id, "n1", 0, "") } // n2 never answers
	code, body = do(t, "POST", u+"/reload", "tok", `{"cluster": true, "wait_seconds": 0.3}`)
	if code != 202 || !strings.Contains(body, `"n2"`) || !strings.Contains(body, "no answer yet from n2") {
		t.Fatalf("cluster reload with a silent member: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/reload", "tok", `{"clutser": true}`); code != 400 {
		t.Fatalf("a misspelt field: %d %s", code, body)
	}
}
