package notify

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// queueLimit bounds the events waiting for one webhook, and the callbacks waiting to run.
const queueLimit = 256

// recentLimit is how many events Recent keeps.
const recentLimit = 500

// Source is where the replicated state comes from (*ha.Node).
type Source interface {
	Subscribe() *fsm.Subscription
}

// Options configure a Notifier.
type Options struct {
	// Cluster is the cluster's name and Node this node's, for callbacks' arguments and the
	// events' Cluster and Sender.
	Cluster string
	Node    string
	// IsLeader reports whether this node is the Raft leader, which delivers webhooks.
	IsLeader func() bool
	Logger   *slog.Logger
	// Metrics receives the delivery counters (nil: a private set).
	Metrics *metrics.Set
	// Client sends webhooks (nil: a client with the webhook's timeout per attempt).
	Client *http.Client
	// RetryBase is the first wait before a webhook is tried again, doubled each time
	// (default 1s; four retries).
	RetryBase time.Duration
}

// Notifier derives events from the cluster state and delivers them to webhooks and
// callbacks.
type Notifier struct {
	cb    Callbacks
	hooks []*hookWorker
	opts  Options
	log   *slog.Logger
	calls *queue[callRun]

	cbOK, cbFailed, cbDropped *metrics.Counter

	// Owned by Run's goroutine, except through SelfFenced (mu).
	mu   sync.Mutex
	self selfState

	// Owned by Run's goroutine: whether this node led at the last state, and the IDs of the
	// recent events it queued for the webhooks (remember forgets those no longer recent).
	leading bool
	queued  map[string]struct{}

	recentMu sync.Mutex
	recent   []Event // the newest recentLimit events, oldest first
	subs     map[chan Event]struct{}
}

// redeliverWindow is how far back a node that becomes the Raft leader looks for events to
// deliver again: its predecessor may have died with them queued or being retried. It covers
// an election (seconds) and the first retries; older events the previous leader had time to
// send. Receivers see Redelivered and drop IDs they have.
const redeliverWindow = 30 * time.Second

// Subscribe returns a channel that receives each event as it is derived, and a function that
// ends the subscription. A subscriber that falls more than 64 events behind misses the
// excess (GET /cluster/events still has them).
func (n *Notifier) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	n.recentMu.Lock()
	if n.subs == nil {
		n.subs = map[chan Event]struct{}{}
	}
	n.subs[ch] = struct{}{}
	n.recentMu.Unlock()
	return ch, func() {
		n.recentMu.Lock()
		delete(n.subs, ch)
		n.recentMu.Unlock()
	}
}

// Recent returns the events derived since this process started (the newest 500), oldest
// first. Every node derives the same ones from the replicated log.
func (n *Notifier) Recent() []Event {
	n.recentMu.Lock()
	defer n.recentMu.Unlock()
	return slices.Clone(n.recent)
}

func (n *Notifier) remember(evs []Event) {
	if len(evs) == 0 {
		return
	}
	n.recentMu.Lock()
	defer n.recentMu.Unlock()
	n.recent = append(n.recent, evs...)
	if over := len(n.recent) - recentLimit; over > 0 {
		// What is no longer recent cannot be delivered again: forget that it was queued, so
		// that a node that leads for months does not keep every ID it ever sent.
		for _, e := range n.recent[:over] {
			delete(n.queued, e.ID)
		}
		n.recent = slices.Delete(n.recent, 0, over)
	}
	for ch := range n.subs {
		for _, e := range evs {
			select {
			case ch <- e:
			default:
			}
		}
	}
}

// selfState is what the callbacks know of this node's PostgreSQL.
type selfState struct {
	known   bool
	running bool
	role    string
	applied uint64 // the cluster configuration version this node last reported applied
}

type callRun struct {
	action, role string
	event        Event
}

type hookWorker struct {
	w                   Webhook
	q                   *queue[Event]
	ok, failed, dropped *metrics.Counter
	client              *http.Client
	retryBase           time.Duration
	log                 *slog.Logger
	cluster, sender     string
}

