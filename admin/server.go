package admin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fasthttp/router"
	"github.com/hashicorp/raft"
	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/notify"
)

// Config is the API's configuration (YAML section "api").
type Config struct {
	// Listen is the REST API's address; 127.0.0.1 by default so nothing is exposed unless asked.
	Listen string `yaml:"listen"`
	// Token authorises mutations: `Authorization: Bearer <token>`. Without a token every
	// mutation is refused.
	Token string `yaml:"token"`
	// MetricsListen serves /metrics alone (Prometheus); empty disables it. /metrics is also on
	// Listen.
	MetricsListen string `yaml:"metrics_listen"`
	// OperationWait is how long POST /switchover and /failover wait for the operation to
	// finish before answering 202 Accepted with its id.
	OperationWait time.Duration `yaml:"operation_wait"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Listen: "127.0.0.1:8080", MetricsListen: "127.0.0.1:9090", OperationWait: 60 * time.Second}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	var errs []error
	for name, a := range map[string]string{"api.listen": c.Listen, "api.metrics_listen": c.MetricsListen} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", name, a))
		}
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("api.listen must be set"))
	}
	if c.OperationWait < 0 {
		errs = append(errs, errors.New("api.operation_wait must not be negative"))
	}
	return errors.Join(errs...)
}

// Cluster is what the API needs of the HA core; *ha.Node implements it.
type Cluster interface {
	Name() string
	State() *fsm.State
	Subscribe() *fsm.Subscription
	Leader() (id, addr string)
	Servers() ([]ha.Server, error)
	HoldsWriteLease() bool
	Switchover(ctx context.Context, leader, candidate string) (uint64, error)
	// ScheduleSwitchover books a switchover for at; CancelScheduledSwitchover drops it.
	ScheduleSwitchover(ctx context.Context, leader, candidate string, at time.Time) error
	CancelScheduledSwitchover(ctx context.Context) error
	Failover(ctx context.Context, candidate string, force bool) (uint64, error)
	WaitOperation(ctx context.Context, id uint64) (fsm.Operation, error)
	SetPause(ctx context.Context, paused bool) error
	// UpdatePGConfig changes the cluster-wide PostgreSQL configuration and returns its new
	// version.
	UpdatePGConfig(ctx context.Context, set map[string]string, reset []string, ifVersion uint64) (uint64, error)
	// SetPGHBA replaces the cluster-wide pg_hba list (empty: removes it) and returns its new
	// version.
	SetPGHBA(ctx context.Context, lines []string, ifVersion uint64) (uint64, error)
	// RequestRestart asks node's agent to restart its PostgreSQL; it returns the request ID.
	RequestRestart(ctx context.Context, node, reason string) (uint64, error)
	// RequestReinit asks node's agent to replace its data directory with a fresh clone of
	// the primary; it returns the request ID.
	RequestReinit(ctx context.Context, node, reason string) (uint64, error)
	// RemoveMember removes a node from the cluster for good: its member record (the
	// primary's agent then drops its replication slot) and its Raft membership.
	RemoveMember(ctx context.Context, name string) error
	// RequestReload asks every member to reload its configuration file; State().Reload
	// collects their results.
	RequestReload(ctx context.Context) (uint64, error)
	// AddVoter adds a node to the Raft group (it must be running with no bootstrap of its
	// own); it registers itself and clones its data once it has caught up.
	AddVoter(ctx context.Context, name, addr string) error
	Backup(ctx context.Context, w io.Writer) (ha.BackupInfo, error)
	Restore(ctx context.Context, r io.Reader) (ha.BackupInfo, error)
}

// Sources are where the API reads from. Cluster is nil for a standalone proxy.
type Sources struct {
	Cluster Cluster
	// Version and Scope (the cluster's name) identify this daemon in GET /patroni.
	Version, Scope string
	// Local returns facts about this node that are not in the replicated state (VIP, proxy).
	Local func() map[string]any
	// Proxy returns this node's proxy and its pools (GET /proxy).
	Proxy func() ProxyStatus
	// Connections lists this node's proxy connections (GET /proxy/connections).
	Connections func() []ConnStatus
	// Metrics are written to /metrics, in order, then Writers (gauges computed at scrape
	// time: pools, the VIP).
	Metrics []*metrics.Set
	Writers []func(io.Writer)
	// CheckPGParams, when set, checks parameters for the cluster-wide configuration against
	// this node's PostgreSQL before the change is committed. ok is false when PostgreSQL could
	// not be asked; err says what it refused.
	CheckPGParams func(ctx context.Context, set map[string]string) (ok bool, err error)
	// Events, when set, returns the cluster events this node derived since it started, after
	// the past the cluster's logs recorded then, oldest first (GET /cluster/events);
	// SubscribeEvents delivers new ones as they come (GET /events streams them as
	// cluster_event).
	Events          func() []notify.Event
	SubscribeEvents func() (<-chan notify.Event, func())
	// Reload reads the configuration file again and applies what can change while the daemon
	// runs (POST /reload, as SIGHUP does). The result is written as JSON; an error means the
	// new configuration was refused and nothing changed.
	Reload func() (any, error)
	// PauseProxy and ResumeProxy pause and resume a standalone proxy for maintenance of its
	// PostgreSQL (POST /proxy/pause, POST /proxy/resume): the whole proxy, or database db
	// when it is not empty. PauseProxy returns once no transaction (of db) holds a server, or
	// when ctx ends with how many still do (the pause stays). ResumeProxy of a database
	// reports whether it was paused. Nil in a cluster member, whose proxies switchovers pause
	// and resume.
	PauseProxy  func(ctx context.Context, db string) (inFlight int, err error)
	ResumeProxy func(db string) bool
	// ProxyOps are an operator's actions on the proxy's connections; nil without a proxy.
	ProxyOps *ProxyOps
}

// ProxyOps are PgBouncer's KILL_CLIENT, KILL and RECONNECT on this node's proxy.
// KillResult is what KILL did to a database.
type KillResult struct {
	Clients int `json:"clients_closed"`
	Servers int `json:"servers_retired"`
	// Busy counts clients too busy to be looked at (run it again).
	Busy int `json:"clients_unchecked"`
	// Paused: the database now waits for POST /proxy/resume (a standalone proxy).
	Paused  bool   `json:"paused"`
	Message string `json:"message"`
}

type ProxyOps struct {
	// KillClient closes the client connection with that ID (cancelling its running query);
	// false when there is none (DELETE /proxy/connections/{id}).
	KillClient func(id string) bool
	// KillDatabase closes a database's client connections and retires its server
	// connections, pausing the database on a standalone proxy (POST /proxy/kill).
	KillDatabase func(db string) KillResult
	// Reconnect retires the server connections of a database (every one when db is empty):
	// idle ones close at once, the others when released (POST /proxy/reconnect).
	Reconnect func(db string) int
}

// Server is the admin HTTP server.
type Server struct {
	cfg   Config
	log   *slog.Logger
	src   Sources
	http  *fasthttp.Server
	mhttp *fasthttp.Server

	mu  sync.Mutex
	lns []net.Listener
}

// New builds the server; Run starts it.
func New(cfg Config, src Sources, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, src: src}
	ui, err := newWebUI(uiPage)
	if err != nil {
		return nil, err
	}
	r := router.New()
	r.SaveMatchedRoutePath = true // observe names a request's span by its route
	r.GET("/ui/", ui.serve)       // the router redirects /ui here (RedirectTrailingSlash)
	r.GET("/nodes", s.nodes)
	r.GET("/cluster", s.cluster)
	r.GET("/members", s.members)
	r.GET("/raft/peers", s.members)
	r.GET("/directives", s.directives)
	r.GET("/raft/directives", s.directives)
	r.GET("/history", s.history)
	r.GET("/proxy", s.proxy)
	r.GET("/proxy/connections", s.authRead(s.connections))
	r.GET("/metrics", s.metrics)
	r.GET("/events", s.events)
	// Liveness (Kubernetes, Patroni's /liveness): the process serves requests. Nothing else:
	// a node cut off from its peers or with PostgreSQL down must not be restarted for it.
	r.GET("/liveness", func(ctx *fasthttp.RequestCtx) {
		writeJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "alive"})
	})
	r.POST("/switchover", s.auth(s.switchover))
	r.DELETE("/switchover", s.auth(s.cancelSwitchover))
	r.POST("/failover", s.auth(s.failover))
	r.GET("/raft/backup", s.auth(s.backup))
	r.POST("/raft/restore", s.auth(s.restore))
	r.POST("/pause", s.auth(s.pause(true)))
	r.POST("/resume", s.auth(s.pause(false)))
	r.DELETE("/members/{name}", s.auth(s.removeMember))
	r.POST("/members", s.auth(s.addMember))
	r.POST("/restart", s.auth(s.restart))
	r.POST("/reload", s.auth(s.reload))
	r.POST("/proxy/pause", s.auth(s.pauseProxy))
	r.POST("/proxy/resume", s.auth(s.resumeProxy))
	r.POST("/proxy/reconnect", s.auth(s.proxyReconnect))
	r.POST("/proxy/kill", s.auth(s.proxyKill))
	r.DELETE("/proxy/connections/{id}", s.auth(s.proxyKillClient))
	r.POST("/reinitialize", s.auth(s.reinit))
	r.GET("/restarts", s.restarts)
	r.GET("/patroni", s.patroni)
	r.GET("/config", s.patroniConfig)
	r.PATCH("/config", s.auth(s.patchPatroniConfig(false)))
	r.PUT("/config", s.auth(s.patchPatroniConfig(true)))
	r.GET("/cluster/events", s.clusterEvents)
	r.GET("/cluster/postgresql", s.getPGConfig)
	r.PATCH("/cluster/postgresql", s.auth(s.patchPGConfig))
	r.DELETE("/cluster/postgresql", s.auth(s.deletePGConfig))
	r.GET("/cluster/postgresql/pg_hba", s.getPGHBA)
	r.PUT("/cluster/postgresql/pg_hba", s.auth(s.putPGHBA))
	r.DELETE("/cluster/postgresql/pg_hba", s.auth(s.deletePGHBA))
	// Patroni-compatible role checks for HAProxy and friends (GET, HEAD and OPTIONS).
	for path, check := range map[string]func(*fasthttp.RequestCtx) (bool, map[string]any){
		"/primary": s.isPrimary, "/master": s.isPrimary, "/leader": s.isPrimary, "/read-write": s.isPrimary,
		"/replica": s.isReplica, "/read-only": s.isReadable, "/health": s.isHealthy, "/": s.isPrimary,
		"/readiness": s.isReadable, "/sync": s.isSync(true), "/synchronous": s.isSync(true),
		"/async": s.isSync(false), "/asynchronous": s.isSync(false),
	} {
		h := s.roleCheck(check)
		r.GET(path, h)
		r.HEAD(path, h)
		r.OPTIONS(path, h)
	}
	r.NotFound = func(ctx *fasthttp.RequestCtx) {
		writeError(ctx, fasthttp.StatusNotFound, "no such endpoint: "+string(ctx.Path()))
	}
	r.MethodNotAllowed = func(ctx *fasthttp.RequestCtx) {
		writeError(ctx, fasthttp.StatusMethodNotAllowed, "method "+string(ctx.Method())+" is not allowed on "+string(ctx.Path()))
	}
	s.http = &fasthttp.Server{
		Handler:            withRequestID(r.Handler),
		Name:               "pgbastion",
		ReadTimeout:        30 * time.Second,
		IdleTimeout:        60 * time.Second,
		WriteTimeout:       0,        // server-sent events stream indefinitely
		MaxRequestBodySize: 64 << 20, // a raft restore uploads the whole state
		Logger:             fasthttpLogger{log},
	}
	if cfg.MetricsListen != "" {
		s.mhttp = &fasthttp.Server{Handler: s.metrics, Name: "pgbastion", ReadTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, Logger: fasthttpLogger{log}}
	}
	return s, nil
}

// Run listens and serves until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("api.listen %s: %w", s.cfg.Listen, err)
	}
	s.track(ln)
	errc := make(chan error, 2)
	go func() { errc <- s.http.Serve(ln) }()
	if s.mhttp != nil {
		mln, err := net.Listen("tcp", s.cfg.MetricsListen)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("api.metrics_listen %s: %w", s.cfg.MetricsListen, err)
		}
		s.track(mln)
		go func() { errc <- s.mhttp.Serve(mln) }()
	}
	s.log.Info("API listening", "addr", s.cfg.Listen, "metrics", s.cfg.MetricsListen, "mutations", s.cfg.Token != "")
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = s.http.ShutdownWithContext(sctx)
	if s.mhttp != nil {
		_ = s.mhttp.ShutdownWithContext(sctx)
	}
	return nil
}

// Addr returns the API's bound address once Run has started listening.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lns) == 0 {
		return ""
	}
	return s.lns[0].Addr().String()
}

func (s *Server) track(ln net.Listener) {
	s.mu.Lock()
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
}

// auth wraps a mutation: it needs the bearer token.
func (s *Server) auth(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return s.observe(func(ctx *fasthttp.RequestCtx) {
		if s.cfg.Token == "" {
			writeError(ctx, fasthttp.StatusForbidden, "mutations are disabled: set api.token in the configuration and send it as 'Authorization: Bearer <token>'")
			return
		}
		if s.tokenOK(ctx) {
			h(ctx)
		}
	})
}

// authRead wraps a read that shows who is connected (client addresses, users, application
// names): with api.token set it needs the token, as a mutation does; without one it is open
// like every other read (the API listens on 127.0.0.1 by default).
func (s *Server) authRead(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return s.observe(func(ctx *fasthttp.RequestCtx) {
		if s.cfg.Token == "" || s.tokenOK(ctx) {
			h(ctx)
		}
	})
}

// tokenOK checks the bearer token, answering 401 when it is missing or wrong.
func (s *Server) tokenOK(ctx *fasthttp.RequestCtx) bool {
	got := string(ctx.Request.Header.Peek("Authorization"))
	want := "Bearer " + s.cfg.Token
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="pgbastion"`)
		writeError(ctx, fasthttp.StatusUnauthorized, "missing or wrong bearer token (send 'Authorization: Bearer <api.token>')")
		return false
	}
	return true
}

