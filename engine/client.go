package engine

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pgwire/auth"
	"github.com/pgbastion/pgbastion/pool"
)

type clientState uint8

const (
	csStartup clientState = iota // waiting for the startup packet
	csAuth                       // exchanging authentication messages
	csLookup                     // waiting for the auth_query to find the user's password
	csLogin                      // authenticated; waiting for a server to complete the login
	csConsole                    // logged in to the admin console (console.go)
	csReady                      // normal operation
	csCancel                     // sent a CancelRequest; closed once it has been delivered
	csClosed
)

// client is one client connection and its session state as the proxy sees it.
//
// In loop mode (conn != nil) everything runs on the loop lp. On the stream path (stream !=
// nil) the client's reader goroutine and its server's reader goroutine serialise on mu.
type client struct {
	e    *Engine
	role Role
	// unix: the client came in through a Unix socket (proxy.unix_socket_dir): no TLS, and
	// pg_hba's local lines apply to it.
	unix bool
	// loggedIn: the client finished its login (for log_disconnections).
	loggedIn bool

	lp     *loop
	conn   gnet.Conn
	stream *stream
	mu     sync.Mutex
	out    io.Writer
	lw     loopWriter // out while the client is on an event loop

	state    clientState
	user     string
	database string
	// startupParams are the client's startup settings, applied to servers with SET.
	startupParams [][2]string
	params        *pool.Params
	pid           uint32
	secret        [4]byte
	authEx        *auth.Exchange
	// authFromQuery: the client's secret came from the auth_query (not the auth_file).
	authFromQuery bool
	// authMethod is the method the client's exchange runs: the configured one, or the one
	// the hba_file chose.
	authMethod auth.Method
	acceptedAt time.Time
	lastActive time.Time
	tlsDone    bool
	// tin is a TLS client's decrypted input while it lives on an event loop (see tlsloop.go).
	tin *loopTLS

	serverUser string

	pe    *poolEntry
	peGen uint64
	// countedIn is the pool whose client count includes this client (the last one routed to,
	// until it closes).
	countedIn *poolEntry
	srv       *server

	waiting    bool
	waitSince  time.Time
	dialing    bool
	acquireErr error

	// stmts maps the client's statement names to shared statements (transaction mode).
	stmts map[string]*pool.Stmt
	// sessStmts maps the names of the client's statements ("" is the unnamed one) whose
	// execution changes session state (SET, PREPARE, LISTEN... sent with the extended
	// protocol) to what they change; sessPortals does the same for portals bound from them.
	// Both stay nil until the client prepares such a statement (transaction mode).
	sessStmts   map[string]queryClass
	sessPortals map[string]queryClass
	// unnamedParse is a copy of the client's last unnamed Parse (empty: none, or longer than
	// maxUnnamedCopy), so that a Bind or Describe of the unnamed statement in a later round
	// trip (pgx's describe-exec mode, libpq's PQprepare("") then PQexecPrepared("")) can
	// prepare it again on a server that holds someone else's; see restoreUnnamed.
	unnamedParse []byte

	// remain counts the bytes still to come of a client message being streamed to the server;
	// remainDrop discards them instead.
	remain     int
	remainDrop bool
	// skipToSync: the proxy failed a request mid extended-protocol sequence and has sent the
	// error; it drops messages until the client's Sync, then sends ReadyForQuery.
	skipToSync bool

	// failure is an error getting a server, reported at the message that needed it.
	failure error
	// detaching: the client moves to the stream path when its callback returns.
	detaching bool
	detachCb  func(nc net.Conn)

	cancel atomic.Pointer[cancelTarget]

	// consoleBusy: an admin console client waits for its SHOW CLIENTS/SERVERS answer.
	consoleBusy bool

	closed bool
}

func newClient(e *Engine, role Role) *client {
	now := time.Now()
	return &client{e: e, role: role, acceptedAt: now, lastActive: now}
}

func (cl *client) txnMode() bool {
	return cl.e.cfg.Pool.Enabled && cl.e.cfg.Pool.Mode == pool.ModeTransaction
}

func (cl *client) limits() *pgwire.Limits {
	if cl.txnMode() {
		return cl.e.txnLimits
	}
	return cl.e.frontLimits
}

func (cl *client) onAccept(c gnet.Conn, lp *loop) {
	cl.lw.c = c
	cl.lp, cl.conn, cl.out = lp, c, &cl.lw
	c.SetContext(cl)
	lp.clients[cl] = struct{}{}
	n := cl.e.clients.Add(1)
	cl.e.m.clientsAccepted.Inc()
	if max := cl.e.conf().cfg.Pool.MaxClientConn; int(n) > max {
		// Answer after the startup packet so the client sees a proper error.
		cl.acquireErr = sqlErr(pgwire.TooManyConnections, fmt.Sprintf("no more connections allowed (max_client_conn is %d)", max),
			"raise proxy.pool.max_client_conn, or use fewer client connections")
	}
}

// onTraffic handles readable data on a loop-mode client.
func (cl *client) onTraffic(c gnet.Conn) gnet.Action {
	if cl.detaching {
		return cl.finishDetach(c)
	}
	if cl.stream != nil {
		return gnet.None // moving to the stream path: input waits there
	}
	var n int
	var err error
	if x := cl.tin; x != nil {
		for {
			if err = x.fill(c); err != nil {
				if err != io.EOF {
					cl.e.log.Debug("TLS client connection failed", "remote", cl.remote(), "err", err)
				}
				cl.closed = true
				return gnet.Close
			}
			n, err = cl.handle(x.pending())
			x.lo += n
			// fill stops at x.max bytes of plaintext: decrypt the rest once that is handled
			// (no new event comes for ciphertext gnet has already read).
			if err != nil || n == 0 || cl.closed || cl.detaching || x.tr.off == len(x.tr.in) {
				break
			}
		}
		if !cl.detaching {
			x.release()
		}
	} else {
		buf, _ := c.Peek(-1)
		n, err = cl.handle(buf)
		if n > 0 {
			_, _ = c.Discard(n)
		}
	}
	if err != nil {
		cl.fail(err)
		return gnet.Close
	}
	if cl.detaching {
		return cl.finishDetach(c)
	}
	if cl.closed {
		return gnet.Close
	}
	return gnet.None
}

// process re-runs the handler on data already buffered (after a server was attached).
func (cl *client) process() {
	if cl.closed {
		return
	}
	if cl.stream != nil {
		cl.stream.kick()
		return
	}
	if cl.tin == nil && cl.conn.InboundBuffered() == 0 {
		return
	}
	if cl.onTraffic(cl.conn) == gnet.Close {
		_ = cl.conn.Close()
	}
}

// handle consumes client bytes according to the connection state.
func (cl *client) handle(buf []byte) (int, error) {
	cl.lastActive = clockOf(cl.lp)
	consumed := 0
	for consumed < len(buf) && !cl.closed {
		var n int
		var err error
		switch cl.state {
		case csStartup:
			n, err = cl.handleStartup(buf[consumed:])
		case csAuth:
			n, err = cl.handleAuth(buf[consumed:])
		case csLogin, csLookup:
			return consumed, nil
		case csReady:
			n, err = cl.relay(buf[consumed:])
			cl.relayed(n)
		case csConsole:
			n, err = cl.handleConsole(buf[consumed:])
		default:
			return len(buf), nil
		}
		consumed += n
		if err != nil {
			return consumed, err
		}
		if n == 0 {
			break
		}
	}
	return consumed, nil
}

// clientError is an error to report to the client before closing it.
type clientError struct {
	code, msg, hint string
	fatal           bool
}

func (e *clientError) Error() string { return e.msg }

func sqlErr(code, msg, hint string) *clientError {
	return &clientError{code: code, msg: msg, hint: hint, fatal: true}
}

// errClientGone is returned when the client terminated normally.
var errClientGone = errors.New("client terminated")