// New returns a notifier. The configuration must have been validated.
func New(cb Callbacks, webhooks []Webhook, opts Options) *Notifier {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.IsLeader == nil {
		opts.IsLeader = func() bool { return false }
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = time.Second
	}
	if cb.Timeout <= 0 {
		cb.Timeout = 30 * time.Second
	}
	log := opts.Logger.With("component", "notify")
	set := opts.Metrics
	n := &Notifier{cb: cb, opts: opts, log: log, calls: newQueue[callRun](queueLimit),
		cbOK:      set.GetOrCreateCounter(`pgbastion_callback_runs_total{result="ok"}`),
		cbFailed:  set.GetOrCreateCounter(`pgbastion_callback_runs_total{result="failed"}`),
		cbDropped: set.GetOrCreateCounter(`pgbastion_callback_runs_total{result="dropped"}`),
	}
	for i, w := range webhooks {
		client := opts.Client
		if client == nil {
			client = &http.Client{Timeout: w.Timeout}
			if w.roots != nil {
				tr := http.DefaultTransport.(*http.Transport).Clone()
				tr.TLSClientConfig = &tls.Config{RootCAs: w.roots, MinVersion: tls.VersionTLS12}
				client.Transport = tr
			}
		}
		name := w.Name
		if name == "" {
			name = fmt.Sprint(i)
		}
		q := fmt.Sprintf(`{webhook=%q,result=`, name)
		n.hooks = append(n.hooks, &hookWorker{w: w, q: newQueue[Event](queueLimit), client: client,
			retryBase: opts.RetryBase, log: log.With("webhook", w.label()), cluster: opts.Cluster, sender: opts.Node,
			ok:      set.GetOrCreateCounter(`pgbastion_webhook_deliveries_total` + q + `"ok"}`),
			failed:  set.GetOrCreateCounter(`pgbastion_webhook_deliveries_total` + q + `"failed"}`),
			dropped: set.GetOrCreateCounter(`pgbastion_webhook_deliveries_total` + q + `"dropped"}`),
		})
	}
	return n
}

// Run follows the cluster state until ctx ends, delivering what it derives.
func (n *Notifier) Run(ctx context.Context, src Source) error {
	defer n.startWorkers(ctx).Wait()

	sub := src.Subscribe()
	defer sub.Close()
	var prev *fsm.State
	for {
		select {
		case <-ctx.Done():
			return nil
		case st := <-sub.C:
			n.observe(prev, st)
			prev = st
		}
	}
}

// startWorkers starts the webhook senders and the callback runner; they stop with ctx.
func (n *Notifier) startWorkers(ctx context.Context) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, h := range n.hooks {
		wg.Go(func() { h.run(ctx) })
	}
	if n.cb.Any() {
		wg.Go(func() { n.runCallbacks(ctx) })
	}
	return &wg
}

// observe handles one new state.
func (n *Notifier) observe(prev, cur *fsm.State) {
	if prev == nil {
		// The first state seen is the starting point; what its logs record comes first in
		// the recent events, as the past.
		if past := Past(cur); len(past) > 0 {
			for i := range past {
				past[i].Cluster, past[i].Sender = n.opts.Cluster, n.opts.Node
			}
			n.remember(past)
			n.log.Info("recent events start with what the cluster's logs record", "events", len(past))
		}
	}
	events := Diff(prev, cur)
	leader := n.opts.IsLeader()
	for i := range events {
		events[i].Cluster, events[i].Sender = n.opts.Cluster, n.opts.Node
		n.opts.Metrics.GetOrCreateCounter(fmt.Sprintf(`pgbastion_cluster_events_total{type=%q,severity=%q}`, events[i].Type, events[i].Severity)).Inc()
	}
	// A new leader first sends what its predecessor may not have delivered.
	if leader && !n.leading && len(n.hooks) > 0 {
		again := n.undelivered(time.Now())
		if len(again) > 0 {
			n.log.Info("this node leads now: delivering again the recent events its predecessor may not have sent", "events", len(again))
		}
		for _, e := range again {
			e.Redelivered = true
			n.enqueue(e)
		}
	}
	n.leading = leader
	n.remember(events)
	for i := range events {
		e := &events[i]
		n.log.Info("cluster event", "type", e.Type, "severity", e.Severity, "id", e.ID, "message", e.Message)
		if leader {
			n.enqueue(*e)
		}
	}
	if n.cb.Any() {
		n.selfCallbacks(cur, events)
	}
}

