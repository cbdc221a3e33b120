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

func TestReinitRequests(t *testing.T) {
	m := threeNodes(t)
	id := m.ok(RequestReinit{Node: "n2", Reason: "replica diverged"}).ID
	if r, ok := m.s.PendingRestart("n2"); !ok || r.ID != id || !r.Reinit || r.Reason != "replica diverged" {
		t.Fatalf("pending reinit: %+v %v", r, ok)
	}
	// One request at a time per node, whatever its kind.
	if err := m.apply(RequestRestart{Node: "n2"}).Error(); err == nil || err.Error() != "a reinitialisation of n2 (request 1) is already pending" {
		t.Fatalf("restart while a reinit is pending: %v", err)
	}
	m.rejects(RequestReinit{Node: "n9"}, ErrNotFound)
	m.ok(FinishRestart{ID: id, Node: "n2", Success: true})
	if r, _ := m.s.Restart(id); r.Status != RestartDone || !r.Reinit {
		t.Fatalf("finished: %+v", r)
	}
	// A plain restart is not a reinit.
	r := m.ok(RequestRestart{Node: "n2"})
	if got, _ := m.s.Restart(r.ID); got.Reinit {
		t.Fatal("a restart request says reinit")
	}
}
