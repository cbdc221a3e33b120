package engine

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/pgwire"
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
	e := lp.e
	cfg := &e.conf().cfg.Pool
	for cl := range lp.clients {
		switch {
		case cl.closed:
		case (cl.state == csStartup || cl.state == csAuth) && cfg.ClientLoginTimeout > 0 && now.Sub(cl.acceptedAt) > cfg.ClientLoginTimeout:
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
