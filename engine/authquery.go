package engine

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pgwire/auth"
)

// DefaultAuthQuery is PgBouncer's own default: the stored password of a role that may log in,
// NULL once its VALID UNTIL has passed. It reads pg_authid, so auth_user must be a superuser;
// docs/operations.md shows a SECURITY DEFINER function for an unprivileged auth_user.
const DefaultAuthQuery = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END " +
	"FROM pg_authid WHERE rolname = $1 AND rolcanlogin"

// Bounds of the auth query's work.
const (
	// authQueryParallel is how many lookups may run at once, whatever the login storm.
	authQueryParallel = 4
	// authQueryIdle is how many logged-in connections are kept per backend and database, and
	// authQueryIdleTime how long one may wait unused.
	authQueryIdle     = 2
	authQueryIdleTime = time.Minute
	// maxAuthQueryMessage bounds what the auth query's answer may allocate.
	maxAuthQueryMessage = 64 << 10
)

// authQuery looks up the stored passwords of users the auth_file does not list by running
// proxy.auth.auth_query in PostgreSQL as proxy.auth.auth_user (PgBouncer's auth_user and
// auth_query). Lookups run off the event loops; concurrent lookups of the same user on the
// same backend and database share one query, so a storm of logins costs a few queries; at
// most authQueryParallel run at once. Nothing is cached between logins: a changed or removed
// password counts at the next login.
type authQuery struct {
	e   *Engine
	sem chan struct{}

	mu       sync.Mutex
	idle     map[authConnKey][]*authConn
	inflight map[authLookupKey]*authLookup
	// expiry closes kept connections unused for authQueryIdleTime; armed while any is kept.
	expiry *time.Timer
}

type authConnKey struct{ addr, database string }

type authLookupKey struct {
	authConnKey
	user string
}

type authConn struct {
	nc    net.Conn
	fe    *pgproto3.Frontend
	creds *auth.Credentials // the auth_user's credentials it logged in with
	used  time.Time
}

// authLookup is one lookup that others may wait on.
type authLookup struct {
	done chan struct{}
	res  authResult
}

// authResult is a user's stored secret: known is false when the user does not exist (or may
// not log in); err is set when the query could not be run.
type authResult struct {
	secret *auth.Secret
	known  bool
	err    error
}

func newAuthQuery(e *Engine) *authQuery {
	return &authQuery{e: e, sem: make(chan struct{}, authQueryParallel),
		idle: make(map[authConnKey][]*authConn), inflight: make(map[authLookupKey]*authLookup)}
}

// lookup returns user's secret from the backend at addr, querying database.
func (q *authQuery) lookup(ctx context.Context, addr, database, user string) authResult {
	k := authLookupKey{authConnKey{addr, database}, user}
	q.mu.Lock()
	if l, ok := q.inflight[k]; ok {
		q.mu.Unlock()
		select {
		case <-l.done:
			return l.res
		case <-ctx.Done():
			return authResult{err: context.Cause(ctx)}
		}
	}
	l := &authLookup{done: make(chan struct{})}
	q.inflight[k] = l
	q.mu.Unlock()

	l.res = q.run(ctx, k)
	q.mu.Lock()
	delete(q.inflight, k)
	q.mu.Unlock()
	close(l.done)
	q.e.m.authQueries.Inc()
	if l.res.err != nil {
		q.e.m.authQueryFailures.Inc()
	}
	return l.res
}

func (q *authQuery) run(ctx context.Context, k authLookupKey) authResult {
	select {
	case q.sem <- struct{}{}:
		defer func() { <-q.sem }()
	case <-ctx.Done():
		return authResult{err: context.Cause(ctx)}
	}
	l := q.e.conf()
	query := l.cfg.Auth.AuthQuery
	if query == "" {
		query = DefaultAuthQuery
	}
	// A kept connection may have been closed by the server meanwhile: one retry on a new one.
	for attempt := 0; ; attempt++ {
		c, reused, err := q.conn(ctx, k.authConnKey, l.authQueryCreds)
		if err != nil {
			return authResult{err: err}
		}
		res, err := c.query(ctx, query, k.user)
		if err == nil {
			q.put(k.authConnKey, c)
			return res
		}
		_ = c.nc.Close()
		if !reused || attempt > 0 || ctx.Err() != nil {
			return authResult{err: err}
		}
	}
}