// enqueue hands e to every webhook that wants it.
func (n *Notifier) enqueue(e Event) {
	if len(n.hooks) == 0 {
		return
	}
	if n.queued == nil {
		n.queued = map[string]struct{}{}
	}
	n.queued[e.ID] = struct{}{}
	for _, h := range n.hooks {
		if h.w.wants(e) && h.q.push(e) {
			h.dropped.Inc()
			h.log.Warn("webhook queue full: dropped its oldest event", "limit", queueLimit)
		}
	}
}

// undelivered returns the recent events from the last redeliverWindow that this node has not
// queued itself, oldest first.
func (n *Notifier) undelivered(now time.Time) []Event {
	n.recentMu.Lock()
	defer n.recentMu.Unlock()
	var out []Event
	for _, e := range n.recent {
		if _, done := n.queued[e.ID]; !done && now.Sub(e.At) <= redeliverWindow {
			out = append(out, e)
		}
	}
	return out
}

// SelfFenced tells the callbacks that the agent stopped PostgreSQL itself (the cluster may
// not hear of it: the node lost its quorum).
func (n *Notifier) SelfFenced(reason string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.self.running {
		return
	}
	n.self.running = false
	n.call("on_stop", n.self.role, Event{ID: "self_fenced:" + n.opts.Node, Type: EvNodeState, Severity: SevCritical,
		At: time.Now(), Node: n.opts.Node, To: string(fsm.StateFenced), Reason: reason, Cluster: n.opts.Cluster,
		Sender: n.opts.Node, Message: n.opts.Node + " fenced its own PostgreSQL: " + reason})
}

func roleOf(s fsm.NodeStatus) string {
	switch {
	case s.Role != fsm.RoleUnknown:
		return string(s.Role)
	case s.State == fsm.StateRunningPrimary:
		return string(fsm.RolePrimary)
	case s.State == fsm.StateRunningReplica:
		return string(fsm.RoleReplica)
	}
	return ""
}

// selfCallbacks runs Patroni's callbacks for this node's own changes in cur.
func (n *Notifier) selfCallbacks(cur *fsm.State, events []Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var applied uint64
	if cur.PGConfig != nil {
		applied = cur.PGConfig.Nodes[n.opts.Node].Version
	}
	m, ok := cur.Members[n.opts.Node]
	if !ok || m.Status.ReportIndex == 0 {
		// A new member: its PostgreSQL has not been reported running, so its first start
		// runs on_start.
		n.self = selfState{known: true, applied: applied}
		return
	}
	st := m.Status
	running := st.State == fsm.StateRunningPrimary || st.State == fsm.StateRunningReplica
	stopped := st.State == fsm.StateStopped || st.State == fsm.StateFenced
	role := roleOf(st)
	ev := Event{ID: fmt.Sprintf("node_state:%s:%d", n.opts.Node, st.ReportIndex), Type: EvNodeState, At: st.ReportedAt,
		Index: st.ReportIndex, Node: n.opts.Node, To: string(st.State), Role: role, Reason: st.Reason,
		Cluster: n.opts.Cluster, Sender: n.opts.Node, Severity: SevInfo}
	for _, e := range events {
		if e.Type == EvNodeState && e.Node == n.opts.Node {
			ev = e
		}
	}
	s := &n.self
	if !s.known {
		*s = selfState{known: true, running: running, role: role, applied: applied}
		return
	}
	if applied > s.applied {
		// The agent applied a new cluster configuration with ALTER SYSTEM and a reload.
		s.applied = applied
		n.call("on_reload", role, Event{ID: fmt.Sprintf("pg_config_applied:%s:%d", n.opts.Node, applied), Type: EvConfigChanged,
			Severity: SevInfo, At: cur.PGConfig.Nodes[n.opts.Node].ReportedAt, Index: cur.Index, Node: n.opts.Node, Version: applied,
			Cluster: n.opts.Cluster, Sender: n.opts.Node,
			Message: fmt.Sprintf("%s reloaded PostgreSQL with cluster configuration version %d", n.opts.Node, applied)})
	}
	// An operator's restart stops and starts PostgreSQL: that is on_restart alone.
	restarting := false
	for _, r := range cur.Restarts {
		if r.Node == n.opts.Node && r.Status == fsm.RestartPending {
			restarting = true
		}
	}
	for _, e := range events {
		if e.Type == EvRestartFinished && e.Node == n.opts.Node {
			restarting = true
			if e.Result == string(fsm.RestartDone) {
				n.call("on_restart", role, e)
			}
		}
	}
	switch {
	case running && !s.running:
		if s.role != "" && role != s.role {
			n.call("on_role_change", role, ev)
		} else if !restarting {
			n.call("on_start", role, ev)
		}
		s.running, s.role = true, role
	case running && role != s.role:
		n.call("on_role_change", role, ev)
		s.role = role
	case stopped && s.running:
		if !restarting {
			n.call("on_stop", s.role, ev)
		}
		s.running = false
	}
}

