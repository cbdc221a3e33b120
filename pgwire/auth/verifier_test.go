package auth

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgbastion/pgbastion/pgwire"
)

func testUserlist(t testing.TB) *Userlist {
	t.Helper()
	text := strings.Join([]string{
		`"alice" "pw-alice"`,
		`"bob" "` + md5Secret("bob", "pw-bob") + `"`,
		`"carol" "` + scramSecret(t, "pw-carol") + `"`,
		`"dave" ""`,
		`"émile" "pw-émile"`,
	}, "\n")
	u, err := ParseUserlist("test", strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func newVerifier(t testing.TB, m Method, secrets Secrets, hide bool) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierConfig{Method: m, Secrets: secrets, HideUnknownUsers: hide})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestVerifierWithPgx authenticates pgx (pgconn) clients through the test server for every
// method, secret kind and failure.
func TestVerifierWithPgx(t *testing.T) {
	users := testUserlist(t)
	type attempt struct {
		user, password string
		code           string // "" = success
		method         Method // method the server ran, checked on success
	}
	ok := func(user, pw string, m Method) attempt { return attempt{user, pw, "", m} }
	fail := func(user, pw, code string) attempt { return attempt{user, pw, code, 0} }
	cases := []struct {
		method   Method
		hide     bool
		attempts []attempt
	}{
		{MethodMD5, false, []attempt{
			ok("alice", "pw-alice", MethodMD5),
			ok("bob", "pw-bob", MethodMD5),
			ok("carol", "pw-carol", MethodSCRAM), // SCRAM secret: md5 becomes SCRAM
			ok("émile", "pw-émile", MethodMD5),
			fail("alice", "wrong", "28P01"),
			fail("bob", "wrong", "28P01"),
			fail("carol", "wrong", "28P01"),
			fail("dave", "", "28P01"),
			fail("dave", "anything", "28P01"),
			fail("nobody", "pw", "28000"),
		}},
		{MethodSCRAM, false, []attempt{
			ok("alice", "pw-alice", MethodSCRAM),
			ok("alice", "pw-alice", MethodSCRAM), // cached derived credentials
			ok("carol", "pw-carol", MethodSCRAM),
			ok("émile", "pw-émile", MethodSCRAM),
			fail("alice", "wrong", "28P01"),
			fail("bob", "pw-bob", "28P01"), // an md5 secret cannot serve SCRAM
			fail("carol", "pw-alice", "28P01"),
			fail("dave", "x", "28P01"),
			fail("nobody", "pw", "28000"),
		}},
		{MethodSCRAM, true, []attempt{
			ok("carol", "pw-carol", MethodSCRAM),
			fail("nobody", "pw", "28P01"),
		}},
		{MethodMD5, true, []attempt{
			ok("alice", "pw-alice", MethodMD5),
			fail("nobody", "pw", "28P01"),
		}},
		{MethodTrust, false, []attempt{
			ok("alice", "whatever", MethodTrust),
			ok("dave", "", MethodTrust),
			fail("nobody", "", "28000"),
		}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v/hide=%v", c.method, c.hide), func(t *testing.T) {
			srv := startTestServer(t, newVerifier(t, c.method, users, c.hide))
			for _, a := range c.attempts {
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				conn, err := pgconn.Connect(ctx, fmt.Sprintf(
					"postgres://%s:%s@%s/db?sslmode=disable", a.user, a.password, srv.addr()))
				cancel()
				res := srv.next(t)
				if a.code == "" {
					if err != nil {
						t.Errorf("%s/%s: %v (server: %v)", a.user, a.password, err, res.err)
						continue
					}
					if res.method != a.method || !res.done {
						t.Errorf("%s: server ran %v done=%v, want %v", a.user, res.method, res.done, a.method)
					}
					if conn.PID() != 4242 || conn.ParameterStatus("server_version") != "15.0" {
						t.Errorf("%s: session not set up: pid %d", a.user, conn.PID())
					}
					_ = conn.Close(t.Context())
					continue
				}
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != a.code || pe.Severity != "FATAL" {
					t.Errorf("%s/%s: got %v, want FATAL %s", a.user, a.password, err, a.code)
					continue
				}
				if a.code == "28P01" && pe.Message != `password authentication failed for user "`+a.user+`"` {
					t.Errorf("message %q", pe.Message)
				}
				if res.err == nil || strings.Contains(res.err.Error(), a.password) && a.password != "" {
					t.Errorf("server error %v (must exist and not contain the password)", res.err)
				}
			}
		})
	}
}

