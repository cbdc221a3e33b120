package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/test/netns"
)

// Change is one observed change of where the VIP is: a node that started or stopped holding
// it, or the client's neighbour entry for it that started to name another MAC (or none).
type Change struct {
	At time.Time
	// Node is the node whose holding changed, or "" for a neighbour change.
	Node string
	Held bool
	// MAC is the client's neighbour entry after a neighbour change ("" when it has none), and
	// Owner the node with that MAC ("" when none has it).
	MAC, Owner string
}

func (ch Change) String() string {
	if ch.Node != "" {
		verb := "released"
		if ch.Held {
			verb = "holds"
		}
		return fmt.Sprintf("%s %s %s", ch.At.Format(timeFormat), ch.Node, verb)
	}
	return fmt.Sprintf("%s client's neighbour entry for the VIP: %q (%s)", ch.At.Format(timeFormat), ch.MAC, ch.Owner)
}

// Watcher records, every few milliseconds, which nodes hold the VIP and which MAC the client's
// neighbour table has for it. It is finer than the 100 ms sampler and gives the timings.
type Watcher struct {
	c    *Cluster
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	changes []Change
	errs    []error
	overlap []string // looks in which two nodes held the VIP
}

// WatchVIP starts a Watcher; it is stopped at the end of the test if Stop was not called.
func (c *Cluster) WatchVIP(interval time.Duration) *Watcher {
	w := &Watcher{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run(interval)
	c.t.Cleanup(w.Stop)
	return w
}

func (w *Watcher) run(interval time.Duration) {
	defer close(w.done)
	held := map[string]bool{}
	mac := "?" // unknown before the first look, so that it is recorded
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		now := time.Now()
		var holders []string
		for _, n := range w.c.Nodes {
			h, err := n.HoldsVIP()
			if err != nil {
				w.note(err)
				continue
			}
			if h {
				holders = append(holders, n.Name)
			}
			if h != held[n.Name] {
				held[n.Name] = h
				w.add(Change{At: now, Node: n.Name, Held: h})
			}
		}
		if len(holders) > 1 {
			w.mu.Lock()
			w.overlap = append(w.overlap, fmt.Sprintf("%s: %v", now.Format(timeFormat), holders))
			w.mu.Unlock()
		}
		hw, err := w.c.Client.Neighbour(VIP)
		if err != nil {
			w.note(err)
		} else if s := hw.String(); s != mac {
			mac = s
			w.add(Change{At: now, MAC: s, Owner: w.c.owner(hw)})
		}
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
	}
}

func (c *Cluster) owner(hw net.HardwareAddr) string {
	for _, n := range c.Nodes {
		if hw != nil && n.NS.MAC.String() == hw.String() {
			return n.Name
		}
	}
	return ""
}

func (w *Watcher) add(ch Change) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.changes = append(w.changes, ch)
}

func (w *Watcher) note(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) < 10 {
		w.errs = append(w.errs, err)
	}
}

// Stop ends the watching; it may be called more than once.
func (w *Watcher) Stop() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// Changes returns the changes seen so far.
func (w *Watcher) Changes() []Change {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Change(nil), w.changes...)
}

// Err reports failed looks and looks that saw the VIP on two nodes.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	if len(w.overlap) > 0 {
		errs = append(errs, fmt.Errorf("the VIP was on two nodes at once: %s", strings.Join(w.overlap, "; ")))
	}
	return errors.Join(append(errs, w.errs...)...)
}

// Held returns when node was first seen holding the VIP at or after after.
func (w *Watcher) Held(node string, after time.Time) (time.Time, bool) {
	return w.first(after, func(ch Change) bool { return ch.Node == node && ch.Held })
}

// Released returns when node was first seen without the VIP at or after after.
func (w *Watcher) Released(node string, after time.Time) (time.Time, bool) {
	return w.first(after, func(ch Change) bool { return ch.Node == node && !ch.Held })
}

// Neighbour returns when the client's neighbour entry for the VIP was first seen naming
// node's MAC at or after after.
func (w *Watcher) Neighbour(node string, after time.Time) (time.Time, bool) {
	return w.first(after, func(ch Change) bool { return ch.Node == "" && ch.Owner == node })
}

func (w *Watcher) first(after time.Time, match func(Change) bool) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ch := range w.changes {
		if !ch.At.Before(after) && match(ch) {
			return ch.At, true
		}
	}
	return time.Time{}, false
}

// Attempt is one write a Writer tried.
type Attempt struct {
	Start, End time.Time
	// Server is the PostgreSQL that committed the write (invalid when it failed).
	Server netip.Addr
	Err    error
}