func (s *Server) needCluster(ctx *fasthttp.RequestCtx) bool {
	if s.src.Cluster == nil {
		writeError(ctx, fasthttp.StatusNotImplemented, "this PGBastion runs as a standalone proxy (no raft section in its configuration); cluster endpoints are unavailable")
		return false
	}
	return true
}

// nodeView is one node as GET /nodes shows it.
type nodeView struct {
	fsm.Member
	IsPrimary bool           `json:"is_primary"`
	IsLeader  bool           `json:"is_raft_leader"`
	Local     map[string]any `json:"local,omitempty"`
	// StatusAge and LeaseAge: seconds since the node's last status report and lease renewal
	// were committed (by this node's clock against the Raft leader's; absent when never). A
	// status a minute old describes the past: the node's agent or link is down.
	StatusAge *float64 `json:"status_age_seconds,omitempty"`
	LeaseAge  *float64 `json:"lease_age_seconds,omitempty"`
	// PendingRestart lists the parameters the node's PostgreSQL takes only at its next restart
	// (as it reported applying the cluster-wide configuration).
	PendingRestart []string `json:"pending_restart,omitempty"`
}

// ageSeconds is now-at in seconds, to a tenth, never negative (clocks differ); nil when at is
// zero (never happened).
func ageSeconds(now, at time.Time) *float64 {
	if at.IsZero() {
		return nil
	}
	a := max(0, now.Sub(at).Seconds())
	a = float64(int64(a*10)) / 10
	return &a
}

