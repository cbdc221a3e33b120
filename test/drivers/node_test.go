package drivers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestNodePostgres runs node/client.js (npm "pg", pinned by node/package-lock.json): named
// prepared statements ({name, text, values}), unnamed parameterised queries, transactions,
// errors, settings that follow the client, and a pg.Pool.
func TestNodePostgres(t *testing.T) {
	t.Parallel()
	nodeModules(t)
	h := start(t, nil)
	h.pg.Exec(t, `CREATE TABLE node_tx (client int, n int, committed bool)`)
	const rounds = 8
	s := runDriver(t, 2*time.Minute, "node", append(h.env(), "DRIVER_ROUNDS="+itoa(rounds)), "node", "client.js")
	s.verify(t, clients*rounds*15)
	for q, want := range map[string]string{
		`SELECT count(*) FROM node_tx WHERE committed`:     itoa(clients * rounds),
		`SELECT count(*) FROM node_tx WHERE NOT committed`: "0",
	} {
		if got := h.pg.QueryString(t, q); got != want {
			t.Errorf("%s = %s, want %s", q, got, want)
		}
	}
	h.checkPool(t)
}

// nodeModules installs node/node_modules with `npm ci` from the committed lockfile, unless it
// is already installed from this very lockfile.
func nodeModules(t *testing.T) {
	t.Helper()
	pgtest.Require(t, pgtest.Commands("node", "npm"))
	lock, err := os.ReadFile(filepath.Join("node", "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	stamp := filepath.Join("node", "node_modules", ".pgbastion-lock-sha256")
	if got, err := os.ReadFile(stamp); err == nil && string(got) == want {
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = "node"
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		pgtest.Skip(t, "npm ci in test/drivers/node failed (no access to the npm registry?): %v\n%s", err, tail(out.String()))
	}
	if err := os.WriteFile(stamp, []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
}
