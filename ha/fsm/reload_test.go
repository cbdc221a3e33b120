package fsm

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// TestClusterReload: a request replaces the last one; each member reports once, for the
// current request only; states stay immutable; the request travels in a snapshot's extras.
func TestClusterReload(t *testing.T) {
	st := NewState()
	idx := uint64(0)
	apply := func(c Command) Result {
		t.Helper()
		idx++
		next, res := st.Apply(c, Meta{Index: idx, At: time.Unix(int64(idx), 0)})
		st = next
		return res
	}
	apply(RegisterMember{Name: "n1", RaftAddress: "n1:8300"})
	apply(RegisterMember{Name: "n2", RaftAddress: "n2:8300"})
	first := apply(RequestReload{}).ID
	res := apply(RequestReload{})
	id := res.ID
	if st.Reload == nil || st.Reload.ID != id || id == first {
		t.Fatalf("reload %+v, want request %d", st.Reload, id)
	}
	if r := apply(ReportReload{ID: first, Node: "n1"}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("a report for the replaced request: %v", r.Err)
	}
	before := st
	if r := apply(ReportReload{ID: id, Node: "n1", Applied: 2, RestartRequired: []string{"api.listen"}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if len(before.Reload.Results) != 0 {
		t.Fatal("the previous state changed")
	}
	for name, c := range map[string]ReportReload{
		"twice":    {ID: id, Node: "n1"},
		"stranger": {ID: id, Node: "n9"},
		"huge":     {ID: id, Node: "n2", RestartRequired: make([]string, maxReloadNames+1)},
	} {
		if r := apply(c); r.Err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if r := apply(ReportReload{ID: id, Node: "n2", Error: "bad file"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	got := st.Reload.Results
	if len(got) != 2 || got["n1"].Applied != 2 || got["n2"].Error != "bad file" {
		t.Fatalf("results %+v", got)
	}
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, st); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if back.Reload == nil || back.Reload.ID != id || back.Reload.Results["n2"].Error != "bad file" {
		t.Fatalf("after a snapshot: %+v", back.Reload)
	}
}