func (s *Server) nodes(ctx *fasthttp.RequestCtx) {
	if s.src.Cluster == nil {
		out := map[string]any{"mode": "standalone"}
		if s.src.Local != nil {
			out["local"] = s.src.Local()
		}
		writeJSON(ctx, fasthttp.StatusOK, out)
		return
	}
	c := s.src.Cluster
	st := c.State()
	leader, _ := c.Leader()
	out := make([]nodeView, 0, len(st.Members))
	now := time.Now()
	for _, name := range st.MemberNames() {
		m := st.Members[name]
		v := nodeView{Member: m, IsPrimary: st.Primary == name, IsLeader: leader == name,
			StatusAge: ageSeconds(now, m.Status.ReportedAt), LeaseAge: ageSeconds(now, m.Lease.RenewedAt),
			PendingRestart: pendingRestart(st, name)}
		if name == c.Name() && s.src.Local != nil {
			v.Local = s.src.Local()
		}
		out = append(out, v)
	}
	view := map[string]any{
		"primary": st.Primary, "paused": st.Paused, "write_pause": st.WritePause,
		"operation": st.Operation, "sync_standbys": st.SyncStandbys, "raft_leader": leader,
		"this_node": c.Name(), "nodes": out, "caught_up": !s.catchingUp(),
	}
	if st.ScheduledSwitchover != nil {
		view["scheduled_switchover"] = st.ScheduledSwitchover
	}
	if s.catchingUp() {
		view["warning"] = catchingUpMessage
	}
	// On the Raft leader: what the failover controller waits for (why nobody is promoted).
	if w, ok := c.(interface{ ControllerWaiting() string }); ok && leader == c.Name() {
		view["controller_waiting"] = w.ControllerWaiting()
	}
	writeJSON(ctx, fasthttp.StatusOK, view)
}

