package auth

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/pgwire"
)

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestLoginAgainstVerifier closes the loop: our client against our server state machine.
func TestLoginAgainstVerifier(t *testing.T) {
	users := testUserlist(t)
	for _, c := range []struct {
		method     Method
		user, pw   string
		wantMethod string
		wantCode   string
	}{
		{MethodMD5, "alice", "pw-alice", "md5", ""},
		{MethodMD5, "bob", "pw-bob", "md5", ""},
		{MethodMD5, "carol", "pw-carol", "scram-sha-256", ""},
		{MethodSCRAM, "alice", "pw-alice", "scram-sha-256", ""},
		{MethodSCRAM, "émile", "pw-émile", "scram-sha-256", ""},
		{MethodTrust, "alice", "", "trust", ""},
		{MethodSCRAM, "alice", "nope", "", "28P01"},
		{MethodMD5, "alice", "nope", "", "28P01"},
		{MethodSCRAM, "nobody", "x", "", "28000"},
	} {
		srv := startTestServer(t, newVerifier(t, c.method, users, false))
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		sess, err := Login(ctx, dial(t, srv.addr()), []Param{{"database", "db"}, {"application_name", "x"}}, c.user, c.pw)
		cancel()
		srv.next(t)
		if c.wantCode != "" {
			var se *ServerError
			if !errors.As(err, &se) || se.Code != c.wantCode || se.Severity != "FATAL" || se.Raw[0] != 'E' {
				t.Errorf("%v %s: got %v, want server error %s", c.method, c.user, err, c.wantCode)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v %s: %v", c.method, c.user, err)
			continue
		}
		if sess.Method != c.wantMethod || sess.PID != 4242 || string(sess.SecretKey) != "\x01\x02\x03\x04" ||
			sess.TxStatus != pgwire.TxIdle || len(sess.Params) != 3 || sess.Params[0] != (Param{"server_version", "15.0"}) {
			t.Errorf("%v %s: session %+v", c.method, c.user, sess)
		}
		if v, ok := sess.Param("client_encoding"); !ok || v != "UTF8" {
			t.Errorf("client_encoding %q %v", v, ok)
		}
	}
}

func TestLoginFromMD5Secret(t *testing.T) {
	secret, _ := ParseSecret("bob", md5Secret("bob", "pw-bob"))
	creds, err := CredentialsFromSecret("bob", secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []Method{MethodMD5, MethodSCRAM} {
		srv := startTestServer(t, newVerifier(t, m, testUserlist(t), false))
		conn := dial(t, srv.addr())
		_, err := creds.Login(t.Context(), conn, nil)
		conn.Close() // on error the caller closes; the server then sees EOF
		srv.next(t)
		if m == MethodMD5 && err != nil {
			t.Fatalf("md5 secret against md5: %v", err)
		}
		if m == MethodSCRAM && !errors.Is(err, ErrUnsupported) {
			t.Fatalf("md5 secret against SCRAM: %v, want ErrUnsupported", err)
		}
	}
	scr, _ := ParseSecret("c", scramSecret(t, "x"))
	if _, err := CredentialsFromSecret("c", scr); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("SCRAM secret: %v", err)
	}
}

// fakeServer runs script on the server end of a connection after reading the startup packet.
func fakeServer(t *testing.T, script func(c net.Conn)) net.Conn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		l.Close()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := readStartup(c); err != nil {
			return
		}
		script(c)
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return dial(t, l.Addr().String())
}

// A server that answers SCRAM with AuthenticationOk before proving it knows the secret
// (a man in the middle) must be refused, as must one with a wrong server signature.
func TestLoginRejectsUnprovenSCRAMServer(t *testing.T) {
	for _, skipFinal := range []bool{true, false} {
		conn := fakeServer(t, func(c net.Conn) {
			lim := pgwire.FrontendLimits(1 << 20)
			c.Write(pgwire.AppendAuthSASL(nil, MechanismSCRAM))
			_, body, err := readMessage(c, lim)
			if err != nil {
				return
			}
			_, data, _ := pgwire.DecodeSASLInitialResponse(body)
			cnonce := string(data[strings.Index(string(data), "r=")+2:])
			c.Write(pgwire.AppendAuth(nil, pgwire.AuthSASLContinue,
				[]byte("r="+cnonce+"srv,s=c2FsdHNhbHQ=,i=4096")))
			if _, _, err := readMessage(c, lim); err != nil {
				return
			}
			if !skipFinal {
				c.Write(pgwire.AppendAuth(nil, pgwire.AuthSASLFinal, []byte("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")))
			}
			c.Write(pgwire.AppendAuth(nil, pgwire.AuthOK, nil))
			c.Write(pgwire.AppendReadyForQuery(nil, pgwire.TxIdle))
		})
		_, err := Login(t.Context(), conn, nil, "u", "pw")
		if !errors.Is(err, ErrServerSignature) {
			t.Errorf("skipFinal=%v: got %v, want ErrServerSignature", skipFinal, err)
		}
	}
}