// fail reports err to the client (FATAL) where the protocol allows, then closes it.
func (cl *client) fail(err error) {
	if cl.closed {
		return
	}
	var ce *clientError
	var he *pgwire.HeaderError
	var ae *auth.Error
	switch {
	case errors.Is(err, errClientGone):
	case errors.As(err, &ae):
		cl.send(ae.AppendErrorResponse(nil))
	case errors.As(err, &ce):
		cl.send(pgwire.AppendError(nil, pgwire.MsgErrorResponse, pgwire.SeverityFatal, ce.code, ce.msg, ce.hint))
	case errors.As(err, &he):
		cl.e.m.protocolErrors.Inc()
		cl.send(pgwire.AppendError(nil, pgwire.MsgErrorResponse, pgwire.SeverityFatal, he.Code, he.Message, ""))
	default:
		cl.send(pgwire.AppendError(nil, pgwire.MsgErrorResponse, pgwire.SeverityFatal, pgwire.InternalError, err.Error(), ""))
	}
	cl.closeNow()
}

func (cl *client) send(b []byte) {
	if cl.out != nil && !cl.closed {
		_, _ = cl.out.Write(b)
	}
}

// closeNow closes the client connection; cleanup happens in cleanup.
func (cl *client) closeNow() {
	if cl.closed {
		return
	}
	cl.closed = true
	if cl.conn != nil {
		if cl.tin != nil {
			// A TLS session ends with close_notify, so the client can tell the end from a
			// cut (Go's tls reports io.EOF then, not io.ErrUnexpectedEOF).
			_ = cl.tin.tc.CloseWrite()
		}
		_ = cl.conn.Close()
	} else if cl.stream != nil {
		cl.stream.closeClient()
	}
}

// closeFromElsewhere closes the client from another goroutine, through its owner: its event
// loop, or the lock its stream goroutine works under.
func (cl *client) closeFromElsewhere() {
	if cl.stream == nil && cl.lp != nil {
		cl.lp.exec(cl.closeNow)
		return
	}
	cl.mu.Lock()
	cl.closeNow()
	cl.mu.Unlock()
}

// abort is called after a recovered panic.
func (cl *client) abort() { cl.closed = true }

// ---- startup ----

func (cl *client) handleStartup(buf []byte) (int, error) {
	n, err := pgwire.StartupLen(buf)
	if errors.Is(err, pgwire.ErrStartupIncomplete) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(buf) < n {
		return 0, nil
	}
	su, err := pgwire.ParseStartup(buf[:n])
	if err != nil {
		return n, err
	}
	switch su.Kind {
	case pgwire.KindSSLRequest:
		if len(buf) > n {
			// CVE-2021-23214 class: bytes after SSLRequest were sent before the handshake.
			return n, sqlErr(pgwire.ProtocolViolation, "received unencrypted data after SSL request", "")
		}
		tc := cl.e.conf().tlsCfg
		if tc == nil || cl.tlsDone || cl.stream != nil || cl.unix {
			cl.send([]byte{'N'})
			return n, nil
		}
		cl.send([]byte{'S'})
		cl.e.m.tlsClients.Inc()
		return n, cl.startTLS(tc)
	case pgwire.KindGSSENCRequest:
		if len(buf) > n {
			return n, sqlErr(pgwire.ProtocolViolation, "received unencrypted data after GSSAPI encryption request", "")
		}
		cl.send([]byte{'N'})
		return n, nil
	case pgwire.KindCancel:
		// The connection stays open (its further bytes ignored) until the cancel has
		// landed, as PostgreSQL's does; see handleCancel.
		cl.state = csCancel
		if !cl.e.handleCancel(su.CancelPID, su.CancelKey, cl.closeFromElsewhere) {
			cl.closeNow()
		}
		return n, nil
	}
	if cl.acquireErr != nil {
		return n, cl.acquireErr
	}
	if l := cl.e.conf(); l.tlsCfg != nil && !cl.tlsDone && !cl.unix && tlsRequired(l.cfg.TLS.Mode) {
		return n, sqlErr(pgwire.InvalidAuthorization, "SSL/TLS is required by this server (proxy.tls.mode "+l.cfg.TLS.Mode+")",
			"connect with sslmode=require or stronger")
	}
	return n, cl.startup(&su)
}

func tlsRequired(mode string) bool {
	return mode == "require" || mode == "verify-ca" || mode == "verify-full"
}

func (cl *client) startup(su *pgwire.Startup) error {
	if su.MinorVersion > 0 || len(su.UnknownOptions) > 0 {
		cl.send(pgwire.AppendNegotiateProtocolVersion(nil, 0, su.UnknownOptions))
	}
	for _, p := range su.Params {
		name, value := string(p.Name), string(p.Value)
		switch name {
		case "user":
			cl.user = value
		case "database":
			cl.database = value
		case "replication":
			return sqlErr(pgwire.FeatureNotSupported, "replication connections are not supported through the proxy",
				"connect to PostgreSQL directly for replication")
		case "options":
			opts, err := parseOptions(value)
			if err != nil {
				return err
			}
			cl.startupParams = append(cl.startupParams, opts...)
		default:
			cl.startupParams = append(cl.startupParams, [2]string{name, value})
		}
	}
	if cl.user == "" {
		return sqlErr(pgwire.InvalidAuthorization, "no PostgreSQL user name specified in startup packet", "")
	}
	if cl.e.conf().cfg.ApplicationNameAddHost {
		cl.addHostToAppName()
	}
	if cl.database == "" {
		cl.database = cl.user
	}
	cl.serverUser = cl.e.cfg.Server.User
	if cl.serverUser == "" {
		cl.serverUser = cl.user
	}
	verifier := cl.e.conf().verifier
	if verifier == nil {
		cl.send(pgwire.AppendAuth(nil, pgwire.AuthOK, nil))
		return cl.authenticated()
	}
	cl.authEx = new(auth.Exchange)
	cl.authMethod = verifier.Method()
	if h := cl.e.conf().hba; h != nil {
		m, proceed, err := cl.hbaDecide(h)
		if !proceed || err != nil {
			return err
		}
		cl.authMethod = m
	}
	if cl.e.conf().cfg.Auth.AuthUser != "" && !cl.inAuthFile() {
		return cl.lookupClient()
	}
	var secret *auth.Secret
	known := true
	if s := cl.e.conf().secrets; s != nil {
		secret, known = s.Lookup(cl.user)
	}
	return cl.authStarted(cl.authEx.BeginAs(cl.scratchForClient(), verifier, cl.authMethod, cl.user, secret, known))
}

// hbaDecide applies the hba_file to the client: no matching line, or reject, refuses it
// (28000, with PostgreSQL's words); trust and cert (a verified client certificate whose
// common name is the user) log it in here; md5 and scram-sha-256 are returned for the
// exchange (proceed).
func (cl *client) hbaDecide(h *auth.HBA) (m auth.Method, proceed bool, err error) {
	var (
		method auth.HBAMethod
		line   int
		ok     bool
		who    string
	)
	if cl.unix {
		who = fmt.Sprintf("local connection, user %q, database %q", cl.user, cl.database)
		method, line, ok = h.MatchLocal(cl.database, cl.user)
	} else {
		ap, perr := netip.ParseAddrPort(cl.remote())
		if perr != nil {
			return 0, false, cl.authFailed(sqlErr(pgwire.InvalidAuthorization, "no client address to match proxy.auth.hba_file against", ""))
		}
		ssl := map[bool]string{true: "SSL on", false: "SSL off"}[cl.tlsDone]
		who = fmt.Sprintf("host %q, user %q, database %q, %s", ap.Addr().Unmap().String(), cl.user, cl.database, ssl)
		method, line, ok = h.Match(ap.Addr(), cl.tlsDone, cl.database, cl.user)
	}
	if !ok {
		return 0, false, cl.authFailed(sqlErr(pgwire.InvalidAuthorization, "no proxy.auth.hba_file entry for "+who, ""))
	}
	switch method {
	case auth.HBAReject:
		return 0, false, cl.authFailed(sqlErr(pgwire.InvalidAuthorization,
			fmt.Sprintf("proxy.auth.hba_file rejects connection for %s (line %d)", who, line), ""))
	case auth.HBATrust:
		cl.authEx = nil
		cl.send(pgwire.AppendAuth(nil, pgwire.AuthOK, nil))
		return 0, false, cl.authenticated()
	case auth.HBACert:
		if cn, ok := cl.peerCommonName(); !ok || cn != cl.user {
			return 0, false, cl.authFailed(sqlErr(pgwire.InvalidAuthorization,
				fmt.Sprintf("certificate authentication failed for user %q", cl.user),
				"connect with a client certificate, signed by proxy.tls.ca, whose common name is the user name"))
		}
		cl.authEx = nil
		cl.send(pgwire.AppendAuth(nil, pgwire.AuthOK, nil))
		return 0, false, cl.authenticated()
	case auth.HBAPeer:
		osUser, err := cl.peerUser()
		if err != nil || osUser != cl.user {
			cl.e.log.Info("peer authentication failed", "user", cl.user, "os_user", osUser, "err", err)
			return 0, false, cl.authFailed(sqlErr(pgwire.InvalidAuthorization,
				fmt.Sprintf("peer authentication failed for user %q", cl.user),
				"connect as the operating-system user of the same name, or use another method for this user in proxy.auth.hba_file"))
		}
		cl.authEx = nil
		cl.send(pgwire.AppendAuth(nil, pgwire.AuthOK, nil))
		return 0, false, cl.authenticated()
	case auth.HBAMD5:
		return auth.MethodMD5, true, nil
	}
	return auth.MethodSCRAM, true, nil
}