func (s *Server) cluster(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, s.src.Cluster.State())
}

func (s *Server) members(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	servers, err := s.src.Cluster.Servers()
	if err != nil {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "reading the Raft configuration: "+err.Error())
		return
	}
	leader, addr := s.src.Cluster.Leader()
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"leader": leader, "leader_address": addr, "servers": servers})
}

func (s *Server) directives(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	st := s.src.Cluster.State()
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"epoch": st.Epoch, "directives": st.Directives})
}

func (s *Server) history(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	st := s.src.Cluster.State()
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"history": st.History, "operations": st.Operations, "operation": st.Operation})
}

func (s *Server) metrics(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain; version=0.0.4")
	w := ctx.Response.BodyWriter()
	_, _ = io.WriteString(w, metricHelp)
	metrics.WriteProcessMetrics(w)
	for _, set := range s.src.Metrics {
		set.WritePrometheus(w)
	}
	if s.src.Cluster != nil {
		writeClusterMetrics(w, s.src.Cluster, s.catchingUp(), time.Now())
	}
	for _, f := range s.src.Writers {
		f(w)
	}
}

type opRequest struct {
	Leader    string `json:"leader"`
	Candidate string `json:"candidate"`
	Force     bool   `json:"force"`
	// ScheduledAt (switchover only, as Patroni's scheduled_at): book the switchover for
	// this time, RFC 3339 with its zone ("2026-11-28T03:00:00Z", "…+01:00").
	ScheduledAt string `json:"scheduled_at"`
}

func (s *Server) switchover(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var req opRequest
	if !decode(ctx, &req) {
		return
	}
	c := s.src.Cluster
	if req.Leader == "" {
		// Patroni lets the caller omit the leader: it means "the current primary".
		req.Leader = c.State().Primary
	}
	if req.ScheduledAt != "" {
		s.scheduleSwitchover(ctx, req)
		return
	}
	id, err := c.Switchover(ctx, req.Leader, req.Candidate)
	if err != nil {
		writeFSMError(ctx, "switchover", err)
		return
	}
	s.awaitOperation(ctx, id)
}

// scheduleSwitchover books a switchover (POST /switchover with scheduled_at): 202, and the
// Raft leader requests it at that time. GET /cluster shows the booking
// (scheduled_switchover) and, once it has ended, its outcome (last_scheduled_switchover).
func (s *Server) scheduleSwitchover(ctx *fasthttp.RequestCtx, req opRequest) {
	at, err := time.Parse(time.RFC3339, req.ScheduledAt)
	if err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("scheduled_at %q: want a time in RFC 3339 with its zone, such as 2026-11-28T03:00:00Z or 2026-11-28T04:00:00+01:00", req.ScheduledAt))
		return
	}
	if err := s.src.Cluster.ScheduleSwitchover(ctx, req.Leader, req.Candidate, at); err != nil {
		writeFSMError(ctx, "schedule switchover", err)
		return
	}
	cand := req.Candidate
	if cand == "" {
		cand = "the best replica at that time"
	}
	writeJSON(ctx, fasthttp.StatusAccepted, map[string]any{"scheduled_at": at.UTC(), "leader": req.Leader, "candidate": req.Candidate,
		"message": fmt.Sprintf("switchover from %s to %s scheduled at %s; DELETE /switchover cancels it", req.Leader, cand, at.UTC().Format(time.RFC3339))})
}

