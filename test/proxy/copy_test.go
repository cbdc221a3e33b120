package proxy_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/pool"
	"github.com/pgbastion/pgbastion/test/daemon"
)

// copyBytes is the size of the COPY data set: 200 MB, as the issue asks.
const copyBytes = 200 << 20

// rowGen produces the COPY text of a deterministic table (id bigint, payload text) and hashes
// everything it produced. The values are canonical (no escapes, no leading zeros), so COPY TO
// of the table ordered by id gives back exactly the same bytes.
type rowGen struct {
	limit   int64
	rng     *rand.Rand
	buf     []byte
	off     int
	rows    int64
	written int64
	sum     hash.Hash
	// sent counts the bytes handed to COPY so far, for the stall watchdog.
	sent atomic.Int64
}

func newRowGen(limit int64) *rowGen {
	return &rowGen{limit: limit, rng: rand.New(rand.NewPCG(2, 200)), sum: sha256.New()}
}

const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_+*/=!?#%&()[]{}<>@$^~|'\""

func (g *rowGen) Read(p []byte) (int, error) {
	if g.off == len(g.buf) {
		if g.written >= g.limit {
			return 0, io.EOF
		}
		g.buf, g.off = g.buf[:0], 0
		for len(g.buf) < 64<<10 && g.written+int64(len(g.buf)) < g.limit {
			g.rows++
			g.buf = strconv.AppendInt(g.buf, g.rows, 10)
			g.buf = append(g.buf, '\t')
			n := 100 + g.rng.IntN(200) // varying row sizes cross message boundaries everywhere
			for range n {
				g.buf = append(g.buf, alphabet[g.rng.IntN(len(alphabet))])
			}
			g.buf = append(g.buf, '\n')
		}
		g.sum.Write(g.buf)
		g.written += int64(len(g.buf))
	}
	n := copy(p, g.buf[g.off:])
	g.off += n
	g.sent.Add(int64(n))
	return n, nil
}

// countingHash is an io.Writer that hashes and counts what COPY TO delivers.
type countingHash struct {
	sum hash.Hash
	n   int64
	got atomic.Int64 // n, for the stall watchdog
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	c.got.Store(c.n)
	return c.sum.Write(p)
}

// stallTimeout: a COPY that moves no byte for this long has stalled. Throughput itself is not
// bounded (a loaded CI machine and a race-enabled daemon are slow), progress is; the sort
// before COPY TO's first byte takes a few seconds on an idle machine.
const stallTimeout = 2 * time.Minute

// watchdog cancels ctx when progress() stays the same for stallTimeout, naming what stalled.
func watchdog(ctx context.Context, what string, progress func() int64) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		last, since := progress(), time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if p := progress(); p != last {
				last, since = p, time.Now()
			} else if time.Since(since) > stallTimeout {
				cancel(fmt.Errorf("%s stalled: no progress for %v at byte %d", what, stallTimeout, p))
				return
			}
		}
	}()
	return ctx, func() { cancel(nil) }
}

