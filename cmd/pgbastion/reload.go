package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
)

// reloader re-reads the configuration file while the daemon runs (SIGHUP, POST /reload,
// pgbastion ctl reload). What the proxy can change live it applies (engine.Reload: pool sizes
// and timeouts, the auth method and auth_file, TLS certificates, console users, the server
// password); log.level changes at once; postgresql.pg_hba and postgresql.parameters are written
// and loaded by the local PostgreSQL (cluster members); every other change is reported as
// taking a restart and left as it is. A file that does not load (syntax, an unknown key, an
// invalid value, an unreadable auth_file or certificate, pg_hba lines or parameters PostgreSQL
// refuses) changes nothing.
type reloader struct {
	path  string
	log   *slog.Logger
	level *slog.LevelVar
	proxy *engine.Engine

	mu sync.Mutex
	// hba applies a changed postgresql.pg_hba to the local PostgreSQL (pgctl.Instance.ReloadHBA),
	// params changed postgresql.parameters (pgctl.Controller.ReloadParameters); nil in a
	// standalone proxy.
	hba, ident func(ctx context.Context, lines []string) (string, error)
	params     func(ctx context.Context, params map[string]string) (string, error)
	// running is the configuration as started, with log.level as last reloaded; the proxy
	// section's effective values live in the engine.
	running Config

	set       *metrics.Set
	applied   *metrics.Counter
	refused   *metrics.Counter
	lastOK    *metrics.Gauge
	pendingMu sync.Mutex
	pending   int
}

// reloadResult is what a reload reports (the JSON of POST /reload).
type reloadResult struct {
	File    string          `json:"file"`
	Changes []engine.Change `json:"changes"`
	// Applied counts the changes in effect now; RestartRequired lists the settings whose new
	// value waits for a restart.
	Applied         int      `json:"applied"`
	RestartRequired []string `json:"restart_required"`
}

func newReloader(path string, cfg Config, log *slog.Logger, level *slog.LevelVar, proxy *engine.Engine) *reloader {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs // messages name the file wherever the operator reads them
	}
	r := &reloader{path: path, log: log, level: level, proxy: proxy, running: cfg, set: metrics.NewSet()}
	r.applied = r.set.NewCounter(`pgbastion_config_reloads_total{result="applied"}`)
	r.refused = r.set.NewCounter(`pgbastion_config_reloads_total{result="refused"}`)
	r.lastOK = r.set.NewGauge("pgbastion_config_last_reload_success_timestamp_seconds", nil)
	r.set.NewGauge("pgbastion_config_pending_restart_settings", func() float64 {
		r.pendingMu.Lock()
		defer r.pendingMu.Unlock()
		return float64(r.pending)
	})
	return r
}

// reload reads the file again and applies it; see reloader.
func (r *reloader) reload() (*reloadResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res, err := r.apply()
	if err != nil {
		r.refused.Inc()
		r.log.Error("configuration not reloaded; the running configuration stays in effect", "file", r.path, "err", err)
		return nil, err
	}
	r.applied.Inc()
	r.lastOK.Set(float64(time.Now().Unix()))
	r.pendingMu.Lock()
	r.pending = len(res.RestartRequired)
	r.pendingMu.Unlock()
	for _, c := range res.Changes {
		if c.Applied {
			r.log.Info("setting changed", "key", c.Key, "old", c.Old, "new", c.New)
		} else {
			r.log.Warn("setting changed in the file takes a restart; the old value stays in effect", "key", c.Key, "running", c.Old, "file", c.New)
		}
	}
	r.log.Info("configuration reloaded", "file", r.path, "applied", res.Applied, "restart_required", len(res.RestartRequired))
	return res, nil
}

