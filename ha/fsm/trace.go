package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
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

// snapshotExtras are the advisory parts of a state, written after it in a snapshot rather
// than in it. A binary of an older version decodes the state strictly (an unknown field makes
// it refuse the snapshot, or a backup) and stops reading at the state's end, so extras it
// does not know never reach it; it only lacks them.
type snapshotExtras struct {
	OperationTraces  map[uint64]TraceRef `json:"operation_traces,omitempty"`
	BookingTrace     *TraceRef           `json:"booking_trace,omitempty"`
	LastBookingTrace *TraceRef           `json:"last_booking_trace,omitempty"`
	RestartTraces    map[uint64]TraceRef `json:"restart_traces,omitempty"`
	Reload           *ReloadRequest      `json:"reload,omitempty"`
	PGHBA            *PGHBA              `json:"pg_hba,omitempty"`
}

// splitExtras returns s without its advisory parts, and those parts (nil when it has none).
// s is not modified: what changes is copied.
func (s *State) splitExtras() (*State, *snapshotExtras) {
	c := *s
	var ex snapshotExtras
	c.Operations, ex.OperationTraces = stripTraces(s.Operations, operationTrace)
	if s.Operation != nil && s.Operation.Trace != nil {
		if ex.OperationTraces == nil {
			ex.OperationTraces = map[uint64]TraceRef{}
		}
		ex.OperationTraces[s.Operation.ID] = *s.Operation.Trace
		op := *s.Operation
		op.Trace = nil
		c.Operation = &op
	}
	c.Restarts, ex.RestartTraces = stripTraces(s.Restarts, restartTrace)
	c.ScheduledSwitchover, ex.BookingTrace = stripBooking(s.ScheduledSwitchover)
	c.LastScheduledSwitchover, ex.LastBookingTrace = stripBooking(s.LastScheduledSwitchover)
	ex.Reload = s.Reload // not in the state's JSON (its tag is "-"): nothing to strip
	ex.PGHBA = s.PGHBA   // the same
	if ex.OperationTraces == nil && ex.RestartTraces == nil && ex.BookingTrace == nil && ex.LastBookingTrace == nil && ex.Reload == nil && ex.PGHBA == nil {
		return s, nil
	}
	return &c, &ex
}

func operationTrace(o *Operation) (**TraceRef, uint64)    { return &o.Trace, o.ID }
func restartTrace(r *RestartRequest) (**TraceRef, uint64) { return &r.Trace, r.ID }

// stripTraces returns items without their traces (a copy, when any had one) and the traces by
// ID (nil when none had one).
func stripTraces[T any](items []T, trace func(*T) (**TraceRef, uint64)) ([]T, map[uint64]TraceRef) {
	out := items
	var traces map[uint64]TraceRef
	for i := range items {
		t, id := trace(&items[i])
		if *t == nil {
			continue
		}
		if traces == nil {
			traces, out = map[uint64]TraceRef{}, slices.Clone(items)
		}
		traces[id] = **t
		t2, _ := trace(&out[i])
		*t2 = nil
	}
	return out, traces
}

// stripBooking returns b without its trace (a copy, when it had one) and the trace.
func stripBooking(b *ScheduledSwitchover) (*ScheduledSwitchover, *TraceRef) {
	if b == nil || b.Trace == nil {
		return b, nil
	}
	c := *b
	c.Trace = nil
	return &c, b.Trace
}

// decodeExtras reads the extras after a snapshot's state; they are advisory, so what cannot
// be read (none, garbage, a newer binary's fields) is left out, never an error.
func decodeExtras(b []byte) snapshotExtras {
	var ex snapshotExtras
	if len(bytes.TrimSpace(b)) == 0 || json.Unmarshal(b, &ex) != nil {
		return snapshotExtras{}
	}
	return ex
}

// joinExtras puts extras back into a state just decoded (not yet shared).
func (s *State) joinExtras(ex snapshotExtras) {
	if s.Operation != nil {
		if t, ok := ex.OperationTraces[s.Operation.ID]; ok {
			s.Operation.Trace = validRef(t)
		}
	}
	joinTraces(s.Operations, ex.OperationTraces, operationTrace)
	joinTraces(s.Restarts, ex.RestartTraces, restartTrace)
	if s.ScheduledSwitchover != nil && ex.BookingTrace != nil {
		s.ScheduledSwitchover.Trace = validRef(*ex.BookingTrace)
	}
	if s.LastScheduledSwitchover != nil && ex.LastBookingTrace != nil {
		s.LastScheduledSwitchover.Trace = validRef(*ex.LastBookingTrace)
	}
	if ex.Reload != nil && len(ex.Reload.Results) <= maxMembersInExtras {
		s.Reload = ex.Reload
	}
	if validPGHBA(ex.PGHBA) {
		s.PGHBA = ex.PGHBA
	}
}

// joinTraces gives each item its trace from traces, when it has a valid one.
func joinTraces[T any](items []T, traces map[uint64]TraceRef, trace func(*T) (**TraceRef, uint64)) {
	for i := range items {
		t, id := trace(&items[i])
		if ref, ok := traces[id]; ok {
			*t = validRef(ref)
		}
	}
}

// validRef returns a pointer to t, or nil when t is not a valid reference.
func validRef(t TraceRef) *TraceRef {
	if t.Validate() != nil {
		return nil
	}
	return &t
}

// maxMembersInExtras bounds what a snapshot's extras may bring back (a cluster has a handful
// of members).
const maxMembersInExtras = 1024
