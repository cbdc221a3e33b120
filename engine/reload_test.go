package engine_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// awaitPool waits until the proxy's only pool satisfies ok.
func awaitPool(t *testing.T, p *proxy, what string, ok func(engine.PoolStats) bool) {
	t.Helper()
	waitFor(t, what, func() bool {
		st := p.e.Stats()
		return len(st.Pools) == 1 && ok(st.Pools[0])
	})
}

func findChange(changes []engine.Change, key string) (engine.Change, bool) {
	for _, c := range changes {
		if c.Key == key {
			return c, true
		}
	}
	return engine.Change{}, false
}

// TestReloadPoolLimits: a reload that raises default_pool_size serves a client that waits for
// a server while another holds the only one in a transaction; a setting that takes a restart
// (listen_rw) is reported and left alone; an invalid configuration changes nothing.
func TestReloadPoolLimits(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode, c.Pool.DefaultPoolSize = pool.ModeTransaction, 1
		c.EventLoops = 1 // the waiting client and the holder share the one loop's pool share
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	holder := connect(t, p.dsn(p.rw))
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	waiter := connect(t, p.dsn(p.rw))
	defer waiter.Close(ctx)
	got := make(chan error, 1)
	go func() {
		var n int
		err := waiter.QueryRow(ctx, "SELECT 2").Scan(&n)
		if err == nil && n != 2 {
			err = pgx.ErrNoRows
		}
		got <- err
	}()
	awaitPool(t, p, "a client waits for the pool's only server", func(ps engine.PoolStats) bool { return ps.Waiting == 1 && ps.Open == 1 })

	next := p.cfg
	next.Pool.DefaultPoolSize = 2
	next.ListenRW = freeAddr(t)
	changes, err := p.e.Reload(next, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := findChange(changes, "proxy.pool.default_pool_size"); !ok || !c.Applied || c.Old != "1" || c.New != "2" {
		t.Errorf("default_pool_size change: %+v (all: %v)", c, changes)
	}
	if c, ok := findChange(changes, "proxy.listen_rw"); !ok || c.Applied {
		t.Errorf("listen_rw change should be reported as taking a restart: %+v", c)
	}
	if len(changes) != 2 {
		t.Errorf("changes %v, want exactly default_pool_size and listen_rw", changes)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the waiting client after the pool grew: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting client got no server within 20s of the pool growing to 2")
	}
	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("the transaction that held the first server: %v", err)
	}
	awaitPool(t, p, "the pool reports its new size", func(ps engine.PoolStats) bool { return ps.Size == 2 && ps.Open == 2 })
	// The old listener still serves: listen_rw waits for a restart.
	c := connect(t, p.dsn(p.rw))
	c.Close(ctx)

	// Invalid: min_pool_size above default_pool_size. Nothing changes.
	bad := next
	bad.Pool.MinPoolSize, bad.Pool.DefaultPoolSize = 5, 3
	if _, err := p.e.Reload(bad, nil, nil); err == nil || !strings.Contains(err.Error(), "min_pool_size") {
		t.Fatalf("invalid reload: %v, want an error naming min_pool_size", err)
	}
	awaitPool(t, p, "the pool keeps its size after a refused reload", func(ps engine.PoolStats) bool { return ps.Size == 2 })

	// Reloading the same file again reports what still waits for a restart, and nothing else.
	changes, err = p.e.Reload(next, nil, nil)
	if err != nil || len(changes) != 1 || changes[0].Key != "proxy.listen_rw" || changes[0].Applied {
		t.Fatalf("second reload of the same file: %v %v", changes, err)
	}
}

// TestReloadAuthFile: a reload with a new auth_file lets a user that was added log in, refuses
// one that was removed (28P01, as an unknown user), and leaves sessions already open alone.
func TestReloadAuthFile(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, &pgtest.Options{Auth: pgtest.SCRAM, Roles: []pgtest.Role{
		{Name: "alice", Password: "alice-pw"},
		{Name: "bob", Password: "bob-pw"},
		{Name: "carol", Password: "carol-pw"},
	}})
	p := startAuthProxy(t, "scram-sha-256", primary, "\"alice\" \"alice-pw\"\n\"bob\" \"bob-pw\"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	login := func(user string) (*pgx.Conn, error) {
		return pgx.Connect(ctx, p.dsn(p.rw)+" user="+user+" password="+user+"-pw")
	}
	bob, err := login("bob")
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close(ctx)
	if _, err := login("carol"); sqlState(err) != pgwire.InvalidPassword {
		t.Fatalf("carol before the reload: %v, want 28P01", err)
	}

	// The operator edits the auth_file (same path): carol in, bob out.
	if err := os.WriteFile(p.cfg.Auth.AuthFile, []byte("\"alice\" \"alice-pw\"\n\"carol\" \"carol-pw\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := auth.LoadUserlist(p.cfg.Auth.AuthFile)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Method: auth.MethodSCRAM, Secrets: users, HideUnknownUsers: true})
	if err != nil {
		t.Fatal(err)
	}
	changes, err := p.e.Reload(p.cfg, v, users)
	if err != nil || len(changes) != 0 {
		t.Fatalf("reload with the same YAML: changes %v, %v", changes, err)
	}
	for _, user := range []string{"carol", "alice"} {
		c, err := login(user)
		if err != nil {
			t.Fatalf("%s after the reload: %v", user, err)
		}
		var who string
		if err := c.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != user {
			t.Fatalf("%s: current_user %q %v", user, who, err)
		}
		c.Close(ctx)
	}
	if _, err := login("bob"); sqlState(err) != pgwire.InvalidPassword {
		t.Fatalf("bob after the reload: %v, want 28P01", err)
	}
	// bob's session from before the reload goes on.
	var one int
	if err := bob.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("bob's open session after the reload: %d %v", one, err)
	}
}

