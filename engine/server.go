package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pool"
)

// server is one connection to PostgreSQL, logged in and owned by a pool.
//
// Its home is either an event loop (conn != nil) or the stream path (nc != nil). It moves
// between homes by duplicating its descriptor: enrolled on another loop when handed to a
// client there, or given to a stream-path client as a blocking net.Conn.
type server struct {
	e     *Engine
	pe    *poolEntry
	b     *backend
	epoch uint64

	lp   *loop
	conn gnet.Conn
	nc   net.Conn
	out  io.Writer
	lw   loopWriter // out while the server is on an event loop
	// sec is the connection's TLS (proxy.server.tls; nil: plain). Its tls.Conn goes with the
	// server from home to home; out is the tls.Conn then, and the transport under it the
	// loop writer or nc.
	sec     *loopTLS
	tlsDesc string // "TLSv1.3/TLS_AES_128_GCM_SHA256" for SHOW SERVERS; empty: plain

	client *client
	tr     *pool.Tracker
	// login holds the parameters reported at login (pristine); params the current values.
	login  *pool.Params
	params *pool.Params
	stmts  *pool.ServerStatements
	pid    uint32
	key    []byte

	born, lastUsed time.Time
	// attachedAt is when the server was attached to its client (zero: not attached, or
	// already counted), for the pool's assigned time; queryStart when a client's request
	// reached it idle (zero: no request outstanding, or already counted), for query time.
	attachedAt time.Time
	queryStart time.Time

	remain    int
	remainFwd bool
	// dirty: the session holds state the proxy cannot follow; reset it before reuse.
	dirty bool
	// resetting: a reset (ROLLBACK / DISCARD ALL) runs before the server returns to the pool.
	resetting bool
	// pendingSets are the client's recognised SET/RESET statements that completed since the
	// last ReadyForQuery; they become part of the client's session when it says the
	// transaction block is idle, and are forgotten on an error (the implicit transaction that
	// ran them is rolled back).
	pendingSets []*pool.Setting
	// dirtyStmts are statements the server may hold although the proxy does not count them as
	// prepared there (their cached plan went stale, or a Close of them was skipped after an
	// error); they are closed when idle, or just before they are prepared again.
	dirtyStmts []*pool.Stmt
	// unnamedBy is the attached client whose unnamed statement the server holds (it parsed
	// one during this attachment); nil when the unnamed statement is anyone else's or gone.
	unnamedBy *client
	// reading: a stream-path goroutine is reading this server (release waits for it).
	reading bool

	cancelPending atomic.Int32
	cancelT       *cancelTarget
	// cancelHold: no client holds the server, and it waits out of the pool for a cancel meant
	// for its last client to land (holdForCancel).
	cancelHold bool

	// home is where the pool accounts for this server: a loop index, or -1 for the stream path.
	home int
	// checkFor is the client waiting for this idle server to pass its empty-query check.
	checkFor *client

	// moveTo is the client the server is being moved for (nil: back to the pool);
	// detachFor is set while a move off this loop is pending.
	moveTo    *client
	detaching bool
	detachCb  func(net.Conn)
	carry     []byte

	closing bool
	gone    bool

	// closer is the connection closeAsync closes from other goroutines (conn and nc belong to
	// the server's owner of the moment): the gnet.Conn or net.Conn of its current home,
	// published by whoever gave it that home, together with that owner. retired is set by
	// closeAsync.
	closer  atomic.Pointer[connHandle]
	retired atomic.Bool
}

// connHandle names a server's connection and its owner of the moment: an event loop (lp), a
// client's stream goroutine (cl, which serialises on cl.mu), or neither while the server is
// in transit between owners. Only the owner touches the server's fields; another goroutine
// that must act on the server hands the work to the owner named here and, once there,
// checks that the handle is still the current one.
type connHandle struct {
	io.Closer
	lp *loop
	cl *client
}

// publish makes c, owned by the stream goroutine of cl, the connection closeAsync closes. A
// server retired meanwhile (closeAsync may have looked before c was published) has c closed
// at once.
func (s *server) publish(c io.Closer, cl *client) {
	s.closer.Store(&connHandle{Closer: c, cl: cl})
	if s.retired.Load() {
		_ = c.Close()
	}
}

// inTransit marks the server as leaving its owner: until the next owner publishes itself,
// work from other goroutines is not delivered to anyone.
func (s *server) inTransit(c io.Closer) {
	s.closer.Store(&connHandle{Closer: c})
}

