package pool

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestRegistryDeduplicatesAndForgets(t *testing.T) {
	r := NewRegistry()
	a := r.Get([]byte("select 1"), nil, 0)
	b := r.Get([]byte("select 1"), nil, 0)
	c := r.Get([]byte("select 1"), []byte{0, 0, 0, 23}, 1)
	if a != b {
		t.Fatal("same text gave two statements")
	}
	if a == c || string(a.Name) == string(c.Name) {
		t.Fatal("different parameter types shared a statement")
	}
	if !strings.HasPrefix(string(a.Name), "pgb_") {
		t.Fatalf("name %q", a.Name)
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(c)
	a, b, c = nil, nil, nil
	deadline := time.Now().Add(5 * time.Second)
	for r.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("registry still holds %d unreferenced statements", r.Len())
		}
		runtime.GC()
		runtime.Gosched()
	}
	d := r.Get([]byte("select 1"), nil, 0)
	if d.ID <= 2 {
		t.Fatalf("statement ID %d reused", d.ID)
	}
}

func TestServerStatementsLRU(t *testing.T) {
	s := NewServerStatements(2)
	st := []*Stmt{{ID: 1}, {ID: 2}, {ID: 3}}
	if ev := s.Add(st[0]); ev != nil {
		t.Fatal("evicted early")
	}
	s.Add(st[1])
	s.Has(st[0]) // st[1] is now least recently used
	if ev := s.Add(st[2]); ev != st[1] {
		t.Fatalf("evicted %v, want statement 2", ev)
	}
	if !s.Has(st[0]) || !s.Has(st[2]) || s.Has(st[1]) {
		t.Fatal("wrong contents after eviction")
	}
	s.Remove(st[0])
	if s.Len() != 1 {
		t.Fatal(s.Len())
	}
	s.Clear()
	if s.Len() != 0 || s.Has(st[2]) {
		t.Fatal("clear")
	}
}

func TestSyncSQL(t *testing.T) {
	server := NewParams()
	server.Set("server_version", "15.4")
	server.Set("TimeZone", "UTC")
	server.Set("application_name", "")
	server.Set("extra_float_digits", "3") // left by a previous client

	client := NewParams()
	client.Set("server_version", "15.4")
	client.Set("TimeZone", "UTC")
	client.Set("application_name", "it's")
	client.Set("search_path", `"$user", public`)

	sql := SyncSQL(client, server)
	want := `SELECT pg_catalog.set_config(E'application_name', E'it''s', false), pg_catalog.set_config(E'search_path', E'"$user", public', false);RESET "extra_float_digits";`
	if sql != want {
		t.Fatalf("got  %s\nwant %s", sql, want)
	}
	if !client.SameTracked(server) {
		t.Fatal("server not updated to the client's settings")
	}
	if SyncSQL(client, server) != "" {
		t.Fatal("second sync not empty")
	}
	// Untracked parameters never cause a SET.
	server.Set("server_version", "16.0")
	if SyncSQL(client, server) != "" {
		t.Fatal("untracked difference produced SQL")
	}
}

func TestPoolAcquireReleaseSteal(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New[int, string](2, Limits{Size: 2, WaitTimeout: time.Second}, nil)
	if k, _, _ := p.Acquire(0, "a", now); k != GrantDial {
		t.Fatalf("first acquire %v", k)
	}
	if k, _, _ := p.Acquire(1, "b", now); k != GrantDial {
		t.Fatalf("second acquire %v", k)
	}
	if k, _, _ := p.Acquire(0, "c", now); k != GrantWait {
		t.Fatalf("third acquire %v, want wait", k)
	}
	// server 2 on loop 1 is released: waiter c (loop 0) gets it.
	to, toLoop, handed, retire := p.Release(1, 2, now, now)
	if !handed || retire || to != "c" || toLoop != 0 {
		t.Fatalf("release: to %q loop %d handed %v retire %v", to, toLoop, handed, retire)
	}
	// no waiters: the server becomes idle on loop 1; loop 0 steals it.
	if _, _, handed, _ := p.Release(1, 2, now, now); handed {
		t.Fatal("handed with no waiter")
	}
	k, s, from := p.Acquire(0, "d", now)
	if k != GrantSteal || s != 2 || from != 1 {
		t.Fatalf("steal: %v %v %v", k, s, from)
	}
	p.Release(0, 2, now, now)
	if k, s, _ := p.Acquire(0, "e", now); k != GrantIdle || s != 2 {
		t.Fatalf("idle: %v %v", k, s)
	}
}

