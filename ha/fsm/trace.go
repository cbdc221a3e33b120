package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// An operation's trace travels beside the command that creates it, in the Raft log entry's
// extensions (raft.Log.Extensions), not in the command: a node of an older version never
// reads extensions, so the commands every node must decode keep their versions, and the
// operation carries its trace from the moment it exists (a directive issued right after
// finds it).

// TraceRef correlates an operation with the API request that asked for it (RequestID, the
// X-Request-ID header) and with an OpenTelemetry trace (W3C trace context, hexadecimal):
// SpanID is the operation's own span, whose parent is ParentSpanID (the request's span; empty
// for an automatic failover, whose trace starts at the operation). Directive executions are
// children of SpanID.
type TraceRef struct {
	RequestID    string `json:"request_id,omitempty"`
	TraceID      string `json:"trace_id,omitempty"`
	SpanID       string `json:"span_id,omitempty"`
	ParentSpanID string `json:"parent_span_id,omitempty"`
	Sampled      bool   `json:"sampled,omitempty"`
}

// maxTraceField bounds each field (IDs are 16 or 32 hex digits; request IDs are short).
const maxTraceField = 128

// Validate checks the lengths and the hexadecimal IDs.
func (t TraceRef) Validate() error {
	if len(t.RequestID) > maxTraceField {
		return fmt.Errorf("request_id is longer than %d bytes", maxTraceField)
	}
	for _, f := range []struct {
		name, v string
		n       int
	}{{"trace_id", t.TraceID, 32}, {"span_id", t.SpanID, 16}, {"parent_span_id", t.ParentSpanID, 16}} {
		if f.v == "" {
			continue
		}
		if len(f.v) != f.n || !isLowerHex(f.v) {
			return fmt.Errorf("%s %q is not %d lower-case hexadecimal digits", f.name, f.v, f.n)
		}
	}
	if (t.SpanID != "" || t.ParentSpanID != "") && t.TraceID == "" {
		return fmt.Errorf("a span ID without a trace ID")
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Extensions are the metadata a log entry carries beside its command.
type Extensions struct {
	Trace *TraceRef `json:"trace,omitempty"`
}

// MaxExtensionsSize bounds a log entry's extensions.
const MaxExtensionsSize = 1024

// extensionsMagic starts every extensions blob of ours.
const extensionsMagic = "pgbx1"

// EncodeExtensions returns the blob for a log entry's extensions, nil when e says nothing.
func EncodeExtensions(e Extensions) ([]byte, error) {
	if e.Trace == nil {
		return nil, nil
	}
	if err := e.Trace.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	b = append([]byte(extensionsMagic), b...)
	if len(b) > MaxExtensionsSize {
		return nil, fmt.Errorf("log entry extensions: %d bytes exceeds the %d-byte limit", len(b), MaxExtensionsSize)
	}
	return b, nil
}

// DecodeExtensions parses a log entry's extensions. They are advisory: anything it cannot
// use (absent, oversized, not ours, malformed, invalid IDs) gives the zero value, never an
// error, so every node reads the same entry the same way and none halts on it.
func DecodeExtensions(b []byte) Extensions {
	rest, ok := bytes.CutPrefix(b, []byte(extensionsMagic))
	if !ok || len(b) > MaxExtensionsSize {
		return Extensions{}
	}
	var e Extensions
	dec := json.NewDecoder(bytes.NewReader(rest))
	if dec.Decode(&e) != nil || dec.More() {
		return Extensions{}
	}
	if e.Trace != nil && e.Trace.Validate() != nil {
		e.Trace = nil
	}
	return e
}