func (s *server) writer() io.Writer {
	if s.sec != nil {
		return s.sec.tc
	}
	if s.conn != nil {
		return &s.lw
	}
	return s.nc
}

func (s *server) loopIdx() int {
	if s.conn != nil && s.lp != nil {
		return s.lp.idx
	}
	return -1
}

// dial opens and logs in a new server connection for pe off the event loops, then delivers it
// to cl (or to the pool when cl is nil) on cl's goroutine.
func (e *Engine) dial(pe *poolEntry, cl *client, loopIdx int) {
	user := pe.key.user
	timeout := e.conf().cfg.Pool.ServerConnectTimeout
	epoch := pe.epoch
	pe.dialing.Add(1)
	go func() {
		ctx, cancel := context.WithTimeout(pe.gone, timeout)
		defer cancel()
		s, nc, err := e.connect(ctx, pe, user)
		pe.dialing.Add(-1)
		if err != nil && pe.gone.Err() != nil {
			// The backend left its role while we dialed it: the client routes again.
			pe.p.DialFailed(loopIdx)
			if cl != nil {
				cl.deliverFailure(errRetry)
			}
			return
		}
		if err != nil {
			pe.p.DialFailed(loopIdx)
			e.m.serverConnectFailures.Inc()
			e.requestHealthCheck()
			var ce *clientError
			if !errors.As(err, &ce) {
				e.log.Warn("cannot connect to PostgreSQL", "backend", pe.b.name, "database", pe.key.database, "user", user, "err", err)
			}
			if cl != nil {
				cl.deliverFailure(err)
			}
			return
		}
		s.epoch = epoch
		s.home = loopIdx
		if !pe.b.addServer(s) {
			// The backend changed role while we were logging in.
			_ = nc.Close()
			pe.p.ServerGone(loopIdx)
			if cl != nil {
				cl.deliverFailure(errRetry)
			}
			return
		}
		e.m.serverConnects.Inc()
		if pe.welcome.Load() == nil {
			pe.welcome.CompareAndSwap(nil, s.login)
		}
		s.moveTo = cl
		if cl != nil && cl.stream != nil {
			s.setSocket(nc)
			s.publish(nc, cl)
			cl.stream.give(s)
			return
		}
		s.enroll(nc, loopIdx)
	}()
}

// errRetry tells a waiting client to route and acquire again.
var errRetry = errors.New("retry")

// connect dials the backend and logs in.
func (e *Engine) connect(ctx context.Context, pe *poolEntry, user string) (*server, net.Conn, error) {
	d := net.Dialer{Timeout: e.conf().cfg.Pool.ServerConnectTimeout, KeepAlive: 30 * time.Second}
	nc, err := dialBackend(ctx, &d, pe.b.addr)
	if err != nil {
		hint := "check that PostgreSQL is running and reachable from the proxy"
		if host, port, _ := net.SplitHostPort(pe.b.addr); isSocketDir(host) {
			hint = fmt.Sprintf("check that PostgreSQL is running on port %s with %s in unix_socket_directories, and that the proxy may open its socket there", port, host)
		}
		return nil, nil, sqlErr(pgwire.ConnectionFailure,
			fmt.Sprintf("cannot connect to PostgreSQL at %s: %v", pe.b.addr, unwrapOp(err)), hint)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	lc, sec, err := e.secureBackend(ctx, nc, pe.b.addr)
	if err != nil {
		_ = nc.Close()
		var ce *clientError
		if errors.As(err, &ce) {
			return nil, nil, err
		}
		return nil, nil, sqlErr(pgwire.ConnectionFailure, err.Error(), "check proxy.server.tls against PostgreSQL's ssl settings")
	}
	li, err := e.loginServer(ctx, lc, pe.key.database, user)
	if err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	now := time.Now()
	s := &server{e: e, pe: pe, b: pe.b, tr: pool.NewTracker(), login: pool.NewParams(), params: pool.NewParams(),
		stmts: pool.NewServerStatements(e.cfg.Pool.MaxPreparedStatements), pid: li.pid, key: li.key, born: now, lastUsed: now}
	if sec != nil {
		s.sec, s.tlsDesc = sec, tlsSummary(sec.tc)
	}
	for _, kv := range li.params {
		s.login.Set(kv[0], kv[1])
	}
	s.params.CopyFrom(s.login)
	s.tr.Dropped = s.forget
	s.initCancelTarget()
	return s, nc, nil
}

func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return se.Err
		}
		return oe.Err
	}
	return err
}

