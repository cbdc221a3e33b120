package auth

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgbastion/pgbastion/pgwire"
)

// Param is one startup parameter or ParameterStatus.
type Param struct {
	Name, Value string
}

// Session is what a server reported while a Login completed.
type Session struct {
	// Params are the ParameterStatus messages in the order received.
	Params []Param
	// PID and SecretKey are the BackendKeyData (SecretKey nil if the server sent none).
	PID       uint32
	SecretKey []byte
	// TxStatus is the status byte of the final ReadyForQuery (normally pgwire.TxIdle).
	TxStatus byte
	// Method names the authentication the server asked for: "trust" (none), "password",
	// "md5" or "scram-sha-256".
	Method string
}

// Param returns the value of the last ParameterStatus with that name.
func (s *Session) Param(name string) (string, bool) {
	for i := len(s.Params) - 1; i >= 0; i-- {
		if s.Params[i].Name == name {
			return s.Params[i].Value, true
		}
	}
	return "", false
}

// ServerError is an ErrorResponse the server sent during login (wrong password 28P01, unknown
// database 3D000, too many connections 53300, ...). Raw is the complete message, header
// included, for forwarding to a client unchanged.
type ServerError struct {
	Severity string
	Code     string // may be empty: servers are not obliged to send a SQLSTATE
	Message  string
	Detail   string
	Hint     string
	Raw      []byte
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("server: %s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code)
}

// SQLState returns Code.
func (e *ServerError) SQLState() string { return e.Code }

// Errors of Login other than *ServerError and I/O errors.
var (
	// ErrProtocol: the server sent something a PostgreSQL server may not send at that point.
	ErrProtocol = errors.New("auth: server violated the protocol during login")
	// ErrUnsupported: the server asked for an authentication method or mechanism that these
	// credentials cannot answer.
	ErrUnsupported = errors.New("auth: unsupported authentication request")
	// ErrServerSignature: the server could not prove it knows the SCRAM secret.
	ErrServerSignature = errors.New("auth: SCRAM server signature invalid")
)

// Limits of what a server may send during login.
const (
	maxLoginMessage   = 1 << 20
	maxSCRAMIterCount = 10_000_000 // PBKDF2 cost a server may impose (seconds of CPU)
)

// Credentials are what the proxy logs in to PostgreSQL with. They cache the SCRAM key
// derivation (per salt and iteration count), so reuse one value for all connections of a user.
// Safe for concurrent use. Formatting shows the user only.
type Credentials struct {
	user     string
	password string
	hasPlain bool
	md5hex   string
	keys     *scramKeys // SCRAM pass-through: a secret and the ClientKey a client proved

	once   sync.Once
	client *scram.Client
	err    error
}

// NewCredentials returns credentials with a plaintext password (empty for trust).
func NewCredentials(user, password string) *Credentials {
	return &Credentials{user: user, password: password, hasPlain: true,
		md5hex: md5Hex(password + user)}
}

// CredentialsFromSecret returns credentials from a stored secret: a plaintext one answers every
// method; an md5 secret answers md5 only (as with PgBouncer); a SCRAM secret cannot log in.
func CredentialsFromSecret(user string, s *Secret) (*Credentials, error) {
	switch s.kind {
	case SecretPlain:
		return NewCredentials(user, s.plain), nil
	case SecretMD5:
		return &Credentials{user: user, md5hex: s.md5hex}, nil
	case SecretEmpty:
		return NewCredentials(user, ""), nil
	}
	return nil, fmt.Errorf("%w: a %v secret cannot be used to log in to a server", ErrUnsupported, s.kind)
}

// User returns the user name.
func (c *Credentials) User() string { return c.user }

// known names what the credentials hold, for errors.
func (c *Credentials) known() string {
	switch {
	case c.keys != nil:
		return "a SCRAM secret and its client key"
	case c.hasPlain:
		return "a plaintext password"
	}
	return "an md5 secret"
}

// Format prints the user only, for every verb.
func (c *Credentials) Format(f fmt.State, _ rune) {
	if c == nil {
		fmt.Fprint(f, "auth.Credentials(nil)")
		return
	}
	fmt.Fprintf(f, "auth.Credentials(user=%q)", c.user)
}

func (c *Credentials) scramClient() (*scram.Client, error) {
	c.once.Do(func() {
		// libpq sends an empty SCRAM user name and falls back to the raw password when
		// SASLprep rejects it; it accepts any iteration count the server chooses.
		cl, err := scram.SHA256.NewClient("", c.password, "")
		if err != nil {
			cl, err = scram.SHA256.NewClientUnprepped("", c.password, "")
		}
		if err != nil {
			c.err = fmt.Errorf("%w: password cannot be used for SCRAM", ErrUnsupported)
			return
		}
		c.client = cl.WithMinIterations(1)
	})
	return c.client, c.err
}

// Login logs in to a PostgreSQL server on conn with a plaintext password; see
// Credentials.Login.
func Login(ctx context.Context, conn net.Conn, params []Param, user, password string) (*Session, error) {
	return NewCredentials(user, password).Login(ctx, conn, params)
}

// Login sends a protocol 3.0 StartupMessage (user first, then params in order), answers the
// server's authentication requests (trust, cleartext password, md5, SCRAM-SHA-256 without
// channel binding), and reads every ParameterStatus and the BackendKeyData up to the first
// ReadyForQuery, leaving nothing of the server's unread. It uses blocking I/O: run it off the
// event loop. ctx's deadline becomes conn's deadline and cancelling ctx unblocks it; the
// deadline is cleared on success. An ErrorResponse from the server is returned as *ServerError.
// On any error the caller closes conn.
func (c *Credentials) Login(ctx context.Context, conn net.Conn, params []Param) (*Session, error) {
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, err
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	sess, err := c.login(conn, params)
	if !stop() || err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("auth: login: %w", context.Cause(ctx))
	}
	if err != nil {
		// conn's deadline can fire a moment before ctx's own timer does.
		var ne net.Error
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) && errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("auth: login: %w", context.DeadlineExceeded)
		}
		return nil, err
	}
	return sess, conn.SetDeadline(time.Time{})
}

func (c *Credentials) login(conn net.Conn, params []Param) (*Session, error) {
	pairs := []string{"user", c.user}
	for _, p := range params {
		if p.Name == "" || p.Name == "user" || strings.HasPrefix(p.Name, "_pq_.") ||
			!pgwire.IsCString([]byte(p.Name)) || !pgwire.IsCString([]byte(p.Value)) {
			return nil, fmt.Errorf("auth: invalid startup parameter %q", p.Name)
		}
		pairs = append(pairs, p.Name, p.Value)
	}
	if !pgwire.IsCString([]byte(c.user)) || c.user == "" {
		return nil, errors.New("auth: invalid user name")
	}
	out := pgwire.AppendStartupMessage(nil, pairs...)
	if len(out) > pgwire.MaxStartupPacketLen {
		return nil, errors.New("auth: startup packet too long")
	}
	if _, err := conn.Write(out); err != nil {
		return nil, err
	}
	l := &loginState{c: c, conn: conn, limits: loginLimits(), sess: &Session{Method: "trust"}}
	return l.run()
}

// loginLimits admits only the message types a server may send before its first
// ReadyForQuery, each with a small bound: nothing a hostile server sends can make Login
// allocate more than maxLoginMessage.
func loginLimits() *pgwire.Limits {
	l := &pgwire.Limits{}
	for _, t := range []byte{pgwire.MsgAuthentication, pgwire.MsgErrorResponse, pgwire.MsgNoticeResponse,
		pgwire.MsgParameterStatus, pgwire.MsgNegotiateProtocol} {
		l.Set(t, maxLoginMessage)
	}
	l.Set(pgwire.MsgBackendKeyData, 4+256)
	l.Set(pgwire.MsgReadyForQuery, 1)
	return l
}

// loginState is the client side of the startup exchange.
type loginState struct {
	c      *Credentials
	conn   net.Conn
	limits *pgwire.Limits
	sess   *Session
	buf    []byte
	out    []byte
	authed bool
	conv   scramConversation
	scram  bool // a SCRAM exchange started: AuthenticationOk is only valid after its final
}

func (l *loginState) run() (*Session, error) {
	for {
		typ, body, err := l.read()
		if err != nil {
			return nil, err
		}
		switch typ {
		case pgwire.MsgErrorResponse:
			return nil, serverError(typ, body)
		case pgwire.MsgNoticeResponse:
			continue
		case pgwire.MsgNegotiateProtocol:
			if err := checkNegotiate(body); err != nil {
				return nil, err
			}
			continue
		}
		if !l.authed {
			if typ != pgwire.MsgAuthentication {
				return nil, fmt.Errorf("%w: message %q before authentication completed", ErrProtocol, typ)
			}
			if err := l.authRequest(body); err != nil {
				return nil, err
			}
			continue
		}
		switch typ {
		case pgwire.MsgParameterStatus:
			name, value, err := pgwire.DecodeParameterStatus(body)
			if err != nil {
				return nil, fmt.Errorf("%w: malformed ParameterStatus", ErrProtocol)
			}
			l.sess.Params = append(l.sess.Params, Param{Name: string(name), Value: string(value)})
		case pgwire.MsgBackendKeyData:
			pid, key, err := pgwire.DecodeBackendKeyData(body)
			if err != nil {
				return nil, fmt.Errorf("%w: malformed BackendKeyData", ErrProtocol)
			}
			l.sess.PID, l.sess.SecretKey = pid, bytes.Clone(key)
		case pgwire.MsgReadyForQuery:
			st, err := pgwire.DecodeReadyForQuery(body)
			if err != nil {
				return nil, fmt.Errorf("%w: malformed ReadyForQuery", ErrProtocol)
			}
			l.sess.TxStatus = st
			return l.sess, nil
		default:
			return nil, fmt.Errorf("%w: unexpected message %q during startup", ErrProtocol, typ)
		}
	}
}

// read reads exactly one message; its body aliases l.buf until the next read.
func (l *loginState) read() (byte, []byte, error) {
	var hdr [pgwire.HeaderLen]byte
	if _, err := io.ReadFull(l.conn, hdr[:]); err != nil {
		return 0, nil, err
	}
	typ, n, err := l.limits.CheckHeader(hdr[:])
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	if cap(l.buf) < n {
		l.buf = make([]byte, n)
	}
	l.buf = l.buf[:n]
	if _, err := io.ReadFull(l.conn, l.buf); err != nil {
		return 0, nil, err
	}
	return typ, l.buf, nil
}

func (l *loginState) send(msg interface{ Encode([]byte) ([]byte, error) }) error {
	out, err := msg.Encode(l.out[:0])
	if err != nil {
		return err
	}
	l.out = out
	_, err = l.conn.Write(out)
	return err
}