// cancelSwitchover drops the booked switchover (DELETE /switchover, Patroni's flush).
func (s *Server) cancelSwitchover(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	if err := s.src.Cluster.CancelScheduledSwitchover(ctx); err != nil {
		writeFSMError(ctx, "cancel the scheduled switchover", err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"message": "scheduled switchover cancelled"})
}

func (s *Server) failover(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var req opRequest
	if !decode(ctx, &req) {
		return
	}
	id, err := s.src.Cluster.Failover(ctx, req.Candidate, req.Force)
	if err != nil {
		writeFSMError(ctx, "failover", err)
		return
	}
	s.awaitOperation(ctx, id)
}

// awaitOperation answers 200 with the finished operation, 409 if it failed, or 202 with its id
// when it is still running after api.operation_wait.
func (s *Server) awaitOperation(ctx *fasthttp.RequestCtx, id uint64) {
	wctx, cancel := context.WithTimeout(context.Background(), s.cfg.OperationWait)
	defer cancel()
	op, err := s.src.Cluster.WaitOperation(wctx, id)
	switch {
	case err != nil && errors.Is(err, context.DeadlineExceeded):
		writeJSON(ctx, fasthttp.StatusAccepted, map[string]any{"id": id, "message": "operation still running; follow it with GET /history or GET /events"})
	case err != nil:
		writeFSMError(ctx, "waiting for the operation", err)
	case op.Phase == fsm.PhaseFailed:
		writeJSON(ctx, fasthttp.StatusConflict, map[string]any{"operation": op, "error": op.Message})
	default:
		writeJSON(ctx, fasthttp.StatusOK, map[string]any{"operation": op, "message": fmt.Sprintf("%s finished: %s is the primary", op.Kind, op.NewPrimary)})
	}
}

// backup streams a backup of the replicated state (taken on the Raft leader).
func (s *Server) backup(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var buf bytes.Buffer
	info, err := s.src.Cluster.Backup(ctx, &buf)
	if err != nil {
		writeFSMError(ctx, "backup", err)
		return
	}
	ctx.Response.Header.Set("X-PGBastion-Backup-Index", strconv.FormatUint(info.Index, 10))
	ctx.Response.Header.Set("X-PGBastion-Backup-SHA256", info.SHA256)
	ctx.SetContentType("application/octet-stream")
	ctx.SetBody(buf.Bytes())
}

// restore replaces the cluster's replicated state with the uploaded backup.
func (s *Server) restore(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	info, err := s.src.Cluster.Restore(ctx, bytes.NewReader(ctx.PostBody()))
	if err != nil {
		writeFSMError(ctx, "restore", err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"restored": info})
}

func (s *Server) pause(paused bool) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !s.needCluster(ctx) {
			return
		}
		if err := s.src.Cluster.SetPause(ctx, paused); err != nil {
			writeFSMError(ctx, "pause", err)
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, map[string]any{"paused": paused})
	}
}

// reload re-reads the daemon's configuration file (POST /reload, Patroni's name): 200 with what
// changed, what was applied and what takes a restart; 400 with the reason when the new file is
// refused (it changed nothing then).
func (s *Server) reload(ctx *fasthttp.RequestCtx) {
	var req struct {
		// Cluster: every member reloads (patronictl reload), not only this node.
		Cluster bool `json:"cluster"`
		// WaitSeconds bounds how long a cluster-wide reload waits for every member's result
		// (default 30).
		WaitSeconds float64 `json:"wait_seconds"`
	}
	if !decode(ctx, &req) {
		return
	}
	if req.Cluster {
		s.clusterReload(ctx, req.WaitSeconds)
		return
	}
	if s.src.Reload == nil {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "this daemon cannot reload its configuration")
		return
	}
	res, err := s.src.Reload()
	if err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "configuration not reloaded, nothing changed: "+err.Error())
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, res)
}