// clock is the callback clock of the loop the server lives on (see loop.clock), or the time now
// off the loops (s.lp still names the last loop of a server that moved to the stream path).
func (s *server) clock() time.Time {
	if s.conn != nil {
		return clockOf(s.lp)
	}
	return time.Now()
}

// enroll moves a server with a blocking net.Conn onto event loop loopIdx.
func (s *server) enroll(nc net.Conn, loopIdx int) {
	lp := s.e.loopAt(loopIdx)
	if lp == nil {
		_ = nc.Close()
		s.lost(errors.New("no event loop to enroll the server on"))
		return
	}
	s.inTransit(nc)
	s.nc = nil
	ch, err := lp.el.Enroll(gnet.NewContext(context.Background(), s), nc)
	if err != nil {
		_ = nc.Close()
		s.lost(err)
		return
	}
	go func() {
		if r := <-ch; r.Err != nil {
			s.e.log.Warn("cannot enroll server connection on event loop", "err", r.Err)
			s.lost(r.Err)
		}
	}()
}

// onEnrolled runs on the loop the server was enrolled on.
func (s *server) onEnrolled(c gnet.Conn, lp *loop) {
	s.conn, s.lp, s.nc = c, lp, nil
	s.lw.c = c
	s.out = &s.lw
	if x := s.sec; x != nil {
		x.tr.nc, x.tr.onLoop, x.tr.out = nil, true, &s.lw
		s.out = x.tc
		// Records read off the socket before the move, not decrypted yet, come after what
		// the server carried in plaintext.
		if _, err := x.decrypt(); err != nil && !errors.Is(err, io.EOF) {
			s.closeNow(fmt.Errorf("TLS: %w", err))
			return
		}
		s.carry = append(s.carry, x.takePlain()...)
	}
	s.detaching = false
	lp.servers[s] = struct{}{}
	s.closer.Store(&connHandle{Closer: c, lp: lp})
	if s.retired.Load() {
		// Its backend left its role while the server moved here: never attach it (the client
		// would reach a deposed primary); the client it moved for asks the pools again.
		if cl := s.moveTo; cl != nil {
			s.moveTo = nil
			cl.deliverFailure(errRetry)
		}
		s.closeNow(nil)
		return
	}
	if len(s.carry) > 0 {
		carry := s.carry
		s.carry = nil
		n, err := s.handle(carry)
		if err != nil || n < len(carry) {
			// An idle server carries at most complete asynchronous messages.
			s.closeNow(fmt.Errorf("unexpected data while moving server connection"))
			return
		}
	}
	cl := s.moveTo
	s.moveTo = nil
	if cl != nil && cl.waitingFor() && cl.lp == lp {
		cl.attachAndResume(s)
		return
	}
	s.release()
}

// onTraffic handles data from a loop-homed server.
func (s *server) onTraffic(c gnet.Conn) gnet.Action {
	if s.detaching {
		return s.finishDetach(c)
	}
	if s.sec != nil {
		return s.onTrafficTLS(c)
	}
	buf, _ := c.Peek(-1)
	n, err := s.handle(buf)
	if n > 0 {
		_, _ = c.Discard(n)
	}
	if err != nil {
		s.fail(err)
		return gnet.Close
	}
	if s.detaching {
		return s.finishDetach(c)
	}
	if s.closing {
		return gnet.Close
	}
	return gnet.None
}