// call queues a callback run (n.mu held).
func (n *Notifier) call(action, role string, e Event) {
	if n.cb.byAction()[action] == "" {
		return
	}
	if role == "" {
		role = "unknown"
	}
	if n.calls.push(callRun{action: action, role: role, event: e}) {
		n.cbDropped.Inc()
		n.log.Warn("callback queue full: dropped its oldest run", "limit", queueLimit)
	}
}

func (n *Notifier) runCallbacks(ctx context.Context) {
	for {
		c, ok := n.calls.pop(ctx)
		if !ok {
			return
		}
		n.runCallback(ctx, c)
	}
}

// runCallback runs one callback program to its end or its timeout.
func (n *Notifier) runCallback(ctx context.Context, c callRun) {
	cmdline := n.cb.byAction()[c.action]
	body, _ := json.Marshal(c.event)
	start := time.Now()
	output, err := RunProgram(ctx, cmdline, []string{c.action, c.role, n.opts.Cluster}, []string{"PGBASTION_EVENT=" + string(body), "PGBASTION_ACTION=" + c.action,
		"PGBASTION_ROLE=" + c.role, "PGBASTION_CLUSTER=" + n.opts.Cluster, "PGBASTION_NODE=" + n.opts.Node}, n.cb.Timeout)
	attrs := []any{"action", c.action, "role", c.role, "program", strings.Fields(cmdline)[0], "took", time.Since(start).Round(time.Millisecond)}
	if output != "" {
		attrs = append(attrs, "output", output)
	}
	// Logged before counted: whoever sees the count finds the log line.
	switch {
	case errors.Is(err, ErrProgramTimeout):
		n.log.Error(fmt.Sprintf("callback killed after %s (postgresql.callbacks.timeout); make it return sooner or run its slow part in the background", n.cb.Timeout), attrs...)
		n.cbFailed.Inc()
	case err != nil && ctx.Err() == nil:
		n.log.Error("callback failed: "+err.Error(), attrs...)
		n.cbFailed.Inc()
	case err == nil:
		n.log.Info("callback ran", attrs...)
		n.cbOK.Inc()
	}
}

// ErrProgramTimeout: RunProgram killed the program at its timeout.
var ErrProgramTimeout = errors.New("killed at its timeout")

