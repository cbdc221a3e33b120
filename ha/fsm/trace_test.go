package fsm

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

var testRef = TraceRef{RequestID: "r1", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7",
	ParentSpanID: "53995c3f42cd8ad8", Sampled: true}

func TestExtensionsRoundTrip(t *testing.T) {
	b, err := EncodeExtensions(Extensions{Trace: &testRef})
	if err != nil {
		t.Fatal(err)
	}
	if got := DecodeExtensions(b); got.Trace == nil || *got.Trace != testRef {
		t.Fatalf("round trip: %+v", got.Trace)
	}
	if b, err := EncodeExtensions(Extensions{}); err != nil || b != nil {
		t.Fatalf("empty extensions encode as %q, %v", b, err)
	}
	if _, err := EncodeExtensions(Extensions{Trace: &TraceRef{TraceID: "xyz"}}); err == nil {
		t.Fatal("an invalid trace ID was encoded")
	}
	if _, err := EncodeExtensions(Extensions{Trace: &TraceRef{RequestID: strings.Repeat("a", 129)}}); err == nil {
		t.Fatal("an oversized request ID was encoded")
	}
	// Advisory: what cannot be used is dropped, never an error.
	for name, b := range map[string][]byte{
		"nil":        nil,
		"not ours":   []byte(`{"trace":{"request_id":"r"}}`),
		"garbage":    []byte(extensionsMagic + "{"),
		"trailing":   append(bytes.Clone(b), '{'),
		"bad id":     []byte(extensionsMagic + `{"trace":{"trace_id":"ABC"}}`),
		"unknown":    []byte(extensionsMagic + `{"trace":{"request_id":"r"},"later":1}`),
		"oversized":  append([]byte(extensionsMagic+`{"trace":{"request_id":"`), append(bytes.Repeat([]byte{'a'}, MaxExtensionsSize), `"}}`...)...),
		"wrong type": []byte(extensionsMagic + `{"trace":7}`),
	} {
		got := DecodeExtensions(b)
		if name == "unknown" {
			// A newer node's extra field is skipped; what we know is kept.
			if got.Trace == nil || got.Trace.RequestID != "r" {
				t.Errorf("%s: %+v", name, got.Trace)
			}
			continue
		}
		if got.Trace != nil {
			t.Errorf("%s: decoded %+v", name, got.Trace)
		}
	}
}

// TestOperationTakesItsEntrysTrace: the operation a command creates carries the trace of its
// log entry from the start, on every node that applies the entry; an entry without one, or
// with one this node cannot read, creates an untraced operation and halts nothing.
func TestOperationTakesItsEntrysTrace(t *testing.T) {
	f := New(discard(), nil)
	idx := uint64(0)
	apply := func(cmd Command, ext []byte) Result {
		t.Helper()
		idx++
		l := entry(t, idx, cmd)
		l.Extensions = ext
		return f.Apply(l).(Result)
	}
	apply(RegisterMember{Name: "n1", RaftAddress: "n1:8300"}, nil)
	apply(RegisterMember{Name: "n2", RaftAddress: "n2:8300"}, nil)
	apply(SetPrimary{Node: "n1", Reason: "bootstrap"}, nil)
	ext, _ := EncodeExtensions(Extensions{Trace: &testRef})
	// Extensions on a command that creates no operation change nothing.
	if res := apply(SetPause{Paused: false}, ext); res.Err != nil {
		t.Fatal(res.Err)
	}
	res := apply(StartOperation{Kind: OpFailover, Reason: "primary silent", OldPrimary: "n1"}, ext)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	op, ok := f.State().OperationByID(res.ID)
	if !ok || op.Trace == nil || !reflect.DeepEqual(*op.Trace, testRef) {
		t.Fatalf("operation %d trace %+v, want %+v", res.ID, op.Trace, testRef)
	}
	apply(FinishOperation{ID: res.ID, Message: "gave up"}, nil)
	if op, _ := f.State().OperationByID(res.ID); op.Trace == nil || op.Trace.RequestID != "r1" {
		t.Fatalf("finished operation lost its trace: %+v", op.Trace)
	}
	res = apply(StartOperation{Kind: OpFailover, Reason: "again", OldPrimary: ""}, []byte("pgbx1{garbage"))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if op, _ := f.State().OperationByID(res.ID); op.Trace != nil {
		t.Fatalf("unreadable extensions gave a trace: %+v", op.Trace)
	}
	if f.Err() != nil {
		t.Fatalf("halted: %v", f.Err())
	}
	// The trace survives a snapshot.
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, f.State()); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if op, _ := back.OperationByID(res.ID - 1); op.Trace == nil || *op.Trace != testRef {
		t.Fatalf("trace after a snapshot: %+v", op.Trace)
	}
}