// peerUser returns the operating-system user of the process at the other end of the client's
// Unix socket (SO_PEERCRED).
func (cl *client) peerUser() (string, error) {
	if !cl.unix || cl.conn == nil {
		return "", errors.New("not a Unix-socket connection on an event loop")
	}
	cred, err := unix.GetsockoptUcred(cl.conn.Fd(), unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return "", fmt.Errorf("SO_PEERCRED: %w", err)
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(cred.Uid), 10))
	if err != nil {
		return "", fmt.Errorf("no user has uid %d: %w", cred.Uid, err)
	}
	return u.Username, nil
}

// peerCommonName returns the common name of the client's verified TLS certificate.
func (cl *client) peerCommonName() (string, bool) {
	if !cl.tlsDone {
		return "", false
	}
	var cs tls.ConnectionState
	switch {
	case cl.tin != nil:
		cs = cl.tin.tc.ConnectionState()
	case cl.stream != nil:
		tc, ok := cl.stream.conn.(*tls.Conn)
		if !ok {
			return "", false
		}
		cs = tc.ConnectionState()
	default:
		return "", false
	}
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return "", false
	}
	return cs.PeerCertificates[0].Subject.CommonName, true
}

// authStarted sends the first message of an authentication exchange just begun (Begin or
// BeginWith), or reports its failure.
func (cl *client) authStarted(out []byte, done bool, err error) error {
	if err != nil {
		return cl.authFailed(err)
	}
	cl.send(out)
	cl.state = csAuth
	if done {
		return cl.authDone()
	}
	return nil
}

// inAuthFile reports whether the auth_file lists the client's user (who then is not looked
// up with the auth_query, as with PgBouncer).
func (cl *client) inAuthFile() bool {
	s := cl.e.conf().secrets
	if s == nil {
		return false
	}
	_, ok := s.Lookup(cl.user)
	return ok
}

// authDone finishes a successful authentication exchange: it keeps what the proxy needs to
// log in to PostgreSQL as the client's user (learnCredentials) and completes the login.
func (cl *client) authDone() error {
	ex := cl.authEx
	cl.authEx = nil
	cl.e.learnCredentials(cl.user, ex, cl.authFromQuery)
	return cl.authenticated()
}

// authFailed counts and logs a failed authentication (with the internal reason, never a
// secret) and returns the error the client sees.
func (cl *client) authFailed(err error) error {
	cl.e.m.authFailures.Inc()
	cl.e.log.Info("client authentication failed", "user", cl.user, "database", cl.database, "remote", cl.remote(), "err", err)
	return err
}

// parseOptions reads the startup "options" value: -c name=value and --name=value pairs.
func parseOptions(s string) ([][2]string, error) {
	var out [][2]string
	fields := splitOptions(s)
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		var kv string
		switch {
		case f == "-c" && i+1 < len(fields):
			i++
			kv = fields[i]
		case strings.HasPrefix(f, "-c"):
			kv = f[2:]
		case strings.HasPrefix(f, "--"):
			kv = f[2:]
		default:
			return nil, sqlErr(pgwire.FeatureNotSupported, fmt.Sprintf("unsupported startup option %q", f),
				"only -c name=value and --name=value are supported in options")
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, sqlErr(pgwire.InvalidParameterValue, fmt.Sprintf("invalid startup option %q", kv), "use -c name=value")
		}
		out = append(out, [2]string{strings.ReplaceAll(name, "-", "_"), value})
	}
	return out, nil
}

