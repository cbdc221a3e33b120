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
	// Server 2 on loop 1 is released: loop 1 has nobody waiting, so waiter c on loop 0 gets it.
	to, toLoop, handed, retire := p.Release(1, 2, now, now)
	if !handed || retire || to != "c" || toLoop != 0 {
		t.Fatalf("release: to %q loop %d handed %v retire %v", to, toLoop, handed, retire)
	}
	// Now loop 0 holds both servers. With nobody waiting, a released server stays idle on
	// its loop, and a client on loop 1 takes it from there (a steal).
	if _, _, handed, _ := p.Release(0, 2, now, now); handed {
		t.Fatal("handed with no waiter")
	}
	k, s, from := p.Acquire(1, "d", now)
	if k != GrantSteal || s != 2 || from != 0 {
		t.Fatalf("steal: %v %v %v", k, s, from)
	}
	p.Release(1, 2, now, now)
	if k, s, _ := p.Acquire(1, "e", now); k != GrantIdle || s != 2 {
		t.Fatalf("idle: %v %v", k, s)
	}
}

// With shares of four or more, a loop that holds its share keeps its idle servers for its own
// clients instead of moving them to another loop that holds its share too; a loop below its
// share still gets them at once, and Sweep moves an idle server to a client that still waits.
func TestPoolLargeSharesStayOnTheirLoop(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New[int, string](2, Limits{Size: 8}, nil)
	srv := 0
	for loop := 0; loop < 2; loop++ {
		for i := 0; i < 4; i++ {
			if k, _, _ := p.Acquire(loop, "x", now); k != GrantDial {
				t.Fatalf("acquire %d on loop %d: %v", i, loop, k)
			}
		}
	}
	// Both loops hold their share (4 of 8), all busy; a client waits on loop 1.
	if k, _, _ := p.Acquire(1, "b0", now); k != GrantWait {
		t.Fatalf("acquire with a full pool: %v", k)
	}
	// A server comes free on loop 0, where nobody waits: it stays there.
	srv++
	if _, toLoop, handed, _ := p.Release(0, srv, now, now); handed || toLoop != 0 {
		t.Fatalf("release on loop 0 moved the server to loop %d (handed %v)", toLoop, handed)
	}
	// A new client on loop 1 does not take it either: loop 1 holds its share.
	if k, _, _ := p.Acquire(1, "b1", now); k != GrantWait {
		t.Fatalf("acquire on loop 1: %v, want wait", k)
	}
	// A client on loop 0 gets it.
	if k, s, _ := p.Acquire(0, "a0", now); k != GrantIdle || s != srv {
		t.Fatalf("acquire on loop 0: %v %v", k, s)
	}
	p.Release(0, srv, now, now)
	// Sweep hands it to loop 1's oldest waiter.
	r := p.Sweep(1, now)
	if len(r.Steals) != 1 || r.Steals[0].To != "b0" || r.Steals[0].From != 0 || r.Steals[0].S != srv {
		t.Fatalf("sweep: %+v", r.Steals)
	}
	// Loop 1 now holds 5 and loop 0 only 3: a server released on loop 1 goes back to a client
	// waiting on loop 0, though loop 1 has its own waiter.
	if k, _, _ := p.Acquire(0, "a1", now); k != GrantWait {
		t.Fatalf("acquire on loop 0: %v, want wait", k)
	}
	if to, toLoop, handed, _ := p.Release(1, 42, now, now); !handed || to != "a1" || toLoop != 0 {
		t.Fatalf("release on loop 1 went to %q on loop %d (handed %v)", to, toLoop, handed)
	}
	// A loop short of its share gets an idle server of another loop at once: a server on
	// loop 0 closes, and the room it leaves goes to b1 on loop 1, so loop 0 holds 3.
	if w, l, ok := p.ServerGone(0); !ok || w != "b1" || l != 1 {
		t.Fatalf("server gone: dial for %q on loop %d (%v), want b1 on loop 1", w, l, ok)
	}
	// That dial puts loop 1 at 5; its next two released servers stay idle there.
	for _, s := range []int{43, 44} {
		if _, toLoop, handed, _ := p.Release(1, s, now, now); handed || toLoop != 1 {
			t.Fatalf("release %d went to loop %d (handed %v)", s, toLoop, handed)
		}
	}
	if k, s, from := p.Acquire(0, "a2", now); k != GrantSteal || s != 44 || from != 1 {
		t.Fatalf("short loop's acquire: %v %v from %d", k, s, from)
	}
}