// clusterReload asks every member to reload its configuration file and waits for their
// results: 200 once every member reported (each result says what it applied, what takes a
// restart, or why its file was refused), 202 with the members still missing when the wait
// ran out.
func (s *Server) clusterReload(ctx *fasthttp.RequestCtx, waitSeconds float64) {
	if !s.needCluster(ctx) {
		return
	}
	if waitSeconds <= 0 || waitSeconds > 600 {
		waitSeconds = 30
	}
	c := s.src.Cluster
	sub := c.Subscribe() // before the request: no result can slip by
	defer sub.Close()
	id, err := c.RequestReload(ctx)
	if err != nil {
		writeFSMError(ctx, "cluster-wide reload", err)
		return
	}
	wctx, cancel := context.WithTimeout(context.Background(), time.Duration(waitSeconds*float64(time.Second)))
	defer cancel()
	st := c.State()
	for {
		missing := reloadMissing(st, id)
		if missing == nil || wctx.Err() != nil {
			var results map[string]fsm.ReloadResult
			if st.Reload != nil && st.Reload.ID == id {
				results = st.Reload.Results
			}
			code, failed := fasthttp.StatusOK, 0
			for _, r := range results {
				if r.Error != "" {
					failed++
				}
			}
			msg := fmt.Sprintf("%d members reloaded their configuration file", len(results)-failed)
			if failed > 0 {
				msg += fmt.Sprintf("; %d refused theirs (nothing changed there: see each error)", failed)
			}
			if len(missing) > 0 {
				code = fasthttp.StatusAccepted
				msg += fmt.Sprintf("; no answer yet from %s (down, or a version without cluster-wide reload; pgbastion ctl reload on each)", strings.Join(missing, ", "))
			}
			writeJSON(ctx, code, map[string]any{"id": id, "results": results, "missing": missing, "message": msg})
			return
		}
		select {
		case st = <-sub.C:
		case <-wctx.Done():
			st = c.State()
		}
	}
}

// reloadMissing lists the members that have not reported reload id (nil when none is missing).
func reloadMissing(st *fsm.State, id uint64) []string {
	var missing []string
	for _, name := range st.MemberNames() {
		if st.Reload == nil || st.Reload.ID != id {
			missing = append(missing, name)
			continue
		}
		if _, ok := st.Reload.Results[name]; !ok {
			missing = append(missing, name)
		}
	}
	return missing
}

// pauseRequest is the body of POST /proxy/pause.
type pauseRequest struct {
	// WaitSeconds bounds how long the call waits for transactions in flight (default 30).
	WaitSeconds float64 `json:"wait_seconds"`
	// Database pauses only that database's transactions (PgBouncer's PAUSE db).
	Database string `json:"database"`
}

const noProxyPause = "a cluster member's proxy is paused and resumed by switchovers: to restart PostgreSQL use pgbastion ctl restart (a replica) or pgbastion ctl switchover first (the primary)"

// pauseProxy pauses a standalone proxy (POST /proxy/pause): 200 once no transaction holds a
// server; 202 when the wait ran out with some still in flight (the pause is in force either
// way; POST /proxy/resume ends it).
func (s *Server) pauseProxy(ctx *fasthttp.RequestCtx) {
	if s.src.PauseProxy == nil {
		writeError(ctx, fasthttp.StatusConflict, noProxyPause)
		return
	}
	req := pauseRequest{WaitSeconds: 30}
	if !decode(ctx, &req) {
		return
	}
	if req.WaitSeconds < 0 || req.WaitSeconds > 3600 {
		writeError(ctx, fasthttp.StatusBadRequest, "wait_seconds must be between 0 and 3600")
		return
	}
	wctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.WaitSeconds*float64(time.Second)))
	defer cancel()
	n, err := s.src.PauseProxy(wctx, req.Database)
	what, resume := "paused", "POST /proxy/resume"
	if req.Database != "" {
		what = fmt.Sprintf("database %q paused", req.Database)
		resume = fmt.Sprintf(`POST /proxy/resume {"database": %q}`, req.Database)
	}
	if err != nil {
		writeJSON(ctx, fasthttp.StatusAccepted, map[string]any{"paused": true, "database": req.Database, "drained": false, "in_flight": n,
			"message": fmt.Sprintf("%s, but %d transactions still hold a server connection after %gs (in session mode a client holds one for its whole session); new transactions wait; %s ends the pause", what, n, req.WaitSeconds, resume)})
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"paused": true, "database": req.Database, "drained": true, "in_flight": 0,
		"message": what + ": no transaction holds a server connection; new transactions wait (up to query_wait_timeout) until " + resume})
}

// resumeProxy ends a pause (POST /proxy/resume).
func (s *Server) resumeProxy(ctx *fasthttp.RequestCtx) {
	if s.src.ResumeProxy == nil {
		writeError(ctx, fasthttp.StatusConflict, noProxyPause)
		return
	}
	var req databaseRequest
	if !decode(ctx, &req) {
		return
	}
	if !s.src.ResumeProxy(req.Database) {
		writeError(ctx, fasthttp.StatusNotFound, fmt.Sprintf("database %q is not paused; POST /proxy/resume without a database ends every pause", req.Database))
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"paused": false, "database": req.Database})
}

// removeMember removes a member for good (DELETE /members/{name}). The primary cannot be
// removed: switch over first.
func (s *Server) removeMember(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	name, _ := ctx.UserValue("name").(string)
	if name == "" {
		writeError(ctx, fasthttp.StatusBadRequest, "DELETE /members/{name}: the member's name is required")
		return
	}
	if err := s.src.Cluster.RemoveMember(ctx, name); err != nil {
		writeFSMError(ctx, "remove member", err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"removed": name,
		"message": "removed from the cluster and from the Raft group; its replication slot is dropped on the primary. Keep its pgbastion stopped; before reusing the host, stop its PostgreSQL and empty its raft.data_dir"})
}