func (l *loginState) authRequest(body []byte) error {
	if len(body) < 4 {
		return fmt.Errorf("%w: short authentication request", ErrProtocol)
	}
	code := binary.BigEndian.Uint32(body)
	payload := body[4:]
	switch code {
	case pgwire.AuthOK:
		if len(payload) != 0 {
			return fmt.Errorf("%w: malformed AuthenticationOk", ErrProtocol)
		}
		if l.scram && (l.conv == nil || !l.conv.Valid()) {
			return fmt.Errorf("%w: AuthenticationOk before the SCRAM exchange completed", ErrServerSignature)
		}
		l.authed = true
		return nil
	case pgwire.AuthCleartextPassword:
		if len(payload) != 0 {
			return fmt.Errorf("%w: malformed AuthenticationCleartextPassword", ErrProtocol)
		}
		if !l.c.hasPlain {
			return fmt.Errorf("%w: server asks for a cleartext password and only %s is known", ErrUnsupported, l.c.known())
		}
		l.sess.Method = "password"
		return l.send(&pgproto3.PasswordMessage{Password: l.c.password})
	case pgwire.AuthMD5Password:
		if len(payload) != 4 {
			return fmt.Errorf("%w: malformed AuthenticationMD5Password", ErrProtocol)
		}
		if l.c.keys != nil {
			return fmt.Errorf("%w: server asks for md5 and only %s is known", ErrUnsupported, l.c.known())
		}
		l.sess.Method = "md5"
		return l.send(&pgproto3.PasswordMessage{Password: "md5" + md5Hex(l.c.md5hex+string(payload))})
	case pgwire.AuthSASL:
		mechs, err := decodeMechanisms(payload)
		if err != nil {
			return err
		}
		if l.scram {
			return fmt.Errorf("%w: second AuthenticationSASL", ErrProtocol)
		}
		found := false
		for _, m := range mechs {
			found = found || m == MechanismSCRAM
		}
		if !found {
			return fmt.Errorf("%w: server offers SASL mechanisms %q, need %s", ErrUnsupported, mechs, MechanismSCRAM)
		}
		switch {
		case l.c.keys != nil:
			conv, err := newKeyConversation(l.c.keys)
			if err != nil {
				return err
			}
			l.conv = conv
		case !l.c.hasPlain:
			return fmt.Errorf("%w: server asks for SCRAM and only %s is known", ErrUnsupported, l.c.known())
		default:
			client, err := l.c.scramClient()
			if err != nil {
				return err
			}
			l.conv = client.NewConversation()
		}
		l.sess.Method = "scram-sha-256"
		l.scram = true
		first, err := l.conv.Step("")
		if err != nil {
			return err
		}
		return l.send(&pgproto3.SASLInitialResponse{AuthMechanism: MechanismSCRAM, Data: []byte(first)})
	case pgwire.AuthSASLContinue:
		if l.conv == nil || l.conv.Done() {
			return fmt.Errorf("%w: unexpected AuthenticationSASLContinue", ErrProtocol)
		}
		if n, ok := scramIterations(payload); !ok || n > maxSCRAMIterCount {
			return fmt.Errorf("%w: bad or excessive SCRAM iteration count in server-first-message", ErrProtocol)
		}
		final, err := l.conv.Step(string(payload))
		if errors.Is(err, ErrSCRAMKeyStale) {
			return err
		}
		if err != nil {
			return fmt.Errorf("%w: SCRAM: %v", ErrProtocol, err)
		}
		return l.send(&pgproto3.SASLResponse{Data: []byte(final)})
	case pgwire.AuthSASLFinal:
		if l.conv == nil || l.conv.Done() {
			return fmt.Errorf("%w: unexpected AuthenticationSASLFinal", ErrProtocol)
		}
		if _, err := l.conv.Step(string(payload)); err != nil || !l.conv.Valid() {
			return ErrServerSignature
		}
		return nil
	}
	return fmt.Errorf("%w: authentication request code %d", ErrUnsupported, code)
}

// decodeMechanisms decodes the body of AuthenticationSASL after its code: NUL-terminated names
// ending with an empty one.
func decodeMechanisms(b []byte) ([]string, error) {
	var mechs []string
	for {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return nil, fmt.Errorf("%w: malformed AuthenticationSASL", ErrProtocol)
		}
		if i == 0 {
			if len(b) != 1 {
				return nil, fmt.Errorf("%w: malformed AuthenticationSASL", ErrProtocol)
			}
			return mechs, nil
		}
		mechs = append(mechs, string(b[:i]))
		b = b[i+1:]
	}
}

// scramIterations finds the i= attribute of a server-first-message.
func scramIterations(msg []byte) (int, bool) {
	for _, attr := range strings.Split(string(msg), ",") {
		if v, ok := strings.CutPrefix(attr, "i="); ok {
			n, err := strconv.Atoi(v)
			return n, err == nil && n > 0
		}
	}
	return 0, false
}

// checkNegotiate accepts a NegotiateProtocolVersion that keeps protocol 3.0. We send no
// protocol options, so the only thing a server can tell us is its newest minor version.
func checkNegotiate(body []byte) error {
	if len(body) < 8 {
		return fmt.Errorf("%w: malformed NegotiateProtocolVersion", ErrProtocol)
	}
	if v := binary.BigEndian.Uint32(body); v>>16 != 3 {
		return fmt.Errorf("%w: server negotiates protocol %d.%d", ErrUnsupported, v>>16, v&0xffff)
	}
	return nil
}

func serverError(typ byte, body []byte) error {
	f, err := pgwire.DecodeErrorFields(body)
	if err != nil {
		return fmt.Errorf("%w: malformed ErrorResponse", ErrProtocol)
	}
	raw := make([]byte, pgwire.HeaderLen+len(body))
	pgwire.PutHeader(raw, typ, len(body))
	copy(raw[pgwire.HeaderLen:], body)
	return &ServerError{Severity: string(f.Severity), Code: string(f.Code), Message: string(f.Message),
		Detail: string(f.Detail), Hint: string(f.Hint), Raw: raw}
}