// TestCopy200MB (issue 2, done-when 1): 200 MB of COPY FROM STDIN through the read-write port
// reach the primary intact, and COPY TO STDOUT gives back the very same bytes (SHA-256) through
// the read-write port from the primary and through the read-only port from the replica once it
// has caught up. Session mode.
func TestCopy200MB(t *testing.T) {
	t.Parallel()
	c := newCluster(t, nil)
	c.primary.Exec(t, "CREATE TABLE copy_data (id bigint NOT NULL, payload text NOT NULL)")
	d := c.startProxy(t, pool.ModeSession, nil)
	ctx := t.Context()

	gen := newRowGen(copyBytes)
	in, err := pgconn.Connect(ctx, daemon.ConnString(d.RW()))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close(context.Background())
	start := time.Now()
	wctx, stop := watchdog(ctx, "COPY FROM STDIN via rw", gen.sent.Load)
	tag, err := in.CopyFrom(wctx, gen, "COPY copy_data (id, payload) FROM STDIN")
	stop()
	if err != nil {
		t.Fatalf("COPY FROM STDIN through rw: %v (%v)", describe(err), context.Cause(wctx))
	}
	took := time.Since(start)
	t.Logf("COPY FROM STDIN via rw: %d rows, %.1f MB in %v: %.1f MB/s", gen.rows, mb(gen.written), took.Round(time.Millisecond),
		mb(gen.written)/took.Seconds())
	if tag.RowsAffected() != gen.rows {
		t.Fatalf("COPY reported %d rows, sent %d", tag.RowsAffected(), gen.rows)
	}
	if got := c.primary.QueryString(t, "SELECT count(*) FROM copy_data"); got != strconv.FormatInt(gen.rows, 10) {
		t.Fatalf("primary holds %s rows, sent %d", got, gen.rows)
	}
	want := fmt.Sprintf("%x", gen.sum.Sum(nil))
	c.replica.WaitCatchUp(t)
	if got := c.replica.QueryString(t, "SELECT count(*) FROM copy_data"); got != strconv.FormatInt(gen.rows, 10) {
		t.Fatalf("replica holds %s rows, want %d", got, gen.rows)
	}

	var wg sync.WaitGroup
	for _, p := range c.ports(d) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := copyOut(ctx, t, p, gen.written, want); err != nil {
				t.Errorf("COPY TO STDOUT via %s: %v", p.name, err)
			}
		}()
	}
	wg.Wait()
	if rss, err := d.RSS(); err == nil {
		t.Logf("pgbastion RSS after the copies: %.1f MiB", mb(rss))
	}
}

// copyOut reads the table back through p and compares size and SHA-256 with what was sent.
func copyOut(ctx context.Context, t *testing.T, p port, size int64, want string) error {
	conn, err := pgconn.Connect(ctx, daemon.ConnString(p.addr))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Checks that this session really is on the intended server, and gives the sort below the
	// memory to run without temporary files.
	res := conn.ExecParams(ctx, "SELECT pg_is_in_recovery()::text, set_config('work_mem', '512MB', false)",
		nil, nil, nil, nil).Read()
	if res.Err != nil {
		return res.Err
	}
	if rec := string(res.Rows[0][0]); rec != strconv.FormatBool(p.recovery) {
		return fmt.Errorf("session is on a server with pg_is_in_recovery() = %s", rec)
	}
	h := &countingHash{sum: sha256.New()}
	start := time.Now()
	// ORDER BY: the heap keeps rows in no particular order (COPY's multi-insert batches fill
	// pages out of insertion order).
	wctx, stop := watchdog(ctx, "COPY TO STDOUT via "+p.name, h.got.Load)
	tag, err := conn.CopyTo(wctx, h, "COPY (SELECT id, payload FROM copy_data ORDER BY id) TO STDOUT")
	stop()
	if err != nil {
		return fmt.Errorf("after %d bytes: %s (%v)", h.n, describe(err), context.Cause(wctx))
	}
	took := time.Since(start)
	t.Logf("COPY TO STDOUT via %s (from %s): %d rows, %.1f MB in %v: %.1f MB/s", p.name, p.server.Name(), tag.RowsAffected(),
		mb(h.n), took.Round(time.Millisecond), mb(h.n)/took.Seconds())
	got := fmt.Sprintf("%x", h.sum.Sum(nil))
	if h.n != size || got != want {
		return fmt.Errorf("received %d bytes with SHA-256 %s; sent %d bytes with SHA-256 %s", h.n, got, size, want)
	}
	// The session goes on normally after 200 MB.
	if res := conn.ExecParams(ctx, "SELECT 1", nil, nil, nil, nil).Read(); res.Err != nil {
		return fmt.Errorf("query after the copy: %w", res.Err)
	}
	return nil
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }
