package pool

import (
	"runtime"
	"strconv"
	"sync"
	"weak"

	"github.com/pgbastion/pgbastion/pgwire"
)

// Stmt is one distinct prepared statement (query text plus declared parameter types) as the
// servers know it. Clients' own names map to a Stmt; every server that has it knows it by
// Name. A Stmt is immutable once created and shared by all goroutines.
type Stmt struct {
	// ID is unique for the process lifetime and never reused.
	ID uint64
	// Name is the server-side statement name, "pgb_<ID>".
	Name []byte
	// Parse is the complete Parse message (header included) that creates the statement under
	// Name on a server.
	Parse []byte
}

// Registry deduplicates statements: one query text and parameter-type list gives one Stmt and
// so one server-side name, whichever client prepared it. Entries disappear when no client and
// no server references the Stmt any more. Safe for concurrent use; it is consulted only when a
// client sends a named Parse, never per Bind.
type Registry struct {
	mu   sync.Mutex
	next uint64
	m    map[string]weak.Pointer[Stmt]
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{m: make(map[string]weak.Pointer[Stmt])} }

// Get returns the Stmt for a query and its raw parameter types, creating it when needed.
func (r *Registry) Get(query, paramTypes []byte, numParams int) *Stmt {
	key := make([]byte, 0, len(query)+1+len(paramTypes))
	key = append(key, query...)
	key = append(key, 0)
	key = append(key, paramTypes...)
	r.mu.Lock()
	defer r.mu.Unlock()
	if wp, ok := r.m[string(key)]; ok {
		if s := wp.Value(); s != nil {
			return s
		}
	}
	r.next++
	s := &Stmt{ID: r.next}
	s.Name = strconv.AppendUint([]byte("pgb_"), s.ID, 10)
	s.Parse = pgwire.AppendParse(nil, s.Name, query, paramTypes, numParams)
	k := string(key)
	r.m[k] = weak.Make(s)
	runtime.AddCleanup(s, func(k string) {
		r.mu.Lock()
		if wp, ok := r.m[k]; ok && wp.Value() == nil {
			delete(r.m, k)
		}
		r.mu.Unlock()
	}, k)
	return s
}

// Len reports how many statements are registered (for metrics and tests).
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// ServerStatements is the set of statements one server connection has prepared, with
// least-recently-used eviction at a fixed capacity. Used only by the goroutine that owns the
// server connection.
type ServerStatements struct {
	capacity int
	m        map[*Stmt]*lruNode
	// list is circular with a sentinel: sentinel.next is the most recently used.
	sentinel lruNode
}

type lruNode struct {
	stmt       *Stmt
	prev, next *lruNode
}

// NewServerStatements returns an empty set holding at most capacity statements.
func NewServerStatements(capacity int) *ServerStatements {
	s := &ServerStatements{capacity: capacity, m: make(map[*Stmt]*lruNode)}
	s.sentinel.next, s.sentinel.prev = &s.sentinel, &s.sentinel
	return s
}

// Has reports whether the server has st, marking it recently used.
func (s *ServerStatements) Has(st *Stmt) bool {
	n, ok := s.m[st]
	if ok {
		s.unlink(n)
		s.linkFront(n)
	}
	return ok
}

// Add records that st is (being) prepared on the server. When the set is full it returns the
// least recently used statement, which the caller must Close on the server.
func (s *ServerStatements) Add(st *Stmt) (evicted *Stmt) {
	if n, ok := s.m[st]; ok {
		s.unlink(n)
		s.linkFront(n)
		return nil
	}
	if s.capacity > 0 && len(s.m) >= s.capacity {
		last := s.sentinel.prev
		s.unlink(last)
		delete(s.m, last.stmt)
		evicted = last.stmt
	}
	n := &lruNode{stmt: st}
	s.m[st] = n
	s.linkFront(n)
	return evicted
}

// Remove forgets st (it failed to prepare, was skipped, or was closed).
func (s *ServerStatements) Remove(st *Stmt) {
	if n, ok := s.m[st]; ok {
		s.unlink(n)
		delete(s.m, st)
	}
}

// Clear forgets everything (DISCARD ALL or DEALLOCATE ALL ran on the server).
func (s *ServerStatements) Clear() {
	clear(s.m)
	s.sentinel.next, s.sentinel.prev = &s.sentinel, &s.sentinel
}

// Len returns the number of statements held.
func (s *ServerStatements) Len() int { return len(s.m) }

func (s *ServerStatements) unlink(n *lruNode) {
	n.prev.next = n.next
	n.next.prev = n.prev
}

func (s *ServerStatements) linkFront(n *lruNode) {
	n.next = s.sentinel.next
	n.prev = &s.sentinel
	s.sentinel.next.prev = n
	s.sentinel.next = n
}
