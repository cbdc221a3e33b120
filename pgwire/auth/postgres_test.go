package auth

// Integration tests against real PostgreSQL (started by test/pgtest) and its real clients.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

func startAuthPostgres(t *testing.T) *pgtest.Instance {
	t.Helper()
	p := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{
		{Name: "md5user", Password: "md5 pw", Auth: pgtest.MD5},
		{Name: "scramuser", Password: "scram pw é"},
		{Name: "trustuser", Auth: pgtest.Trust},
		{Name: "clearuser", Password: "clear'pw", Auth: pgtest.Password},
		{Name: "limited", Password: "limitpw"},
	}})
	p.Exec(t, "ALTER ROLE limited CONNECTION LIMIT 0")
	return p
}

func TestLoginPostgreSQL(t *testing.T) {
	p := startAuthPostgres(t)
	cases := []struct {
		user, password, db string
		method             string
		code               string
	}{
		{"md5user", "md5 pw", "postgres", "md5", ""},
		{"scramuser", "scram pw é", "postgres", "scram-sha-256", ""},
		{"trustuser", "", "postgres", "trust", ""},
		{"clearuser", "clear'pw", "postgres", "password", ""},
		{pgtest.Superuser, p.Password(), "template1", "scram-sha-256", ""},
		{"scramuser", "wrong", "postgres", "", "28P01"},
		{"md5user", "wrong", "postgres", "", "28P01"},
		{"clearuser", "wrong", "postgres", "", "28P01"},
		{"nosuchuser", "x", "postgres", "", "28P01"},
		{"scramuser", "scram pw é", "nosuchdb", "", "3D000"},
		{"limited", "limitpw", "postgres", "", "53300"},
	}
	for _, c := range cases {
		t.Run(c.user+"/"+c.db+"/"+c.code, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			sess, err := Login(ctx, conn, []Param{{"database", c.db}, {"application_name", "pgbastion-auth-test"}},
				c.user, c.password)
			if c.code != "" {
				var se *ServerError
				if !errors.As(err, &se) || se.Code != c.code || se.Severity != "FATAL" {
					t.Fatalf("got %v, want FATAL %s", err, c.code)
				}
				if f, derr := pgwire.DecodeErrorFields(se.Raw[pgwire.HeaderLen:]); derr != nil ||
					string(f.Code) != c.code || se.Raw[0] != pgwire.MsgErrorResponse {
					t.Fatalf("Raw is not the server's ErrorResponse: %q", se.Raw)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sess.Method != c.method {
				t.Errorf("method %q, want %q", sess.Method, c.method)
			}
			for name, want := range map[string]string{"session_authorization": c.user,
				"application_name": "pgbastion-auth-test", "client_encoding": "UTF8"} {
				if got, _ := sess.Param(name); got != want {
					t.Errorf("ParameterStatus %s = %q, want %q", name, got, want)
				}
			}
			if v, _ := sess.Param("server_version"); !strings.HasPrefix(v, "1") {
				t.Errorf("server_version %q", v)
			}
			if sess.PID == 0 || len(sess.SecretKey) != 4 || sess.TxStatus != pgwire.TxIdle {
				t.Errorf("session %+v", sess)
			}
			// The stream is in sync: a query right after login answers correctly.
			if got := simpleQuery(t, conn, "SELECT current_user || '@' || current_database()"); got != c.user+"@"+c.db {
				t.Errorf("query answered %q", got)
			}
		})
	}
}

// simpleQuery runs sql and returns the first column of the first row.
func simpleQuery(t *testing.T, conn net.Conn, sql string) string {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(pgwire.AppendQuery(nil, sql)); err != nil {
		t.Fatal(err)
	}
	limits := pgwire.BackendLimits()
	var first string
	for {
		typ, body, err := readMessage(conn, limits)
		if err != nil {
			t.Fatal(err)
		}
		switch typ {
		case pgwire.MsgDataRow:
			if first == "" && len(body) >= 6 {
				n := int(int32(binary.BigEndian.Uint32(body[2:])))
				if n >= 0 && 6+n <= len(body) {
					first = string(body[6 : 6+n])
				}
			}
		case pgwire.MsgErrorResponse:
			f, _ := pgwire.DecodeErrorFields(body)
			t.Fatalf("query failed: %s", f.Message)
		case pgwire.MsgReadyForQuery:
			return first
		}
	}
}

// TestVerifierWithPostgreSQLSecrets loads the secrets PostgreSQL itself stored into a userlist
// and authenticates real clients (pgx, and libpq through psql) with them.
func TestVerifierWithPostgreSQLSecrets(t *testing.T) {
	p := startAuthPostgres(t)
	var list bytes.Buffer
	for _, u := range []string{"md5user", "scramuser"} {
		secret := p.QueryString(t, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", u)
		fmt.Fprintf(&list, "%q %q\n", u, secret) // no quotes or backslashes in these
	}
	users, err := ParseUserlist("from-pg", &list)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := users.Lookup("md5user"); s.Kind() != SecretMD5 {
		t.Fatalf("md5user secret kind %v", s.Kind())
	}
	if s, _ := users.Lookup("scramuser"); s.Kind() != SecretSCRAM {
		t.Fatalf("scramuser secret kind %v", s.Kind())
	}
	psql := pgtest.Program(t, "psql")
	for _, m := range []Method{MethodMD5, MethodSCRAM} {
		srv := startTestServer(t, newVerifier(t, m, users, false))
		host, port, _ := net.SplitHostPort(srv.addr())
		for _, c := range []struct {
			user, password string
			ok             bool
		}{
			{"scramuser", "scram pw é", true},
			{"md5user", "md5 pw", m == MethodMD5},
			{"scramuser", "md5 pw", false},
		} {
			// pgx
			conn, err := pgconn.Connect(t.Context(), fmt.Sprintf("host=%s port=%s user=%s password='%s' sslmode=disable",
				host, port, c.user, c.password))
			srv.next(t)
			if c.ok != (err == nil) {
				t.Errorf("%v pgx %s/%s: %v", m, c.user, c.password, err)
			}
			if err == nil {
				conn.Close(t.Context())
			}
			// libpq
			cmd := exec.CommandContext(t.Context(), psql, "-X", "-w", "-c", "SELECT 1",
				fmt.Sprintf("host=%s port=%s user=%s dbname=x sslmode=disable", host, port, c.user))
			cmd.Env = []string{"PGPASSWORD=" + c.password, "PATH=/usr/bin:/bin"}
			out, err := cmd.CombinedOutput()
			srv.next(t)
			if c.ok != (err == nil) {
				t.Errorf("%v psql %s/%s: %v\n%s", m, c.user, c.password, err, out)
			}
			if !c.ok && !strings.Contains(string(out), fmt.Sprintf(`password authentication failed for user "%s"`, c.user)) {
				t.Errorf("psql output: %s", out)
			}
		}
	}
}