func FuzzDecodeExtensions(f *testing.F) {
	b, _ := EncodeExtensions(Extensions{Trace: &testRef})
	f.Add(b)
	f.Add([]byte(extensionsMagic + `{"trace":{"request_id":"x"}}`))
	f.Add([]byte("pgbx1{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e := DecodeExtensions(b)
		if e.Trace == nil {
			return
		}
		if err := e.Trace.Validate(); err != nil {
			t.Fatalf("decoded an invalid trace: %v", err)
		}
		re, err := EncodeExtensions(e)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if got := DecodeExtensions(re); got.Trace == nil || *got.Trace != *e.Trace {
			t.Fatalf("unstable round trip: %+v vs %+v", e.Trace, got.Trace)
		}
	})
}

// containsKey reports whether key appears at any depth of a decoded JSON value.
func containsKey(v any, key string) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if k == key || containsKey(x, key) {
				return true
			}
		}
	case []any:
		for _, x := range v {
			if containsKey(x, key) {
				return true
			}
		}
	}
	return false
}

// TestSnapshotKeepsTracesOutOfTheState: operations' traces travel in a snapshot (and a
// backup) after the state, not in it: a binary of an older version decodes the state
// strictly and stops at its end, so the new field never makes it refuse the snapshot. This
// binary reads them back; a trailer it cannot read is dropped, not an error; the state given
// to WriteSnapshot is not changed.
func TestSnapshotKeepsTracesOutOfTheState(t *testing.T) {
	s := NewState()
	s.Members["n1"] = Member{Name: "n1"}
	booked := testRef
	booked.RequestID = "booking"
	s.Operation = &Operation{ID: 3, Kind: OpSwitchover, Phase: PhaseDraining, Trace: &testRef}
	s.Operations = []Operation{{ID: 1, Kind: OpFailover, Phase: PhaseDone}, {ID: 2, Kind: OpSwitchover, Phase: PhaseDone, Trace: &booked}}
	s.ScheduledSwitchover = &ScheduledSwitchover{Leader: "n1", Trace: &booked}
	s.Restarts = []RestartRequest{{ID: 5, Node: "n1"}, {ID: 6, Node: "n1", Trace: &booked}}
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, s); err != nil {
		t.Fatal(err)
	}
	if s.Operation.Trace == nil || s.Operations[1].Trace == nil || s.ScheduledSwitchover.Trace == nil || s.Restarts[1].Trace == nil {
		t.Fatal("WriteSnapshot changed the state it was given")
	}
	// What an older binary reads: the first JSON value after the header.
	dec := json.NewDecoder(bytes.NewReader(buf.Bytes()[len(snapshotMagic)+1:]))
	var first any
	if err := dec.Decode(&first); err != nil {
		t.Fatal(err)
	}
	if containsKey(first, "trace") {
		t.Fatal("the state in the snapshot carries traces: an older binary would refuse it")
	}
	back, err := ReadSnapshot(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if back.Operation.Trace == nil || *back.Operation.Trace != testRef || back.Operations[0].Trace != nil ||
		back.Operations[1].Trace == nil || back.Operations[1].Trace.RequestID != "booking" ||
		back.ScheduledSwitchover.Trace == nil || back.ScheduledSwitchover.Trace.RequestID != "booking" ||
		back.Restarts[0].Trace != nil || back.Restarts[1].Trace == nil || back.Restarts[1].Trace.RequestID != "booking" {
		t.Fatalf("traces after the round trip: %+v %+v %+v", back.Operation.Trace, back.Operations, back.ScheduledSwitchover)
	}
	// A trailer that is not ours, or a newer binary's extra field: the state still loads.
	body := buf.Bytes()[:len(snapshotMagic)+1+int(dec.InputOffset())]
	for _, tail := range []string{"", "{garbage", `{"operation_traces": {"3": {"trace_id": "NOT HEX"}}, "later": [1]}`} {
		got, err := ReadSnapshot(bytes.NewReader(append(bytes.Clone(body), tail...)))
		if err != nil {
			t.Fatalf("trailer %q: %v", tail, err)
		}
		if got.Operation.Trace != nil {
			t.Fatalf("trailer %q gave a trace: %+v", tail, got.Operation.Trace)
		}
	}
	// Without traces the snapshot is the state alone, as before.
	plain := NewState()
	buf.Reset()
	if err := WriteSnapshot(&buf, plain); err != nil {
		t.Fatal(err)
	}
	dec = json.NewDecoder(bytes.NewReader(buf.Bytes()[len(snapshotMagic)+1:]))
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		t.Fatalf("a snapshot without traces has a trailer (%v)", err)
	}
}
