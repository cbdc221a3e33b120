package engine_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Servers that stream-path (TLS) clients used and gave back are placed on event loops that
// no plain client has visited yet, and plain clients that arrive later on those loops get
// them. (Event loops used to become known only with their first connection: a server the
// pool placed on an unknown loop went to another one, and the next client of that loop got
// a server living elsewhere, a recovered panic and a closed connection.)
func TestLoopsTLSClientsLeftServersOnServePlainClients(t *testing.T) {
	p, _ := consoleProxyWithTLS(t, 2)
	tlsDSN := overTLS(p.dsn(p.rw))
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			c, err := pgx.Connect(context.Background(), tlsDSN)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for n := range 100 {
				var v int
				if err := c.QueryRow(context.Background(), "SELECT $1::int", n).Scan(&v); err != nil || v != n {
					errs <- fmt.Errorf("over TLS: %d, %v", v, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Held open together, so gnet spreads them over both loops.
	var conns []*pgx.Conn
	for range 4 {
		conns = append(conns, connect(t, p.dsn(p.rw)))
	}
	for i, c := range conns {
		if v := queryInt(t, c, "SELECT $1::int", i); v != int64(i) {
			t.Fatalf("plain client %d: %d", i, v)
		}
	}
	if n := p.e.Metrics().Panics(); n != 0 {
		t.Fatalf("%d panics recovered", n)
	}
}