// splitOptions splits on unescaped whitespace; a backslash escapes the next byte (libpq rule).
func splitOptions(s string) []string {
	var out []string
	var cur strings.Builder
	esc, in := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case esc:
			cur.WriteByte(c)
			esc, in = false, true
		case c == '\\':
			esc = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// nextMessage frames the first message in buf: its type, body and whole length; n is 0 while
// the message is incomplete.
func (cl *client) nextMessage(buf []byte) (typ byte, body []byte, n int, err error) {
	typ, blen, complete, err := cl.e.frontLimits.Scan(buf)
	if err != nil || blen < 0 || !complete {
		return typ, nil, 0, err
	}
	n = pgwire.HeaderLen + blen
	return typ, buf[pgwire.HeaderLen:n], n, nil
}

func (cl *client) handleAuth(buf []byte) (int, error) {
	typ, body, n, err := cl.nextMessage(buf)
	if err != nil || n == 0 {
		return 0, err
	}
	if typ != pgwire.MsgPassword {
		if typ == pgwire.MsgTerminate {
			cl.closeNow()
			return n, nil
		}
		return n, sqlErr(pgwire.ProtocolViolation, fmt.Sprintf("expected password response, got message type %q", typ), "")
	}
	reply, done, err := cl.authEx.Step(cl.scratchForClient(), body)
	if err != nil {
		return n, cl.authFailed(err)
	}
	if len(reply) > 0 {
		cl.send(reply)
	}
	if done {
		return n, cl.authDone()
	}
	return n, nil
}

// addHostToAppName appends the client's address to its application_name (the last one it
// gave; the address alone when it gave none): proxy.application_name_add_host.
// The value is cut to what PostgreSQL keeps (NAMEDATALEN-1 bytes), so that the server reports
// back what the client's parameters hold and no transaction sets it again.
func (cl *client) addHostToAppName() {
	value := cl.remote()
	k := len(cl.startupParams) - 1 // the last application_name counts
	for k >= 0 && cl.startupParams[k][0] != "application_name" {
		k--
	}
	if k >= 0 && cl.startupParams[k][1] != "" {
		value = cl.startupParams[k][1] + " - " + value
	}
	if len(value) > 63 {
		value = strings.ToValidUTF8(value[:63], "")
	}
	if k < 0 {
		cl.startupParams = append(cl.startupParams, [2]string{"application_name", value})
		return
	}
	cl.startupParams[k][1] = value
}

func (cl *client) remote() string {
	if cl.unix {
		// As PgBouncer's SHOW CLIENTS: addr "unix", the listener's port.
		port := "0"
		if cl.role == RoleRO && cl.e.roAddr != nil {
			port = strconv.Itoa(cl.e.roAddr.Port)
		} else if cl.role == RoleRW && cl.e.rwAddr != nil {
			port = strconv.Itoa(cl.e.rwAddr.Port)
		}
		return net.JoinHostPort("unix", port)
	}
	if cl.conn != nil && cl.conn.RemoteAddr() != nil {
		return cl.conn.RemoteAddr().String()
	}
	if cl.stream != nil {
		return cl.stream.remote
	}
	return ""
}

// authenticated finishes the login once the client is authenticated: it needs a server for
// the session (session mode), or for the pool's parameters and the client's startup settings
// (transaction mode). When none is needed the client is ready at once.
func (cl *client) authenticated() error {
	cl.state = csLogin
	cl.e.m.logins.Inc()
	if _, err := rand.Read(cl.secret[:]); err != nil {
		return err
	}
	cl.pid = cl.e.cancels.add(cl)
	if consoleDatabases[cl.database] && cl.e.conf().consoleUsers != nil {
		return cl.enterConsole()
	}
	if cl.txnMode() {
		cl.stmts = make(map[string]*pool.Stmt)
		if pe, err := cl.route(); err == nil {
			if w := pe.welcome.Load(); w != nil {
				cl.params = pool.NewParams()
				cl.params.CopyFrom(w)
				if !cl.applyStartupParams() {
					cl.finishLogin()
					return nil
				}
			}
		}
	}
	cl.needServer()
	return nil
}

// applyStartupParams overlays the client's startup settings on its parameters and reports
// whether any differs from what the server has (so a server is needed to apply it).
func (cl *client) applyStartupParams() bool {
	changed := false
	for _, kv := range cl.startupParams {
		// The server's spelling of a reported setting ("TimeZone" for a startup "timezone").
		name := cl.params.Canonical(kv[0])
		if v, ok := cl.params.Get(name); !ok || v != kv[1] {
			cl.params.Set(name, kv[1])
			changed = true
		}
	}
	return changed
}

// finishLogin sends the parameter set, the proxy-owned BackendKeyData and ReadyForQuery.
func (cl *client) finishLogin() {
	b := cl.scratchForClient()
	cl.params.Each(func(name, value string) {
		b = pgwire.AppendParameterStatus(b, name, value)
	})
	b = pgwire.AppendBackendKeyData(b, cl.pid, cl.secret[:])
	b = pgwire.AppendReadyForQuery(b, pgwire.TxIdle)
	cl.send(b)
	cl.state = csReady
	cl.loggedIn = true
	if cl.e.conf().cfg.LogConnections {
		app, _ := cl.params.Get("application_name")
		cl.e.log.Info("client logged in", "user", cl.user, "database", cl.database, "remote", cl.remote(),
			"port", cl.role.String(), "tls", cl.tlsDone, "application_name", app)
	} else {
		cl.e.log.Debug("client logged in", "user", cl.user, "database", cl.database, "role", cl.role.String())
	}
}

func (cl *client) scratchForClient() []byte {
	if cl.lp != nil {
		return cl.lp.scratch2[:0]
	}
	return nil
}

// ---- relay: client to server ----

// relayed counts n bytes the client sent, and notes when a request reached an idle server
// (the start of its query time, ended in server.handle).
func (cl *client) relayed(n int) {
	if n <= 0 || cl.pe == nil {
		return
	}
	cl.pe.counters(cl.lp).received.Add(uint64(n))
	if s := cl.srv; s != nil && s.queryStart.IsZero() && s.tr.Outstanding() > 0 {
		s.queryStart = clockOf(cl.lp)
	}
}

// relay forwards client messages to the attached server, acquiring one when a transaction
// starts (transaction mode).
func (cl *client) relay(buf []byte) (int, error) {
	var fakes []byte
	lim := cl.limits()
	pos := 0
	var em *emitter
	var s *server
	flush := func() error {
		if em != nil {
			sc, err := em.flush()
			cl.putScratch(sc)
			em = nil
			if err != nil && s != nil {
				s.lostDuringWrite(err)
			}
		}
		if len(fakes) > 0 {
			cl.send(fakes)
			fakes = fakes[:0]
		}
		return nil
	}
msgs:
	for pos < len(buf) && !cl.closed {
		if cl.remain > 0 {
			n := min(cl.remain, len(buf)-pos)
			if !cl.remainDrop && cl.srv != nil {
				// The rest of a message streamed in an earlier call: this call has no
				// emitter yet when the rest comes first.
				if s != cl.srv || em == nil {
					flush()
					s = cl.srv
					em = cl.newEmitter(s.out, buf)
				}
				em.pass(pos, pos+n)
			}
			pos += n
			cl.remain -= n
			continue
		}
		typ, blen, complete, err := lim.Scan(buf[pos:])
		if err != nil {
			flush()
			return pos, err
		}
		if blen < 0 {
			break
		}
		total := pgwire.HeaderLen + blen
		avail := min(total, len(buf)-pos)
		if traceOn {
			trace("C>", cl, typ, buf[pos:pos+avail])
		}
		if complete {
			if err := validateFrontend(typ, buf[pos+pgwire.HeaderLen:pos+total]); err != nil {
				flush()
				return pos, err
			}
		}

		if cl.skipToSync {
			if typ == pgwire.MsgSync {
				if !complete {
					break
				}
				cl.skipToSync = false
				fakes = pgwire.AppendReadyForQuery(fakes, cl.txStatus())
			}
			cl.dropMessage(total, avail)
			pos += avail
			continue
		}

		if cl.srv == nil {
			if cl.failure != nil {
				// Getting a server failed: answer the message that needed it with the error.
				var ce *clientError
				if !errors.As(cl.failure, &ce) {
					ce = sqlErr(pgwire.ConnectionFailure, cl.failure.Error(), "")
				}
				cl.failure = nil
				fakes = pgwire.AppendError(fakes, pgwire.MsgErrorResponse, pgwire.SeverityError, ce.code, ce.msg, ce.hint)
				if typ == pgwire.MsgQuery {
					cl.dropMessage(total, avail)
					pos += avail
					fakes = pgwire.AppendReadyForQuery(fakes, pgwire.TxIdle)
				} else {
					cl.skipToSync = true
				}
				continue
			}
			if !complete && typ != pgwire.MsgCopyData {
				if typ == pgwire.MsgQuery || typ == pgwire.MsgBind || typ == pgwire.MsgFunctionCall || typ == pgwire.MsgParse {
					// Large messages need a server before they can stream.
				} else {
					break
				}
			}
			switch typ {
			case pgwire.MsgTerminate:
				flush()
				cl.closeNow()
				return pos + avail, errClientGone
			case pgwire.MsgCopyData, pgwire.MsgCopyDone, pgwire.MsgCopyFail:
				// Late COPY messages after the server ended the COPY with an error.
				cl.dropMessage(total, avail)
				pos += avail
				continue
			case pgwire.MsgFlush:
				pos += total
				continue
			case pgwire.MsgSync:
				fakes = pgwire.AppendReadyForQuery(fakes, pgwire.TxIdle)
				pos += total
				continue
			}
			flush()
			if !cl.needServer() {
				return pos, nil
			}
			continue
		}
		streamable := typ == pgwire.MsgQuery || typ == pgwire.MsgCopyData || typ == pgwire.MsgFunctionCall ||
			typ == pgwire.MsgBind || (typ == pgwire.MsgParse && !cl.virtualStatements())
		if !complete && !streamable {
			break
		}
		if s != cl.srv {
			flush()
			s = cl.srv
			em = cl.newEmitter(s.out, buf)
		}
		tr := s.tr
		switch typ {
		case pgwire.MsgQuery:
			if complete && cl.txnMode() && blen < 4096 {
				handled, err := cl.inspectQuery(s, buf[pos+pgwire.HeaderLen:pos+total], em, &fakes)
				if err != nil {
					flush()
					return pos, err
				}
				if handled {
					pos += total
					continue
				}
			} else {
				tr.Sent(pool.Entry{Expect: pool.ExpectQuery})
			}
			pos += cl.passStreaming(em, pos, total, avail)
		case pgwire.MsgParse:
			if cl.virtualStatements() {
				if err := cl.parse(s, buf[pos+pgwire.HeaderLen:pos+total], em, buf[pos:pos+total]); err != nil {
					flush()
					return pos, err
				}
				pos += total
			} else {
				if complete {
					if p, err := pgwire.DecodeParse(buf[pos+pgwire.HeaderLen : pos+total]); err == nil {
						if cl.txnMode() {
							cl.noteParse(p.Name, p.Query)
						}
						if len(p.Name) == 0 {
							cl.keepUnnamed(s, buf[pos:pos+total])
						}
					}
				} else if avail == pgwire.HeaderLen || buf[pos+pgwire.HeaderLen] == 0 {
					cl.keepUnnamed(s, nil) // (perhaps) an unnamed Parse, too long to keep
				}
				tr.Sent(pool.Entry{Expect: pool.ExpectParse})
				pos += cl.passStreaming(em, pos, total, avail)
			}
		case pgwire.MsgBind:
			if cl.virtualStatements() {
				portal, stmt, rest, ok := pgwire.BindNames(buf[pos+pgwire.HeaderLen : pos+avail])
				if !ok {
					if avail == total {
						flush()
						return pos, sqlErr(pgwire.ProtocolViolation, "invalid Bind message", "")
					}
					if avail-pgwire.HeaderLen > 4096 {
						flush()
						return pos, sqlErr(pgwire.ProtocolViolation, "Bind message names are too long", "")
					}
					break msgs
				}
				if len(stmt) > 0 {
					st := cl.stmts[string(stmt)]
					if st == nil {
						cl.unknownStatement(s, stmt, em)
						cl.dropMessage(total, avail)
						pos += avail
						continue
					}
					cl.ensurePrepared(s, st, em)
					restLen := blen - rest
					b := em.buf()
					b = pgwire.AppendBindRenamed(b, portal, st.Name, restLen)
					em.setBuf(b)
					tr.Sent(pool.Entry{Expect: pool.ExpectBind, Stmt: st})
					s.pe.counters(s.lp).binds.Add(1)
					cl.noteBind(portal, stmt)
					// the rest of the Bind (formats and parameters) is streamed unchanged
					restStart := pos + pgwire.HeaderLen + rest
					em.pass(restStart, pos+avail)
					cl.remain, cl.remainDrop = total-avail, false
					pos += avail
					continue
				}
			}
			if cl.sessStmts != nil || cl.sessPortals != nil {
				if portal, stmt, _, ok := pgwire.BindNames(buf[pos+pgwire.HeaderLen : pos+avail]); ok {
					if cl.noteBind(portal, stmt) == qDeallocate {
						tr.Sent(pool.Entry{Expect: pool.ExpectBind, Action: pool.Fake, Reply: replyBindComplete})
						cl.drainFakes(tr, &fakes)
						cl.dropMessage(total, avail)
						pos += avail
						continue
					}
				}
			}
			if s.unnamedBy != cl {
				if _, stmt, _, ok := pgwire.BindNames(buf[pos+pgwire.HeaderLen : pos+avail]); ok && len(stmt) == 0 {
					cl.restoreUnnamed(s, em)
				}
			}
			tr.Sent(pool.Entry{Expect: pool.ExpectBind})
			pos += cl.passStreaming(em, pos, total, avail)
		case pgwire.MsgDescribe, pgwire.MsgClose:
			kind, name, err := pgwire.DecodeTarget(buf[pos+pgwire.HeaderLen : pos+total])
			if err != nil {
				flush()
				return pos, sqlErr(pgwire.ProtocolViolation, "invalid Describe or Close message", "")
			}
			exp := pool.ExpectDescribe
			if typ == pgwire.MsgClose {
				exp = pool.ExpectClose
			}
			if kind == 'S' && len(name) > 0 && cl.virtualStatements() {
				st := cl.stmts[string(name)]
				if typ == pgwire.MsgClose {
					// Absorbed: the statement stays on the server for other clients.
					delete(cl.stmts, string(name))
					delete(cl.sessStmts, string(name))
					tr.Sent(pool.Entry{Expect: pool.ExpectClose, Action: pool.Fake, Reply: replyCloseComplete})
					cl.drainFakes(tr, &fakes)
					pos += total
					continue
				}
				if st == nil {
					cl.unknownStatement(s, name, em)
					pos += total
					continue
				}
				cl.ensurePrepared(s, st, em)
				em.setBuf(pgwire.AppendTarget(em.buf(), pgwire.MsgDescribe, 'S', st.Name))
				tr.Sent(pool.Entry{Expect: exp, Stmt: st})
				pos += total
				continue
			}
			if typ == pgwire.MsgDescribe && kind == 'S' && len(name) == 0 && s.unnamedBy != cl {
				cl.restoreUnnamed(s, em)
			}
			if typ == pgwire.MsgClose && kind == 'S' {
				delete(cl.sessStmts, string(name))
				if len(name) == 0 {
					cl.unnamedParse = cl.unnamedParse[:0]
				}
			} else if typ == pgwire.MsgClose {
				delete(cl.sessPortals, string(name))
			} else if cl.sessStmts == nil && cl.sessPortals == nil {
				// the common case: nothing the proxy answers itself
			} else if reply, ok := cl.describesDeallocate(kind, name); ok {
				tr.Sent(pool.Entry{Expect: exp, Action: pool.Fake, Reply: reply})
				cl.drainFakes(tr, &fakes)
				pos += total
				continue
			}
			tr.Sent(pool.Entry{Expect: exp})
			em.pass(pos, pos+total)
			pos += total
		case pgwire.MsgExecute:
			e := pool.Entry{Expect: pool.ExpectExecute}
			if cl.sessPortals != nil {
				if portal, _, err := pgwire.DecodeExecute(buf[pos+pgwire.HeaderLen : pos+total]); err == nil {
					cl.noteExecute(s, portal, &e)
				}
			}
			tr.Sent(e)
			if e.Action != pool.Fake {
				em.pass(pos, pos+total)
			}
			pos += total
		case pgwire.MsgSync:
			tr.Sent(pool.Entry{Expect: pool.ExpectSync})
			em.pass(pos, pos+total)
			pos += total
		case pgwire.MsgFlush:
			em.pass(pos, pos+total)
			pos += total
		case pgwire.MsgFunctionCall:
			tr.Sent(pool.Entry{Expect: pool.ExpectFunction})
			pos += cl.passStreaming(em, pos, total, avail)
		case pgwire.MsgCopyData:
			pos += cl.passStreaming(em, pos, total, avail)
		case pgwire.MsgCopyDone, pgwire.MsgCopyFail:
			tr.ClientCopyEnd()
			em.pass(pos, pos+total)
			pos += total
		case pgwire.MsgTerminate:
			flush()
			cl.closeNow()
			return pos + avail, errClientGone
		default:
			flush()
			return pos, sqlErr(pgwire.ProtocolViolation, fmt.Sprintf("invalid frontend message type %q", typ), "")
		}
		cl.drainFakes(tr, &fakes)
	}
	flush()
	if s != nil {
		s.checkBackpressure()
	}
	return pos, nil
}

// passStreaming forwards a message that may be incomplete; the rest follows as it arrives. It
// returns the number of bytes consumed.
func (cl *client) passStreaming(em *emitter, pos, total, avail int) int {
	em.pass(pos, pos+avail)
	cl.remain, cl.remainDrop = total-avail, false
	return avail
}

// dropMessage discards a message that may be incomplete.
func (cl *client) dropMessage(total, avail int) {
	cl.remain, cl.remainDrop = total-avail, true
}

func (cl *client) txStatus() byte {
	if cl.srv != nil {
		return cl.srv.tr.TxStatus
	}
	return pgwire.TxIdle
}

func (cl *client) drainFakes(tr *pool.Tracker, fakes *[]byte) {
	for {
		e, ok := tr.NextFake()
		if !ok {
			return
		}
		*fakes = appendFake(*fakes, e, tr.TxStatus)
	}
}

// Replies for absorbed requests.
var (
	replyParseComplete = pgwire.AppendEmpty(nil, pgwire.MsgParseComplete)
	replyCloseComplete = pgwire.AppendEmpty(nil, pgwire.MsgCloseComplete)
	replyDeallocate    = pgwire.AppendCommandComplete(nil, "DEALLOCATE")
	replyBindComplete  = pgwire.AppendEmpty(nil, pgwire.MsgBindComplete)
	replyNoData        = pgwire.AppendEmpty(nil, pgwire.MsgNoData)
	// replyDescribeNoParams describes a statement without parameters or result columns.
	replyDescribeNoParams = append([]byte{pgwire.MsgParameterDescription, 0, 0, 0, 6, 0, 0}, replyNoData...)
)

// appendFake appends the answer to an absorbed request; a Query also gets its ReadyForQuery.
func appendFake(b []byte, e pool.Entry, status byte) []byte {
	b = append(b, e.Reply...)
	if e.Expect == pool.ExpectQuery {
		b = pgwire.AppendReadyForQuery(b, status)
	}
	return b
}

func (cl *client) newEmitter(dst io.Writer, src []byte) *emitter {
	if cl.lp != nil {
		cl.lp.em.reset(dst, src, cl.lp.scratch)
		return &cl.lp.em
	}
	em := &cl.stream.clientEm
	em.reset(dst, src, cl.stream.scratch)
	return em
}

func (cl *client) putScratch(b []byte) {
	if cl.lp != nil {
		cl.lp.scratch = b
	} else if cl.stream != nil {
		cl.stream.scratch = b
	}
}

func (cl *client) virtualStatements() bool {
	return cl.txnMode() && cl.e.cfg.Pool.MaxPreparedStatements > 0
}

// parse handles a Parse in transaction mode. Unnamed statements pass through; a named one is
// mapped to the shared statement for its text and sent only to servers that lack it.
func (cl *client) parse(s *server, body []byte, em *emitter, whole []byte) error {
	p, err := pgwire.DecodeParse(body)
	if err != nil {
		return sqlErr(pgwire.ProtocolViolation, "invalid Parse message", "")
	}
	tr := s.tr
	if len(p.Name) == 0 {
		if cl.noteParse(p.Name, p.Query) == qDeallocate {
			tr.Sent(pool.Entry{Expect: pool.ExpectParse, Action: pool.Fake, Reply: replyParseComplete})
			return nil
		}
		cl.keepUnnamed(s, whole)
		tr.Sent(pool.Entry{Expect: pool.ExpectParse})
		em.add(whole)
		return nil
	}
	if _, dup := cl.stmts[string(p.Name)]; dup {
		// PostgreSQL's answer, produced here because the server never sees the client's name.
		cl.failSequence(s, pgwire.DuplicatePreparedStatement, fmt.Sprintf("prepared statement %q already exists", p.Name), em)
		return nil
	}
	st := cl.e.registry.Get(p.Query, p.ParamTypes, p.NumParams)
	cl.stmts[string(p.Name)] = st
	cl.noteParse(p.Name, p.Query)
	cl.e.m.clientParses.Inc()
	s.pe.counters(s.lp).clientParses.Add(1)
	if s.stmts.Has(st) {
		tr.Sent(pool.Entry{Expect: pool.ExpectParse, Action: pool.Fake, Stmt: st, Reply: replyParseComplete})
		return nil
	}
	cl.prepareOn(s, st, em, pool.Forward)
	return nil
}

// maxUnnamedCopy bounds the copy of a client's unnamed Parse kept for restoreUnnamed (memory
// per client); a longer one cannot be restored and its late Bind fails with 26000 instead.
const maxUnnamedCopy = 4096

// keepUnnamed records that the client's unnamed Parse (whole; nil when it is being streamed)
// goes to s, and keeps a copy of it for restoreUnnamed.
func (cl *client) keepUnnamed(s *server, whole []byte) {
	if len(whole) <= maxUnnamedCopy {
		cl.unnamedParse = append(cl.unnamedParse[:0], whole...)
	} else {
		cl.unnamedParse = nil
	}
	s.unnamedBy = cl
}

// restoreUnnamed makes the client's unnamed statement the server's again before a Bind or
// Describe of it that comes without a Parse in this attachment: the server holds another
// client's, or none (a settings replay, a reset). It injects the client's last unnamed Parse
// (its ParseComplete is swallowed), or, without a copy, closes the server's unnamed statement
// so that the Bind fails as it would against PostgreSQL instead of running someone else's SQL.
func (cl *client) restoreUnnamed(s *server, em *emitter) {
	if len(cl.unnamedParse) > 0 {
		em.add(cl.unnamedParse)
		s.tr.Sent(pool.Entry{Expect: pool.ExpectParse, Action: pool.Swallow})
	} else {
		em.setBuf(pgwire.AppendTarget(em.buf(), pgwire.MsgClose, 'S', nil))
		s.tr.Sent(pool.Entry{Expect: pool.ExpectClose, Action: pool.Swallow})
	}
	s.unnamedBy = cl
}

// ensurePrepared injects a Parse when the server lacks st (its ParseComplete is swallowed).
func (cl *client) ensurePrepared(s *server, st *pool.Stmt, em *emitter) {
	if s.stmts.Has(st) {
		return
	}
	cl.prepareOn(s, st, em, pool.Swallow)
}

func (cl *client) prepareOn(s *server, st *pool.Stmt, em *emitter, act pool.Action) {
	if ev := s.stmts.Add(st); ev != nil {
		em.setBuf(pgwire.AppendTarget(em.buf(), pgwire.MsgClose, 'S', ev.Name))
		s.tr.Sent(pool.Entry{Expect: pool.ExpectClose, Action: pool.Swallow, Stmt: ev})
	}
	if s.mayHave(st) {
		// The server may still hold st (a Close of it was skipped after an error, or its plan
		// went stale): close it first, or the Parse would fail with "already exists".
		em.setBuf(pgwire.AppendTarget(em.buf(), pgwire.MsgClose, 'S', st.Name))
		s.tr.Sent(pool.Entry{Expect: pool.ExpectClose, Action: pool.Swallow, Stmt: st})
	}
	em.add(st.Parse)
	s.tr.Sent(pool.Entry{Expect: pool.ExpectParse, Action: act, Stmt: st})
	cl.e.m.serverParses.Inc()
	s.pe.counters(s.lp).serverParses.Add(1)
}

// unknownStatement answers a Bind or Describe naming a statement the client never prepared.
// The server produces PostgreSQL's own error (26000, with the client's name) from a Describe of
// that name, and then skips to the client's Sync exactly as it would without the proxy.
// Server-side names all start with "pgb_", so a client name cannot hit another client's
// statement; a client name that itself starts with "pgb_" is prefixed to keep it so.
func (cl *client) unknownStatement(s *server, name []byte, em *emitter) {
	if bytes.HasPrefix(name, []byte("pgb_")) {
		name = append([]byte("pgbastion_unknown_"), name...)
	}
	em.setBuf(pgwire.AppendTarget(em.buf(), pgwire.MsgDescribe, 'S', name))
	s.tr.Sent(pool.Entry{Expect: pool.ExpectDescribe})
}

// failSequence reports an error the proxy found in an extended-protocol sequence (a
// duplicate statement name). The error is queued in order behind the responses already owed,
// and the server is put into its error state with a Describe that cannot succeed, so that it
// too skips to the client's Sync and rolls back an implicit transaction, as PostgreSQL would.
func (cl *client) failSequence(s *server, code, msg string, em *emitter) {
	e := pgwire.AppendError(nil, pgwire.MsgErrorResponse, pgwire.SeverityError, code, msg, "")
	s.tr.Sent(pool.Entry{Expect: pool.ExpectDescribe, Action: pool.Fake, Reply: e})
	em.setBuf(pgwire.AppendTarget(em.buf(), pgwire.MsgDescribe, 'S', []byte("pgbastion_error_trigger")))
	s.tr.Sent(pool.Entry{Expect: pool.ExpectDescribe, Action: pool.Swallow})
}

// inspectQuery looks at a short simple Query in transaction mode for statements that change
// session state the pooler must know about. It returns true when the query was answered
// without the server.
func (cl *client) inspectQuery(s *server, body []byte, em *emitter, fakes *[]byte) (bool, error) {
	q := body
	if len(q) > 0 && q[len(q)-1] == 0 {
		q = q[:len(q)-1]
	}
	cmd := classifyQuery(q)
	switch cmd.kind {
	case qDeallocate:
		if st, ok := cl.stmts[cmd.name]; ok && st != nil {
			delete(cl.stmts, cmd.name)
			s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery, Action: pool.Fake, Reply: replyDeallocate})
			cl.drainFakes(s.tr, fakes)
			return true, nil
		}
	case qSet:
		s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery, Set: cmd.setting()})
		return false, nil
	case qSessionState:
		// PREPARE, LISTEN, SET we cannot follow: the server must be reset before reuse.
		s.dirty = true
	}
	s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery})
	return false, nil
}

// noteParse records whether executing the statement the client names (unnamed: "") changes
// session state, so that its Execute can be followed like a simple-query SET (extended
// protocol: pgjdbc sends every statement so, psycopg in pipeline mode too).
//
// An unnamed "DEALLOCATE name" of one of the client's virtual statements is recorded too
// (kind qDeallocate) and the caller answers its Parse, Bind, Describe and Execute itself: the
// server knows the statement by another name (psycopg sends its DEALLOCATEs so).
func (cl *client) noteParse(name, query []byte) queryKind {
	if mayChangeSession(query) {
		c := classifyQuery(query)
		if c.kind == qDeallocate && (len(name) > 0 || cl.stmts[c.name] == nil) {
			c.kind = qOther // PostgreSQL's to answer
		}
		if c.kind == qSet || c.kind == qSessionState || c.kind == qDeallocate {
			if cl.sessStmts == nil {
				cl.sessStmts = make(map[string]queryClass)
			}
			cl.sessStmts[string(name)] = c
			return c.kind
		}
	}
	if cl.sessStmts != nil {
		delete(cl.sessStmts, string(name))
		if len(cl.sessStmts) == 0 {
			cl.sessStmts = nil // back to the fast path for Bind and Execute
		}
	}
	return qOther
}

// noteBind follows a portal bound from a statement noteParse recorded, and returns what the
// statement does.
func (cl *client) noteBind(portal, stmt []byte) queryKind {
	if c, ok := cl.sessStmts[string(stmt)]; ok {
		if cl.sessPortals == nil {
			cl.sessPortals = make(map[string]queryClass)
		}
		cl.sessPortals[string(portal)] = c
		return c.kind
	} else if cl.sessPortals != nil {
		delete(cl.sessPortals, string(portal))
		if len(cl.sessPortals) == 0 {
			cl.sessPortals = nil
		}
	}
	return qOther
}