func (r *reloader) apply() (*reloadResult, error) {
	cfg, err := LoadConfig(r.path)
	if err != nil {
		return nil, err
	}
	if _, cluster := cfg.HA(); !cluster && len(cfg.Proxy.Backends) == 0 {
		return nil, fmt.Errorf("%s: proxy.backends is empty: a standalone proxy needs at least one PostgreSQL server", r.path)
	}
	verifier, secrets, err := buildAuth(cfg.Proxy.Auth, r.log)
	if err != nil {
		return nil, err
	}
	// Everything but the proxy section and log.level takes a restart: compare it first, so
	// that a refused proxy change leaves the rest unreported as well as unapplied.
	oldRest, newRest := r.running, cfg
	oldRest.Proxy, newRest.Proxy = engine.Config{}, engine.Config{}
	rest, err := engine.DiffSettings("", oldRest, newRest)
	if err != nil {
		return nil, err
	}
	// PostgreSQL's files go first: PostgreSQL may refuse one, and then nothing else may
	// change either. What was applied goes back when a later step (or the proxy) refuses.
	var undo, commits []func()
	undoAll := func() {
		for k := len(undo) - 1; k >= 0; k-- {
			undo[k]()
		}
	}
	for _, st := range r.postgresSteps(cfg) {
		if st.apply == nil || !slices.ContainsFunc(rest, st.matches) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		outcome, err := st.apply(ctx, true)
		cancel()
		if err != nil {
			undoAll()
			return nil, fmt.Errorf("%s not applied: %w", st.key, err)
		}
		r.log.Info(st.key+" reloaded", "outcome", outcome)
		for i := range rest {
			if st.matches(rest[i]) {
				rest[i].Applied = true
				if st.key == "postgresql.parameters" {
					rest[i].Note = outcome
				}
			}
		}
		undo = append(undo, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := st.apply(ctx, false); err != nil {
				r.log.Error("a refused reload could not put the previous "+st.key+" back", "err", err)
			}
		})
		commits = append(commits, st.commit)
	}
	changes, err := r.proxy.Reload(cfg.Proxy, verifier, secrets)
	if err != nil {
		undoAll()
		return nil, err
	}
	for _, commit := range commits {
		commit()
	}
	for i := range rest {
		if rest[i].Key == "log.level" {
			var lv slog.Level
			if err := lv.UnmarshalText([]byte(cfg.Log.Level)); err == nil {
				r.level.Set(lv)
				r.running.Log.Level = cfg.Log.Level
				rest[i].Applied = true
			}
		}
	}
	res := &reloadResult{File: r.path, Changes: append(changes, rest...), RestartRequired: []string{}}
	for _, c := range res.Changes {
		if c.Applied {
			res.Applied++
		} else {
			res.RestartRequired = append(res.RestartRequired, c.Key)
		}
	}
	return res, nil
}

// postgresStep is one of the local PostgreSQL's settings a reload applies: its key, how to
// apply the file's value (next true) or the running one again (nil: not in this daemon), and
// how to make the file's value the running one once the reload is through.
type postgresStep struct {
	key    string
	apply  func(ctx context.Context, next bool) (string, error)
	commit func()
}

func (st postgresStep) matches(c engine.Change) bool {
	return c.Key == st.key || strings.HasPrefix(c.Key, st.key+".")
}

// postgresSteps lists, in order, the local PostgreSQL's settings a reload applies: pg_hba,
// pg_ident, parameters.
func (r *reloader) postgresSteps(cfg Config) []postgresStep {
	run, next := &r.running.PostgreSQL, cfg.PostgreSQL
	return []postgresStep{
		stepOf("postgresql.pg_hba", r.hba, next.PgHBA, &run.PgHBA, slices.Clone),
		stepOf("postgresql.pg_ident", r.ident, next.PgIdent, &run.PgIdent, slices.Clone),
		stepOf("postgresql.parameters", r.params, next.Parameters, &run.Parameters, maps.Clone),
	}
}

// stepOf is the postgresStep that applies next, or *running again, with apply.
func stepOf[T any](key string, apply func(context.Context, T) (string, error), next T, running *T, clone func(T) T) postgresStep {
	st := postgresStep{key: key, commit: func() { *running = clone(next) }}
	if apply != nil {
		st.apply = func(ctx context.Context, toNext bool) (string, error) {
			if toNext {
				return apply(ctx, next)
			}
			return apply(ctx, *running)
		}
	}
	return st
}