// scramExchange runs Begin and the first step with an xdg client.
func scramExchange(t *testing.T, v *Verifier, user, password string) (*Exchange, *scram.ClientConversation, string) {
	t.Helper()
	var ex Exchange
	out, done, err := ex.Begin(nil, v, user)
	if err != nil || done {
		t.Fatalf("begin: %v %v", done, err)
	}
	typ, body := splitOne(t, out)
	if typ != pgwire.MsgAuthentication || binary.BigEndian.Uint32(body) != pgwire.AuthSASL ||
		string(body[4:]) != MechanismSCRAM+"\x00\x00" {
		t.Fatalf("first message %q %q: want AuthenticationSASL offering only %s", typ, body, MechanismSCRAM)
	}
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	conv := cl.NewConversation()
	first, _ := conv.Step("")
	msg, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: MechanismSCRAM, Data: []byte(first)}).Encode(nil)
	out, done, err = ex.Step(nil, msg[5:])
	if err != nil || done {
		t.Fatalf("initial: %v %v", done, err)
	}
	_, body = splitOne(t, out)
	if binary.BigEndian.Uint32(body) != pgwire.AuthSASLContinue {
		t.Fatalf("want SASLContinue, got %q", out)
	}
	return &ex, conv, string(body[4:])
}

func splitOne(t *testing.T, msg []byte) (byte, []byte) {
	t.Helper()
	if len(msg) < 5 || int(binary.BigEndian.Uint32(msg[1:]))+1 > len(msg) {
		t.Fatalf("short message %q", msg)
	}
	n := int(binary.BigEndian.Uint32(msg[1:]))
	return msg[0], msg[5 : 1+n]
}

func saltOf(serverFirst string) string {
	for _, a := range strings.Split(serverFirst, ",") {
		if s, ok := strings.CutPrefix(a, "s="); ok {
			return s
		}
	}
	return ""
}

// Unknown users hidden by a mock exchange get a salt that is stable across attempts, like a
// real user's, so repeating the attempt does not reveal the mock.
func TestMockSaltStable(t *testing.T) {
	v := newVerifier(t, MethodSCRAM, testUserlist(t), true)
	_, _, s1 := scramExchange(t, v, "nobody", "x")
	_, _, s2 := scramExchange(t, v, "nobody", "x")
	_, _, s3 := scramExchange(t, v, "somebody-else", "x")
	_, _, r1 := scramExchange(t, v, "alice", "x")
	_, _, r2 := scramExchange(t, v, "alice", "x")
	if saltOf(s1) == "" || saltOf(s1) != saltOf(s2) || saltOf(s1) == saltOf(s3) {
		t.Fatalf("mock salts %q %q %q: want stable per user and distinct between users", saltOf(s1), saltOf(s2), saltOf(s3))
	}
	if saltOf(r1) != saltOf(r2) {
		t.Fatal("a real user's salt changes between attempts")
	}
	if raw, _ := base64.StdEncoding.DecodeString(saltOf(s1)); len(raw) != scramSaltLen {
		t.Fatalf("mock salt is %d bytes, real ones %d", len(raw), scramSaltLen)
	}
}