// conn returns a kept connection logged in with creds, or a new one.
func (q *authQuery) conn(ctx context.Context, k authConnKey, creds *auth.Credentials) (*authConn, bool, error) {
	now := time.Now()
	q.mu.Lock()
	for list := q.idle[k]; len(list) > 0; list = q.idle[k] {
		c := list[len(list)-1]
		q.idle[k] = list[:len(list)-1]
		if c.creds == creds && now.Sub(c.used) < authQueryIdleTime {
			q.mu.Unlock()
			return c, true, nil
		}
		_ = c.nc.Close()
	}
	q.mu.Unlock()

	d := net.Dialer{Timeout: q.e.conf().cfg.Pool.ServerConnectTimeout, KeepAlive: 30 * time.Second}
	nc, err := dialBackend(ctx, &d, k.addr)
	if err != nil {
		return nil, false, fmt.Errorf("cannot connect to PostgreSQL at %s: %w", k.addr, unwrapOp(err))
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	lc, _, err := q.e.secureBackend(ctx, nc, k.addr)
	if err != nil {
		_ = nc.Close()
		return nil, false, err
	}
	if _, err := creds.Login(ctx, lc, []auth.Param{{Name: "database", Value: k.database},
		{Name: "application_name", Value: "pgbastion auth_query"}}); err != nil {
		_ = nc.Close()
		return nil, false, fmt.Errorf("cannot log in to PostgreSQL at %s as auth_user %q: %w", k.addr, creds.User(), err)
	}
	_ = nc.SetDeadline(time.Time{})
	nc = lc
	fe := pgproto3.NewFrontend(nc, nc)
	fe.SetMaxBodyLen(maxAuthQueryMessage)
	return &authConn{nc: nc, fe: fe, creds: creds}, false, nil
}

func (q *authQuery) put(k authConnKey, c *authConn) {
	c.used = time.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.idle[k]) >= authQueryIdle {
		_ = c.nc.Close()
		return
	}
	q.idle[k] = append(q.idle[k], c)
	if q.expiry == nil {
		q.expiry = time.AfterFunc(authQueryIdleTime, q.expire)
	}
}

// expire closes the kept connections unused for authQueryIdleTime, and runs again while any
// is kept.
func (q *authQuery) expire() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.expiry = nil
	now := time.Now()
	for k, list := range q.idle {
		kept := list[:0]
		for _, c := range list {
			if now.Sub(c.used) >= authQueryIdleTime {
				_ = c.nc.Close()
			} else {
				kept = append(kept, c)
			}
		}
		if len(kept) == 0 {
			delete(q.idle, k)
		} else {
			q.idle[k] = kept
		}
	}
	if len(q.idle) > 0 {
		q.expiry = time.AfterFunc(authQueryIdleTime/2, q.expire)
	}
}

// close closes the kept connections (the engine stops).
func (q *authQuery) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k, list := range q.idle {
		for _, c := range list {
			_ = c.nc.Close()
		}
		delete(q.idle, k)
	}
}

