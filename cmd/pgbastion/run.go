package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/admin"
	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/ha/tracing"
)

const defaultConfigPath = "/etc/pgbastion/pgbastion.yaml"

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfigPath, "configuration file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	// The files the proxy's authentication reads (auth_file, hba_file) are checked too: a bad
	// line is found here rather than at the next start or reload.
	if _, _, err := buildAuth(cfg.Proxy.Auth, slog.New(slog.DiscardHandler)); err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	if err := engine.CheckTLSFiles(cfg.Proxy); err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	if err := engine.CheckUnixSockets(cfg.Proxy); err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	fmt.Fprintf(stdout, "%s: configuration is valid\n", *path)
	return nil
}

func cmdRun(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfigPath, "configuration file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	hup, stopHup := catchHangup()
	defer stopHup()
	cfg, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	log, level := newLogger(cfg.Log, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal starts an orderly stop (which may hand over the primary and stop
	// PostgreSQL); a second one ends the process at once, by the signal's default action.
	context.AfterFunc(ctx, stop)
	d, err := newDaemon(*path, cfg, log, level)
	if err != nil {
		return err
	}
	go d.reloader.reloadOnHangup(ctx, hup)
	return d.run(ctx)
}

// newLogger returns the daemon's logger and its level, which a reload may change.
func newLogger(c LogConfig, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(c.Level))
	level.Set(lv)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), level
	}
	return slog.New(slog.NewTextHandler(w, opts)), level
}

// daemon is one running PGBastion: the composition root of its parts.
type daemon struct {
	cfg      Config
	log      *slog.Logger
	proxy    *engine.Engine
	reloader *reloader
}

func newDaemon(path string, cfg Config, log *slog.Logger, level *slog.LevelVar) (*daemon, error) {
	if _, cluster := cfg.HA(); !cluster && len(cfg.Proxy.Backends) == 0 {
		return nil, errors.New("proxy.backends is empty: a standalone proxy needs at least one PostgreSQL server to route to (or add a raft section to run as a cluster member)")
	}
	verifier, secrets, err := buildAuth(cfg.Proxy.Auth, log)
	if err != nil {
		return nil, err
	}
	var r *reloader // the console's RELOAD reaches it once it exists (before the proxy runs)
	e, err := engine.New(cfg.Proxy, engine.Options{
		Logger:  log.With("component", "proxy"),
		Auth:    verifier,
		Secrets: secrets,
		Version: version,
		Reload:  func() ([]string, error) { return r.consoleReload() },
	})
	if err != nil {
		return nil, err
	}
	r = newReloader(path, cfg, log, level, e)
	return &daemon{cfg: cfg, log: log, proxy: e, reloader: r}, nil
}

func (d *daemon) run(ctx context.Context) error {
	node := "standalone"
	if hc, cluster := d.cfg.HA(); cluster {
		node = hc.Raft.NodeName
	}
	stopTracing, err := tracing.Setup(d.cfg.Tracing, node, version, d.log.With("component", "tracing"))
	if err != nil {
		return err
	}
	if d.cfg.Tracing.Enabled() {
		d.log.Info("tracing on", "endpoint", d.cfg.Tracing.Endpoint, "sample_ratio", d.cfg.Tracing.Ratio())
	}
	defer func() {
		// Flush the spans of the last moments (a failover's end) before exiting.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			d.log.Warn("tracing: spans not flushed at exit", "error", err)
		}
	}()
	if hc, cluster := d.cfg.HA(); cluster {
		d.log.Info("pgbastion starting", "version", version, "mode", "cluster member", "node", hc.Raft.NodeName)
		err = d.runCluster(ctx, hc)
	} else {
		d.log.Info("pgbastion starting", "version", version, "mode", "standalone proxy")
		err = d.runStandalone(ctx)
	}
	d.log.Info("pgbastion stopped", "err", err)
	return err
}

// pauseProxy pauses the whole proxy, or database db (POST /proxy/pause).
func (d *daemon) pauseProxy(ctx context.Context, db string) (int, error) {
	if db == "" {
		return d.proxy.Pause(ctx)
	}
	return d.proxy.PauseDatabase(ctx, db)
}

// resumeProxy ends every pause, or database db's (POST /proxy/resume).
func (d *daemon) resumeProxy(db string) bool {
	if db == "" {
		d.proxy.Resume()
		return true
	}
	return d.proxy.ResumeDatabase(db)
}

// runStandalone runs the proxy and the API (metrics, /nodes) of a standalone proxy.
func (d *daemon) runStandalone(ctx context.Context) error {
	api, err := admin.New(d.cfg.API, admin.Sources{
		Local:       d.localStatus(nil),
		Proxy:       d.proxyStatus,
		Connections: d.proxyConnections,
		ProxyOps:    d.proxyOps(),
		Metrics:     []*metrics.Set{d.proxy.Metrics().Set(), d.reloader.set, tracing.Metrics},
		Writers:     []func(io.Writer){d.writeMetrics(nil)},
		Reload:      d.reloader.apiReload,
		PauseProxy:  d.pauseProxy,
		ResumeProxy: d.resumeProxy,
	}, d.log.With("component", "api"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	apiDone := make(chan struct{})
	go func() {
		defer close(apiDone)
		// The proxy is what a standalone PGBastion is for: it keeps running without its API.
		if err := api.Run(ctx); err != nil {
			d.log.Error("API not available; the proxy keeps running (set api.listen to a free address)", "err", err)
		}
	}()
	err = d.proxy.Run(ctx)
	cancel()
	<-apiDone
	return err
}