// Clients on the stream path (TLS, slow readers) own no share of the pool. They take their
// turn with the clients waiting on the loops, oldest first, instead of waiting for a moment
// when no loop client waits (under load, possibly for ever).
func TestPoolStreamWaitersTakeTheirTurn(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(1000+int64(s), 0) }
	p := New[int, string](2, Limits{Size: 4}, nil)
	for loop := 0; loop < 2; loop++ {
		for range 2 {
			if k, _, _ := p.Acquire(loop, "x", at(0)); k != GrantDial {
				t.Fatalf("acquire on loop %d: %v", loop, k)
			}
		}
	}
	for _, w := range []struct {
		loop int
		name string
		at   int
	}{{0, "a", 1}, {-1, "s1", 2}, {0, "b", 3}, {-1, "s2", 4}} {
		if k, _, _ := p.Acquire(w.loop, w.name, at(w.at)); k != GrantWait {
			t.Fatalf("acquire %s: %v, want wait", w.name, k)
		}
	}
	release := func(loop, now int, wantTo string, wantLoop int) {
		t.Helper()
		to, toLoop, handed, _ := p.Release(loop, 1, at(0), at(now))
		if !handed || to != wantTo || toLoop != wantLoop {
			t.Fatalf("release on %d: to %q on %d (handed %v), want %q on %d", loop, to, toLoop, handed, wantTo, wantLoop)
		}
	}
	release(0, 5, "a", 0)   // a waited longer than s1
	release(0, 6, "s1", -1) // s1 longer than b: the server moves to the stream path
	// A stream-path server goes to the oldest waiter too: b (since 3), then s2 (since 4).
	release(-1, 7, "b", 0)
	release(-1, 8, "s2", -1)
	if st := p.Stats(at(9)); st.Open != 4 || st.Waiting != 0 {
		t.Fatalf("after: %+v", st)
	}
}

func TestQueueIsFIFOAndReusesItsArray(t *testing.T) {
	var q queue[int]
	next, want := 0, 0
	for round := 0; round < 1000; round++ {
		// The queue never runs empty, as under load: 30 clients always wait.
		for q.len() < 30 {
			q.push(next)
			next++
		}
		if got := q.pop(); got != want {
			t.Fatalf("pop %d, want %d", got, want)
		}
		want++
	}
	if cap(q.buf) > 64 {
		t.Fatalf("array grew to %d for a queue of at most 30", cap(q.buf))
	}
	if n := mallocs(10000, func() {
		q.push(next)
		next++
		q.pop()
	}); n != 0 {
		t.Fatalf("%d allocations in 10000 pushes and pops (fewest of five runs), want 0", n)
	}
	want = q.items()[0]
	q.removeAt(1)
	items := q.items()
	if items[0] != want || items[1] != want+2 || q.len() != 28 {
		t.Fatalf("after removeAt(1): %v", items[:3])
	}
	odd := q.items()[:0]
	for _, v := range q.items() {
		if v%2 == 1 {
			odd = append(odd, v)
		}
	}
	q.set(odd)
	for q.len() > 0 {
		if v := q.pop(); v%2 != 1 {
			t.Fatalf("set kept %d", v)
		}
	}
	if q.head != 0 || len(q.buf) != 0 {
		t.Fatalf("empty queue: head %d len %d", q.head, len(q.buf))
	}
}

// Under load some clients always wait for a server; handing servers over to them must not
// allocate (the forwarding loop allocates nothing in steady state).
func TestPoolWaitingClientsAllocateNothing(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New[int, int](1, Limits{Size: 1}, nil)
	if k, _, _ := p.Acquire(0, 0, now); k != GrantDial {
		t.Fatalf("first acquire %v", k)
	}
	next := 1
	for ; next <= 30; next++ {
		if k, _, _ := p.Acquire(0, next, now); k != GrantWait {
			t.Fatalf("acquire %d: %v, want wait", next, k)
		}
	}
	want := 1
	n := mallocs(10000, func() {
		to, _, handed, _ := p.Release(0, 7, now, now)
		if !handed || to != want {
			t.Fatalf("release went to %d (handed %v), want %d", to, handed, want)
		}
		want++
		p.Acquire(0, next, now)
		next++
	})
	if n != 0 {
		t.Fatalf("%d allocations in 10000 hand-overs (fewest of five runs), want 0", n)
	}
}

// mallocs counts the heap allocations of runs calls of f. Unlike testing.AllocsPerRun, which
// rounds the average down, it sees an allocation made once every few dozen calls. The
// process-wide counter also sees the odd allocation of another goroutine (the runtime, the
// test framework), so it reports the least of five measurements: an allocation f makes
// shows up in every one.
func mallocs(runs int, f func()) uint64 {
	for i := 0; i < 100; i++ {
		f() // warm up: let arrays reach their steady size
	}
	least := ^uint64(0)
	for trial := 0; trial < 5; trial++ {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := 0; i < runs; i++ {
			f()
		}
		runtime.ReadMemStats(&after)
		least = min(least, after.Mallocs-before.Mallocs)
	}
	return least
}

