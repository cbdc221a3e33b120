package engine_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestPerDatabaseAndUserPoolLimits: proxy.databases.NAME.pool_size bounds one database's pool
// (the others keep default_pool_size), proxy.users.NAME.max_user_connections bounds a user's
// servers over all its databases, a client past either waits and gets query_wait_timeout's
// error, and a reload moves both.
func TestPerDatabaseAndUserPoolLimits(t *testing.T) {
	pgtest.Require(t, pgtest.PostgreSQL())
	primary := pgtest.Start(t, nil)
	primary.Exec(t, "CREATE DATABASE small")
	one := 1
	p := startProxyWith(t, func(c *engine.Config) {
		c.Pool.DefaultPoolSize = 10
		c.Pool.QueryWaitTimeout = time.Second
		c.Databases = map[string]engine.DatabasePool{"small": {PoolSize: &one}}
		c.Users = map[string]engine.UserPool{"postgres": {MaxUserConnections: 3}, "batch": {MaxUserConnections: 7}}
		c.AdminUsers = []string{"postgres"}
	}, engine.Options{}, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func(db string) (*pgx.Conn, error) {
		c, err := pgx.Connect(ctx, p.dsn(p.rw, "dbname="+db))
		if err == nil {
			t.Cleanup(func() { c.Close(context.Background()) })
		}
		return c, err
	}
	// Session mode: each open client holds a server.
	if _, err := open("small"); err != nil {
		t.Fatal(err)
	}
	if _, err := open("small"); sqlState(err) != pgwire.QueryCanceled {
		t.Fatalf("a second client of small (pool_size 1): %v, want query_wait_timeout's 57014", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := open("postgres"); err != nil {
			t.Fatalf("postgres client %d: %v", i+1, err)
		}
	}
	// Three servers are open for the user postgres (small's and two of postgres's).
	if _, err := open("postgres"); sqlState(err) != pgwire.QueryCanceled {
		t.Fatalf("a fourth server for user postgres (max_user_connections 3): %v, want 57014", err)
	}
	// SHOW USERS: the user's bound and its open servers; a configured user without pools too.
	// (The console's own connection holds no server.)
	con := connect(t, consoleDSN(p))
	cols, rows := consoleRows(t, con, "SHOW USERS")
	if got := fmt.Sprint(cols, rows); got != "[name pool_mode max_user_connections current_connections] [[batch session 7 0] [postgres session 3 3]]" {
		t.Fatalf("SHOW USERS: %s", got)
	}
	next := p.cfg
	two := 2
	next.Databases = map[string]engine.DatabasePool{"small": {PoolSize: &two}}
	next.Users = map[string]engine.UserPool{"postgres": {MaxUserConnections: 5}}
	if _, err := p.e.Reload(next, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := open("small"); err != nil {
		t.Fatalf("small after its pool_size went to 2: %v", err)
	}
	if _, err := open("postgres"); err != nil {
		t.Fatalf("postgres after max_user_connections went to 5: %v", err)
	}
	if _, err := open("postgres"); sqlState(err) != pgwire.QueryCanceled {
		t.Fatalf("a sixth server for user postgres: %v, want 57014", err)
	}
}
