package pgctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCloneProgressMeasuresTheDataDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	start := time.Unix(1000, 0)
	p := &cloneProgress{dir: dir, total: 4 << 20, started: start}
	// Before the clone method has made the directory: nothing copied yet.
	if got := p.describe(start.Add(time.Second)); got != "0 B copied of about 4.0 MiB (0 %) in 1s" {
		t.Fatalf("before the copy: %q", got)
	}
	if err := os.MkdirAll(filepath.Join(dir, "base", "1"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int{"PG_VERSION": 3, "base/1/1259": 1 << 20, "base/1/2608": 1<<20 - 3} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Within cloneWalkEvery of the last walk the figure is the cached one.
	if got := p.describe(start.Add(2 * time.Second)); !strings.HasPrefix(got, "0 B copied") {
		t.Fatalf("walked again within %s: %q", cloneWalkEvery, got)
	}
	if got := p.describe(start.Add(7 * time.Second)); got != "2.0 MiB copied of about 4.0 MiB (50 %) in 7s" {
		t.Fatalf("half way: %q", got)
	}
	// WAL streamed meanwhile can take the copy past the estimate: never above 100 %.
	if err := os.WriteFile(filepath.Join(dir, "base", "1", "big"), make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := p.describe(start.Add(5 * time.Minute)); got != "5.0 MiB copied of about 4.0 MiB (100 %) in 5m0s" {
		t.Fatalf("past the estimate: %q", got)
	}
	// Without the primary's size, only what was copied.
	q := &cloneProgress{dir: dir, started: start}
	if got := q.describe(start.Add(90 * time.Second)); got != "5.0 MiB copied in 1m30s" {
		t.Fatalf("no total: %q", got)
	}
}

func TestByteSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 812 << 20: "812 MiB",
		12<<30 + 300<<20: "12 GiB", 3<<30 + 300<<20: "3.3 GiB", 2 << 40: "2.0 TiB"} {
		if got := byteSize(n); got != want {
			t.Errorf("byteSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// The clone's total is the size of the primary's databases, asked of a real PostgreSQL.
func TestUpstreamSize(t *testing.T) {
	ctx, inst, port := startTestServer(t, Config{Password: "s3cret"})
	c := NewController(inst, "n1", false, nil)
	if n := c.upstreamSize(ctx, "127.0.0.1", port); n < 1<<20 || n > 1<<30 {
		t.Fatalf("size of a fresh cluster's databases: %d bytes", n)
	}
	// Nobody there: unknown, not an error (the clone goes on without a total).
	if n := c.upstreamSize(ctx, "127.0.0.1", 1); n != 0 {
		t.Fatalf("size from nowhere: %d", n)
	}
}
