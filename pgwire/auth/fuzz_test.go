package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgbastion/pgbastion/pgwire"
)

func FuzzParseUserlist(f *testing.F) {
	f.Add([]byte(`"alice" "pw"` + "\n; comment\n\n" + `"b""ob" "md5` + strings.Repeat("a", 32) + `"`))
	f.Add([]byte(`"carol" "SCRAM-SHA-256$4096:c2FsdA==$` + strings.Repeat("A", 43) + "=:" + strings.Repeat("B", 43) + `="`))
	f.Add([]byte("\"a\"\t\"\"\r\n\"x"))
	f.Add([]byte(`"a" "b"c"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := ParseUserlist("fuzz", bytes.NewReader(data))
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line < 1 {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		names := u.Users()
		if len(names) != u.Len() {
			t.Fatalf("Users %d != Len %d", len(names), u.Len())
		}
		for _, n := range names {
			s, ok := u.Lookup(n)
			if !ok || n == "" || len(n) > MaxUsernameLen || strings.ContainsRune(n, 0) || s == nil {
				t.Fatalf("bad entry %q", n)
			}
		}
	})
}

// FuzzUserlistRoundTrip: any user and password written in auth_file syntax parse back to the
// same user and the secret ParseSecret makes of the password.
func FuzzUserlistRoundTrip(f *testing.F) {
	f.Add("alice", "pw")
	f.Add(`we"ird`, `p"w`)
	f.Add("u", "md5"+strings.Repeat("0", 32))
	f.Add("u", "SCRAM-SHA-256$1:AA==$x:y")
	f.Add("u", "")
	f.Fuzz(func(t *testing.T, user, password string) {
		if strings.ContainsAny(user+password, "\r\n") {
			return
		}
		q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
		u, err := ParseUserlist("rt", strings.NewReader(q(user)+" "+q(password)+"\n"))
		want, werr := ParseSecret(user, password)
		valid := user != "" && len(user) <= MaxUsernameLen && len(password) <= MaxPasswordLen &&
			!strings.ContainsRune(user+password, 0) && werr == nil
		if valid != (err == nil) {
			t.Fatalf("user %q password %q: err %v, want valid=%v", user, password, err, valid)
		}
		if err != nil {
			if strings.Contains(err.Error(), password) && len(password) > 3 &&
				!strings.Contains("fuzz:1: rt:1: line password user name longer than bytes", password) {
				t.Fatalf("error %q contains the password", err)
			}
			return
		}
		s, ok := u.Lookup(user)
		if !ok || s.Kind() != want.Kind() || s.plain != want.plain || s.md5hex != want.md5hex {
			t.Fatalf("round trip of %q: got %v, want %v", user, s, want)
		}
	})
}

func FuzzParseSecret(f *testing.F) {
	f.Add("u", "SCRAM-SHA-256$4096:c2FsdA==$"+strings.Repeat("A", 43)+"=:"+strings.Repeat("B", 43)+"=")
	f.Add("u", "SCRAM-SHA-256$-1:$:")
	f.Add("u", "md5"+strings.Repeat("F", 32))
	f.Fuzz(func(t *testing.T, user, password string) {
		s, err := ParseSecret(user, password)
		if err != nil {
			if len(password) > 20 && strings.Contains(err.Error(), password) {
				t.Fatalf("error contains the secret: %v", err)
			}
			return
		}
		if s.Kind() == SecretSCRAM {
			c, ok := s.scramCredentials()
			if !ok || c.Iters < 1 || len(c.StoredKey) != scramKeyLen || len(c.ServerKey) != scramKeyLen || c.Salt == "" {
				t.Fatalf("accepted a malformed SCRAM secret")
			}
		}
	})
}

// fuzzVerifier has fixed SCRAM credentials, so fuzzing never pays for PBKDF2.
func fuzzVerifier(f *testing.F, m Method) *Verifier {
	u, err := ParseUserlist("fuzz", strings.NewReader(`"u" "`+scramSecret(f, "pw")+`"`+"\n"+
		`"m" "`+md5Secret("m", "pw")+`"`))
	if err != nil {
		f.Fatal(err)
	}
	return newVerifier(f, m, u, false)
}

func checkAuthError(t *testing.T, err error, codes ...string) {
	t.Helper()
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an *Error", err)
	}
	for _, c := range codes {
		if ae.Code == c {
			return
		}
	}
	t.Fatalf("error %v has SQLSTATE %s, want one of %v", err, ae.Code, codes)
}

// FuzzSCRAMClientFirst feeds arbitrary SASLInitialResponse bodies (mechanism and
// client-first-message) to the server side.
func FuzzSCRAMClientFirst(f *testing.F) {
	v := fuzzVerifier(f, MethodSCRAM)
	for _, d := range []string{"n,,n=,r=abc", "y,,n=u,r=x", "p=tls-exporter,,n=,r=x", "n,a=x,n=,r=y",
		"n,,m=1,n=,r=z", "n,,n=a=2Cb,r=q", "n,,n=,r=", ",,,", "n"} {
		m, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: MechanismSCRAM, Data: []byte(d)}).Encode(nil)
		f.Add(m[5:])
	}
	f.Add([]byte("SCRAM-SHA-256\x00\xff\xff\xff\xff"))
	f.Add([]byte("SCRAM-SHA-256-PLUS\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, body []byte) {
		var ex Exchange
		if _, _, err := ex.Begin(nil, v, "u"); err != nil {
			t.Fatal(err)
		}
		out, done, err := ex.Step(nil, body)
		if done {
			t.Fatal("authenticated by a first message")
		}
		if err != nil {
			checkAuthError(t, err, pgwire.ProtocolViolation, pgwire.FeatureNotSupported)
			return
		}
		if len(out) < 9 || out[0] != pgwire.MsgAuthentication || binary.BigEndian.Uint32(out[5:]) != pgwire.AuthSASLContinue {
			t.Fatalf("reply %q is not AuthenticationSASLContinue", out)
		}
	})
}

// FuzzSCRAMClientFinal feeds arbitrary client-final-messages after a valid first exchange.
func FuzzSCRAMClientFinal(f *testing.F) {
	v := fuzzVerifier(f, MethodSCRAM)
	const clientFirst = "n,,n=,r=fuzznonce"
	f.Add([]byte("c=biws,r=fuzznonce,p=AAAA"))
	f.Add([]byte("c=biws,r=fuzznonceSERVER,p=" + strings.Repeat("A", 43) + "="))
	f.Add([]byte("c=!!,r=x,p=y"))
	f.Add([]byte("c=biws,r=fuzznonce,x=ext,p="))
	f.Add([]byte(",,"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ex Exchange
		if _, _, err := ex.Begin(nil, v, "u"); err != nil {
			t.Fatal(err)
		}
		m, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: MechanismSCRAM, Data: []byte(clientFirst)}).Encode(nil)
		if _, _, err := ex.Step(nil, m[5:]); err != nil {
			t.Fatal(err)
		}
		_, done, err := ex.Step(nil, data)
		if done || err == nil {
			t.Fatal("authenticated without knowing the password")
		}
		checkAuthError(t, err, pgwire.ProtocolViolation, pgwire.InvalidPassword)
	})
}

// FuzzMD5Response feeds arbitrary PasswordMessage bodies to an md5 exchange.
func FuzzMD5Response(f *testing.F) {
	v := fuzzVerifier(f, MethodMD5)
	f.Add([]byte("md5" + strings.Repeat("0", 32) + "\x00"))
	f.Add([]byte("pw\x00"))
	f.Add([]byte(""))
	f.Add([]byte("a\x00b\x00"))
	f.Fuzz(func(t *testing.T, body []byte) {
		var ex Exchange
		if _, _, err := ex.Begin(nil, v, "m"); err != nil {
			t.Fatal(err)
		}
		_, done, err := ex.Step(nil, body)
		if done {
			t.Fatal("authenticated without knowing the salt")
		}
		checkAuthError(t, err, pgwire.ProtocolViolation, pgwire.InvalidPassword)
	})
}

// scriptConn is a net.Conn whose peer's bytes are fixed and whose writes vanish.
type scriptConn struct{ r *bytes.Reader }

func (c *scriptConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzLoginServer feeds arbitrary server bytes to the client side of login: it must return
// (never panic or hang) and never report success unless the bytes contain a ReadyForQuery.
func FuzzLoginServer(f *testing.F) {
	ok := pgwire.AppendAuth(nil, pgwire.AuthOK, nil)
	ok = pgwire.AppendParameterStatus(ok, "server_version", "15")
	ok = pgwire.AppendBackendKeyData(ok, 1, []byte{1, 2, 3, 4})
	ok = pgwire.AppendReadyForQuery(ok, 'I')
	f.Add(ok)
	f.Add(pgwire.AppendAuth(nil, pgwire.AuthMD5Password, []byte("salt")))
	f.Add(append(pgwire.AppendAuthSASL(nil, MechanismSCRAM),
		pgwire.AppendAuth(nil, pgwire.AuthSASLContinue, []byte("r=x,s=c2FsdA==,i=1"))...))
	f.Add(pgwire.AppendError(nil, 'E', "FATAL", "28P01", "password authentication failed", ""))
	f.Add(appendMsg(nil, 'v', []byte{0, 3, 0, 0, 0, 0, 0, 1, 'x', 0}))
	f.Add([]byte("A8\x00\x00\f\x00")) // a 900 MB NotificationResponse must not be allocated
	creds := NewCredentials("u", "pw")
	f.Fuzz(func(t *testing.T, data []byte) {
		sess, err := creds.Login(t.Context(), &scriptConn{r: bytes.NewReader(data)}, nil)
		if err == nil && (sess == nil || !bytes.Contains(data, []byte{'Z', 0, 0, 0, 5})) {
			t.Fatal("login succeeded without a ReadyForQuery")
		}
	})
}

// FuzzLoginServerPassThrough is FuzzLoginServer for credentials that answer SCRAM with a
// client's key: arbitrary server-first and server-final messages reach keyConversation.
func FuzzLoginServerPassThrough(f *testing.F) {
	sasl := pgwire.AppendAuthSASL(nil, MechanismSCRAM)
	f.Add(append(append([]byte(nil), sasl...), pgwire.AppendAuth(nil, pgwire.AuthSASLContinue, []byte("r=x,s=c2FsdA==,i=4096"))...))
	f.Add(append(append([]byte(nil), sasl...), pgwire.AppendAuth(nil, pgwire.AuthSASLContinue, []byte("m=ext,r=,s=,i="))...))
	f.Add(append(append([]byte(nil), sasl...), pgwire.AppendAuth(nil, pgwire.AuthSASLFinal, []byte("v=AAAA"))...))
	f.Add(pgwire.AppendAuth(nil, pgwire.AuthMD5Password, []byte("salt")))
	f.Add(pgwire.AppendAuth(nil, pgwire.AuthCleartextPassword, nil))
	plain, _ := ParseSecret("u", "pw")
	stored, _ := plain.scramCredentials()
	secret := &Secret{kind: SecretSCRAM, creds: stored}
	key := clientKeyForTest(f, "pw", stored)
	creds, err := CredentialsFromSCRAMKey("u", secret, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sess, err := creds.Login(t.Context(), &scriptConn{r: bytes.NewReader(data)}, nil)
		if err == nil && (sess == nil || !bytes.Contains(data, []byte{'Z', 0, 0, 0, 5})) {
			t.Fatal("login succeeded without a ReadyForQuery")
		}
	})
}

// FuzzClientKeyFromProof: whatever a client-final-message holds, no key comes out of it that
// does not hash to the StoredKey.
func FuzzClientKeyFromProof(f *testing.F) {
	f.Add("c=biws,r=abc,p=" + strings.Repeat("A", 43) + "=")
	f.Add(",p=")
	f.Add("p=,p=!!")
	stored := make([]byte, scramKeyLen)
	f.Fuzz(func(t *testing.T, msg string) {
		without, proof, ok := splitClientFinal(msg)
		if !ok {
			return
		}
		if key := clientKeyFromProof(stored, "bare,"+without, proof); key != nil {
			t.Fatalf("a key from %q", msg)
		}
	})
}

// clientKeyForTest computes the ClientKey of password under creds' salt and iterations, as a
// client does.
func clientKeyForTest(tb testing.TB, password string, creds scram.StoredCredentials) []byte {
	tb.Helper()
	salted, err := pbkdf2.Key(sha256.New, password, []byte(creds.Salt), creds.Iters, scramKeyLen)
	if err != nil {
		tb.Fatal(err)
	}
	mac := hmac.New(sha256.New, salted)
	mac.Write([]byte("Client Key"))
	return mac.Sum(nil)
}