// handle processes server bytes: forwards responses to the attached client (or swallows
// them), follows the transaction state, and releases the server when the client's
// transaction is over.
func (s *server) handle(buf []byte) (int, error) {
	cl := s.client
	var em *emitter
	if cl != nil {
		em = s.emitterFor(cl, buf)
	}
	pos := 0
	defer func() {
		if em != nil {
			sc, err := em.flush()
			s.putScratch(cl, sc)
			if err != nil && cl != nil {
				cl.closeNow()
			}
		}
		if cl != nil && pos > 0 {
			s.pe.counters(s.lp).sent.Add(uint64(pos))
		}
	}()
	for pos < len(buf) && !s.closing && !s.detaching {
		if s.remain > 0 {
			n := min(s.remain, len(buf)-pos)
			if s.remainFwd && em != nil {
				em.pass(pos, pos+n)
			}
			pos += n
			s.remain -= n
			continue
		}
		typ, blen, complete, err := s.e.backendLimits.Scan(buf[pos:])
		if err != nil {
			return pos, fmt.Errorf("server protocol error: %w", err)
		}
		if blen < 0 {
			break
		}
		total := pgwire.HeaderLen + blen
		streamable := typ == pgwire.MsgDataRow || typ == pgwire.MsgCopyData || typ == pgwire.MsgRowDescription ||
			typ == pgwire.MsgNoticeResponse || typ == pgwire.MsgFunctionCallResponse || typ == pgwire.MsgParameterDescription
		if !complete && (!streamable || s.client == nil) {
			break
		}
		avail := min(total, len(buf)-pos)
		body := buf[pos+pgwire.HeaderLen : pos+avail]
		if traceOn {
			trace("S>", s.client, typ, buf[pos:pos+avail])
		}

		if s.client != cl {
			// Released during this call: the rest is not the old client's.
			if em != nil {
				sc, err := em.flush()
				s.putScratch(cl, sc)
				if err != nil {
					cl.closeNow()
				}
				em = nil
			}
			cl = s.client
		}
		v, popped, ok := s.tr.Received(typ)
		switch v {
		case pool.VerdictProtocol:
			if s.client == nil && (typ == pgwire.MsgErrorResponse || typ == pgwire.MsgNoticeResponse || typ == pgwire.MsgParameterStatus || typ == pgwire.MsgNotification) {
				// Asynchronous message on an idle server (e.g. the administrator terminated
				// it: FATAL 57P01); the close follows.
				v = pool.VerdictSwallow
				break
			}
			return pos, fmt.Errorf("server sent unexpected message type %q", typ)
		}
		switch typ {
		case pgwire.MsgReadyForQuery:
			st, err := pgwire.DecodeReadyForQuery(body)
			if err != nil {
				return pos, fmt.Errorf("server sent an invalid ReadyForQuery")
			}
			s.tr.ReadyForQuery(st)
			if cl != nil && !s.queryStart.IsZero() && s.tr.Outstanding() == 0 {
				// The client's requests are done (with whatever the proxy sent for it between
				// them), whether this ReadyForQuery is the client's or the proxy's own.
				s.pe.counters(s.lp).queryNanos.Add(uint64(max(0, s.clock().Sub(s.queryStart))))
				s.queryStart = time.Time{}
			}
			if cl != nil && v != pool.VerdictSwallow && cl.state == csReady {
				// The client's own queries: not the proxy's, nor the end of its login.
				c := s.pe.counters(s.lp)
				c.queries.Add(1)
				if st == pgwire.TxIdle {
					c.xacts.Add(1)
				}
			}
			for _, set := range s.pendingSets {
				s.applySetting(cl, set, st)
			}
			s.pendingSets = s.pendingSets[:0]
		case pgwire.MsgParameterStatus:
			name, value, err := pgwire.DecodeParameterStatus(body)
			if err != nil {
				return pos, fmt.Errorf("server sent an invalid ParameterStatus")
			}
			s.params.SetBytes(name, value)
			if cl != nil && cl.params != nil && cl.params.SetBytes(name, value) {
				// The client sees every change of its settings, even one caused by a SET the
				// proxy replayed.
				v = pool.VerdictForward
			}
		case pgwire.MsgCommandComplete:
			if v != pool.VerdictSwallow {
				// Only the client's own commands: the proxy's injected ones (the RESETs of a
				// settings replay, DISCARD ALL, ROLLBACK) did what the proxy already recorded.
				// The statement's recognised setting, if any, is on its Execute entry
				// (extended protocol, popped now) or its Query entry (which stays until
				// ReadyForQuery).
				set := popped.Set
				if h, hok := s.tr.Head(); !ok && hok && h.Expect == pool.ExpectQuery {
					set = h.Set
				}
				tag, _ := pgwire.DecodeCommandComplete(body)
				s.onCommandComplete(cl, tag, set)
			}
		case pgwire.MsgErrorResponse:
			s.pendingSets = s.pendingSets[:0]
			s.onError(cl, body, popped, ok)
		}
		if cl == nil {
			v = pool.VerdictSwallow
		}
		if v == pool.VerdictForward {
			em.pass(pos, pos+avail)
			s.remain, s.remainFwd = total-avail, true
		} else {
			s.remain, s.remainFwd = total-avail, false
		}
		pos += avail
		if cl != nil {
			for {
				f, ok := s.tr.NextFake()
				if !ok {
					break
				}
				em.setBuf(appendFake(em.buf(), f, s.tr.TxStatus))
			}
		}
		if typ == pgwire.MsgReadyForQuery {
			s.afterReadyForQuery(cl)
		}
		// s.client == cl: the ReadyForQuery just handled may have let the server go (and the
		// pool may have given it to someone else); a client that lags then is not moved with it.
		if cl != nil && s.client == cl && cl.conn != nil && cl.conn.OutboundBuffered() > s.e.cfg.StreamHighWater {
			// The client does not keep up: stop reading this server (stream path).
			s.startSlowReader(cl)
			return pos, nil
		}
	}
	return pos, nil
}

