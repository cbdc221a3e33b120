package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/ha/pgctl"
)

// demoPorts gives the ports of demo node i (0-based) from the base port.
type demoPorts struct{ rw, ro, pg, api, raft int }

func portsFor(base, i int) demoPorts {
	b := base + 10*i
	return demoPorts{rw: b, ro: b + 1, pg: b + 2, api: b + 3, raft: b + 4}
}

func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "working directory (default: a new directory under /tmp, removed on exit)")
	base := fs.Int("base-port", 15400, "first port; node N uses base+10N .. base+10N+4")
	keep := fs.Bool("keep", false, "keep the working directory on exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	created := false
	if *dir == "" {
		d, err := os.MkdirTemp("", "pgbastion-demo-")
		if err != nil {
			return err
		}
		*dir, created = d, true
	} else if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	// PostgreSQL may run as another OS user (when we are root): let it traverse.
	if err := os.Chmod(abs, 0o755); err != nil {
		return err
	}
	cleanup := func() {
		if created && !*keep {
			_ = os.RemoveAll(abs)
		}
	}
	defer cleanup()

	log := newLogger(LogConfig{Level: "warn", Format: "text"}, stderr)
	password := randomSecret()
	p := portsFor(*base, 0)
	pgc := pgctl.Config{DataDir: filepath.Join(abs, "node1", "data"), Port: p.pg, Superuser: "postgres", Password: password,
		ReplicationUser: "postgres", ReplicationPassword: password}
	pg, err := pgctl.New(pgc, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "initialising PostgreSQL in %s ...\n", pgc.DataDir)
	if err := pg.InitDB(ctx); err != nil {
		return err
	}
	if err := pg.Start(ctx); err != nil {
		return err
	}
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		_ = pg.Stop(sctx, pgctl.Fast)
	}()

	cfg := DefaultConfig()
	cfg.Log.Level = "warn"
	cfg.Proxy.ListenRW = "127.0.0.1:" + strconv.Itoa(p.rw)
	cfg.Proxy.ListenRO = "127.0.0.1:" + strconv.Itoa(p.ro)
	cfg.Proxy.Backends = []engine.BackendConfig{{Host: "127.0.0.1", Port: p.pg, Name: "node1"}}
	cfg.Proxy.Server = engine.ServerConfig{User: "postgres", Password: password}
	if err := cfg.Validate(); err != nil {
		return err
	}
	d, err := newDaemon(cfg, log)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- d.run(ctx) }()
	select {
	case <-d.proxy.Ready():
	case err := <-errc:
		return err
	}
	fmt.Fprintf(stdout, `
PGBastion demo is running (Ctrl-C stops it and removes %s).

  node1  PostgreSQL 127.0.0.1:%d   proxy read-write 127.0.0.1:%d   read-only 127.0.0.1:%d

Connect through the proxy:
  psql "host=127.0.0.1 port=%d user=postgres dbname=postgres"      # primary
  psql "host=127.0.0.1 port=%d user=postgres dbname=postgres"      # replicas (primary when none)
`, abs, p.pg, p.rw, p.ro, p.rw, p.ro)
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "\nstopping ...")
		return <-errc
	case err := <-errc:
		return err
	}
}

func randomSecret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