// addMember serves POST /members {"name", "raft_address"}: it adds a node to the Raft group
// (etcdctl member add). The node must already run with raft.peers that do not list itself
// (no bootstrap of its own) and postgresql.bootstrap false; once added it catches up,
// registers itself and clones its data from the primary.
func (s *Server) addMember(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var req struct {
		Name        string `json:"name"`
		RaftAddress string `json:"raft_address"`
	}
	if !decode(ctx, &req) {
		return
	}
	if req.Name == "" || req.RaftAddress == "" {
		writeError(ctx, fasthttp.StatusBadRequest, `the body must name the node and its Raft address: {"name": "db4", "raft_address": "10.0.0.4:8300"}`)
		return
	}
	if _, _, err := net.SplitHostPort(req.RaftAddress); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("raft_address %q is not host:port (the node's raft.advertise)", req.RaftAddress))
		return
	}
	if err := s.src.Cluster.AddVoter(ctx, req.Name, req.RaftAddress); err != nil {
		writeFSMError(ctx, "add member", err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"added": req.Name, "raft_address": req.RaftAddress,
		"message": fmt.Sprintf("%s is a Raft voter: once it has caught up it registers itself and clones its data from the primary (pgbastion ctl list shows it); "+
			"list it in every node's raft.peers for the record", req.Name)})
}

// Role checks, Patroni-style: the status code is the answer; the body shows the node.
func (s *Server) roleCheck(check func(*fasthttp.RequestCtx) (bool, map[string]any)) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		var ok bool
		var body map[string]any
		if s.catchingUp() {
			ok, body = false, map[string]any{"error": catchingUpMessage}
		} else {
			ok, body = check(ctx)
		}
		code := fasthttp.StatusOK
		if !ok {
			code = fasthttp.StatusServiceUnavailable
		}
		if ctx.IsHead() || ctx.IsOptions() {
			ctx.SetStatusCode(code)
			return
		}
		writeJSON(ctx, code, body)
	}
}

// catchingUpMessage explains a view that is not current yet.
const catchingUpMessage = "this node is replaying the cluster's Raft log after a restart; its view of the cluster is not current yet (ask another node, or wait a moment)"

// catchingUp reports whether this node's state is still being replayed from its Raft log after
// a restart: it then shows the past (old primaries, old statuses) and answers no role check.
func (s *Server) catchingUp() bool {
	if s.src.Cluster == nil {
		return false
	}
	cu, ok := s.src.Cluster.(interface{ CaughtUp() bool })
	return ok && !cu.CaughtUp()
}

func (s *Server) self() (fsm.Member, *fsm.State, bool) {
	if s.src.Cluster == nil {
		return fsm.Member{}, nil, false
	}
	st := s.src.Cluster.State()
	m, ok := st.Members[s.src.Cluster.Name()]
	return m, st, ok
}

func roleBody(m fsm.Member, st *fsm.State) map[string]any {
	return map[string]any{"name": m.Name, "role": m.Status.Role, "state": m.Status.State, "healthy": m.Status.Healthy,
		"timeline": m.Status.Timeline, "lag_bytes": m.Status.LagBytes, "primary": st.Primary}
}

// isPrimary: 200 only on the primary that holds its write lease (so a load balancer never
// sends writes to a deposed primary).
func (s *Server) isPrimary(ctx *fasthttp.RequestCtx) (bool, map[string]any) {
	m, st, ok := s.self()
	if !ok {
		return false, map[string]any{"error": "not a cluster member"}
	}
	body := roleBody(m, st)
	lease := s.src.Cluster.HoldsWriteLease()
	body["write_lease"] = lease
	return st.Primary == m.Name && m.Status.Healthy && m.Status.Role == fsm.RolePrimary && lease, body
}

// isReplica: 200 on a healthy streaming replica; ?lag=<bytes|NkB|NMB> bounds its lag, and a
// noloadbalance tag answers 503 as in Patroni.
func (s *Server) isReplica(ctx *fasthttp.RequestCtx) (bool, map[string]any) {
	m, st, ok := s.self()
	if !ok {
		return false, map[string]any{"error": "not a cluster member"}
	}
	body := roleBody(m, st)
	good := m.Status.Healthy && m.Status.Role == fsm.RoleReplica && !m.Tags.NoLoadBalance
	if lag := string(ctx.QueryArgs().Peek("lag")); lag != "" {
		max, err := parseBytes(lag)
		if err != nil {
			body["error"] = err.Error()
			return false, body
		}
		good = good && m.Status.LagBytes <= max
	}
	// Patroni's ?replication_state=streaming: the replica streams from its upstream now.
	if rs := string(ctx.QueryArgs().Peek("replication_state")); rs != "" {
		if rs != "streaming" {
			body["error"] = "replication_state: only streaming can be asked for"
			return false, body
		}
		good = good && m.Status.Following != ""
	}
	// Patroni's ?tag_KEY=VALUE: the member's tag has that value.
	var tagErr string
	ctx.QueryArgs().VisitAll(func(k, v []byte) {
		key, ok := strings.CutPrefix(string(k), "tag_")
		if !ok || tagErr != "" {
			return
		}
		have, known := tagValues(m.Tags)[key]
		switch {
		case !known:
			tagErr = "no tag " + strconv.Quote(key) + " (nofailover, failover_priority, nosync, noloadbalance, replicatefrom)"
		case !strings.EqualFold(have, string(v)):
			good = false
		}
	})
	if tagErr != "" {
		body["error"] = tagErr
		return false, body
	}
	return good, body
}

