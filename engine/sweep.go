package engine

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pool"
)

// sweepEvery is how often each loop's pools are swept: it bounds how long a client waits while
// an idle server on another loop could serve it (see pool.Pool). clientSweepEvery, a multiple
// of it, is how often client timeouts are checked.
const (
	sweepEvery       = 50 * time.Millisecond
	clientSweepEvery = 250 * time.Millisecond
)

// sweep runs on each loop every sweepEvery: pool housekeeping (waiters that time out or that
// an idle server on another loop can serve, idle servers to close, min_pool_size) and, when
// clients is true (every clientSweepEvery), client timeouts. The client scan walks every
// connection of the loop, so it runs less often than the pool part, which touches only the
// pools.
func (lp *loop) sweep(now time.Time, clients bool) {
	if clients {
		lp.sweepClients(now)
	}
	lp.sweepPools(now)
}

func (lp *loop) sweepClients(now time.Time) {
	cfg := &lp.e.conf().cfg.Pool
	for cl := range lp.clients {
		cl.checkTimeouts(now, cfg)
	}
}

// checkTimeouts closes the client when one of its timeouts has run out. It runs on the
// client's owner: its loop, or under its lock on the stream path.
func (cl *client) checkTimeouts(now time.Time, cfg *pool.Config) {
	e := cl.e
	{
		switch {
		case cl.closed:
		case (cl.state == csStartup || cl.state == csAuth || cl.state == csLookup) && cfg.ClientLoginTimeout > 0 && now.Sub(cl.acceptedAt) > cfg.ClientLoginTimeout:
			cl.fail(sqlErr(pgwire.ProtocolViolation, fmt.Sprintf("client_login_timeout: the login did not complete within %s", cfg.ClientLoginTimeout), ""))
		case cl.srv != nil && cfg.QueryTimeout > 0 && cl.srv.tr.Outstanding() > 0 && !cl.srv.queryStart.IsZero() &&
			now.Sub(cl.srv.queryStart) > cfg.QueryTimeout:
			e.m.queryTimeouts.Inc()
			// Its server, with the request running, is cancelled and closed (server.abandoned).
			cl.fail(sqlErr(pgwire.QueryCanceled, fmt.Sprintf("query_timeout: the query ran for more than %s; it was cancelled", cfg.QueryTimeout),
				"set statement_timeout in PostgreSQL a little below proxy.pool.query_timeout for slow queries, or raise it"))
		case cl.state == csReady && cl.srv == nil && !cl.waiting && !cl.dialing &&
			cfg.ClientIdleTimeout > 0 && now.Sub(cl.lastActive) > cfg.ClientIdleTimeout:
			e.m.idleTimeouts.Inc()
			cl.fail(sqlErr(pgwire.IdleSessionTimeout, fmt.Sprintf("client_idle_timeout: connection idle for more than %s", cfg.ClientIdleTimeout), ""))
		case cl.srv != nil && cfg.IdleTransactionTimeout > 0 && cl.srv.tr.TxStatus != pgwire.TxIdle &&
			cl.srv.tr.Outstanding() == 0 && now.Sub(cl.lastActive) > cfg.IdleTransactionTimeout:
			e.m.idleTimeouts.Inc()
			cl.fail(sqlErr(pgwire.IdleInTransactionTimeout, fmt.Sprintf("idle_transaction_timeout: transaction idle for more than %s", cfg.IdleTransactionTimeout), ""))
		}
	}
}