// describesDeallocate reports whether a Describe targets an absorbed DEALLOCATE (statement
// 'S' or portal 'P') and returns PostgreSQL's answer for it.
func (cl *client) describesDeallocate(kind byte, name []byte) ([]byte, bool) {
	if kind == 'S' {
		if c, ok := cl.sessStmts[string(name)]; ok && c.kind == qDeallocate {
			return replyDescribeNoParams, true
		}
	} else if c, ok := cl.sessPortals[string(name)]; ok && c.kind == qDeallocate {
		return replyNoData, true
	}
	return nil, false
}

// noteExecute applies what executing portal does to the session: a recognised SET or RESET
// rides on the Execute entry and is applied when the server is idle again; anything else the
// proxy cannot replay makes the server need a reset before reuse.
func (cl *client) noteExecute(s *server, portal []byte, e *pool.Entry) {
	c, ok := cl.sessPortals[string(portal)]
	switch {
	case !ok:
	case c.kind == qSet:
		e.Set = c.setting()
	case c.kind == qDeallocate:
		// Answered by the proxy; the statement is the client's alone to forget.
		e.Action, e.Reply = pool.Fake, replyDeallocate
		delete(cl.stmts, c.name)
		delete(cl.sessStmts, c.name)
	default:
		s.dirty = true
	}
}

