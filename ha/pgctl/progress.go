package pgctl

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// cloneWalkEvery bounds how often CloneProgress measures the data directory: a large
// cluster's directory holds many thousands of files.
const cloneWalkEvery = 5 * time.Second

// cloneProgress follows one clone of the primary into the data directory.
type cloneProgress struct {
	dir     string
	total   int64 // the primary's databases, bytes; 0 when unknown
	started time.Time

	mu       sync.Mutex
	walkedAt time.Time
	copied   int64
	walkErr  error
}

// CloneProgress implements ha.CloneProgress: how far the clone running now has come, as
// "12.3 GiB copied of about 40.1 GiB (31 %) in 5m10s", or "" when none runs. The copy is
// measured as the size of the data directory; the total is the size of the primary's
// databases when the clone started (WAL and growth meanwhile can take the copy past it).
func (c *Controller) CloneProgress() string {
	p := c.cloning.Load()
	if p == nil {
		return ""
	}
	return p.describe(time.Now())
}

func (p *cloneProgress) describe(now time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.walkedAt.IsZero() || now.Sub(p.walkedAt) >= cloneWalkEvery {
		p.copied, p.walkErr = dirSize(p.dir)
		p.walkedAt = now
	}
	took := now.Sub(p.started).Round(time.Second)
	if p.walkErr != nil {
		return fmt.Sprintf("running for %s (its size cannot be measured: %v)", took, p.walkErr)
	}
	s := byteSize(p.copied) + " copied"
	if p.total > 0 {
		s += fmt.Sprintf(" of about %s (%d %%)", byteSize(p.total), min(100, p.copied*100/p.total))
	}
	return s + " in " + took.String()
}

// dirSize adds up the sizes of the regular files under dir. Files that vanish meanwhile (the
// clone method may move them) are skipped.
func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n, err
}

// upstreamSize is the size of every database on the PostgreSQL at host:port, or 0 when it
// cannot be asked.
func (c *Controller) upstreamSize(ctx context.Context, host string, port int) int64 {
	conn, err := c.inst.ConnectTo(ctx, host, port)
	if err != nil {
		return 0
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, "SELECT pg_catalog.sum(pg_catalog.pg_database_size(oid))::bigint FROM pg_catalog.pg_database", nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || res.Rows[0][0] == nil {
		return 0
	}
	n, err := strconv.ParseInt(string(res.Rows[0][0]), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// byteSize formats n in binary units: "812 MiB", "12.3 GiB".
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	if v < 10 {
		return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
	}
	return fmt.Sprintf("%.0f %ciB", v, "KMGTP"[i])
}