func TestSCRAMServerFinalVerifiesWithClient(t *testing.T) {
	v := newVerifier(t, MethodSCRAM, testUserlist(t), false)
	ex, conv, serverFirst := scramExchange(t, v, "carol", "pw-carol")
	final, err := conv.Step(serverFirst)
	if err != nil {
		t.Fatal(err)
	}
	out, done, err := ex.Step(nil, []byte(final))
	if err != nil || !done || !ex.Done() {
		t.Fatalf("final: done=%v err=%v", done, err)
	}
	_, body := splitOne(t, out)
	if binary.BigEndian.Uint32(body) != pgwire.AuthSASLFinal {
		t.Fatalf("want SASLFinal first, got %q", out)
	}
	if _, err := conv.Step(string(body[4:])); err != nil || !conv.Valid() {
		t.Fatalf("client rejects the server signature: %v", err)
	}
	if rest := out[5+len(body):]; string(rest) != string(pgwire.AppendAuth(nil, pgwire.AuthOK, nil)) {
		t.Fatalf("want AuthenticationOk after SASLFinal, got %q", rest)
	}
	if _, _, err := ex.Step(nil, []byte("again")); code(err) != pgwire.ProtocolViolation {
		t.Fatalf("step after done: %v", err)
	}
}

func code(err error) string {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

func TestSCRAMProtocolErrors(t *testing.T) {
	v := newVerifier(t, MethodSCRAM, testUserlist(t), false)
	initial := func(mech string, data []byte) []byte {
		m, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: data}).Encode(nil)
		return m[5:]
	}
	cases := []struct {
		name string
		body []byte
		code string
	}{
		{"PLUS mechanism", initial("SCRAM-SHA-256-PLUS", []byte("p=tls-server-end-point,,n=,r=abc")), "08P01"},
		{"unknown mechanism", initial("PLAIN", []byte("x")), "08P01"},
		{"channel binding flag p", initial(MechanismSCRAM, []byte("p=tls-server-end-point,,n=,r=abc")), "08P01"},
		{"no data", append([]byte(MechanismSCRAM+"\x00"), 0xff, 0xff, 0xff, 0xff), "08P01"},
		{"garbage", initial(MechanismSCRAM, []byte("hello")), "08P01"},
		{"extension", initial(MechanismSCRAM, []byte("n,,m=ext,n=,r=abc")), "08P01"},
		{"authzid", initial(MechanismSCRAM, []byte("n,a=admin,n=,r=abc")), "0A000"},
		{"truncated body", []byte(MechanismSCRAM), "08P01"},
	}
	for _, c := range cases {
		var ex Exchange
		if _, _, err := ex.Begin(nil, v, "alice"); err != nil {
			t.Fatal(err)
		}
		_, done, err := ex.Step(nil, c.body)
		if done || code(err) != c.code {
			t.Errorf("%s: done=%v err=%v, want %s", c.name, done, err, c.code)
		}
	}

	// A client-final-message with the wrong nonce, wrong channel binding or no proof.
	for name, mangle := range map[string]func(string) string{
		"nonce":   func(f string) string { return strings.Replace(f, "r=", "r=x", 1) },
		"cbind":   func(f string) string { return strings.Replace(f, "c=biws", "c=eSws", 1) },
		"noproof": func(f string) string { return f[:strings.LastIndex(f, ",")] },
		"proof":   func(f string) string { return f[:strings.LastIndex(f, "p=")+2] + "AAAA" },
	} {
		ex, conv, serverFirst := scramExchange(t, v, "alice", "pw-alice")
		final, _ := conv.Step(serverFirst)
		_, done, err := ex.Step(nil, []byte(mangle(final)))
		if done || err == nil {
			t.Errorf("mangled %s accepted", name)
		}
		if err != nil && strings.Contains(err.Error(), final[strings.LastIndex(final, "p="):]) {
			t.Errorf("%s: error quotes the client proof: %v", name, err)
		}
	}
}

func TestMD5Exchange(t *testing.T) {
	v := newVerifier(t, MethodMD5, testUserlist(t), false)
	salts := map[string]bool{}
	for i := 0; i < 5; i++ {
		var ex Exchange
		out, _, err := ex.Begin(nil, v, "bob")
		if err != nil {
			t.Fatal(err)
		}
		_, body := splitOne(t, out)
		if binary.BigEndian.Uint32(body) != pgwire.AuthMD5Password || len(body) != 8 {
			t.Fatalf("want AuthenticationMD5Password, got %q", out)
		}
		salts[string(body[4:])] = true
		resp := "md5" + md5Hex(md5Hex("pw-bob"+"bob")+string(body[4:]))
		out, done, err := ex.Step(nil, append([]byte(resp), 0))
		if err != nil || !done {
			t.Fatalf("right md5 response: %v", err)
		}
		if string(out) != string(pgwire.AppendAuth(nil, pgwire.AuthOK, nil)) {
			t.Fatalf("want AuthenticationOk, got %q", out)
		}
	}
	if len(salts) < 4 {
		t.Fatalf("md5 salts repeat: %d distinct in 5 attempts", len(salts))
	}
	var ex Exchange
	ex.Begin(nil, v, "bob")
	if _, _, err := ex.Step(nil, []byte("no terminator")); code(err) != "08P01" {
		t.Fatalf("malformed password message: %v", err)
	}
	ex.Begin(nil, v, "bob")
	if _, _, err := ex.Step(nil, []byte("pw-bob\x00")); code(err) != "28P01" {
		t.Fatalf("cleartext answer to md5: %v", err)
	}
	if _, _, err := ex.Begin(nil, v, ""); code(err) != "28000" {
		t.Fatalf("empty user: %v", err)
	}
}

func TestNewVerifierValidates(t *testing.T) {
	if _, err := NewVerifier(VerifierConfig{Method: MethodMD5}); err == nil {
		t.Fatal("md5 without secrets accepted")
	}
	if _, err := NewVerifier(VerifierConfig{Method: 0, Secrets: testUserlist(t)}); err == nil {
		t.Fatal("zero method accepted")
	}
	v := newVerifier(t, MethodTrust, nil, false)
	var ex Exchange
	if _, done, err := ex.Begin(nil, v, "anyone"); !done || err != nil {
		t.Fatalf("trust without secrets: %v %v", done, err)
	}
	for _, s := range []string{"trust", "md5", "scram-sha-256"} {
		if m, err := ParseMethod(s); err != nil || m.String() != s {
			t.Fatalf("ParseMethod(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMethod("password"); err == nil {
		t.Fatal("ParseMethod accepted an unsupported method")
	}
}

// A mock exchange fails at its end even if the client's proof were right (defence in depth:
// mock credentials cannot normally be matched at all).
func TestMockExchangeAlwaysFails(t *testing.T) {
	v := newVerifier(t, MethodSCRAM, testUserlist(t), true)
	ex, conv, serverFirst := scramExchange(t, v, "carol", "pw-carol")
	ex.mock = true
	final, err := conv.Step(serverFirst)
	if err != nil {
		t.Fatal(err)
	}
	if _, done, err := ex.Step(nil, []byte(final)); done || code(err) != "28P01" {
		t.Fatalf("mock exchange with a valid proof: done=%v err=%v", done, err)
	}

	v = newVerifier(t, MethodMD5, testUserlist(t), true)
	var mex Exchange
	out, _, _ := mex.Begin(nil, v, "bob")
	mex.mock = true
	_, body := splitOne(t, out)
	resp := "md5" + md5Hex(md5Hex("pw-bob"+"bob")+string(body[4:]))
	if _, done, err := mex.Step(nil, append([]byte(resp), 0)); done || code(err) != "28P01" {
		t.Fatalf("mock md5 exchange with a valid response: done=%v err=%v", done, err)
	}
}
