package fsm

import "testing"

func TestRestartRequests(t *testing.T) {
	m := threeNodes(t)
	id := m.ok(RequestRestart{Node: "n2", Reason: "shared_buffers"}).ID
	if r, ok := m.s.PendingRestart("n2"); !ok || r.ID != id || r.Index != m.idx || r.Reason != "shared_buffers" {
		t.Fatalf("pending restart: %+v %v", r, ok)
	}
	m.rejects(RequestRestart{Node: "n2"}, ErrConflict) // one at a time per node
	m.rejects(RequestRestart{Node: "n9"}, ErrNotFound)
	id3 := m.ok(RequestRestart{Node: "n3"}).ID
	if id3 != id+1 {
		t.Fatalf("ids %d then %d", id, id3)
	}

	m.rejects(FinishRestart{ID: id, Node: "n3", Success: true}, ErrInvalid)
	m.ok(FinishRestart{ID: id, Node: "n2", Success: true})
	m.rejects(FinishRestart{ID: id, Node: "n2", Success: true}, ErrConflict)
	m.rejects(FinishRestart{ID: 99, Node: "n2"}, ErrNotFound)
	if r, _ := m.s.Restart(id); r.Status != RestartDone || r.FinishedAt.IsZero() {
		t.Fatalf("finished: %+v", r)
	}
	if _, ok := m.s.PendingRestart("n2"); ok {
		t.Fatal("n2 still has a pending restart")
	}
	m.ok(RequestRestart{Node: "n2"}) // a new one after the first ended

	// A removed member's pending request fails.
	m.ok(RemoveMember{Name: "n3"})
	if r, _ := m.s.Restart(id3); r.Status != RestartFailed || r.Message != "member removed" {
		t.Fatalf("request of a removed member: %+v", r)
	}

	// Finished requests are bounded; pending ones are kept.
	for i := 0; i < 2*maxRestarts; i++ {
		r := m.ok(RequestRestart{Node: "n1"})
		m.ok(FinishRestart{ID: r.ID, Node: "n1", Success: true})
	}
	if len(m.s.Restarts) > maxRestarts {
		t.Fatalf("%d requests retained", len(m.s.Restarts))
	}
	if _, ok := m.s.PendingRestart("n2"); !ok {
		t.Fatal("the pending request was dropped to make room")
	}
}
