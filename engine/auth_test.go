package engine_test

import (
	"bufio"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pgwire/auth"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

func startAuthProxy(t *testing.T, method string, primary *pgtest.Instance, userlist string) *proxy {
	t.Helper()
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(userlist), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := auth.LoadUserlist(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := auth.ParseMethod(method)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Method: m, Secrets: users, HideUnknownUsers: true})
	if err != nil {
		t.Fatal(err)
	}
	return startProxyWith(t, func(c *engine.Config) {
		c.Auth = engine.AuthConfig{Method: method, AuthFile: path}
		c.Server = engine.ServerConfig{} // log in as each client's user with its auth_file password
		c.HealthCheckUser, c.HealthCheckPassword = "postgres", primary.Password()
	}, engine.Options{Auth: v, Secrets: users}, primary)
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func TestClientAuthAndServerLoginAsClientUser(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{
		{Name: "alice", Password: "alice-pw"},
		{Name: "bob", Password: "bob-pw", Auth: pgtest.MD5},
	}})
	userlist := `"alice" "alice-pw"
"bob" "md5` + md5hex("bob-pwbob") + `"
`
	for _, method := range []string{"scram-sha-256", "md5"} {
		t.Run(method, func(t *testing.T) {
			p := startAuthProxy(t, method, primary, userlist)
			host, port, _ := net.SplitHostPort(p.rw)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			dsn := func(user, pw string) string {
				return "host=" + host + " port=" + port + " user=" + user + " password=" + pw + " dbname=postgres sslmode=disable"
			}
			// Right password: the proxy logs in to PostgreSQL as alice (SCRAM, password from
			// the auth_file) and the session really is alice's.
			c, err := pgx.Connect(ctx, dsn("alice", "alice-pw"))
			if err != nil {
				t.Fatalf("alice: %v", err)
			}
			var who string
			if err := c.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "alice" {
				t.Fatalf("current_user %q %v", who, err)
			}
			c.Close(ctx)
			// bob's auth_file entry is an md5 secret: it serves md5 to clients and md5 to the
			// server; with scram-sha-256 clients it cannot verify (fails like a wrong password).
			c, err = pgx.Connect(ctx, dsn("bob", "bob-pw"))
			if method == "md5" {
				if err != nil {
					t.Fatalf("bob over md5: %v", err)
				}
				if err := c.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "bob" {
					t.Fatalf("bob current_user %q %v", who, err)
				}
				c.Close(ctx)
			} else if sqlState(err) != pgwire.InvalidPassword {
				t.Fatalf("bob over scram with an md5 secret: %v", err)
			}
			for _, bad := range [][2]string{{"alice", "wrong"}, {"mallory", "x"}} {
				_, err := pgx.Connect(ctx, dsn(bad[0], bad[1]))
				if sqlState(err) != pgwire.InvalidPassword {
					t.Errorf("%s/%s: got %v, want SQLSTATE 28P01", bad[0], bad[1], err)
				}
			}
		})
	}
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestMalformedSASLCostsOnlyThatConnection sends the malformed SASLInitialResponse that
// panicked pgproto3/v2 during authentication.
func TestMalformedSASLCostsOnlyThatConnection(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, &pgtest.Options{Roles: []pgtest.Role{{Name: "alice", Password: "alice-pw"}}})
	p := startAuthProxy(t, "scram-sha-256", primary, `"alice" "alice-pw"`+"\n")
	bad := [][]byte{
		{'p', 0, 0, 0, 4}, // empty
		append([]byte{'p', 0, 0, 0, 18}, "SCRAM-SHA-256\x00\xff"...),                 // truncated length
		append([]byte{'p', 0, 0, 0, 22}, "SCRAM-SHA-256\x00\x7f\xff\xff\xff\x00"...), // huge declared length
		append([]byte{'p', 0, 0, 0, 9}, "abcde"...),                                  // no mechanism terminator
	}
	for i, msg := range bad {
		c, err := net.DialTimeout("tcp", p.rw, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write(pgwire.AppendStartupMessage(nil, "user", "alice", "database", "postgres"))
		fe := pgproto3.NewFrontend(bufio.NewReader(c), c)
		if m, err := fe.Receive(); err != nil {
			t.Fatal(err)
		} else if _, ok := m.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("expected AuthenticationSASL, got %T", m)
		}
		_, _ = c.Write(msg)
		code, closed := outcome(c)
		c.Close()
		if !closed || code != pgwire.ProtocolViolation {
			t.Errorf("case %d: code %q closed %v", i, code, closed)
		}
	}
	// The proxy still serves properly authenticated clients.
	host, port, _ := net.SplitHostPort(p.rw)
	c := connect(t, "host="+host+" port="+port+" user=alice password=alice-pw dbname=postgres sslmode=disable")
	if queryInt(t, c, "SELECT 1") != 1 {
		t.Fatal("proxy broken")
	}
	if n := p.e.Metrics().Panics(); n != 0 {
		t.Fatalf("%d panics", n)
	}
}