// ---- attaching servers ----

// route returns the pool this client uses now.
func (cl *client) route() (*poolEntry, error) {
	rt := cl.e.routing.Load()
	if cl.pe != nil && cl.peGen == rt.gen && cl.pe.epoch == cl.pe.b.currentEpoch() {
		return cl.pe, nil
	}
	b := rt.pickBackend(cl.role)
	if b == nil {
		if cl.role == RoleRW {
			return nil, errNoPrimary
		}
		return nil, errNoBackend
	}
	cl.pe, cl.peGen = b.pool(cl.e, poolKey{database: cl.database, user: cl.serverUser}), rt.gen
	if cl.countedIn != cl.pe && !cl.closed {
		if cl.countedIn != nil {
			cl.countedIn.clients.Add(-1)
		}
		cl.pe.clients.Add(1)
		cl.countedIn = cl.pe
	}
	return cl.pe, nil
}

var (
	errNoPrimary = sqlErr(pgwire.CannotConnectNow, "no primary is available to serve read-write connections",
		"the proxy routes port "+"rw"+" to the current primary; check the cluster state (GET /nodes) or connect to the read-only port")
	errNoBackend = sqlErr(pgwire.CannotConnectNow, "no PostgreSQL server is available", "check that the backends are running")
)

// needServer asks for a server. In loop mode it returns false and the client is resumed when
// one is attached; on the stream path it blocks until attached or failed and returns true.
func (cl *client) needServer() bool {
	if cl.waiting || cl.dialing {
		return false
	}
	// A client asked again (re-routed after a routing change or a pause, or after its idle
	// server failed its check) keeps the start of its wait: query_wait_timeout counts from
	// when it first asked.
	now := clockOf(cl.lp)
	if cl.waitSince.IsZero() {
		cl.waitSince = now
	}
	if (cl.role == RoleRW && cl.e.pausedRW.Load()) || cl.e.pausedAll.Load() || cl.e.dbPaused(cl.database) {
		cl.waiting = true
		cl.e.holdClient(cl)
		return cl.streamWait()
	}
	pe, err := cl.route()
	if err != nil {
		if cl.role == RoleRW && cl.e.routing.Load().holdWrites {
			cl.waiting = true
			cl.e.holdClient(cl)
			return cl.streamWait()
		}
		cl.acquireFailed(err)
		return cl.stream != nil
	}
	loopIdx := -1
	if cl.lp != nil {
		loopIdx = cl.lp.idx
	}
	kind, s, from := pe.p.Acquire(loopIdx, cl, cl.waitSince)
	switch kind {
	case pool.GrantIdle:
		if d := cl.e.conf().cfg.Pool.ServerCheckDelay; d > 0 && now.Sub(s.lastUsed) > d && s.conn != nil {
			// Idle for long: make sure the server still answers before handing it over
			// (PgBouncer's server_check_query, with the empty query).
			cl.waiting = true
			s.check(cl)
			return cl.streamWait()
		}
		cl.attach(s)
		return true
	case pool.GrantSteal:
		cl.waiting = true
		s.migrateTo(cl, from, loopIdx)
		return cl.streamWait()
	case pool.GrantDial:
		cl.dialing = true
		cl.e.dial(pe, cl, loopIdx)
		return cl.streamWait()
	case pool.GrantWait:
		cl.waiting = true
		cl.e.m.clientWaits.Inc()
		return cl.streamWait()
	default:
		// The pool was retired between route and Acquire: route again.
		cl.pe = nil
		return cl.needServer()
	}
}

// streamWait blocks a stream-path client until it is attached or failed; loop-mode clients
// return false at once and are resumed by attach.
func (cl *client) streamWait() bool {
	if cl.stream == nil {
		return false
	}
	cl.stream.waitAttach(cl)
	return true
}

// attach links s to the client and replays the client's session settings on it. It runs on
// the goroutine that owns both, and does not process buffered client input.
func (cl *client) attach(s *server) {
	cl.waiting, cl.dialing = false, false
	if cl.lp != nil && s.conn != nil && cl.lp != s.lp {
		panic(fmt.Sprintf("engine: attaching a server on loop %d to a client on loop %d", s.lp.idx, cl.lp.idx))
	}
	cl.srv, s.client = s, cl
	s.unnamedBy = nil // whatever unnamed statement the server holds is not this client's (yet)
	s.out = s.writer()
	s.b.active.Add(1)
	now := s.clock()
	s.lastUsed, s.attachedAt, s.queryStart = now, now, time.Time{}
	if s.pe != nil {
		c := s.pe.counters(s.lp)
		c.assignments.Add(1)
		if !cl.waitSince.IsZero() {
			c.waitNanos.Add(uint64(max(0, now.Sub(cl.waitSince))))
		}
	}
	cl.waitSince = time.Time{}
	cl.e.cancels.setTarget(cl, s)
	if cl.params == nil {
		// First server of this client: its login parameters are the client's starting point
		// (not its current ones, which may hold the settings of the client it served last).
		cl.params = pool.NewParams()
		cl.params.CopyFrom(s.login)
		cl.applyStartupParams()
	}
	if sql := pool.SyncSQL(cl.params, s.params); sql != "" {
		_, _ = s.out.Write(pgwire.AppendQuery(nil, sql))
		s.tr.Sent(pool.Entry{Expect: pool.ExpectQuery, Action: pool.Swallow})
		cl.e.m.settingSyncs.Inc()
	}
	if cl.state == csLogin && s.tr.Idle() {
		// Nothing to replay: the login completes now. (Otherwise it completes when the
		// replayed settings have been applied; see afterReadyForQuery.)
		cl.finishLogin()
		if cl.txnMode() {
			cl.detach(s)
		}
	}
}

