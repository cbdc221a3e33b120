package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

func TestMain(m *testing.M) { daemon.Main(m) }

// Poll interval of the condition waits in this package.
const poll = 10 * time.Millisecond

// cluster is a primary with one streaming replica.
type cluster struct {
	primary, replica *pgtest.Instance
}

func newCluster(t *testing.T, opts *pgtest.Options) *cluster {
	t.Helper()
	primary := pgtest.Start(t, opts)
	replica := primary.AddReplica(t, nil)
	return &cluster{primary: primary, replica: replica}
}

// port is one of the proxy's two listeners, and the server it must route to.
type port struct {
	name   string // "rw" or "ro"
	addr   string
	server *pgtest.Instance
	// recovery is pg_is_in_recovery() of the server behind it.
	recovery bool
}

func (c *cluster) ports(d *daemon.Daemon) []port {
	return []port{
		{name: "rw", addr: d.RW(), server: c.primary, recovery: false},
		{name: "ro", addr: d.RO(), server: c.replica, recovery: true},
	}
}

// startProxy runs the pgbastion binary in front of the cluster in the given pool mode and
// checks that each port routes where it should.
func (c *cluster) startProxy(t *testing.T, mode pool.Mode, mutate func(*daemon.FileConfig)) *daemon.Daemon {
	t.Helper()
	cfg := daemon.NewConfig(t, c.primary, c.replica)
	cfg.Proxy.Pool.Mode = mode
	if mutate != nil {
		mutate(cfg)
	}
	d := daemon.Start(t, cfg)
	t.Cleanup(func() {
		// A panic the engine recovered from is still a bug in these scenarios.
		if n := strings.Count(d.Log(), "recovered from a panic"); n > 0 {
			t.Errorf("pgbastion recovered from %d panic(s); see its log", n)
		}
	})
	var extra []string
	if cfg.Proxy.TLS.Mode == "require" || strings.HasPrefix(cfg.Proxy.TLS.Mode, "verify") {
		extra = append(extra, "sslmode=require")
	}
	for _, p := range c.ports(d) {
		if got := inRecovery(t, daemon.ConnString(p.addr, extra...)); got != p.recovery {
			t.Fatalf("%s port reached a server with pg_is_in_recovery() = %v", p.name, got)
		}
	}
	return d
}

func inRecovery(t *testing.T, dsn string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	defer conn.Close(context.Background())
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		t.Fatalf("pg_is_in_recovery() through %s: %v", dsn, err)
	}
	return rec
}

// eventually polls cond every poll until it returns true or timeout passes; it returns the
// time it took, or fails the test with the last error.
func eventually(t testing.TB, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return time.Since(start)
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, last)
		case <-time.After(poll):
		}
	}
}

// waitActive waits until the server runs query (pg_stat_activity state active) and returns
// the backend's pid.
func waitActive(t testing.TB, server *pgtest.Instance, query string) int {
	t.Helper()
	var pid int
	eventually(t, 10*time.Second, "query "+query+" to run on "+server.Name(), func(ctx context.Context) (bool, error) {
		conn, err := server.Connect(ctx)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		err = conn.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active'`, query).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	return pid
}

// pgCode returns the SQLSTATE of err, or "" when it carries none.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func describe(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s %s: %s (hint: %s)", pe.Severity, pe.Code, pe.Message, pe.Hint)
	}
	return fmt.Sprint(err)
}

func splitAddr(t testing.TB, addr string) (host, port string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}
