package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestClusterPGHBA: the cluster-wide pg_hba list is checked line by line, versioned, reported
// per member, forgotten with a removed member, and kept across a snapshot in its extras,
// where a binary that decodes the state strictly never sees it.
func TestClusterPGHBA(t *testing.T) {
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
	if r := apply(SetPGHBA{}); !errors.Is(r.Err, ErrInvalid) {
		t.Fatalf("removing a list that does not exist: %v", r.Err)
	}
	for name, c := range map[string]SetPGHBA{
		"kind":     {Lines: []string{"hots all all 0/0 md5"}},
		"fields":   {Lines: []string{"host all all md5"}},
		"newline":  {Lines: []string{"host all all 0/0 md5\nlocal all all trust"}},
		"comment":  {Lines: []string{"# nothing"}},
		"too many": {Lines: slices.Repeat([]string{"local all all peer"}, MaxHBALines+1)},
		"too long": {Lines: []string{"host all all 0/0 md5 " + strings.Repeat("x", MaxHBALineLen)}},
	} {
		if r := apply(c); !errors.Is(r.Err, ErrInvalid) || st.PGHBA != nil {
			t.Errorf("%s: %v", name, r.Err)
		}
	}
	if r := apply(SetPGHBA{Lines: []string{" hostssl all all 10.0.0.0/8 scram-sha-256 "}}); r.Err != nil || r.ID != 1 {
		t.Fatalf("set: %+v", r)
	}
	if !slices.Equal(st.PGHBA.Lines, []string{"hostssl all all 10.0.0.0/8 scram-sha-256"}) {
		t.Fatalf("lines %q", st.PGHBA.Lines)
	}
	if r := apply(SetPGHBA{Lines: []string{"local all all peer"}, IfVersion: 7}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("stale if_version: %v", r.Err)
	}
	before := st
	if r := apply(ReportPGHBA{Node: "n1", Version: 1, Outcome: "loaded"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if len(before.PGHBA.Nodes) != 0 {
		t.Fatal("the previous state changed")
	}
	for name, c := range map[string]ReportPGHBA{
		"stranger": {Node: "n9", Version: 1},
		"future":   {Node: "n2", Version: 2},
		"zero":     {Node: "n2"},
	} {
		if r := apply(c); r.Err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if r := apply(ReportPGHBA{Node: "n2", Version: 1, Error: strings.Repeat("e", 5000)}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if n := len(st.PGHBA.Nodes["n2"].Error); n != maxPGConfigErrorLen {
		t.Fatalf("a long error kept at %d bytes", n)
	}
	// A new version keeps the reports (of the old version) until the nodes report again.
	if r := apply(SetPGHBA{Lines: []string{"local all all peer"}, IfVersion: 1}); r.Err != nil || r.ID != 2 || st.PGHBA.Nodes["n1"].Version != 1 {
		t.Fatalf("second version: %+v %+v", r, st.PGHBA)
	}

	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, st); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()
	// The state part (what an older binary decodes strictly) does not carry it.
	var plain map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw[len(snapshotMagic)+1:]))
	if err := dec.Decode(&plain); err != nil {
		t.Fatal(err)
	}
	for k := range plain {
		if strings.Contains(k, "hba") {
			t.Fatalf("the state's JSON has %q", k)
		}
	}
	back, err := ReadSnapshot(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if back.PGHBA == nil || back.PGHBA.Version != 2 || back.PGHBA.Nodes["n1"].Outcome != "loaded" {
		t.Fatalf("after a snapshot: %+v", back.PGHBA)
	}

	apply(RemoveMember{Name: "n2"})
	if _, ok := st.PGHBA.Nodes["n2"]; ok {
		t.Fatal("a removed member's report stayed")
	}
	if r := apply(SetPGHBA{}); r.Err != nil || r.ID != 3 || len(st.PGHBA.Lines) != 0 {
		t.Fatalf("remove: %+v", r)
	}
}