// attachAndResume attaches s to a client that was waiting asynchronously and processes the
// input the client sent meanwhile. (When attach happens inside the client's own handler, the
// handler carries on by itself; resuming there would process the same bytes twice.)
func (cl *client) attachAndResume(s *server) {
	cl.attach(s)
	cl.process()
}

func (cl *client) hasPendingInput() bool {
	if cl.conn != nil {
		return cl.loopBuffered() > 0
	}
	return cl.stream != nil && cl.stream.pending()
}

// loopBuffered, loopPeek and loopDiscard reach the unhandled input of a client on an event
// loop: gnet's inbound buffer, or a TLS client's decrypted input.
func (cl *client) loopBuffered() int {
	if x := cl.tin; x != nil {
		return x.hi - x.lo
	}
	return cl.conn.InboundBuffered()
}

// loopPeek returns the first n unhandled bytes, or fewer when fewer are buffered.
func (cl *client) loopPeek(n int) []byte {
	if x := cl.tin; x != nil {
		return x.pending()[:min(n, x.hi-x.lo)]
	}
	b, _ := cl.conn.Peek(n)
	return b
}

func (cl *client) loopDiscard(n int) {
	if x := cl.tin; x != nil {
		x.lo += n
		return
	}
	_, _ = cl.conn.Discard(n)
}

// detach returns the server to the pool (transaction mode, at the end of a transaction).
func (cl *client) detach(s *server) {
	cl.srv, s.client = nil, nil
	s.b.active.Add(-1)
	cl.e.cancels.setTarget(cl, nil)
	s.release()
}

// acquireFailed reports a failure to get a server.
func (cl *client) acquireFailed(err error) {
	cl.waiting, cl.dialing, cl.waitSince = false, false, time.Time{}
	if cl.state != csReady {
		cl.fail(err)
		return
	}
	var ce *clientError
	if !errors.As(err, &ce) {
		ce = sqlErr(pgwire.ConnectionFailure, err.Error(), "")
	}
	b := pgwire.AppendError(nil, pgwire.MsgErrorResponse, pgwire.SeverityError, ce.code, ce.msg, ce.hint)
	// The message that needed a server is dropped with the rest of its sequence; a simple
	// Query is answered with ReadyForQuery right away, an extended sequence at its Sync.
	if cl.nextIsSimpleQuery() {
		cl.dropNextMessage()
		b = pgwire.AppendReadyForQuery(b, pgwire.TxIdle)
	} else {
		cl.skipToSync = true
	}
	cl.send(b)
	cl.process()
}

// rerouteAsync makes a waiting client try again (routing changed, or a pause ended).
func (cl *client) rerouteAsync() {
	run := func() {
		if cl.closed || !cl.waiting {
			return
		}
		cl.waiting = false
		cl.pe = nil
		if cl.needServer() && cl.stream != nil {
			return
		}
	}
	if cl.lp != nil {
		cl.lp.exec(run)
	} else if cl.stream != nil {
		cl.stream.reroute()
	}
}

// onClose cleans up after the client connection closed.
func (cl *client) onClose(c gnet.Conn, err error) {
	if cl.lp != nil {
		delete(cl.lp.clients, cl)
	}
	if cl.stream != nil && cl.conn == nil {
		return // moved to the stream path; the stream owns the cleanup
	}
	cl.cleanup()
}

// cleanup releases everything the client held.
func (cl *client) cleanup() {
	if cl.state == csClosed {
		return
	}
	cl.closed = true
	cl.state = csClosed
	cl.e.clients.Add(-1)
	if cl.loggedIn && cl.e.conf().cfg.LogDisconnections {
		cl.e.log.Info("client disconnected", "user", cl.user, "database", cl.database, "remote", cl.remote(),
			"connected_for", time.Since(cl.acceptedAt).Round(time.Millisecond))
	}
	if cl.stream != nil {
		cl.e.streamMu.Lock()
		delete(cl.e.streamClients, cl)
		cl.e.streamMu.Unlock()
	}
	if cl.countedIn != nil {
		cl.countedIn.clients.Add(-1)
		cl.countedIn = nil
	}
	cl.e.cancels.remove(cl)
	if cl.pe != nil && cl.waiting {
		cl.pe.p.CancelWait(cl)
	}
	cl.e.unholdClient(cl)
	if s := cl.srv; s != nil {
		cl.srv, s.client = nil, nil
		s.b.active.Add(-1)
		s.abandoned()
	}
}

// nextIsSimpleQuery reports whether the first unprocessed client message is a Query.
func (cl *client) nextIsSimpleQuery() bool {
	if cl.conn != nil {
		b := cl.loopPeek(1)
		return len(b) == 1 && b[0] == pgwire.MsgQuery
	}
	return cl.stream != nil && cl.stream.peekType() == pgwire.MsgQuery
}

func (cl *client) dropNextMessage() {
	var hdr []byte
	if cl.conn != nil {
		hdr = cl.loopPeek(pgwire.HeaderLen)
	} else if cl.stream != nil {
		hdr = cl.stream.peek(pgwire.HeaderLen)
	}
	if len(hdr) < pgwire.HeaderLen {
		return
	}
	total := int(binary.BigEndian.Uint32(hdr[1:])) + 1
	if cl.conn != nil {
		avail := min(total, cl.loopBuffered())
		cl.loopDiscard(avail)
		cl.dropMessage(total, avail)
	} else {
		avail := cl.stream.discard(total)
		cl.dropMessage(total, avail)
	}
}

// waitingFor reports whether the client still waits for a server.
func (cl *client) waitingFor() bool {
	return !cl.closed && (cl.waiting || cl.dialing) && cl.srv == nil
}

// serverLost handles the death of the attached server: the client's transaction is gone, so
// the client is told why and disconnected (as PostgreSQL itself would do).
func (cl *client) serverLost(err error) {
	msg := "server connection lost"
	if err != nil && !errors.Is(err, io.EOF) {
		msg += ": " + err.Error()
	}
	cl.fail(sqlErr(pgwire.ConnectionFailure, msg, "the PostgreSQL server closed the connection or is being failed over; reconnect"))
}

// validateFrontend checks the structure of a complete client message before it reaches a
// pooled server, so a malformed message costs the client its connection instead of costing the
// pool a server (PostgreSQL answers malformed messages with FATAL).
func validateFrontend(typ byte, body []byte) error {
	var ok bool
	switch typ {
	case pgwire.MsgQuery, pgwire.MsgCopyFail:
		ok = len(body) > 0 && body[len(body)-1] == 0 && pgwire.IsCString(body[:len(body)-1])
	case pgwire.MsgExecute:
		_, _, err := pgwire.DecodeExecute(body)
		ok = err == nil
	case pgwire.MsgDescribe, pgwire.MsgClose:
		_, _, err := pgwire.DecodeTarget(body)
		ok = err == nil
	case pgwire.MsgBind:
		ok = pgwire.ValidateBind(body) == nil
	case pgwire.MsgParse:
		_, err := pgwire.DecodeParse(body)
		ok = err == nil
	case pgwire.MsgFunctionCall:
		ok = len(body) >= 4+2+2+2
	default:
		return nil
	}
	if !ok {
		return sqlErr(pgwire.ProtocolViolation, fmt.Sprintf("invalid %q message", typ), "")
	}
	return nil
}

// loopIndex is the client's event loop index, or -1 on the stream path.
func (cl *client) loopIndex() int {
	if cl.lp != nil && cl.conn != nil {
		return cl.lp.idx
	}
	return -1
}