func TestLoginProtocolErrors(t *testing.T) {
	cases := []struct {
		name   string
		server []byte
		want   error
	}{
		{"RFQ before auth", pgwire.AppendReadyForQuery(nil, 'I'), ErrProtocol},
		{"GSS", pgwire.AppendAuth(nil, 7, nil), ErrUnsupported},
		{"only PLUS", pgwire.AppendAuthSASL(nil, "SCRAM-SHA-256-PLUS"), ErrUnsupported},
		{"huge message", appendMsg(nil, 'R', make([]byte, maxLoginMessage+1))[:5], ErrProtocol},
		{"bad type", appendMsg(nil, 'D', nil), ErrProtocol},
		{"huge notification", []byte("A8\x00\x00\f"), ErrProtocol},
		{"md5 without salt", pgwire.AppendAuth(nil, pgwire.AuthMD5Password, nil), ErrProtocol},
		{"protocol 4", append(pgwire.AppendAuth(nil, pgwire.AuthOK, nil),
			appendMsg(nil, 'v', []byte{0, 4, 0, 0, 0, 0, 0, 0})...), ErrUnsupported},
		{"malformed error", appendMsg(nil, 'E', []byte("Sno terminator")), ErrProtocol},
		{"data row after auth", append(pgwire.AppendAuth(nil, pgwire.AuthOK, nil), appendMsg(nil, 'D', nil)...), ErrProtocol},
		{"excessive iterations", append(pgwire.AppendAuthSASL(nil, MechanismSCRAM),
			pgwire.AppendAuth(nil, pgwire.AuthSASLContinue, []byte("r=x,s=c2FsdA==,i=2000000000"))...), ErrProtocol},
	}
	for _, c := range cases {
		conn := fakeServer(t, func(s net.Conn) {
			s.Write(c.server)
			_, _ = s.Read(make([]byte, 1024)) // let the client fail first
		})
		_, err := Login(t.Context(), conn, nil, "u", "pw")
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestLoginServerErrorWithoutSQLSTATE(t *testing.T) {
	conn := fakeServer(t, func(s net.Conn) {
		s.Write(appendMsg(nil, 'E', []byte("SFATAL\x00Mgo away\x00\x00")))
	})
	_, err := Login(t.Context(), conn, nil, "u", "pw")
	var se *ServerError
	if !errors.As(err, &se) || se.Code != "" || se.Message != "go away" || se.Severity != "FATAL" {
		t.Fatalf("got %#v", err)
	}
}

func TestLoginHonoursContext(t *testing.T) {
	hold := make(chan struct{})
	conn := fakeServer(t, func(s net.Conn) { <-hold }) // never answers
	defer close(hold)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Login(ctx, conn, nil, "u", "pw")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("got %v after %v, want DeadlineExceeded promptly", err, time.Since(start))
	}

	ctx2, cancel2 := context.WithCancel(t.Context())
	conn2 := fakeServer(t, func(s net.Conn) { cancel2(); <-hold }) // cancel once login waits
	if _, err := Login(ctx2, conn2, nil, "u", "pw"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: got %v", err)
	}
}

func TestLoginRejectsBadParams(t *testing.T) {
	for _, p := range []Param{{"user", "x"}, {"", "x"}, {"a\x00b", "x"}, {"a", "x\x00"}, {"_pq_.x", "1"}} {
		if _, err := Login(t.Context(), nil, []Param{p}, "u", "pw"); err == nil {
			t.Errorf("param %q accepted", p.Name)
		}
	}
}
