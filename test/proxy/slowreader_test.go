package proxy_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
)

// slowReaderRows rows of 1 MiB each: 1 GiB in all.
const slowReaderRows = 1024

// TestSlowReader (issue 2, done-when 4): a client stops reading while the server sends 1 GiB.
// The proxy must stop reading the server too (PostgreSQL ends up waiting in ClientWrite), its
// RSS must grow by less than 64 MiB, and when the client reads again it gets every byte.
func TestSlowReader(t *testing.T) {
	t.Parallel()
	c := newCluster(t, nil)
	for _, mode := range []pool.Mode{pool.ModeSession, pool.ModeTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			d := c.startProxy(t, mode, nil)
			slowReader(t, c, d)
		})
	}
}

func slowReader(t *testing.T, c *cluster, d *daemon.Daemon) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pc, err := pgconn.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatal(err)
	}
	hj, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	before, err := d.RSS()
	if err != nil {
		t.Fatal(err)
	}
	const query = "SELECT repeat('x', 1048576) FROM generate_series(1, 1024) /* slow reader */"
	hj.Frontend.Send(&pgproto3.Query{String: query})
	if err := hj.Frontend.Flush(); err != nil {
		t.Fatal(err)
	}
	// Not reading: the bytes pile up until the proxy stops reading PostgreSQL, which then
	// blocks writing to the proxy.
	waited := eventually(t, 2*time.Minute, "PostgreSQL blocked in ClientWrite", func(ctx context.Context) (bool, error) {
		var n int
		err := c.primary.Conn(t).QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE query LIKE '%slow reader%' AND wait_event = 'ClientWrite' AND pid <> pg_backend_pid()`).Scan(&n)
		return n == 1, err
	})
	// Hold the client still a little longer and watch the proxy's memory.
	var peak int64
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		rss, err := d.RSS()
		if err != nil {
			t.Fatal(err)
		}
		peak = max(peak, rss)
	}
	grew := peak - before
	t.Logf("backpressure reached PostgreSQL after %s; proxy RSS %0.1f MiB before, %0.1f MiB peak (grew %0.1f MiB)",
		waited.Round(time.Millisecond), mb(before), mb(peak), mb(grew))
	if grew >= 64<<20 {
		t.Fatalf("proxy RSS grew by %0.1f MiB while the client did not read (limit 64 MiB)", mb(grew))
	}
	// Now read everything and check every byte.
	_ = hj.Conn.SetReadDeadline(time.Now().Add(4 * time.Minute))
	want := bytes.Repeat([]byte{'x'}, 1<<20)
	rows, total := 0, int64(0)
	for {
		msg, err := hj.Frontend.Receive()
		if err != nil {
			t.Fatalf("after %d rows: %v", rows, err)
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
		case *pgproto3.DataRow:
			if len(m.Values) != 1 || !bytes.Equal(m.Values[0], want) {
				t.Fatalf("row %d is not 1 MiB of 'x'", rows)
			}
			rows++
			total += int64(len(m.Values[0]))
		case *pgproto3.CommandComplete:
			if string(m.CommandTag) != "SELECT 1024" {
				t.Fatalf("command tag %q", m.CommandTag)
			}
		case *pgproto3.ReadyForQuery:
			if rows != slowReaderRows {
				t.Fatalf("received %d rows, want %d", rows, slowReaderRows)
			}
			t.Logf("received all %d rows (%0.1f MiB)", rows, mb(total))
			// The connection still works after the large result.
			hj.Frontend.Send(&pgproto3.Query{String: "SELECT 1"})
			if err := hj.Frontend.Flush(); err != nil {
				t.Fatal(err)
			}
			for {
				msg, err := hj.Frontend.Receive()
				if err != nil {
					t.Fatalf("query after the large result: %v", err)
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					return
				}
				if e, ok := msg.(*pgproto3.ErrorResponse); ok {
					t.Fatalf("query after the large result: %s", e.Message)
				}
			}
		case *pgproto3.ErrorResponse:
			t.Fatalf("error after %d rows: %s %s", rows, m.Code, m.Message)
		}
	}
}
