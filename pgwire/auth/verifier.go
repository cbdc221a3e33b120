package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"github.com/xdg-go/scram"

	"github.com/pgbastion/pgbastion/pgwire"
)

// Method is an authentication method the proxy asks of its clients.
type Method uint8

// Methods.
const (
	MethodTrust Method = iota + 1
	MethodMD5
	MethodSCRAM
)

// MechanismSCRAM is the only SASL mechanism offered and accepted.
const MechanismSCRAM = "SCRAM-SHA-256"

// ParseMethod parses a method name as written in configuration: trust, md5, scram-sha-256.
func ParseMethod(s string) (Method, error) {
	switch s {
	case "trust":
		return MethodTrust, nil
	case "md5":
		return MethodMD5, nil
	case "scram-sha-256":
		return MethodSCRAM, nil
	}
	return 0, fmt.Errorf("auth: unknown method %q (want trust, md5 or scram-sha-256)", s)
}

func (m Method) String() string {
	switch m {
	case MethodTrust:
		return "trust"
	case MethodMD5:
		return "md5"
	case MethodSCRAM:
		return "scram-sha-256"
	}
	return fmt.Sprintf("Method(%d)", uint8(m))
}

// Secrets finds the stored secret of a user. Implementations must be safe for concurrent use
// and must not block: event loops call Lookup. *Userlist implements it.
type Secrets interface {
	Lookup(user string) (*Secret, bool)
}

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	Method Method
	// Secrets holds the users. It may be nil only with MethodTrust, which then admits any user
	// name (otherwise trust admits only users Secrets knows), or with LookupByCaller.
	Secrets Secrets
	// LookupByCaller: the caller finds users that Secrets does not know itself (an
	// auth_query) and passes their secrets to Exchange.BeginWith.
	LookupByCaller bool
	// HideUnknownUsers makes an unknown user (and a user whose secret cannot serve the method)
	// go through a complete mock exchange that fails exactly like a wrong password (28P01), as
	// PostgreSQL and PgBouncer do, so that clients cannot probe which users exist. When false an
	// unknown user is refused at once with 28000 `role "x" does not exist`.
	HideUnknownUsers bool
}

// Verifier checks the credentials of connecting clients. It is immutable and shared by all
// event loops; each connection drives its own Exchange.
type Verifier struct {
	method  Method
	secrets Secrets
	hide    bool
	mockKey [32]byte // keys the mock SCRAM salts: stable per user, unpredictable
}

// NewVerifier validates cfg and returns a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	switch cfg.Method {
	case MethodTrust, MethodMD5, MethodSCRAM:
	default:
		return nil, fmt.Errorf("auth: unsupported method %v", cfg.Method)
	}
	if cfg.Secrets == nil && cfg.Method != MethodTrust && !cfg.LookupByCaller {
		return nil, fmt.Errorf("auth: method %v needs secrets", cfg.Method)
	}
	v := &Verifier{method: cfg.Method, secrets: cfg.Secrets, hide: cfg.HideUnknownUsers}
	if _, err := rand.Read(v.mockKey[:]); err != nil {
		return nil, err
	}
	return v, nil
}

// Method returns the configured method.
func (v *Verifier) Method() Method { return v.method }

// Error is an authentication failure to report to the client: an ErrorResponse with severity
// FATAL, SQLSTATE Code and Message, after which the connection is closed. Message is what
// PostgreSQL would say; the internal reason, for logs, is available through Unwrap. Neither
// contains a password, a secret or a client proof.
type Error struct {
	Code    string
	Message string
	reason  error
}

func (e *Error) Error() string {
	if e.reason != nil {
		return e.Message + ": " + e.reason.Error()
	}
	return e.Message
}

// Unwrap returns the internal reason.
func (e *Error) Unwrap() error { return e.reason }

// SQLState returns Code.
func (e *Error) SQLState() string { return e.Code }

// AppendErrorResponse appends the FATAL ErrorResponse to send to the client.
func (e *Error) AppendErrorResponse(dst []byte) []byte {
	return pgwire.AppendError(dst, pgwire.MsgErrorResponse, pgwire.SeverityFatal, e.Code, e.Message, "")
}

func passwordFailed(user string, reason string) *Error {
	return &Error{Code: pgwire.InvalidPassword,
		Message: `password authentication failed for user "` + user + `"`,
		reason:  errors.New(reason)}
}

func protocolError(msg, reason string) *Error {
	return &Error{Code: pgwire.ProtocolViolation, Message: msg, reason: errors.New(reason)}
}

type exState uint8

const (
	stIdle exState = iota
	stMD5
	stSASLInitial
	stSASLFinal
	stDone
	stFailed
)

// Exchange is the authentication of one client connection. The zero value is ready for
// Begin; Reset makes it reusable. It is not safe for concurrent use (one event loop owns it).
//
// Every call appends the messages to send to dst and returns the extended slice. done is true
// once the client is authenticated: the output then ends with AuthenticationOk. A non-nil
// error is an *Error to send (AppendErrorResponse) before closing; the exchange is then over.
type Exchange struct {
	v      *Verifier
	user   string
	state  exState
	method Method
	mock   bool // the exchange must fail at its end whatever the client proves
	salt   [4]byte
	md5hex string
	conv   *scram.ServerConversation

	// For SCRAM pass-through (Exchange.SCRAMClientKey): the secret verified against, the
	// messages that make up the AuthMessage, and the ClientKey the proof revealed.
	secret      *Secret
	clientBare  string
	serverFirst string
	clientKey   []byte
}

// Reset clears the exchange for reuse.
func (e *Exchange) Reset() { *e = Exchange{} }

// User returns the user name given to Begin.
func (e *Exchange) User() string { return e.user }

// Method returns the method actually run: MethodSCRAM for an md5 client whose secret is SCRAM.
func (e *Exchange) Method() Method { return e.method }

// Done reports whether the client is authenticated.
func (e *Exchange) Done() bool { return e.state == stDone }

// Secret returns the secret of the user once the client is authenticated (nil for trust
// without secrets).
func (e *Exchange) Secret() *Secret {
	if e.state != stDone {
		return nil
	}
	return e.secret
}

// SCRAMClientKey returns, once a client has authenticated with SCRAM against a stored SCRAM
// secret (not one derived from a plaintext password), the ClientKey its proof revealed: with
// Secret it makes credentials to log in to PostgreSQL as that user (CredentialsFromSCRAMKey).
// It is nil otherwise. It is a password equivalent: never log it.
func (e *Exchange) SCRAMClientKey() []byte {
	if e.state != stDone {
		return nil
	}
	return e.clientKey
}

// Begin starts authenticating user (the startup packet's user) and appends the first
// authentication request. With trust it appends AuthenticationOk and returns done.
//
// For a plaintext secret under scram-sha-256 the first login of each user derives its SCRAM
// credentials (PBKDF2, about a millisecond); Userlist.DeriveSCRAM does that ahead of time.
func (e *Exchange) Begin(dst []byte, v *Verifier, user string) (out []byte, done bool, err error) {
	var secret *Secret
	known := true
	if v.secrets != nil && user != "" {
		secret, known = v.secrets.Lookup(user)
	}
	return e.BeginWith(dst, v, user, secret, known)
}

// BeginWith is Begin with the user's secret found by the caller rather than in the
// Verifier's Secrets (an auth_query's answer): known is false for a user that does not exist,
// and secret may then be nil. The exchange is the same, mock included.
func (e *Exchange) BeginWith(dst []byte, v *Verifier, user string, secret *Secret, known bool) (out []byte, done bool, err error) {
	return e.BeginAs(dst, v, v.method, user, secret, known)
}

// BeginAs is BeginWith with method m instead of the Verifier's: the method an hba rule chose
// for this connection.
func (e *Exchange) BeginAs(dst []byte, v *Verifier, m Method, user string, secret *Secret, known bool) (out []byte, done bool, err error) {
	*e = Exchange{v: v, user: user, method: m}
	if user == "" {
		return e.fail(dst, &Error{Code: pgwire.InvalidAuthorization,
			Message: "no PostgreSQL user name specified in startup packet"})
	}
	if known && secret == nil {
		secret = &Secret{kind: SecretEmpty}
	}
	if !known && (m == MethodTrust || !v.hide) {
		return e.fail(dst, &Error{Code: pgwire.InvalidAuthorization,
			Message: `role "` + user + `" does not exist`})
	}
	if known {
		e.secret = secret
	}
	switch m {
	case MethodTrust:
		e.state = stDone
		return pgwire.AppendAuth(dst, pgwire.AuthOK, nil), true, nil
	case MethodMD5:
		switch {
		case !known || secret.kind == SecretEmpty:
			e.mock = true
			return e.beginMD5(dst)
		case secret.kind == SecretSCRAM: // PostgreSQL switches md5 to SCRAM for SCRAM secrets
			e.method = MethodSCRAM
			creds, _ := secret.scramCredentials()
			return e.beginSCRAM(dst, creds)
		default:
			e.md5hex = secret.md5hex
			return e.beginMD5(dst)
		}
	case MethodSCRAM:
		if known {
			if creds, ok := secret.scramCredentials(); ok {
				return e.beginSCRAM(dst, creds)
			}
		}
		e.mock = true
		return e.beginSCRAM(dst, e.mockCredentials())
	}
	return e.fail(dst, &Error{Code: pgwire.InvalidAuthorization,
		Message: "unsupported authentication method"})
}

func (e *Exchange) fail(dst []byte, err *Error) ([]byte, bool, error) {
	e.state = stFailed
	e.conv = nil
	return dst, false, err
}

func (e *Exchange) beginMD5(dst []byte) ([]byte, bool, error) {
	if _, err := rand.Read(e.salt[:]); err != nil {
		return e.fail(dst, &Error{Code: pgwire.InternalError, Message: "could not generate random salt", reason: err})
	}
	e.state = stMD5
	return pgwire.AppendAuth(dst, pgwire.AuthMD5Password, e.salt[:]), false, nil
}

func (e *Exchange) beginSCRAM(dst []byte, creds scram.StoredCredentials) ([]byte, bool, error) {
	// PostgreSQL clients send an empty SCRAM user name; the startup packet's user counts.
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return e.fail(dst, &Error{Code: pgwire.InternalError, Message: "SCRAM setup failed", reason: err})
	}
	e.conv = srv.NewConversation()
	e.state = stSASLInitial
	return pgwire.AppendAuthSASL(dst, MechanismSCRAM), false, nil
}

// mockCredentials are SCRAM credentials no password matches, with a salt that is stable for
// the user name, so repeated attempts cannot tell a mock exchange from a real one.
func (e *Exchange) mockCredentials() scram.StoredCredentials {
	mac := func(label string) []byte {
		h := hmac.New(sha256.New, e.v.mockKey[:])
		h.Write([]byte(label))
		h.Write([]byte{0})
		h.Write([]byte(e.user))
		return h.Sum(nil)
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(mac("salt")[:scramSaltLen]), Iters: DefaultSCRAMIterations},
		StoredKey:  mac("stored"),
		ServerKey:  mac("server"),
	}
}

// Step consumes the body of the client's next authentication message (message type 'p':
// PasswordMessage, SASLInitialResponse or SASLResponse) and appends the reply.
func (e *Exchange) Step(dst, body []byte) (out []byte, done bool, err error) {
	switch e.state {
	case stMD5:
		return e.stepMD5(dst, body)
	case stSASLInitial:
		return e.stepSASLInitial(dst, body)
	case stSASLFinal:
		return e.stepSASLFinal(dst, body)
	}
	return e.fail(dst, protocolError("unexpected authentication message", "no authentication step pending"))
}

func (e *Exchange) stepMD5(dst, body []byte) ([]byte, bool, error) {
	pw, err := pgwire.DecodePassword(body)
	if err != nil {
		return e.fail(dst, protocolError("invalid password packet", "malformed password message"))
	}
	if e.mock {
		return e.fail(dst, passwordFailed(e.user, "no usable secret for md5"))
	}
	want := "md5" + md5Hex(e.md5hex+string(e.salt[:]))
	if subtle.ConstantTimeCompare(pw, []byte(want)) != 1 {
		return e.fail(dst, passwordFailed(e.user, "md5 response does not match"))
	}
	e.state = stDone
	return pgwire.AppendAuth(dst, pgwire.AuthOK, nil), true, nil
}

func (e *Exchange) stepSASLInitial(dst, body []byte) ([]byte, bool, error) {
	mech, data, err := pgwire.DecodeSASLInitialResponse(body)
	if err != nil {
		return e.fail(dst, protocolError("malformed SASLInitialResponse message", "undecodable SASLInitialResponse"))
	}
	if string(mech) != MechanismSCRAM {
		return e.fail(dst, protocolError("client selected an invalid SASL authentication mechanism",
			"mechanism is not SCRAM-SHA-256"))
	}
	if data == nil {
		return e.fail(dst, protocolError("malformed SCRAM message", "SASLInitialResponse without data"))
	}
	if len(data) > 0 && data[0] == 'p' {
		return e.fail(dst, protocolError("malformed SCRAM message",
			"client requires channel binding, which is not offered"))
	}
	first, err := e.conv.Step(string(data))
	if err != nil {
		return e.fail(dst, protocolError("malformed SCRAM message", "invalid client-first-message"))
	}
	if e.conv.AuthzID() != "" {
		return e.fail(dst, &Error{Code: pgwire.FeatureNotSupported,
			Message: "client uses authorization identity, but it is not supported",
			reason:  errors.New("authzid in client-first-message")})
	}
	e.state = stSASLFinal
	if e.secret != nil && e.secret.kind == SecretSCRAM {
		// The gs2 header ("n,," or "y,,": no authzid, checked above) precedes the bare message.
		if _, rest, ok := strings.Cut(string(data), ","); ok {
			if _, bare, ok := strings.Cut(rest, ","); ok {
				e.clientBare, e.serverFirst = bare, first
			}
		}
	}
	return pgwire.AppendAuth(dst, pgwire.AuthSASLContinue, []byte(first)), false, nil
}

func (e *Exchange) stepSASLFinal(dst, body []byte) ([]byte, bool, error) {
	final, err := e.conv.Step(string(body))
	e.conv = nil
	if err != nil {
		if final == scram.ErrInvalidProof {
			return e.fail(dst, passwordFailed(e.user, "SCRAM proof does not match"))
		}
		// Report a nonce or channel-binding mismatch like PostgreSQL, without the message text
		// (it holds the client proof).
		reason := "invalid client-final-message"
		if strings.HasPrefix(final, "e=") {
			reason += " (" + final[2:] + ")"
		}
		return e.fail(dst, protocolError("malformed SCRAM message", reason))
	}
	if e.mock {
		return e.fail(dst, passwordFailed(e.user, "no usable SCRAM secret"))
	}
	if e.serverFirst != "" {
		if withoutProof, proof, ok := splitClientFinal(string(body)); ok {
			e.clientKey = clientKeyFromProof(e.secret.creds.StoredKey,
				e.clientBare+","+e.serverFirst+","+withoutProof, proof)
		}
		e.clientBare, e.serverFirst = "", ""
	}
	e.state = stDone
	dst = pgwire.AppendAuth(dst, pgwire.AuthSASLFinal, []byte(final))
	return pgwire.AppendAuth(dst, pgwire.AuthOK, nil), true, nil
}
