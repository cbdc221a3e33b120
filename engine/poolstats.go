package engine

import (
	"sync/atomic"
	"time"
)

// poolCounters are one pool's counts on one event loop (the last slot: the stream path). Each
// loop writes its own slot, so the atomics are uncontended on the hot path; readers add the
// slots up. The padding keeps two loops' slots off a shared cache line.
type poolCounters struct {
	queries       atomic.Uint64 // ReadyForQuery sent to a client: queries (PgBouncer's query_count)
	xacts         atomic.Uint64 // of which idle: transactions ended (xact_count)
	assignments   atomic.Uint64 // servers attached to a client (server_assignment_count)
	waitNanos     atomic.Uint64 // clients' time waiting for a server (wait_time)
	assignedNanos atomic.Uint64 // servers' time attached to a client (xact_time, in transaction mode)
	queryNanos    atomic.Uint64 // from a request reaching a server to its ReadyForQuery (query_time)
	received      atomic.Uint64 // bytes from clients, after login (total_received)
	sent          atomic.Uint64 // bytes from servers while attached to a client (total_sent)
	// With named statements virtualised (transaction mode): Parse messages of clients, Parse
	// messages sent to servers (a client's statement reaching a server that lacks it), and
	// Binds of named statements (client_parse_count, server_parse_count, bind_count).
	clientParses atomic.Uint64
	serverParses atomic.Uint64
	binds        atomic.Uint64
	_            [128 - 11*8]byte
}

// PoolCounts are a pool's totals since it was created (Since).
type PoolCounts struct {
	Since                              time.Time
	Queries, Transactions, Assignments uint64
	// Wait is the time clients waited for a server; Assigned the time servers were attached
	// to clients (in transaction mode, the time of the transactions); Query the time servers
	// were running requests (from a client's request reaching an idle server to the
	// ReadyForQuery that ends the last request outstanding).
	Wait, Assigned, Query time.Duration
	// Received counts the bytes clients sent after logging in; Sent the bytes servers sent
	// while attached to a client.
	Received, Sent uint64
	// ClientParses, ServerParses and Binds count named statements in transaction mode:
	// prepared by clients, prepared on servers, and bound.
	ClientParses, ServerParses, Binds uint64
}

// since returns what c counted after o, an earlier total (a counter that went down, as when a
// pool went away, counts from 0).
func (c PoolCounts) since(o PoolCounts) PoolCounts {
	sub := func(a, b uint64) uint64 {
		if a < b {
			return a
		}
		return a - b
	}
	dur := func(a, b time.Duration) time.Duration {
		if a < b {
			return a
		}
		return a - b
	}
	return PoolCounts{Since: o.Since, Queries: sub(c.Queries, o.Queries), Transactions: sub(c.Transactions, o.Transactions),
		Assignments: sub(c.Assignments, o.Assignments), Wait: dur(c.Wait, o.Wait), Assigned: dur(c.Assigned, o.Assigned),
		Query: dur(c.Query, o.Query), Received: sub(c.Received, o.Received), Sent: sub(c.Sent, o.Sent),
		ClientParses: sub(c.ClientParses, o.ClientParses), ServerParses: sub(c.ServerParses, o.ServerParses), Binds: sub(c.Binds, o.Binds)}
}

// add adds o's totals to c (Since stays c's).
func (c *PoolCounts) add(o PoolCounts) {
	c.Queries += o.Queries
	c.Transactions += o.Transactions
	c.Assignments += o.Assignments
	c.Wait += o.Wait
	c.Assigned += o.Assigned
	c.Query += o.Query
	c.Received += o.Received
	c.Sent += o.Sent
	c.ClientParses += o.ClientParses
	c.ServerParses += o.ServerParses
	c.Binds += o.Binds
}

// counters returns the slot of lp (nil: the stream path).
func (pe *poolEntry) counters(lp *loop) *poolCounters {
	if lp != nil && lp.idx < len(pe.ctr)-1 {
		return &pe.ctr[lp.idx]
	}
	return &pe.ctr[len(pe.ctr)-1]
}

// counts adds up the slots.
func (pe *poolEntry) counts() PoolCounts {
	c := PoolCounts{Since: pe.created}
	for i := range pe.ctr {
		s := &pe.ctr[i]
		c.add(PoolCounts{Queries: s.queries.Load(), Transactions: s.xacts.Load(), Assignments: s.assignments.Load(),
			Wait: time.Duration(s.waitNanos.Load()), Assigned: time.Duration(s.assignedNanos.Load()),
			Query: time.Duration(s.queryNanos.Load()), Received: s.received.Load(), Sent: s.sent.Load(),
			ClientParses: s.clientParses.Load(), ServerParses: s.serverParses.Load(), Binds: s.binds.Load()})
	}
	return c
}