func (s *server) emitterFor(cl *client, src []byte) *emitter {
	if cl.lp != nil && s.conn != nil {
		em := &cl.lp.em
		em.reset(cl.out, src, cl.lp.scratch)
		return em
	}
	em := &cl.stream.serverEm
	em.reset(cl.out, src, cl.stream.serverScratch)
	return em
}

func (s *server) putScratch(cl *client, b []byte) {
	if cl == nil {
		return
	}
	if cl.lp != nil && s.conn != nil {
		cl.lp.scratch = b
	} else if cl.stream != nil {
		cl.stream.serverScratch = b
	}
}

// onCommandComplete follows commands that change session state the pooler tracks. set is the
// setting the proxy recognised in the completed statement (SET name, RESET name or a
// set_config), if any.
func (s *server) onCommandComplete(cl *client, tag []byte, set *pool.Setting) {
	switch {
	case set != nil && !set.Config && (bytes.Equal(tag, []byte("SET")) || bytes.Equal(tag, []byte("RESET"))),
		set != nil && set.Config && bytes.Equal(tag, []byte("SELECT 1")):
		s.pendingSets = append(s.pendingSets, set)
	case bytes.Equal(tag, []byte("DISCARD ALL")):
		s.stmts.Clear()
		s.dirtyStmts = s.dirtyStmts[:0]
		s.dirty = false
		s.dropSQLSettings(cl)
		if cl != nil && cl.stmts != nil {
			clear(cl.stmts)
			cl.sessStmts, cl.sessPortals = nil, nil
		}
	case bytes.Equal(tag, []byte("DEALLOCATE ALL")):
		s.stmts.Clear()
		s.dirtyStmts = s.dirtyStmts[:0]
		if cl != nil && cl.stmts != nil {
			clear(cl.stmts)
			cl.sessStmts = nil
		}
	case bytes.Equal(tag, []byte("RESET")):
		// RESET ALL or a RESET the proxy did not follow: reported settings come back as
		// ParameterStatus; settings the proxy replays as SQL cannot be told apart, so drop
		// them from both sides.
		s.dropSQLSettings(cl)
	}
}

// dropSQLSettings forgets settings the proxy replays as SQL or that the server did not report
// at login: the server reset them.
func (s *server) dropSQLSettings(cl *client) {
	for _, p := range []*pool.Params{s.params, clientParams(cl)} {
		if p == nil {
			continue
		}
		var names []string
		p.Each(func(name, value string) {
			if pool.IsSQLValue(value) || !s.login.Has(name) {
				names = append(names, name)
			}
		})
		for _, n := range names {
			p.Delete(n)
		}
	}
}

func clientParams(cl *client) *pool.Params {
	if cl == nil {
		return nil
	}
	return cl.params
}

// applySetting records a client's SET once it completed: outside a transaction block it is
// part of the session and follows the client to other servers; inside one the proxy cannot
// know whether it will be committed, so the server is reset before reuse instead.
func (s *server) applySetting(cl *client, set *pool.Setting, status byte) {
	if status != pgwire.TxIdle || cl == nil || cl.params == nil {
		s.dirty = true
		return
	}
	if s.login.Has(set.Name) || s.login.Canonical(set.Name) != set.Name {
		// Reported by the server (whatever the case the client spelt it in: "timezone" is
		// "TimeZone"): ParameterStatus already updated both sides.
		return
	}
	if set.Config {
		cl.params.Set(set.Name, set.Value)
		s.params.Set(set.Name, set.Value)
		return
	}
	if set.SQL == "" {
		cl.params.Delete(set.Name)
		s.params.Delete(set.Name)
		return
	}
	v := pool.SQLValue(set.SQL)
	cl.params.Set(set.Name, v)
	s.params.Set(set.Name, v)
}