// copyFile copies src to dst, mode 0600.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReloadTLS: a reload turns TLS on (require refuses plaintext clients from then on), and a
// reload with an unchanged YAML picks up a renewed certificate at the same paths; a missing
// key file is refused and the certificate in use stays.
func TestReloadTLS(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, nil, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first, second := pgtest.Certs(t), pgtest.Certs(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	copyFile(t, first.ServerCert, cert)
	copyFile(t, first.ServerKey, key)
	verifyWith := func(ca string) error {
		c, err := pgx.Connect(ctx, p.dsn(p.rw, "sslmode=verify-full sslrootcert="+ca))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	if err := verifyWith(first.CACert); err == nil {
		t.Fatal("TLS before it was configured: connected")
	}

	next := p.cfg
	next.TLS = engine.TLSConfig{Mode: "require", Cert: cert, Key: key}
	changes, err := p.e.Reload(next, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		if !strings.HasPrefix(c.Key, "proxy.tls.") || !c.Applied {
			t.Errorf("unexpected change %v", c)
		}
	}
	if err := verifyWith(first.CACert); err != nil {
		t.Fatalf("TLS after the reload: %v", err)
	}
	if c, err := pgx.Connect(ctx, p.dsn(p.rw)); err == nil || sqlState(err) != pgwire.InvalidAuthorization {
		if c != nil {
			c.Close(ctx)
		}
		t.Fatalf("plaintext client with tls.mode require: %v, want 28000", err)
	}

	// Renewal: new files at the same paths, the same YAML.
	copyFile(t, second.ServerCert, cert)
	copyFile(t, second.ServerKey, key)
	if changes, err := p.e.Reload(next, nil, nil); err != nil || len(changes) != 0 {
		t.Fatalf("reload after renewal: %v %v", changes, err)
	}
	if err := verifyWith(second.CACert); err != nil {
		t.Fatalf("after renewal, the new certificate: %v", err)
	}
	if err := verifyWith(first.CACert); err == nil {
		t.Fatal("after renewal, the old CA still verifies the proxy")
	}

	// A key that went missing: refused, the renewed certificate stays in use.
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	if _, err := p.e.Reload(next, nil, nil); err == nil || !strings.Contains(err.Error(), "proxy.tls") {
		t.Fatalf("reload without the key file: %v, want an error naming proxy.tls", err)
	}
	if err := verifyWith(second.CACert); err != nil {
		t.Fatalf("after a refused reload: %v", err)
	}
}

// TestReloadBackends: a standalone proxy's reload adds a replica (the read-only port routes to
// it once its role is known) and removes it again (the read-only port falls back to the
// primary); health_check_interval applies too. A cluster member has no backends to reload.
func TestReloadBackends(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	replica := primary.AddReplica(t, nil)
	p := startProxy(t, nil, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	roReaches := func(inRecovery bool) {
		t.Helper()
		waitFor(t, fmt.Sprintf("the read-only port to reach a server with pg_is_in_recovery() = %v", inRecovery), func() bool {
			c, err := pgx.Connect(ctx, p.dsn(p.ro))
			var got bool
			if err == nil {
				err = c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&got)
				c.Close(ctx)
			}
			return err == nil && got == inRecovery
		})
	}
	roReaches(false) // no replica: the primary serves reads

	next := p.cfg
	next.Backends = append(append([]engine.BackendConfig(nil), next.Backends...),
		engine.BackendConfig{Host: replica.Host(), Port: replica.Port(), Name: replica.Name()})
	next.HealthCheckInterval = 500 * time.Millisecond
	changes, err := p.e.Reload(next, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"proxy.backends", "proxy.health_check_interval"} {
		if c, ok := findChange(changes, key); !ok || !c.Applied {
			t.Errorf("%s: %+v (all: %v)", key, c, changes)
		}
	}
	roReaches(true)

	changes, err = p.e.Reload(p.cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := findChange(changes, "proxy.backends"); !ok || !c.Applied {
		t.Errorf("removing the replica: %+v", c)
	}
	roReaches(false)
}

// TestOperatorPauseAndResume: Pause holds new transactions on both ports while one in flight
// finishes; it reports that transaction while it lasts; Resume lets the held clients go on
// without an error; a client held past query_wait_timeout gets an error that names the pause.
func TestOperatorPauseAndResume(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	p := startProxy(t, func(c *engine.Config) { c.Pool.Mode = pool.ModeTransaction }, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	inTx := connect(t, p.dsn(p.rw))
	defer inTx.Close(ctx)
	rw := connect(t, p.dsn(p.rw))
	defer rw.Close(ctx)
	ro := connect(t, p.dsn(p.ro))
	defer ro.Close(ctx)
	if _, err := inTx.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	n, err := p.e.Pause(short)
	cancelShort()
	if err == nil || n != 1 {
		t.Fatalf("Pause with a transaction open: %d in flight, %v; want 1 and an error", n, err)
	}
	if st := p.e.Stats(); !st.Paused || st.InFlight != 1 {
		t.Fatalf("stats while paused: %+v", st)
	}
	results := make(chan error, 2)
	for _, c := range []*pgx.Conn{rw, ro} {
		go func() {
			var v int
			results <- c.QueryRow(ctx, "SELECT 7").Scan(&v)
		}()
	}
	waitFor(t, "the two clients held by the pause", func() bool { return p.e.Stats().Held == 2 })
	// The transaction in flight finishes; then the pause is complete.
	if _, err := inTx.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("the transaction in flight during the pause: %v", err)
	}
	if n, err := p.e.Pause(ctx); err != nil || n != 0 {
		t.Fatalf("Pause after the commit: %d, %v", n, err)
	}
	select {
	case err := <-results:
		t.Fatalf("a client got an answer while paused: %v", err)
	default:
	}
	p.e.Resume()
	for range 2 {
		if err := <-results; err != nil {
			t.Fatalf("a held client after the resume: %v", err)
		}
	}
	if st := p.e.Stats(); st.Paused || st.Held != 0 {
		t.Fatalf("stats after the resume: %+v", st)
	}

	// Held past query_wait_timeout: 57014 naming the pause and how to end it.
	next := p.cfg
	next.Pool.QueryWaitTimeout = 300 * time.Millisecond
	if _, err := p.e.Reload(next, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := p.e.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.e.Resume()
	_, err = rw.Exec(ctx, "SELECT 1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != pgwire.QueryCanceled || !strings.Contains(pe.Message, "stayed paused") || !strings.Contains(pe.Hint, "ctl proxy resume") {
		t.Fatalf("held past query_wait_timeout: %v (%+v)", err, pe)
	}
}

// PAUSE db holds the new transactions of that database only and returns once its
// transactions in flight have finished; other databases go on; RESUME db lets them go.
func TestPauseOneDatabase(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	primary.Exec(t, "CREATE DATABASE other")
	p := startProxy(t, func(c *engine.Config) {
		c.Pool.Mode = pool.ModeTransaction
		c.AdminUsers = []string{"postgres"}
	}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	simple := pgx.QueryExecModeSimpleProtocol
	otherDSN := strings.Replace(p.dsn(p.rw), "dbname=postgres", "dbname=other", 1)
	admin := connect(t, p.dsn(p.rw, "dbname=pgbouncer"))
	main, inTx, held := connect(t, p.dsn(p.rw)), connect(t, otherDSN), connect(t, otherDSN)
	if _, err := inTx.Exec(ctx, "BEGIN; SELECT 1", simple); err != nil {
		t.Fatal(err)
	}
	paused := make(chan error, 1)
	go func() {
		tag, err := admin.Exec(ctx, "PAUSE other", simple)
		if err == nil && tag.String() != "PAUSE" {
			err = fmt.Errorf("tag %q", tag)
		}
		paused <- err
	}()
	waitFor(t, "database other paused", func() bool { return fmt.Sprint(p.e.Stats().PausedDatabases) == "[other]" })
	if _, err := main.Exec(ctx, "SELECT 1", simple); err != nil {
		t.Fatalf("a transaction on another database during the pause: %v", err)
	}
	answer := make(chan error, 1)
	go func() {
		var v int
		answer <- held.QueryRow(ctx, "SELECT 7", simple).Scan(&v)
	}()
	waitFor(t, "the client of other held", func() bool { return p.e.Stats().Held == 1 })
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned with a transaction in flight: %v", err)
	default:
	}
	if _, err := inTx.Exec(ctx, "COMMIT", simple); err != nil {
		t.Fatalf("the transaction in flight during the pause: %v", err)
	}
	if err := <-paused; err != nil {
		t.Fatalf("PAUSE other: %v", err)
	}
	var pe *pgconn.PgError
	if _, err := admin.Exec(ctx, "RESUME postgres", simple); !errors.As(err, &pe) || pe.Code != pgwire.UndefinedObject {
		t.Errorf("RESUME of a database not paused: %v", err)
	}
	select {
	case err := <-answer:
		t.Fatalf("the held client got an answer while paused: %v", err)
	default:
	}
	if _, err := admin.Exec(ctx, "RESUME other", simple); err != nil {
		t.Fatal(err)
	}
	if err := <-answer; err != nil {
		t.Fatalf("the held client after RESUME other: %v", err)
	}
	if st := p.e.Stats(); len(st.PausedDatabases) != 0 || st.Held != 0 {
		t.Fatalf("stats after the resume: %+v", st)
	}
}