// Stats breaks a pool down by event loop, so that a loop whose clients wait longer than the
// other's shows in the metrics.
func TestPoolStatsPerLoop(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New[int, string](2, Limits{Size: 8}, nil)
	for loop := 0; loop < 2; loop++ {
		for i := 0; i < 4; i++ {
			if k, _, _ := p.Acquire(loop, "x", now); k != GrantDial {
				t.Fatalf("acquire %d on loop %d: %v", i, loop, k)
			}
		}
	}
	p.Acquire(1, "b0", now)
	p.Acquire(1, "b1", now.Add(time.Second))
	p.Release(0, 7, now, now) // nobody waits on loop 0, and loop 1 holds its share: idle there
	st := p.Stats(now.Add(3 * time.Second))
	want := []LoopStats{{Open: 4, Idle: 1}, {Open: 4, Waiting: 2, MaxWait: 3 * time.Second}}
	if len(st.Loops) != 2 || st.Loops[0] != want[0] || st.Loops[1] != want[1] {
		t.Fatalf("per-loop stats %+v, want %+v", st.Loops, want)
	}
	if st.Open != 8 || st.Idle != 1 || st.Waiting != 2 || st.MaxWait != 3*time.Second {
		t.Fatalf("totals %+v", st)
	}
}

// Reconnect hands back the idle servers at once; a server in use when it was called is
// retired when released, and one opened after it is reused as usual.
func TestPoolReconnectRetiresOpenServers(t *testing.T) {
	born := time.Unix(1000, 0)
	p := New[int, string](2, Limits{Size: 4}, nil)
	for i, loop := range []int{0, 1, 0} {
		if k, _, _ := p.Acquire(loop, string(rune('a'+i)), born); k != GrantDial {
			t.Fatalf("acquire %d: %v", i, k)
		}
	}
	p.Release(0, 1, born, born) // servers 1 (loop 0) and 2 (loop 1) idle, 3 in use
	p.Release(1, 2, born, born)
	idle, inUse := p.Reconnect(born.Add(time.Second))
	if len(idle) != 2 || inUse != 1 {
		t.Fatalf("Reconnect: idle %v, in use %d; want the 2 idle servers and 1 in use", idle, inUse)
	}
	if p.Stats(born).Idle != 0 {
		t.Fatal("retired servers still counted idle")
	}
	for _, s := range idle {
		p.ServerGone(map[int]int{1: 0, 2: 1}[s])
	}
	later := born.Add(2 * time.Second)
	if _, _, handed, retire := p.Release(0, 3, born, later); handed || !retire {
		t.Fatalf("release of a server open before Reconnect: handed %v retire %v, want retired", handed, retire)
	}
	p.ServerGone(0)
	// A server opened after Reconnect is kept.
	if k, _, _ := p.Acquire(0, "d", later); k != GrantDial {
		t.Fatalf("acquire after reconnect: %v", k)
	}
	if _, _, _, retire := p.Release(0, 4, later, later); retire {
		t.Fatal("a server opened after Reconnect was retired")
	}
	if k, s, _ := p.Acquire(0, "e", later); k != GrantIdle || s != 4 {
		t.Fatalf("acquire: %v %v, want the new idle server", k, s)
	}
	// Sweep closes an idle server that was open at Reconnect (one placed idle after a move).
	p.PlaceIdle(0, 0, 5, born, later)
	if r := p.Sweep(0, later); len(r.CloseIdle) != 1 || r.CloseIdle[0] != 5 {
		t.Fatalf("sweep closed %v, want the stale server 5", r.CloseIdle)
	}
}

// TestSharedLimitsAllMustHaveRoom: a pool counting against two shared limits (a database's and
// a user's) opens a server only when both have room, and a refusal by the second takes back
// the first's count.
func TestSharedLimitsAllMustHaveRoom(t *testing.T) {
	db, user := &Counter{Max: 3}, &Counter{Max: 1}
	a := New[int, string](1, Limits{Size: 4}, db, user)
	b := New[int, string](1, Limits{Size: 4}, db, nil)
	if !a.canDial(0, false) {
		t.Fatal("first server refused")
	}
	if a.canDial(0, false) {
		t.Fatal("a second server past the user's limit of 1")
	}
	if db.Value() != 1 || user.Value() != 1 {
		t.Fatalf("counts db %d user %d, want 1 and 1 (the refusal took its database count back)", db.Value(), user.Value())
	}
	if !b.canDial(0, false) || !b.canDial(0, false) || b.canDial(0, false) {
		t.Fatal("the other user's pool should get the database's two remaining servers, and no more")
	}
	a.db.dec()
	if db.Value() != 2 || user.Value() != 0 {
		t.Fatalf("after a server closed: db %d user %d", db.Value(), user.Value())
	}
}