// onError handles an ErrorResponse.
func (s *server) onError(cl *client, body []byte, failed pool.Entry, popped bool) {
	f, err := pgwire.DecodeErrorFields(body)
	if err != nil {
		return
	}
	if popped && failed.Stmt != nil {
		if failed.Expect == pool.ExpectParse {
			s.stmts.Remove(failed.Stmt)
		} else if bytes.Equal(f.Code, []byte(pgwire.FeatureNotSupported)) && bytes.Contains(f.Message, []byte("cached plan must not change result type")) {
			// The statement's plan is stale after DDL: drop it on this server so the next
			// use prepares it again.
			s.stmts.Remove(failed.Stmt)
			s.dirtyStmts = append(s.dirtyStmts, failed.Stmt)
		}
	}
	if bytes.Equal(f.Severity, []byte("FATAL")) || bytes.Equal(f.Severity, []byte("PANIC")) {
		s.closing = true
	}
}

// forget is the tracker's Dropped hook: a Parse the server skipped never created its
// statement, and a Close it skipped left its statement in place.
func (s *server) forget(e pool.Entry) {
	switch {
	case e.Stmt == nil:
	case e.Expect == pool.ExpectParse:
		s.stmts.Remove(e.Stmt)
	case e.Expect == pool.ExpectClose:
		s.dirtyStmts = append(s.dirtyStmts, e.Stmt)
	}
}

// mayHave reports whether the server may hold st although the proxy does not count it as
// prepared there (it is among dirtyStmts), and forgets that doubt: the caller closes it.
func (s *server) mayHave(st *pool.Stmt) bool {
	for i, d := range s.dirtyStmts {
		if d == st {
			s.dirtyStmts = append(s.dirtyStmts[:i], s.dirtyStmts[i+1:]...)
			return true
		}
	}
	return false
}

// afterReadyForQuery decides what happens to the server at the end of a request.
func (s *server) afterReadyForQuery(cl *client) {
	if len(s.dirtyStmts) > 0 && s.tr.Idle() {
		// Close statements whose plan went stale, so they are prepared afresh.
		var b []byte
		for _, st := range s.dirtyStmts {
			b = pgwire.AppendTarget(b, pgwire.MsgClose, 'S', st.Name)
			s.tr.Sent(pool.Entry{Expect: pool.ExpectClose, Action: pool.Swallow, Stmt: st})
		}
		b = pgwire.AppendEmpty(b, pgwire.MsgSync)
		s.tr.Sent(pool.Entry{Expect: pool.ExpectSync, Action: pool.Swallow})
		s.dirtyStmts = s.dirtyStmts[:0]
		s.write(b)
		return
	}
	if cl == nil {
		if !s.tr.Idle() {
			return
		}
		s.resetting = false
		if w := s.checkFor; w != nil {
			s.checkFor = nil
			s.lastUsed = time.Now()
			if w.waitingFor() {
				w.attachAndResume(s)
				return
			}
		}
		s.release()
		return
	}
	if cl.txnMode() && s.tr.Idle() && cl.state == csReady && s.cancelPending.Load() == 0 {
		cl.detach(s)
		if cl.hasPendingInput() {
			// The client already sent its next transaction.
			if cl.lp != nil {
				cl.lp.laterTask(task{kind: taskProcess, cl: cl})
			}
		}
		return
	}
	if cl.state == csLogin && s.tr.Idle() {
		cl.finishLogin()
		if cl.txnMode() {
			cl.detach(s)
		}
	}
}

func (s *server) write(b []byte) {
	if _, err := s.writer().Write(b); err != nil {
		s.lostDuringWrite(err)
	}
}

// release returns a server no client holds to its pool: reset first if needed, then hand it to
// a waiting client or keep it idle.
func (s *server) release() {
	if s.closing || s.gone {
		return
	}
	if s.reading {
		// A stream-path goroutine still reads the connection: it releases the server itself
		// once it has stopped reading (woken now if it is blocked in Read), so the server is
		// never released twice, nor handed on while that goroutine still reads it.
		if s.nc != nil {
			_ = s.nc.SetReadDeadline(time.Unix(1, 0))
		}
		return
	}
	if s.epoch != s.b.currentEpoch() {
		s.closeNow(nil)
		return
	}
	if !s.tr.Idle() {
		s.abandoned()
		return
	}
	if s.holdForCancel() {
		return
	}
	if s.dirty {
		s.dirty = false
		s.resetting = true
		s.stmts.Clear()
		s.dirtyStmts = s.dirtyStmts[:0]
		s.dropSQLSettings(nil)
		s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery, Action: pool.Swallow})
		s.write(pgwire.AppendQuery(nil, "DISCARD ALL"))
		s.e.m.serverResets.Inc()
		return
	}
	now := s.clock()
	s.lastUsed = now
	if !s.attachedAt.IsZero() {
		s.pe.counters(s.lp).assignedNanos.Add(uint64(max(0, now.Sub(s.attachedAt))))
		s.attachedAt = time.Time{}
	}
	to, toLoop, handed, retire := s.pe.p.Release(s.home, s, s.born, now)
	switch {
	case retire:
		s.closeNow(nil)
	case handed:
		s.home = toLoop
		s.handTo(to)
	case s.conn == nil:
		// A stream-path server goes to wait on an event loop; the pool counts it there and
		// it is released again (made idle or handed out) once it lives there.
		s.home = toLoop
		s.moveTo = nil
		s.enroll(s.nc, toLoop)
	}
}

