package engine_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pgwire/auth"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// startAuthQueryProxy starts a proxy with no auth_file and no proxy.server user: every
// client is looked up with the auth_query, and the proxy logs in to PostgreSQL as the client
// with what that login taught it.
func startAuthQueryProxy(t *testing.T, primary *pgtest.Instance, method string, mode pool.Mode, authPassword string) *proxy {
	t.Helper()
	m, err := auth.ParseMethod(method)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Method: m, HideUnknownUsers: true, LookupByCaller: true})
	if err != nil {
		t.Fatal(err)
	}
	return startProxyWith(t, func(c *engine.Config) {
		c.Auth = engine.AuthConfig{Method: method, AuthUser: "postgres", AuthPassword: authPassword}
		c.Server = engine.ServerConfig{}
		c.Pool.Mode, c.Pool.DefaultPoolSize = mode, 4
		c.HealthCheckUser, c.HealthCheckPassword = "postgres", primary.Password()
	}, engine.Options{Auth: v}, primary)
}

// TestAuthQueryLooksUpPasswordsInPostgreSQL: users exist only in PostgreSQL. The proxy checks
// their passwords against the secrets pg_authid holds and logs in to PostgreSQL as them — a
// SCRAM secret through the key the client's proof revealed, since the proxy never learns the
// password — and follows a password change at the next login.
func TestAuthQueryLooksUpPasswordsInPostgreSQL(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{
		{Name: "alice", Password: "alice pw"},
		{Name: "bob", Password: "bob-pw", Auth: pgtest.MD5},
		{Name: "carol", Password: "carol-pw"},
		{Name: "dave", Password: "dave-pw"},
	}})
	primary.Exec(t, "ALTER ROLE carol VALID UNTIL '2001-01-01'")
	primary.Exec(t, "ALTER ROLE dave NOLOGIN")

	for _, c := range []struct {
		method string
		mode   pool.Mode
	}{
		{"md5", pool.ModeSession},
		{"scram-sha-256", pool.ModeTransaction},
	} {
		t.Run(c.method+"/"+string(c.mode), func(t *testing.T) {
			primary.Exec(t, "ALTER ROLE alice PASSWORD 'alice pw'")
			p := startAuthQueryProxy(t, primary, c.method, c.mode, primary.Password())
			host, port, _ := net.SplitHostPort(p.rw)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			dsn := func(user, pw string) string {
				return "host=" + host + " port=" + port + " user=" + user + " password='" + pw + "' dbname=postgres sslmode=disable"
			}
			whoami := func(user, pw string) (*pgx.Conn, error) {
				conn, err := pgx.Connect(ctx, dsn(user, pw))
				if err != nil {
					return nil, err
				}
				var who string
				if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil {
					conn.Close(ctx)
					return nil, err
				}
				if who != user {
					t.Fatalf("logged in as %s, the session is %s's", user, who)
				}
				return conn, nil
			}

			// alice's secret is SCRAM and pg_hba.conf wants SCRAM from her: the proxy's
			// own login to PostgreSQL works only through the client's proof.
			a, err := whoami("alice", "alice pw")
			if err != nil {
				t.Fatalf("alice: %v", err)
			}
			defer a.Close(ctx)
			// bob's secret is md5: it verifies md5 clients (and logs in with md5); a SCRAM
			// client cannot be checked against it and fails like a wrong password.
			b, err := whoami("bob", "bob-pw")
			if c.method == "md5" {
				if err != nil {
					t.Fatalf("bob over md5: %v", err)
				}
				b.Close(ctx)
			} else if sqlState(err) != pgwire.InvalidPassword {
				t.Fatalf("bob over scram with an md5 secret: %v", err)
			}
			// Wrong password, unknown user, expired password, role that may not log in: all
			// alike, as from PostgreSQL.
			for _, bad := range [][2]string{{"alice", "wrong"}, {"mallory", "x"}, {"carol", "carol-pw"}, {"dave", "dave-pw"}} {
				if _, err := pgx.Connect(ctx, dsn(bad[0], bad[1])); sqlState(err) != pgwire.InvalidPassword {
					t.Errorf("%s: got %v, want SQLSTATE 28P01", bad[0], err)
				}
			}

			// Logins at once: all are checked (concurrent lookups of a user share a query).
			var wg sync.WaitGroup
			errs := make(chan error, 20)
			for range 20 {
				wg.Go(func() {
					conn, err := whoami("alice", "alice pw")
					if err == nil {
						_, err = conn.Exec(ctx, "SELECT pg_sleep(0.05)")
						conn.Close(ctx)
					}
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("concurrent login: %v", err)
				}
			}

			// The password changes in PostgreSQL: the old one is refused at once, the new one
			// works, also for the server connections opened after it (two sessions at once need
			// two servers).
			primary.Exec(t, "ALTER ROLE alice PASSWORD 'alice new'")
			if _, err := pgx.Connect(ctx, dsn("alice", "alice pw")); sqlState(err) != pgwire.InvalidPassword {
				t.Fatalf("old password after the change: %v", err)
			}
			var held []*pgx.Conn
			for range 2 {
				conn, err := whoami("alice", "alice new")
				if err != nil {
					t.Fatalf("new password: %v", err)
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				held = append(held, conn)
			}
			for _, conn := range held {
				conn.Close(ctx)
			}
		})
	}
}

// TestAuthQueryFailureSaysWhat: when the auth_query cannot run (here auth_user's password is
// wrong) the client gets 08006 naming the cause to look for, not a password failure.
func TestAuthQueryFailureSaysWhat(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{{Name: "alice", Password: "alice-pw"}}})
	p := startAuthQueryProxy(t, primary, "scram-sha-256", pool.ModeSession, "not the password")
	host, port, _ := net.SplitHostPort(p.rw)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, "host="+host+" port="+port+" user=alice password=alice-pw dbname=postgres sslmode=disable")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != pgwire.ConnectionFailure ||
		!strings.Contains(pe.Message, `cannot look up the password of user "alice"`) || !strings.Contains(pe.Hint, "auth_user") {
		t.Fatalf("got %v, want 08006 about the auth_query", err)
	}
}