// query runs the auth query for user with the extended protocol (the user name is a
// parameter, never spliced into the text) and reads its one row: the user name and the stored
// password. No row, or a NULL password, is a user that cannot log in.
func (c *authConn) query(ctx context.Context, query, user string) (authResult, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c.fe.Send(&pgproto3.Parse{Query: query})
	c.fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte(user)}})
	c.fe.Send(&pgproto3.Describe{ObjectType: 'P'})
	c.fe.Send(&pgproto3.Execute{})
	c.fe.Send(&pgproto3.Sync{})
	if err := c.fe.Flush(); err != nil {
		return authResult{}, err
	}
	var res authResult
	var failure error
	rows := 0
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			return authResult{}, err
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			if len(m.Fields) != 2 && failure == nil {
				failure = fmt.Errorf("auth_query returns %d columns; it must return two: the user name and the stored password", len(m.Fields))
			}
		case *pgproto3.DataRow:
			rows++
			if failure != nil || len(m.Values) != 2 {
				continue
			}
			if rows > 1 {
				failure = fmt.Errorf("auth_query returns more than one row for user %q", user)
				continue
			}
			if m.Values[1] == nil {
				res = authResult{known: false}
				continue
			}
			sec, err := auth.ParseSecret(user, string(m.Values[1]))
			if err != nil {
				failure = fmt.Errorf("the stored password of user %q is not a valid secret: %w", user, err)
				continue
			}
			res = authResult{secret: sec, known: true}
		case *pgproto3.ErrorResponse:
			if failure == nil {
				failure = fmt.Errorf("auth_query failed: %s (SQLSTATE %s)", m.Message, m.Code)
			}
		case *pgproto3.ReadyForQuery:
			// The exchange is complete, so the connection can be kept even when the query
			// failed.
			_ = c.nc.SetDeadline(time.Time{})
			if failure != nil {
				return authResult{err: failure}, nil
			}
			return res, nil
		}
	}
}

// lookupClient looks up the secret of a client the auth_file does not list and then begins
// its authentication exchange with it. On an event loop the query runs on a goroutine and the
// exchange begins back on the loop, the client's messages waiting meanwhile; on the stream
// path it runs on the client's own goroutine.
func (cl *client) lookupClient() error {
	e := cl.e
	rt := e.routing.Load()
	b := rt.pickBackend(cl.role)
	if b == nil {
		b = rt.pickBackend(otherRole(cl.role))
	}
	if b == nil {
		return sqlErr(pgwire.CannotConnectNow, "no PostgreSQL server is available to look up the password of user \""+cl.user+"\"",
			"the proxy authenticates this user with proxy.auth.auth_query; check that the backends are running")
	}
	database := e.conf().cfg.Auth.AuthDBName
	if database == "" {
		database = cl.database
	}
	addr, user := b.addr, cl.user
	work := func() authResult {
		ctx, cancel := context.WithTimeout(context.Background(), e.conf().cfg.Pool.ServerConnectTimeout)
		defer cancel()
		res := e.authq.lookup(ctx, addr, database, user)
		if res.err != nil {
			e.log.Warn("auth_query failed; the client cannot log in", "user", user, "database", database,
				"backend", b.name, "err", res.err)
		}
		return res
	}
	cl.state = csLookup
	if cl.stream != nil {
		return cl.beginAuth(work())
	}
	lp := cl.lp
	go func() {
		res := work()
		lp.exec(func() {
			if cl.closed || cl.state != csLookup {
				return
			}
			if err := cl.beginAuth(res); err != nil {
				cl.fail(err)
				return
			}
			cl.process()
		})
	}()
	return nil
}

// beginAuth begins the client's authentication exchange with the secret an auth_query found.
func (cl *client) beginAuth(res authResult) error {
	if res.err != nil {
		cl.e.m.authFailures.Inc()
		return sqlErr(pgwire.ConnectionFailure, "cannot look up the password of user \""+cl.user+"\"",
			"the proxy's auth_query failed; its log says why (check proxy.auth.auth_user, auth_password and auth_query)")
	}
	cl.authFromQuery = true
	return cl.authStarted(cl.authEx.BeginAs(cl.scratchForClient(), cl.e.conf().verifier, cl.authMethod, cl.user, res.secret, res.known))
}

func otherRole(r Role) Role {
	if r == RoleRW {
		return RoleRO
	}
	return RoleRW
}