// handTo gives the server to a waiting client, moving it to the client's home if needed.
func (s *server) handTo(cl *client) {
	switch {
	case s.conn != nil && cl.lp == s.lp:
		lp := s.lp
		lp.laterTask(task{kind: taskHandover, cl: cl, s: s})
	case s.conn != nil:
		s.moveTo = cl
		s.detachFromLoop(func(nc net.Conn) {
			if cl.stream != nil {
				s.setSocket(nc)
				s.publish(nc, cl)
				cl.stream.give(s)
				return
			}
			s.enroll(nc, cl.lp.idx)
		})
	default:
		nc := s.nc
		s.moveTo = cl
		if cl.stream != nil {
			s.publish(nc, cl)
			cl.stream.give(s)
			return
		}
		s.nc = nil
		s.enroll(nc, cl.lp.idx)
	}
}

// migrateTo moves an idle server from loop from to client cl, whose pool home is toHome
// (pool.GrantSteal). The server is touched only on its own loop.
func (s *server) migrateTo(cl *client, from, toHome int) {
	lp := s.e.loopAt(from)
	lp.exec(func() {
		if s.gone || s.closing {
			cl.deliverFailure(errRetry)
			return
		}
		s.home = toHome
		s.handTo(cl)
	})
}

// detachFromLoop takes the server off its loop without losing a byte: the descriptor is
// duplicated inside the server's own traffic callback, which then closes gnet's copy, so gnet
// cannot read in between. cb receives a blocking net.Conn on the same socket.
func (s *server) detachFromLoop(cb func(net.Conn)) {
	s.e.m.serverMoves.Inc()
	s.detaching = true
	s.inTransit(s.conn)
	s.detachCb = cb
	if err := s.conn.Wake(nil); err != nil {
		s.detaching = false
		s.lost(err)
	}
}

func (s *server) finishDetach(c gnet.Conn) gnet.Action {
	if c.OutboundBuffered() > 0 {
		// Data still queued for PostgreSQL; try again once it has left. Not with a Wake from
		// here: gnet runs a task queued by a task in the same round, so the loop would spin
		// on this callback and never write the data out.
		time.AfterFunc(time.Millisecond, func() { _ = c.Wake(nil) })
		return gnet.None
	}
	rest, _ := c.Peek(-1)
	if x := s.sec; x != nil {
		// Plaintext not handled yet goes first; the ciphertext gnet read stays in the
		// transport, ahead of what the socket will give the next home.
		s.carry = append(s.carry[:0], x.takePlain()...)
		x.tr.feed(rest)
	} else {
		s.carry = append(s.carry[:0], rest...)
	}
	fd, err := c.Dup()
	if err != nil {
		s.detaching = false
		s.lost(err)
		return gnet.Close
	}
	f := os.NewFile(uintptr(fd), "pgbastion-server")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		s.detaching = false
		s.lost(err)
		return gnet.Close
	}
	delete(s.lp.servers, s)
	// From here on gnet's copy belongs to nobody: its OnClose must not touch s, which may be
	// enrolled on another loop before this close completes.
	c.SetContext(detached{})
	s.conn, s.out, s.lw.c = nil, nil, nil
	// Off the loop: whoever receives nc runs the server now. (A server given to a stream-path
	// client is never enrolled again, and handle does nothing while detaching is set.)
	s.detaching = false
	cb := s.detachCb
	s.detachCb = nil
	s.lp.later(func() { cb(nc) })
	return gnet.Close
}

// closeNow closes the server connection; err (may be nil) says why.
func (s *server) closeNow(err error) {
	if s.closing && s.gone {
		return
	}
	s.closing = true
	if err != nil {
		s.e.log.Debug("closing server connection", "backend", s.b.name, "err", err)
	}
	switch {
	case s.conn != nil:
		_ = s.conn.Close()
	case s.nc != nil:
		_ = s.nc.Close()
		s.lost(err)
	default:
		s.lost(err)
	}
}