// TestAuthFileSCRAMSecretLogsIn: an auth_file may hold the SCRAM secret PostgreSQL stores
// (as PgBouncer's may); the proxy logs in to PostgreSQL as that user with the key the client's
// proof revealed. Before, such a user could authenticate to the proxy but not reach PostgreSQL.
func TestAuthFileSCRAMSecretLogsIn(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{{Name: "alice", Password: "alice-pw"}}})
	secret := primary.QueryString(t, "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")
	p := startAuthProxy(t, "scram-sha-256", primary, `"alice" "`+secret+`"`+"\n")
	host, port, _ := net.SplitHostPort(p.rw)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, "host="+host+" port="+port+" user=alice password=alice-pw dbname=postgres sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var who string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "alice" {
		t.Fatalf("current_user %q %v", who, err)
	}
}

// lookupFunction is the SECURITY DEFINER function docs/operations.md gives for an auth_user
// that is not a superuser (kept equal to the text there by TestOperationsDocLookupFunction).
const lookupFunction = `CREATE SCHEMA pgbastion;
CREATE FUNCTION pgbastion.user_lookup(username text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
  FROM pg_authid WHERE rolname = username AND rolcanlogin
$$;
REVOKE ALL ON FUNCTION pgbastion.user_lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbastion TO pgbastion_auth;
GRANT EXECUTE ON FUNCTION pgbastion.user_lookup(text) TO pgbastion_auth;`

// TestAuthQueryThroughALookupFunction: an unprivileged auth_user reads passwords only through
// the lookup function, in the one database that has it (auth_dbname).
func TestAuthQueryThroughALookupFunction(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{
		{Name: "alice", Password: "alice-pw"},
		{Name: "pgbastion_auth", Password: "auth-pw"},
	}})
	primary.Exec(t, "CREATE DATABASE app")
	primary.Exec(t, lookupFunction)
	if got := primary.QueryString(t, "SELECT has_table_privilege('pgbastion_auth', 'pg_authid', 'SELECT')::text"); got != "false" {
		t.Fatalf("pgbastion_auth reads pg_authid: %s", got)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Method: auth.MethodSCRAM, HideUnknownUsers: true, LookupByCaller: true})
	if err != nil {
		t.Fatal(err)
	}
	p := startProxyWith(t, func(c *engine.Config) {
		c.Auth = engine.AuthConfig{Method: "scram-sha-256", AuthUser: "pgbastion_auth", AuthPassword: "auth-pw",
			AuthQuery: "SELECT usename, passwd FROM pgbastion.user_lookup($1)", AuthDBName: "postgres"}
		c.Server = engine.ServerConfig{}
		c.HealthCheckUser, c.HealthCheckPassword = "postgres", primary.Password()
	}, engine.Options{Auth: v}, primary)
	host, port, _ := net.SplitHostPort(p.rw)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dsn := func(user, pw string) string {
		return "host=" + host + " port=" + port + " user=" + user + " password=" + pw + " dbname=app sslmode=disable"
	}
	conn, err := pgx.Connect(ctx, dsn("alice", "alice-pw"))
	if err != nil {
		t.Fatalf("alice into app: %v", err)
	}
	var who, db string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_database()").Scan(&who, &db); err != nil || who != "alice" || db != "app" {
		t.Fatalf("session %s/%s %v", who, db, err)
	}
	conn.Close(ctx)
	if _, err := pgx.Connect(ctx, dsn("alice", "wrong")); sqlState(err) != pgwire.InvalidPassword {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := pgx.Connect(ctx, dsn("nobody", "x")); sqlState(err) != pgwire.InvalidPassword {
		t.Fatalf("unknown user: %v", err)
	}
}

// TestREADMELookupFunction: the function the README tells operators to create is the one
// TestAuthQueryThroughALookupFunction runs.
func TestREADMELookupFunction(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), lookupFunction) {
		t.Fatal("README.md no longer shows lookupFunction as it is tested; update one or the other")
	}
}