// sweepStreamClients checks the timeouts of the clients on the stream path (slow readers,
// TLS clients that stayed off the loops), as sweepClients does for a loop's. A client whose
// lock a handler holds is checked at the next sweep, unless the handler has been blocked
// writing to it for longer than query_timeout: that client stopped reading its result, so it
// is closed from here (closing the socket ends the blocked write), which abandons its server
// with the request running, and the request is cancelled in PostgreSQL (server.abandoned).
func (e *Engine) sweepStreamClients(now time.Time) {
	if !e.streamSweeping.CompareAndSwap(false, true) {
		return // the last sweep is still running
	}
	defer e.streamSweeping.Store(false)
	cfg := &e.conf().cfg.Pool
	for _, cl := range e.streamClientList() {
		if cl.mu.TryLock() {
			cl.checkTimeouts(now, cfg)
			cl.mu.Unlock()
			continue
		}
		st := cl.stream
		since := st.out.since.Load()
		if since == 0 || cfg.QueryTimeout <= 0 || now.Sub(time.Unix(0, since)) <= cfg.QueryTimeout || !st.stalled.CompareAndSwap(false, true) {
			continue
		}
		e.m.queryTimeouts.Inc()
		e.log.Warn("closing a client that has not read its result for longer than query_timeout; its query is cancelled",
			"remote", st.remote, "query_timeout", cfg.QueryTimeout)
		_ = st.conn.Close()
	}
}

// stallWriter is a stream-path client's writer: it records when a write began, so that the
// sweep can tell, without the client's lock, that a handler is blocked on a client that
// stopped reading.
type stallWriter struct {
	w     io.Writer
	since atomic.Int64 // Unix nanoseconds the write in progress began; 0: none
}

func (w *stallWriter) Write(b []byte) (int, error) {
	w.since.Store(time.Now().UnixNano())
	n, err := w.w.Write(b)
	w.since.Store(0)
	return n, err
}

func (lp *loop) sweepPools(now time.Time) {
	e := lp.e
	cfg := &e.conf().cfg.Pool
	for _, pe := range e.poolEntries() {
		r := pe.p.Sweep(lp.idx, now)
		for _, cl := range r.Expired {
			e.m.waitTimeouts.Inc()
			cl.deliverFailure(sqlErr(pgwire.QueryCanceled,
				fmt.Sprintf("query_wait_timeout: no server connection became free within %s", cfg.QueryWaitTimeout),
				"raise proxy.pool.default_pool_size or query_wait_timeout, or reduce the load"))
		}
		for _, cl := range r.Dial {
			e.dial(pe, cl, cl.loopIndex())
		}
		for _, st := range r.Steals {
			st.S.migrateTo(st.To, st.From, st.To.loopIndex())
		}
		for _, s := range r.CloseIdle {
			s.closeNow(nil)
		}
		for i := 0; i < r.MinDials; i++ {
			e.dial(pe, nil, lp.idx)
		}
	}
}

// sweepHeld fails clients that waited too long for a primary or for a pause to end.
func (e *Engine) sweepHeld(now time.Time) {
	wait := e.conf().cfg.Pool.QueryWaitTimeout
	if wait <= 0 {
		return
	}
	var late []*client
	e.heldMu.Lock()
	for cl, since := range e.held {
		if now.Sub(since) > wait {
			late = append(late, cl)
			delete(e.held, cl)
		}
	}
	e.heldMu.Unlock()
	for _, cl := range late {
		e.m.waitTimeouts.Inc()
		err := sqlErr(pgwire.CannotConnectNow, fmt.Sprintf("query_wait_timeout: no primary became available within %s", wait),
			"a failover or switchover may be in progress; check GET /nodes")
		if e.pausedAll.Load() {
			err = sqlErr(pgwire.QueryCanceled, fmt.Sprintf("query_wait_timeout: the proxy stayed paused for more than %s", wait),
				"an operator paused it for maintenance (pgbastion ctl proxy pause); pgbastion ctl proxy resume ends the pause")
		} else if e.dbPaused(cl.database) {
			err = sqlErr(pgwire.QueryCanceled, fmt.Sprintf("query_wait_timeout: database %q stayed paused for more than %s", cl.database, wait),
				"an operator paused it (PAUSE "+cl.database+", pgbastion ctl proxy pause "+cl.database+"); RESUME "+cl.database+" ends the pause")
		} else if e.pausedRW.Load() {
			err = sqlErr(pgwire.QueryCanceled, fmt.Sprintf("query_wait_timeout: writes stayed paused for more than %s", wait), "")
		}
		cl.deliverFailure(err)
	}
}

func asPgError(err error, pe **pgconn.PgError) bool { return errors.As(err, pe) }