// closeAsync closes the server from any goroutine (routing change). It reads only the
// published handle: a server between homes has none yet and is closed on arrival (publish,
// onEnrolled).
func (s *server) closeAsync() {
	s.retired.Store(true)
	if h := s.closer.Load(); h != nil {
		_ = h.Close()
	}
}

func (s *server) fail(err error) {
	s.e.log.Warn("server connection failed", "backend", s.b.name, "err", err)
	s.closing = true
}

// onClose cleans up after gnet closed the connection.
func (s *server) onClose(c gnet.Conn, err error) {
	if s.lp != nil {
		delete(s.lp.servers, s)
	}
	if s.conn != c {
		return // detached: the connection lives on elsewhere
	}
	s.conn = nil
	s.lost(err)
}

// lost accounts for a server connection that is gone for good.
func (s *server) lost(err error) {
	if s.gone {
		return
	}
	s.gone = true
	s.closing = true
	s.b.removeServer(s)
	s.pe.p.RemoveIdle(s.home, s)
	if cl := s.client; cl != nil {
		s.client, cl.srv = nil, nil
		s.b.active.Add(-1)
		cl.serverLost(err)
	}
	if w := s.checkFor; w != nil {
		// The idle server failed its check: the client asks the pool again.
		s.checkFor = nil
		s.e.m.serverCheckFailures.Inc()
		w.deliverFailure(errRetry)
	}
	if w, loop, ok := s.pe.p.ServerGone(s.home); ok {
		s.e.dial(s.pe, w, loop)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		s.e.requestHealthCheck()
	}
}

// lostDuringWrite handles a failed write to the server.
func (s *server) lostDuringWrite(err error) {
	if s.conn != nil {
		return // gnet closes the connection itself and calls OnClose
	}
	s.closeNow(err)
}

// abandoned handles a server whose client left: roll back an open transaction, reset a session,
// or close the connection when a request is still running.
func (s *server) abandoned() {
	if s.closing {
		return
	}
	if s.tr.Outstanding() > 0 || s.tr.CopyIn || s.tr.CopyOut {
		// Closing the connection alone would leave PostgreSQL running the query until it
		// next writes (a ten-minute report runs its ten minutes): cancel it too. This covers
		// a client that vanished as well as one closed by KILL or query_timeout.
		if s.cancelT != nil {
			s.e.forwardCancel(s.cancelT, func() {})
		}
		s.closeNow(errors.New("client left during a request"))
		return
	}
	if s.holdForCancel() {
		return // not even ROLLBACK or the reset query until the cancel has landed
	}
	switch {
	case s.tr.TxStatus != pgwire.TxIdle:
		s.resetting = true
		s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery, Action: pool.Swallow})
		s.write(pgwire.AppendQuery(nil, "ROLLBACK"))
		if !s.e.txnModeOn() {
			s.dirty = true
		}
	case !s.e.txnModeOn() && s.e.cfg.Pool.Enabled && s.e.conf().cfg.Pool.ServerResetQuery != "":
		s.resetting = true
		s.stmts.Clear()
		s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery, Action: pool.Swallow})
		s.write(pgwire.AppendQuery(nil, s.e.conf().cfg.Pool.ServerResetQuery))
		s.params.CopyFrom(s.login)
	case !s.e.cfg.Pool.Enabled:
		s.closeNow(nil)
	default:
		s.release()
	}
}

func (e *Engine) txnModeOn() bool {
	return e.cfg.Pool.Enabled && e.cfg.Pool.Mode == pool.ModeTransaction
}

// checkBackpressure moves the pair to the stream path when PostgreSQL does not read what the
// client sends (a large COPY into a slow server).
func (s *server) checkBackpressure() {
	if s.conn != nil && s.conn.OutboundBuffered() > s.e.cfg.StreamHighWater && s.client != nil && s.client.conn != nil {
		s.startSlowReader(s.client)
	}
}

// check sends the empty query to an idle server before it is handed to cl; cl gets it when the
// answer arrives (afterReadyForQuery), or asks the pool again if the server is gone.
func (s *server) check(cl *client) {
	s.checkFor = cl
	s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery, Action: pool.Swallow})
	s.e.m.serverChecks.Inc()
	s.write(emptyQuery)
}

var emptyQuery = pgwire.AppendQuery(nil, "")
