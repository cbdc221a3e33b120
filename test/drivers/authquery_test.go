package drivers

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire/auth"
	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// authProbeJava connects with pgjdbc as PGUSER/PGPASSWORD and prints current_user twice (two
// transactions, so in transaction mode each may take a server).
const authProbeJava = `import java.sql.*;
public class AuthProbe {
  public static void main(String[] a) throws Exception {
    String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/postgres?sslmode=disable";
    try (Connection c = DriverManager.getConnection(url, System.getenv("PGUSER"), System.getenv("PGPASSWORD"))) {
      for (int i = 0; i < 2; i++) {
        try (ResultSet r = c.createStatement().executeQuery("SELECT current_user")) { r.next(); System.out.println(r.getString(1)); }
      }
    }
  }
}
`

// TestAuthQueryWithEveryDriver: with passwords looked up in PostgreSQL (auth_query) and no
// password the proxy could log in with itself, each driver's own SCRAM implementation logs in
// and its session is its user's: the proxy reaches PostgreSQL only with the key the driver's
// proof revealed (a fresh proxy per driver, so no other client's key can serve). A wrong
// password is refused with PostgreSQL's message.
func TestAuthQueryWithEveryDriver(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	pg := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{{Name: "alice", Password: "alice-pw-1"}}})
	psql := pgtest.Program(t, "psql")

	type probe struct {
		name string
		need func(t *testing.T)
		dir  string
		cmd  func(t *testing.T) []string
	}
	var javaClasses, jar string
	probes := []probe{
		{"libpq (psql)", func(*testing.T) {}, ".",
			func(*testing.T) []string {
				return []string{psql, "-X", "-At", "-c", "SELECT current_user", "-c", "SELECT current_user"}
			}},
		{"asyncpg", func(t *testing.T) { python(t, "asyncpg") }, ".",
			func(t *testing.T) []string {
				return []string{python(t), "-c", `import asyncio, asyncpg
async def main():
    c = await asyncpg.connect(ssl=False)
    for _ in range(2):
        print(await c.fetchval("SELECT current_user"))
    await c.close()
asyncio.run(main())`}
			}},
		{"node-postgres", nodeModules, "node",
			func(*testing.T) []string {
				return []string{"node", "-e", `const { Client } = require("pg");
(async () => {
  const c = new Client();
  await c.connect();
  for (let i = 0; i < 2; i++) console.log((await c.query("SELECT current_user AS u")).rows[0].u);
  await c.end();
})().catch((e) => { console.error(e.message); process.exit(1); });`}
			}},
		{"pgjdbc", func(t *testing.T) {
			pgtest.Require(t, pgtest.Commands("java", "javac"))
			jar = pgjdbcJar(t)
			javaClasses = t.TempDir()
			src := filepath.Join(javaClasses, "AuthProbe.java")
			if err := os.WriteFile(src, []byte(authProbeJava), 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, 2*time.Minute, ".", os.Environ(), "javac", "-d", javaClasses, "-cp", jar, src)
		}, ".", func(*testing.T) []string {
			return []string{"java", "-cp", javaClasses + string(filepath.ListSeparator) + jar, "AuthProbe"}
		}},
	}
	for _, p := range probes {
		t.Run(p.name, func(t *testing.T) {
			p.need(t)
			addr := startAuthQueryProxy(t, pg)
			host, port, _ := net.SplitHostPort(addr)
			env := func(password string) []string {
				return append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=alice", "PGPASSWORD="+password,
					"PGDATABASE=postgres", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
			}
			cmd := p.cmd(t)
			out := run(t, 2*time.Minute, p.dir, env("alice-pw-1"), cmd[0], cmd[1:]...)
			if got := strings.TrimSpace(out); got != "alice\nalice" {
				t.Fatalf("output %q, want alice twice", got)
			}
			stdout, stderr, err := runProgram(2*time.Minute, p.dir, env("wrong"), cmd[0], cmd[1:]...)
			if err == nil || !strings.Contains(stdout+stderr, `password authentication failed for user "alice"`) {
				t.Fatalf("wrong password: err %v\nstdout %s\nstderr %s", err, stdout, stderr)
			}
		})
	}
}

// startAuthQueryProxy starts a transaction-mode proxy in front of pg with scram-sha-256,
// no auth_file, auth_query as the superuser, and no proxy.server user; it returns the
// read-write address.
func startAuthQueryProxy(t *testing.T, pg *pgtest.Instance) string {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.ListenRW, cfg.ListenRO = pgtest.FreeAddrPair(t)
	cfg.EventLoops = 1
	cfg.Backends = []engine.BackendConfig{{Host: pg.Host(), Port: pg.Port(), Name: pg.Name()}}
	cfg.Pool.Mode, cfg.Pool.DefaultPoolSize = pool.ModeTransaction, poolSize
	cfg.Auth = engine.AuthConfig{Method: "scram-sha-256", AuthUser: pgtest.Superuser, AuthPassword: pg.Password()}
	cfg.HealthCheckUser, cfg.HealthCheckPassword = pgtest.Superuser, pg.Password()
	v, err := auth.NewVerifier(auth.VerifierConfig{Method: auth.MethodSCRAM, HideUnknownUsers: true, LookupByCaller: true})
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.New(cfg, engine.Options{Auth: v, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-e.Ready():
	case err := <-done:
		t.Fatalf("proxy did not start: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.Stats().Primary == "" {
		if time.Now().After(deadline) {
			t.Fatal("the proxy found no primary within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cfg.ListenRW
}
