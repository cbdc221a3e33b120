// Package otlptest is an OTLP/HTTP trace receiver for tests: it keeps every span it is sent,
// with the name of the node (service.instance.id) that sent it.
package otlptest

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one received span; IDs in hexadecimal as W3C trace context writes them.
type Span struct {
	Node, Name                string
	TraceID, SpanID, ParentID string
	Start, End                uint64 // Unix nanoseconds
	Attributes                map[string]string
	Events                    []string
	Error                     bool
}

// Collector receives OTLP/HTTP protobuf exports on /v1/traces.
type Collector struct {
	srv *httptest.Server

	mu      sync.Mutex
	spans   []Span
	headers http.Header
}

// Start runs a collector until Close; URL is its address for tracing.endpoint.
func Start() *Collector {
	c := &Collector{}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	return c
}

// URL is the collector's base address.
func (c *Collector) URL() string { return c.srv.URL }

// Close stops it.
func (c *Collector) Close() { c.srv.Close() }

func (c *Collector) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want protobuf on /v1/traces", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.headers = r.Header.Clone()
	for _, rs := range req.ResourceSpans {
		node := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.instance.id" {
				node = a.Value.GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				sp := Span{Node: node, Name: s.Name, TraceID: hex.EncodeToString(s.TraceId), SpanID: hex.EncodeToString(s.SpanId),
					ParentID: hex.EncodeToString(s.ParentSpanId), Start: s.StartTimeUnixNano, End: s.EndTimeUnixNano,
					Attributes: map[string]string{}, Error: s.GetStatus().GetCode() == 2}
				for _, a := range s.Attributes {
					v := a.Value.GetStringValue()
					if v == "" {
						v = a.Value.String()
					}
					sp.Attributes[a.Key] = v
				}
				for _, e := range s.Events {
					sp.Events = append(sp.Events, e.Name)
				}
				c.spans = append(c.spans, sp)
			}
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	_, _ = w.Write(b)
}

// Spans returns what was received so far.
func (c *Collector) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Find returns the first received span that matches.
func (c *Collector) Find(match func(Span) bool) (Span, bool) {
	for _, s := range c.Spans() {
		if match(s) {
			return s, true
		}
	}
	return Span{}, false
}

// Header returns a header of the last export.
func (c *Collector) Header(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.headers.Get(name)
}
