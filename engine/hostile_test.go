package engine_test

import (
	"bufio"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// rawLogin opens a connection and completes a trust login with raw protocol messages.
func rawLogin(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pgwire.AppendStartupMessage(nil, "user", "postgres", "database", "postgres")); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(bufio.NewReader(c), c)
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return c
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("login failed: %s %s", e.Code, e.Message)
		}
	}
}

// outcome reads what the proxy answers until it closes the connection and returns the first
// error's SQLSTATE ("" if none) and whether the connection was closed.
func outcome(c net.Conn) (code string, closed bool) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(bufio.NewReader(c), c)
	for {
		m, err := fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return code, false
			}
			return code, true
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok && code == "" {
			code = e.Code
		}
	}
}

func TestHostileInputCostsOnlyThatConnection(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	for _, mode := range []pool.Mode{pool.ModeSession, pool.ModeTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			p := startProxy(t, func(c *engine.Config) { c.Pool.Mode = mode; c.Pool.DefaultPoolSize = 4 }, primary)
			bystander := connect(t, p.dsn(p.rw))
			alive := func() {
				t.Helper()
				if got := queryInt(t, bystander, "SELECT 7"); got != 7 {
					t.Fatalf("bystander got %d", got)
				}
			}
			be := func(b ...byte) []byte { return b }
			preLogin := []struct {
				name string
				data []byte
			}{
				{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
				{"1 GiB startup length", be(0x40, 0, 0, 0, 0, 3, 0, 0)},
				{"negative startup length", be(0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0)},
				{"startup without terminator", append(be(0, 0, 0, 13, 0, 3, 0, 0), []byte("user")...)},
				{"protocol 2", be(0, 0, 0, 8, 0, 2, 0, 0)},
				{"SSLRequest with trailing plaintext", append(pgwire.AppendSSLRequest(nil), pgwire.AppendStartupMessage(nil, "user", "x")...)},
			}
			for _, tc := range preLogin {
				c, err := net.DialTimeout("tcp", p.rw, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = c.Write(tc.data)
				if tc.name == "startup without terminator" {
					// Truncated: the client gives up; the proxy must just drop it.
					_ = c.(*net.TCPConn).CloseWrite()
				}
				code, closed := outcome(c)
				c.Close()
				if !closed {
					t.Errorf("%s: connection left open", tc.name)
				}
				t.Logf("%s: SQLSTATE %q", tc.name, code)
				alive()
			}
			postLogin := []struct {
				name string
				data []byte
				code string
			}{
				{"1 GiB query header", be('Q', 0x40, 0, 0, 0), pgwire.ProgramLimitExceeded},
				{"negative length", be('Q', 0xff, 0xff, 0xff, 0xff), pgwire.ProtocolViolation},
				{"unknown message type", be('z', 0, 0, 0, 4), pgwire.ProtocolViolation},
				{"empty Query", be('Q', 0, 0, 0, 4), pgwire.ProtocolViolation},
				{"empty CopyFail", be('f', 0, 0, 0, 4), pgwire.ProtocolViolation},
				{"short FunctionCall", be('F', 0, 0, 0, 6, 0, 1), pgwire.ProtocolViolation},
				{"Bind with negative parameter length", append(be('B', 0, 0, 0, 16), 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe, 0, 0), pgwire.ProtocolViolation},
				{"Parse without terminators", be('P', 0, 0, 0, 7, 'a', 'b', 'c'), pgwire.ProtocolViolation},
				{"password message after login", be('p', 0, 0, 0, 5, 0), pgwire.ProtocolViolation},
				{"Sync with a body", be('S', 0, 0, 0, 5, 0), pgwire.ProtocolViolation},
			}
			for _, tc := range postLogin {
				c := rawLogin(t, p.rw)
				_, _ = c.Write(tc.data)
				code, closed := outcome(c)
				c.Close()
				if !closed {
					t.Errorf("%s: connection left open", tc.name)
				}
				if code != tc.code {
					t.Errorf("%s: SQLSTATE %q, want %q", tc.name, code, tc.code)
				}
				alive()
			}
			if n := p.e.Metrics().Panics(); n != 0 {
				t.Fatalf("%d panics recovered", n)
			}
		})
	}
}