// SQLState returns the SQLSTATE of the attempt's error, or "".
func (a Attempt) SQLState() string {
	var pe *pgconn.PgError
	if errors.As(a.Err, &pe) {
		return pe.Code
	}
	return ""
}

func (a Attempt) String() string {
	if a.Err == nil {
		return fmt.Sprintf("%s–%s committed on %s", a.Start.Format(timeFormat), a.End.Format(timeFormat), a.Server)
	}
	return fmt.Sprintf("%s–%s failed: %v", a.Start.Format(timeFormat), a.End.Format(timeFormat), a.Err)
}

// Writer writes through one address from inside one member's namespace, on a fresh connection
// each time, as fast as pace allows, and records every attempt.
type Writer struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu       sync.Mutex
	attempts []Attempt
}

// StartWriter starts writing from member from to host:port; each attempt may take up to
// timeout. It is stopped at the end of the test if Stop was not called.
func (c *Cluster) StartWriter(from *netns.Node, host string, port int, pace, timeout time.Duration) *Writer {
	w := &Writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(pace)
		defer t.Stop()
		for {
			a := Attempt{Start: time.Now()}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			a.Server, a.Err = c.Write(ctx, from, host, port)
			cancel()
			a.End = time.Now()
			w.mu.Lock()
			w.attempts = append(w.attempts, a)
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	c.t.Cleanup(func() { w.Stop() })
	return w
}

// Stop ends the writing after the attempt in progress and returns every attempt.
func (w *Writer) Stop() []Attempt {
	w.once.Do(func() { close(w.stop) })
	<-w.done
	return w.Attempts()
}

// Attempts returns the attempts so far.
func (w *Writer) Attempts() []Attempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Attempt(nil), w.attempts...)
}

// Summary describes the attempts that began after after: how many committed where, and each
// distinct error with its count and when it was first and last seen.
func Summary(attempts []Attempt, after time.Time) string {
	type seen struct {
		n           int
		first, last time.Time
	}
	var keys []string
	m := map[string]*seen{}
	for _, a := range attempts {
		if a.Start.Before(after) {
			continue
		}
		k := "committed on " + a.Server.String()
		if a.Err != nil {
			k = "error: " + a.Err.Error()
		}
		if m[k] == nil {
			m[k] = &seen{first: a.Start}
			keys = append(keys, k)
		}
		m[k].n++
		m[k].last = a.Start
	}
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %d× %s (began %s … %s)", m[k].n, k, m[k].first.Format(timeFormat), m[k].last.Format(timeFormat))
	}
	return b.String()
}

// FirstOn returns the first attempt after after that committed on server.
func FirstOn(attempts []Attempt, server netip.Addr, after time.Time) (Attempt, bool) {
	for _, a := range attempts {
		if a.Start.After(after) && a.Err == nil && a.Server == server {
			return a, true
		}
	}
	return Attempt{}, false
}

// watchWritable polls node n's PostgreSQL directly (not through a proxy) from member from, on
// one connection, every interval. The function it returns stops the polling and reports when
// a query first found the server out of recovery, i.e. writable (the time the query was sent).
func (c *Cluster) watchWritable(from *netns.Node, n *Node, interval time.Duration) (stop func() (time.Time, error)) {
	done := make(chan struct{})
	quit := make(chan struct{})
	var once sync.Once
	var at time.Time
	var err error
	go func() {
		defer close(done)
		ctx := context.Background()
		var conn *pgx.Conn
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if conn == nil {
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				conn, err = c.Connect(cctx, from, n.Addr.String(), PGPort)
				cancel()
			}
			if conn != nil {
				var rec bool
				qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				now := time.Now()
				err = conn.QueryRow(qctx, "SELECT pg_is_in_recovery()").Scan(&rec)
				cancel()
				switch {
				case err != nil:
					conn.Close(ctx)
					conn = nil
				case !rec:
					at = now
					conn.Close(ctx)
					return
				}
			}
			select {
			case <-quit:
				if conn != nil {
					conn.Close(ctx)
				}
				return
			case <-t.C:
			}
		}
	}()
	stop = func() (time.Time, error) {
		once.Do(func() { close(quit) })
		<-done
		if at.IsZero() {
			return at, fmt.Errorf("%s never seen writable (last error %v)", n.Name, err)
		}
		return at, nil
	}
	c.t.Cleanup(func() { _, _ = stop() }) // before the namespaces go
	return stop
}