func TestPoolPrefersSameLoopWaiter(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New[int, string](2, Limits{Size: 1}, nil)
	p.Acquire(0, "x", now)
	p.Acquire(1, "far", now)
	p.Acquire(0, "near", now)
	if to, _, _, _ := p.Release(0, 1, now, now); to != "near" {
		t.Fatalf("handed to %q", to)
	}
	if to, _, _, _ := p.Release(0, 1, now, now); to != "far" {
		t.Fatalf("handed to %q", to)
	}
}

func TestPoolTimeoutsAndReserve(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New[int, string](1, Limits{Size: 1, Reserve: 1, ReserveTimeout: time.Second,
		WaitTimeout: 3 * time.Second, IdleTimeout: 10 * time.Second, Lifetime: time.Hour}, nil)
	p.Acquire(0, "a", now)
	p.Acquire(0, "b", now)
	p.Acquire(0, "c", now.Add(2*time.Second))
	expired, reserve, _, _ := p.Sweep(0, now.Add(1500*time.Millisecond))
	if len(expired) != 0 || len(reserve) != 1 || reserve[0] != "b" {
		t.Fatalf("expired %v reserve %v", expired, reserve)
	}
	expired, reserve, _, _ = p.Sweep(0, now.Add(5*time.Second))
	if len(expired) != 1 || expired[0] != "c" || len(reserve) != 0 {
		t.Fatalf("expired %v reserve %v", expired, reserve)
	}
	// Over size+reserve is impossible; now both servers come back: the reserve one is
	// retired as soon as the pool is above its normal size and idle long enough.
	p.Release(0, 1, now, now)
	p.Release(0, 2, now, now)
	_, _, closeIdle, _ := p.Sweep(0, now.Add(20*time.Second))
	if len(closeIdle) != 2 {
		t.Fatalf("idle timeout closed %v", closeIdle)
	}
	// A server past its lifetime is retired at release.
	if _, _, _, retire := p.Release(0, 3, now, now.Add(2*time.Hour)); !retire {
		t.Fatal("lifetime not enforced")
	}
}

func TestPoolDBCounterAndServerGone(t *testing.T) {
	now := time.Unix(1000, 0)
	db := &Counter{Max: 1}
	a := New[int, string](1, Limits{Size: 5}, db)
	b := New[int, string](1, Limits{Size: 5}, db)
	if k, _, _ := a.Acquire(0, "x", now); k != GrantDial {
		t.Fatal(k)
	}
	if k, _, _ := b.Acquire(0, "y", now); k != GrantWait {
		t.Fatalf("max_db_connections not enforced: %v", k)
	}
	a.ServerGone()
	if db.Value() != 0 {
		t.Fatal(db.Value())
	}
	// The database-wide slot freed by pool a lets pool b's waiter dial at the next sweep.
	if _, dial, _, _ := b.Sweep(0, now); len(dial) != 1 || dial[0] != "y" {
		t.Fatalf("waiter blocked by max_db_connections not offered a dial: %v", dial)
	}
}

func TestPoolPauseResume(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New[int, string](1, Limits{Size: 2}, nil)
	p.Acquire(0, "a", now)
	p.Pause()
	if k, _, _ := p.Acquire(0, "b", now); k != GrantWait {
		t.Fatalf("paused pool granted %v", k)
	}
	if _, _, handed, _ := p.Release(0, 1, now, now); handed {
		t.Fatal("paused pool handed a server to a waiter")
	}
	if w := p.Resume(); len(w) != 1 || w[0] != "b" {
		t.Fatalf("resume returned %v", w)
	}
	if k, s, _ := p.Acquire(0, "b", now); k != GrantIdle || s != 1 {
		t.Fatalf("after resume %v %v", k, s)
	}
}
