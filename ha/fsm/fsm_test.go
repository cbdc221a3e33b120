package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func entry(t *testing.T, idx uint64, cmd Command) *raft.Log {
	t.Helper()
	b, err := Encode(cmd, time.Unix(int64(idx), 0))
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: b}
}

func sampleLog(t *testing.T) []*raft.Log {
	cmds := []Command{
		LeaderEstablished{Leader: "n1"},
		RegisterMember{Name: "n1", RaftAddress: "n1:8300", Tags: Tags{FailoverPriority: 1}},
		RegisterMember{Name: "n2", RaftAddress: "n2:8300", Tags: Tags{FailoverPriority: 1}},
		ReportStatus{Node: "n1", Status: NodeStatus{Role: RolePrimary, State: StateRunningPrimary, Healthy: true, FlushLSN: 50}},
		SetPrimary{Node: "n1", Reason: "bootstrap"},
		RenewLease{Node: "n2", Routing: "n1"},
		IssueDirective{Type: DirectiveCheckpoint, Target: "n1"},
		AckDirective{ID: 1, Node: "n1", Success: true},
		AckDirective{ID: 1, Node: "n1", Success: true}, // rejected, state unchanged
		SetPause{Paused: true},
	}
	var logs []*raft.Log
	for i, c := range cmds {
		logs = append(logs, entry(t, uint64(i+1), c))
	}
	return logs
}

func stateJSON(t *testing.T, s *State) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApplyIsDeterministic(t *testing.T) {
	a, b := New(discard(), nil), New(discard(), nil)
	for _, l := range sampleLog(t) {
		ra, rb := a.Apply(l), b.Apply(l)
		if stateJSON(t, a.State()) != stateJSON(t, b.State()) {
			t.Fatalf("states diverged at index %d", l.Index)
		}
		if ra.(Result).Error() != nil && rb.(Result).Error() == nil {
			t.Fatal("results diverged")
		}
	}
	if !a.State().Paused || a.State().Primary != "n1" {
		t.Fatalf("unexpected final state %s", stateJSON(t, a.State()))
	}
}

func TestUndecodableEntryHaltsTheFSM(t *testing.T) {
	var halted error
	f := New(discard(), func(err error) { halted = err })
	logs := sampleLog(t)
	for _, l := range logs[:3] {
		f.Apply(l)
	}
	before := stateJSON(t, f.State())
	bad := &raft.Log{Index: 4, Term: 1, Type: raft.LogCommand, Data: []byte{99, 1, 0, 0, 0, 0, 0, 0, 0, 0, '{', '}'}}
	res := f.Apply(bad).(Result)
	if !errors.Is(res.Error(), ErrHalted) {
		t.Fatalf("Apply(bad) = %+v", res)
	}
	if halted == nil || !strings.Contains(halted.Error(), "log entry 4") {
		t.Fatalf("onHalt got %v", halted)
	}
	select {
	case <-f.Halted():
	default:
		t.Fatal("Halted not closed")
	}
	// Later entries are not applied: the node must not move past a command it cannot read.
	for _, l := range logs[3:] {
		if res := f.Apply(l).(Result); !errors.Is(res.Error(), ErrHalted) {
			t.Fatalf("entry %d applied after halt", l.Index)
		}
	}
	if stateJSON(t, f.State()) != before {
		t.Fatal("state changed after halt")
	}
	if _, err := f.Snapshot(); err == nil {
		t.Fatal("a halted FSM must refuse to snapshot")
	}
}

func TestIgnorableUnknownCommandIsSkipped(t *testing.T) {
	f := New(discard(), func(err error) { t.Errorf("halted: %v", err) })
	data := []byte{byte(IgnorableFlag | 42), 1, 0, 0, 0, 0, 0, 0, 0, 0, '{', '}'}
	if res := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}).(Result); res.Err != nil {
		t.Fatalf("ignorable: %+v", res)
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	f := New(discard(), nil)
	for _, l := range sampleLog(t) {
		f.Apply(l)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot is a frozen view: applying more does not change what it persists.
	want := stateJSON(t, f.State())
	f.Apply(entry(t, 100, SetPause{Paused: false}))
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := New(discard(), nil)
	sub := g.Subscribe()
	defer sub.Close()
	<-sub.C
	if err := g.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if got := stateJSON(t, g.State()); got != want {
		t.Fatalf("restored state differs:\n got %s\nwant %s", got, want)
	}
	select {
	case s := <-sub.C:
		if s != g.State() {
			t.Fatal("subscriber got a different state")
		}
	default:
		t.Fatal("Restore did not notify subscribers")
	}
}

func TestRestoreRejectsBadInputAndKeepsState(t *testing.T) {
	f := New(discard(), nil)
	for _, l := range sampleLog(t) {
		f.Apply(l)
	}
	before := f.State()
	var good bytes.Buffer
	if err := WriteSnapshot(&good, before); err != nil {
		t.Fatal(err)
	}
	truncated := good.Bytes()[:good.Len()-5]
	wrongVersion := append([]byte(nil), good.Bytes()...)
	wrongVersion[len(snapshotMagic)] = 9
	for name, b := range map[string][]byte{
		"garbage":       []byte("hello"),
		"truncated":     truncated,
		"wrong version": wrongVersion,
		"unknown field": append([]byte(snapshotMagic+"\x01"), `{"members":{},"bogus":1}`...),
	} {
		if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err == nil {
			t.Errorf("%s: Restore accepted it", name)
		}
		if f.State() != before {
			t.Fatalf("%s: failed Restore replaced the state", name)
		}
	}
}

func TestSubscribeHasLatestValueSemantics(t *testing.T) {
	f := New(discard(), nil)
	sub := f.Subscribe()
	defer sub.Close()
	if s := <-sub.C; s != f.State() {
		t.Fatal("first value is not the current state")
	}
	logs := sampleLog(t)
	for _, l := range logs { // nobody reads meanwhile; Apply must not block
		f.Apply(l)
	}
	got := <-sub.C
	if got != f.State() || !got.Paused {
		t.Fatal("subscriber did not get the newest state")
	}
	select {
	case s := <-sub.C:
		t.Fatalf("stale value still queued: index %d", s.Index)
	default:
	}
	sub.Close()
	f.Apply(entry(t, 50, SetPause{Paused: false}))
	select {
	case <-sub.C:
		t.Fatal("closed subscription still receives")
	default:
	}
}

// BenchmarkSnapshot shows Snapshot is O(1): it keeps the immutable state pointer.
func BenchmarkSnapshot(b *testing.B) {
	f := New(discard(), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.Snapshot(); err != nil {
			b.Fatal(err)
		}
	}
}