// RunProgram runs cmdline (a program and its arguments separated by spaces, no shell) with
// args appended and env added to this process's environment, in its own process group, which
// is killed at timeout. It returns the program's output (stdout and stderr, the first 4 KiB,
// trimmed) and an error when it did not exit 0 (ErrProgramTimeout when it was killed).
func RunProgram(ctx context.Context, cmdline string, args, env []string, timeout time.Duration) (string, error) {
	fields := strings.Fields(cmdline)
	if len(fields) == 0 {
		return "", errors.New("no program")
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, fields[0], append(fields[1:], args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Env = append(os.Environ(), env...)
	out := &capped{max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = ErrProgramTimeout
	}
	return strings.TrimSpace(out.String()), err
}

// capped keeps the first max bytes written to it.
type capped struct {
	mu   sync.Mutex
	b    bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - c.b.Len(); room > 0 {
		c.b.Write(p[:min(room, len(p))])
	}
	if c.b.Len()+len(p) > c.max {
		c.over = true
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over {
		return c.b.String() + " …(truncated)"
	}
	return c.b.String()
}

// ---- webhooks ----

func (h *hookWorker) run(ctx context.Context) {
	for {
		e, ok := h.q.pop(ctx)
		if !ok {
			return
		}
		if err := h.deliver(ctx, e); err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Error("webhook delivery failed: "+err.Error(), "event", e.ID)
			h.failed.Inc()
		} else {
			h.ok.Inc()
		}
	}
}

// permanent marks a delivery error that retrying cannot fix.
type permanent struct{ error }

// deliver POSTs e, retrying transient failures.
func (h *hookWorker) deliver(ctx context.Context, e Event) error {
	body, err := h.body(e)
	if err != nil {
		return err
	}
	var last error
	wait := h.retryBase
	const attempts = 5
	for attempt := 1; attempt <= attempts; attempt++ {
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			wait *= 2
		}
		last = h.post(ctx, e, body)
		var p permanent
		if last == nil || errors.As(last, &p) {
			return last
		}
		if attempt == attempts {
			break
		}
		h.log.Warn("webhook delivery failed, will retry: "+last.Error(), "event", e.ID, "attempt", attempt, "next_in", wait)
	}
	return fmt.Errorf("%w (gave up after %d attempts)", last, attempts)
}

func (h *hookWorker) body(e Event) ([]byte, error) {
	if h.w.Format == "pagerduty" {
		return pdBody(&h.w, e)
	}
	if h.w.Format == "slack" {
		text := fmt.Sprintf("[%s] %s", e.Severity, e.Message)
		if e.Cluster != "" {
			text = fmt.Sprintf("[%s] %s: %s", e.Severity, e.Cluster, e.Message)
		}
		if e.Redelivered {
			text += " (sent again by the new Raft leader)"
		}
		return json.Marshal(map[string]string{"text": text})
	}
	return json.Marshal(e)
}

func (h *hookWorker) post(ctx context.Context, e Event, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.w.URL, bytes.NewReader(body))
	if err != nil {
		return permanent{errors.New("cannot build the request (check the url)")}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pgbastion")
	req.Header.Set("X-PGBastion-Event", string(e.Type))
	req.Header.Set("X-PGBastion-Event-Id", e.ID)
	for k, v := range h.w.Headers {
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		// *url.Error repeats the URL, which may carry a secret: keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		var cv *tls.CertificateVerificationError
		if errors.As(err, &cv) {
			return permanent{fmt.Errorf("%w (the receiver's certificate is not trusted: set the webhook's ca_file to the CA that signed it)", err)}
		}
		return err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	err = fmt.Errorf("HTTP %s: %s", resp.Status, strings.TrimSpace(string(snippet)))
	if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestTimeout {
		return permanent{fmt.Errorf("%w (the receiver refused it; check the url, headers and format)", err)}
	}
	return err
}

// ---- queue ----

// queue is a bounded FIFO that drops its oldest item when full.
type queue[T any] struct {
	mu    sync.Mutex
	items []T
	max   int
	ready chan struct{}
}

func newQueue[T any](max int) *queue[T] {
	return &queue[T]{max: max, ready: make(chan struct{}, 1)}
}

// push adds v; it reports whether the oldest item was dropped to make room.
func (q *queue[T]) push(v T) (dropped bool) {
	q.mu.Lock()
	if len(q.items) >= q.max {
		var zero T
		q.items[0] = zero
		q.items = q.items[1:]
		dropped = true
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return dropped
}

// pop waits for the oldest item; false when ctx ended.
func (q *queue[T]) pop(ctx context.Context) (T, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			v := q.items[0]
			var zero T
			q.items[0] = zero
			q.items = q.items[1:]
			q.mu.Unlock()
			return v, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			var zero T
			return zero, false
		case <-q.ready:
		}
	}
}