// tagValues are a member's tags as Patroni's tag filters compare them, as text.
func tagValues(t fsm.Tags) map[string]string {
	return map[string]string{"nofailover": strconv.FormatBool(t.NoFailover), "failover_priority": strconv.Itoa(t.FailoverPriority),
		"nosync": strconv.FormatBool(t.NoSync), "noloadbalance": strconv.FormatBool(t.NoLoadBalance), "replicatefrom": t.ReplicateFrom}
}

func (s *Server) isReadable(ctx *fasthttp.RequestCtx) (bool, map[string]any) {
	if ok, body := s.isPrimary(ctx); ok {
		return true, body
	}
	return s.isReplica(ctx)
}

// isSync: 200 on a healthy replica that the cluster counts as a synchronous standby of the
// current primary (want true), or on one it does not (want false), as Patroni's /sync and
// /async.
func (s *Server) isSync(want bool) func(*fasthttp.RequestCtx) (bool, map[string]any) {
	return func(ctx *fasthttp.RequestCtx) (bool, map[string]any) {
		ok, body := s.isReplica(ctx)
		if !ok {
			return false, body
		}
		m, st, _ := s.self()
		standbys, _ := st.SyncPromise(st.Primary)
		sync := slices.Contains(standbys, m.Name)
		body["sync_standby"] = sync
		return sync == want, body
	}
}

func (s *Server) isHealthy(ctx *fasthttp.RequestCtx) (bool, map[string]any) {
	m, st, ok := s.self()
	if !ok {
		return false, map[string]any{"error": "not a cluster member"}
	}
	return m.Status.Healthy, roleBody(m, st)
}

// parseBytes reads a byte count with an optional kB/MB/GB suffix (Patroni's lag parameter).
func parseBytes(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		m      uint64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.m
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("lag %q is not a byte count (examples: 1048576, 16MB)", s)
	}
	return n * mult, nil
}

// events streams the cluster state as server-sent events, one per change.
func (s *Server) events(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	done := ctx.Done()
	sub := s.src.Cluster.Subscribe()
	var evc <-chan notify.Event
	stopEvents := func() {}
	if s.src.SubscribeEvents != nil {
		evc, stopEvents = s.src.SubscribeEvents()
	}
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer sub.Close()
		defer stopEvents()
		keepalive := time.NewTicker(15 * time.Second)
		defer keepalive.Stop()
		for {
			select {
			case <-done:
				return
			case st := <-sub.C:
				b, err := json.Marshal(st)
				if err != nil {
					return
				}
				fmt.Fprintf(w, "event: state\nid: %d\ndata: %s\n\n", st.Index, b)
			case e := <-evc:
				b, err := json.Marshal(e)
				if err != nil {
					return
				}
				fmt.Fprintf(w, "event: cluster_event\ndata: %s\n\n", b)
			case <-keepalive.C:
				fmt.Fprint(w, ": keepalive\n\n")
			}
			if w.Flush() != nil {
				return
			}
		}
	})
}

func decode(ctx *fasthttp.RequestCtx, v any) bool {
	body := ctx.PostBody()
	if len(body) == 0 {
		return true
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

func writeJSON(ctx *fasthttp.RequestCtx, code int, v any) {
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	enc := json.NewEncoder(ctx.Response.BodyWriter())
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(ctx *fasthttp.RequestCtx, code int, msg string) {
	writeJSON(ctx, code, map[string]string{"error": msg})
}

// writeFSMError maps the HA core's typed errors to HTTP status codes.
func writeFSMError(ctx *fasthttp.RequestCtx, what string, err error) {
	code := fasthttp.StatusInternalServerError
	switch {
	case errors.Is(err, fsm.ErrInvalid):
		code = fasthttp.StatusBadRequest
	case errors.Is(err, fsm.ErrNotFound):
		code = fasthttp.StatusNotFound
	case errors.Is(err, fsm.ErrPrecondition):
		code = fasthttp.StatusPreconditionFailed
	case errors.Is(err, fsm.ErrConflict):
		code = fasthttp.StatusConflict
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, fsm.ErrHalted):
		code = fasthttp.StatusServiceUnavailable
	case leaderChanged(err):
		// Nothing was decided: the request can simply be sent again.
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, fasthttp.StatusServiceUnavailable, what+": the Raft leader changed while the request was being committed ("+err.Error()+"); nothing was changed, send it again")
		return
	}
	writeError(ctx, code, what+": "+err.Error())
}

// leaderChanged reports whether err says the Raft leader changed or was unknown while a
// command was being committed (errors forwarded from another node arrive as text).
func leaderChanged(err error) bool {
	if errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, raft.ErrLeadershipLost.Error()) || strings.Contains(msg, raft.ErrNotLeader.Error())
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) { f.l.Debug(fmt.Sprintf(format, args...)) }