// setParams makes changed postgresql.parameters reloadable (cluster members).
func (r *reloader) setParams(apply func(ctx context.Context, params map[string]string) (string, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.params = apply
}

// setHBA makes a changed postgresql.pg_hba and pg_ident reloadable (cluster members, once
// their PostgreSQL is under control).
func (r *reloader) setHBA(hba, ident func(ctx context.Context, lines []string) (string, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hba, r.ident = hba, ident
}

// consoleReload is the admin console's RELOAD: a line per change, then the summary.
func (r *reloader) consoleReload() ([]string, error) {
	res, err := r.reload()
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, c := range res.Changes {
		lines = append(lines, c.String())
	}
	lines = append(lines, fmt.Sprintf("%s reloaded: %d applied, %d take a restart", res.File, res.Applied, len(res.RestartRequired)))
	return lines, nil
}

// apiReload is the API's Sources.Reload.
func (r *reloader) apiReload() (any, error) {
	res, err := r.reload()
	if err != nil {
		return nil, err
	}
	return res, nil
}

// catchHangup makes SIGHUP a request to reload instead of the end of the daemon (the default
// action). It is called first thing, so that a SIGHUP during start-up waits in the channel.
func catchHangup() (<-chan os.Signal, func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// reloadOnHangup reloads on every SIGHUP until ctx ends.
func (r *reloader) reloadOnHangup(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.log.Info("SIGHUP: reloading the configuration", "file", r.path)
			_, _ = r.reload()
		}
	}
}

// ctlReload asks a running daemon to re-read its configuration file (POST /reload) and prints
// what changed.
func (c *ctlClient) reload() error {
	var res reloadResult
	if err := c.call(http.MethodPost, "/reload", nil, &res); err != nil {
		return err
	}
	printReload(c.out, &res)
	return nil
}

// clusterReload asks every member to reload (POST /reload {"cluster": true}) and prints a
// line per member; it fails when a member refused its file or did not answer.
func (c *ctlClient) clusterReload() error {
	status, data, err := c.send(http.MethodPost, "/reload", map[string]any{"cluster": true})
	if err != nil {
		return err
	}
	var res struct {
		Results map[string]fsm.ReloadResult `json:"results"`
		Missing []string                    `json:"missing"`
		Message string                      `json:"message"`
		Error   string                      `json:"error"`
	}
	if err := json.Unmarshal(data, &res); err != nil || (status != http.StatusOK && status != http.StatusAccepted) {
		if res.Error != "" {
			return fmt.Errorf("cluster-wide reload: %s", res.Error)
		}
		return fmt.Errorf("cluster-wide reload: HTTP %d: %s", status, strings.TrimSpace(string(data)))
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPPLIED\tTAKE A RESTART\tERROR")
	failed := 0
	for _, name := range slices.Sorted(maps.Keys(res.Results)) {
		r := res.Results[name]
		if r.Error != "" {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", name, r.Applied, strings.Join(r.RestartRequired, ", "), r.Error)
	}
	for _, name := range res.Missing {
		fmt.Fprintf(tw, "%s\t-\t\tno answer\n", name)
	}
	_ = tw.Flush()
	fmt.Fprintln(c.out, res.Message)
	if failed > 0 || len(res.Missing) > 0 {
		return fmt.Errorf("not every member reloaded its configuration")
	}
	return nil
}

func printReload(w io.Writer, res *reloadResult) {
	if len(res.Changes) == 0 {
		fmt.Fprintf(w, "%s reloaded: no setting changed (the auth_file and TLS certificates were read again)\n", res.File)
		return
	}
	fmt.Fprintf(w, "%s reloaded:\n", res.File)
	for _, c := range res.Changes {
		fmt.Fprintf(w, "  %s\n", c)
	}
	if n := len(res.RestartRequired); n == 1 {
		fmt.Fprintf(w, "%d applied; 1 takes a restart of this node's pgbastion (the old value stays in effect until then)\n", res.Applied)
	} else if n > 1 {
		fmt.Fprintf(w, "%d applied; %d take a restart of this node's pgbastion (the old values stay in effect until then)\n", res.Applied, n)
	} else {
		fmt.Fprintf(w, "%d applied\n", res.Applied)
	}
}

// followReloads carries out cluster-wide reloads (POST /reload {"cluster": true}, ctl reload
// --cluster) on this node: it reads its configuration file again, as on SIGHUP, and reports
// the result in the replicated state, where the node that took the request collects every
// member's. A request from before this process started is not carried out.
func (d *daemon) followReloads(ctx context.Context, node *ha.Node) error {
	sub := node.Subscribe()
	defer sub.Close()
	var last uint64
	for {
		var st *fsm.State
		select {
		case <-ctx.Done():
			return nil
		case st = <-sub.C:
		}
		r := st.Reload
		if r == nil || r.ID <= last || r.ID <= node.StartIndex() || !node.CaughtUp() {
			continue
		}
		last = r.ID
		if _, done := r.Results[node.Name()]; done {
			continue
		}
		rep := fsm.ReportReload{ID: r.ID}
		res, err := d.reloader.reload()
		if err != nil {
			rep.Error = err.Error()
		} else {
			rep.Applied, rep.RestartRequired = res.Applied, res.RestartRequired
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := node.ReportReload(rctx, rep); err != nil {
			d.log.Warn("cluster-wide reload: could not report this node's result", "request", r.ID, "error", err)
		}
		cancel()
	}
}
