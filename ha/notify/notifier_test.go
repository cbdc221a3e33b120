package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func counter(set *metrics.Set, name string) uint64 {
	return set.GetOrCreateCounter(name).Get()
}

// failover returns a state pair in which db1's primaryship passes to db2.
func failover() (*fsm.State, *fsm.State) {
	s0 := cluster(10)
	s1 := next(s0, 14)
	setStatus(s1, "db1", fsm.StateFenced, fsm.RolePrimary, false, 11)
	setStatus(s1, "db2", fsm.StateRunningPrimary, fsm.RolePrimary, true, 13)
	s1.Primary, s1.PrimaryIndex = "db2", 14
	s1.History = append(s1.History, fsm.HistoryEntry{At: t0, Index: 14, NewPrimary: "db2", OldPrimary: "db1", Kind: fsm.OpFailover, Timeline: 2})
	return s0, s1
}

type received struct {
	header http.Header
	body   []byte
}

type receiver struct {
	mu    sync.Mutex
	got   []received
	codes []int // answered in turn; 200 once they run out
	srv   *httptest.Server
}

func newReceiver(t *testing.T, codes ...int) *receiver {
	r := &receiver{codes: codes}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		code := 200
		if len(r.codes) > 0 {
			code, r.codes = r.codes[0], r.codes[1:]
		}
		if code == 200 {
			r.got = append(r.got, received{req.Header.Clone(), body})
		}
		r.mu.Unlock()
		w.WriteHeader(code)
		_, _ = io.WriteString(w, http.StatusText(code))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) received() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

func TestWebhooksDeliverEventsFromTheLeaderOnly(t *testing.T) {
	all := newReceiver(t)
	critical := newReceiver(t, 503, 429) // fails twice, then takes it
	slack := newReceiver(t)
	hooks := []Webhook{
		{URL: all.srv.URL + "/all", Headers: map[string]string{"Authorization": "Bearer s3cret"}},
		{URL: critical.srv.URL, Name: "pager", MinSeverity: "critical"},
		{URL: slack.srv.URL, Format: "slack", Events: []string{"primary_changed"}},
	}
	for i := range hooks {
		if err := hooks[i].Validate("webhooks"); err != nil {
			t.Fatal(err)
		}
	}
	var leader atomic.Bool
	set := metrics.NewSet()
	n := New(Callbacks{}, hooks, Options{Cluster: "main", Node: "db3", IsLeader: leader.Load, Metrics: set, RetryBase: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer n.startWorkers(ctx).Wait()
	defer cancel()

	s0, s1 := failover()
	n.observe(s0, s1) // not the leader: nothing is sent
	leader.Store(true)
	s2 := next(s1, 20)
	s2.Paused = true // one more event, a warning
	n.observe(s1, s2)
	waitFor(t, "the maintenance event", func() bool { return len(all.received()) == 1 })
	if got := all.received()[0]; got.header.Get("Authorization") != "Bearer s3cret" || got.header.Get("X-PGBastion-Event") != "maintenance" {
		t.Errorf("headers: %v", got.header)
	}

	leader.Store(true)
	n.observe(s0, s1)
	waitFor(t, "the failover's events", func() bool { return len(all.received()) == 4 })
	var evs []Event
	for _, r := range all.received() {
		var e Event
		if err := json.Unmarshal(r.body, &e); err != nil {
			t.Fatal(err)
		}
		if e.Cluster != "main" || e.Sender != "db3" || r.header.Get("X-PGBastion-Event-Id") != e.ID {
			t.Errorf("event %+v, header id %q", e, r.header.Get("X-PGBastion-Event-Id"))
		}
		evs = append(evs, e)
	}
	if got, want := types(evs), "maintenance node_state node_state primary_changed"; got != want {
		t.Errorf("all: %s, want %s", got, want)
	}

	// The critical-only webhook got db1's fencing (it was the primary), after two retries.
	waitFor(t, "the critical event", func() bool { return len(critical.received()) == 1 })
	var e Event
	_ = json.Unmarshal(critical.received()[0].body, &e)
	if e.Type != EvNodeState || e.Node != "db1" || e.Severity != SevCritical {
		t.Errorf("critical: %+v", e)
	}
	// Slack got one message, with a text.
	waitFor(t, "the slack message", func() bool { return len(slack.received()) == 1 })
	var msg map[string]string
	_ = json.Unmarshal(slack.received()[0].body, &msg)
	if msg["text"] != "[warning] main: db2 is the primary, replacing db1 (failover), timeline 2" {
		t.Errorf("slack: %q", msg)
	}
	// Every node counts the events it derives, leader or not (each observe above: two node
	// states and a primary change; one maintenance).
	if got := counter(set, `pgbastion_cluster_events_total{type="node_state",severity="critical"}`); got != 2 {
		t.Errorf("critical node_state events counted: %d, want 2 (db1's fencing, seen twice)", got)
	}
	if got := counter(set, `pgbastion_cluster_events_total{type="primary_changed",severity="warning"}`); got != 2 {
		t.Errorf("primary_changed counted: %d, want 2", got)
	}
	waitFor(t, "the counters", func() bool {
		return counter(set, `pgbastion_webhook_deliveries_total{webhook="pager",result="ok"}`) == 1 &&
			counter(set, `pgbastion_webhook_deliveries_total{webhook="0",result="ok"}`) == 4
	})
}

// sendMaintenanceEvent validates hooks, has a leader's notifier derive one event (maintenance
// mode on) for them, and returns its metrics and log; the senders stop when the test ends.
func sendMaintenanceEvent(t *testing.T, hooks []Webhook) (*metrics.Set, *syncBuffer) {
	t.Helper()
	for i := range hooks {
		if err := hooks[i].Validate("webhooks"); err != nil {
			t.Fatal(err)
		}
	}
	logs := &syncBuffer{}
	set := metrics.NewSet()
	n := New(Callbacks{}, hooks, Options{Cluster: "main", Node: "db1", IsLeader: func() bool { return true }, Metrics: set,
		Logger: slog.New(slog.NewTextHandler(logs, nil)), RetryBase: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	workers := n.startWorkers(ctx)
	t.Cleanup(func() { cancel(); workers.Wait() })
	s0 := cluster(10)
	s1 := next(s0, 11)
	s1.Paused = true
	n.observe(s0, s1)
	return set, logs
}

func TestWebhookFailuresAreLoggedWithoutTheURLOrHeaders(t *testing.T) {
	refuses := newReceiver(t, 401)
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL
	gone.Close() // connections are refused from now on
	hooks := []Webhook{
		{URL: refuses.srv.URL + "/services/T000/B000/secret-path-token", Headers: map[string]string{"X-Api-Key": "header-secret"}},
		{URL: goneURL + "/hooks/secret-path-token?token=query-secret", Name: "chat"},
	}
	set, logs := sendMaintenanceEvent(t, hooks)
	waitFor(t, "both failures", func() bool {
		return counter(set, `pgbastion_webhook_deliveries_total{webhook="0",result="failed"}`) == 1 &&
			counter(set, `pgbastion_webhook_deliveries_total{webhook="chat",result="failed"}`) == 1
	})
	out := logs.String()
	for _, secret := range []string{"secret-path-token", "query-secret", "header-secret", "T000"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log shows %q:\n%s", secret, out)
		}
	}
	// A 4xx is not retried; a refused connection is, five times.
	if !strings.Contains(out, "HTTP 401 Unauthorized") || !strings.Contains(out, "check the url, headers and format") {
		t.Errorf("the 401 is not explained:\n%s", out)
	}
	if strings.Count(out, "will retry") != 4 || !strings.Contains(out, "gave up after 5 attempts") || !strings.Contains(out, "webhook=chat") {
		t.Errorf("the refused connection's retries:\n%s", out)
	}
}

func TestWebhookQueueDropsTheOldestWhenFull(t *testing.T) {
	q := newQueue[int](3)
	for i := range 5 {
		if dropped := q.push(i); dropped != (i >= 3) {
			t.Errorf("push %d: dropped %v", i, dropped)
		}
	}
	ctx := context.Background()
	for _, want := range []int{2, 3, 4} {
		if got, _ := q.pop(ctx); got != want {
			t.Errorf("pop %d, want %d", got, want)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := q.pop(cctx); ok {
		t.Error("pop from an empty queue with an ended context returned an item")
	}
}

func TestWebhookValidation(t *testing.T) {
	for _, tc := range []struct {
		w    Webhook
		want string
	}{
		{Webhook{}, "webhooks[0].url: required"},
		{Webhook{URL: "ftp://x/y"}, `scheme "ftp" is not http or https`},
		{Webhook{URL: "http:///x"}, "has no host"},
		{Webhook{URL: "http://x", Events: []string{"failover"}}, `"failover" is not an event type (primary_changed, no_primary`},
		{Webhook{URL: "http://x", MinSeverity: "high"}, `"high" is not info, warning or critical`},
		{Webhook{URL: "http://x", Format: "teams"}, `"teams" is not json, slack or pagerduty`},
		{Webhook{URL: "http://x", Headers: map[string]string{"X-A": "a\r\nEvil: 1"}}, `"X-A" is not a valid header name`},
		{Webhook{URL: "http://x", Timeout: -1}, "timeout: must not be negative"},
	} {
		err := tc.w.Validate("webhooks[0]")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.w, err, tc.want)
		}
	}
	w := Webhook{URL: "https://hooks.example.com/x"}
	if err := w.Validate("w"); err != nil || w.Format != "json" || w.MinSeverity != "info" || w.Timeout != 10*time.Second {
		t.Errorf("defaults: %v %+v", err, w)
	}
}

// script writes an executable that appends its arguments and PGBASTION_EVENT's type to a
// file, one line per run.
func script(t *testing.T, body string) (path, out string) {
	dir := t.TempDir()
	out = filepath.Join(dir, "calls")
	path = filepath.Join(dir, "cb.sh")
	src := "#!/bin/sh\n" + body + "\n"
	if err := os.WriteFile(path, []byte(src), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, out
}

func lines(path string) []string {
	b, _ := os.ReadFile(path)
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func TestCallbacksFollowThisNodesPostgreSQL(t *testing.T) {
	prog, out := script(t, `echo "$* $(echo "$PGBASTION_EVENT" | grep -o '"type":"[a-z_]*"')" >> `+"'%OUT%'")
	body, _ := os.ReadFile(prog)
	_ = os.WriteFile(prog, bytes.ReplaceAll(body, []byte("%OUT%"), []byte(out)), 0o755)
	cb := Callbacks{OnStart: prog + " --tag x", OnStop: prog, OnRestart: prog, OnRoleChange: prog, OnReload: prog}
	if err := cb.Validate("postgresql.callbacks"); err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	n := New(cb, nil, Options{Cluster: "main", Node: "db2", Metrics: set})
	ctx, cancel := context.WithCancel(context.Background())
	defer n.startWorkers(ctx).Wait()
	defer cancel()

	steps := []struct {
		change func(s *fsm.State)
		want   string // the callback line it adds, "" for none
	}{
		// The first state is the starting point: db2 runs as a replica.
		{func(s *fsm.State) {}, ""},
		{func(s *fsm.State) { setStatus(s, "db2", fsm.StatePromoting, fsm.RoleReplica, true, 20) }, ""},
		{func(s *fsm.State) { setStatus(s, "db2", fsm.StateRunningPrimary, fsm.RolePrimary, true, 21) },
			`on_role_change primary main "type":"node_state"`},
		{func(s *fsm.State) { setStatus(s, "db2", fsm.StateFenced, fsm.RolePrimary, false, 22) },
			`on_stop primary main "type":"node_state"`},
		// Back after pg_rewind as a replica: a role change, not a start.
		{func(s *fsm.State) { setStatus(s, "db2", fsm.StateRunningReplica, fsm.RoleReplica, true, 23) },
			`on_role_change replica main "type":"node_state"`},
		{func(s *fsm.State) { setStatus(s, "db2", fsm.StateStopped, fsm.RoleReplica, false, 24) },
			`on_stop replica main "type":"node_state"`},
		{func(s *fsm.State) { setStatus(s, "db2", fsm.StateRunningReplica, fsm.RoleReplica, true, 25) },
			`--tag x on_start replica main "type":"node_state"`},
		// An operator's restart: stopped and started, but only on_restart runs.
		{func(s *fsm.State) {
			s.Restarts = []fsm.RestartRequest{{ID: 1, Node: "db2", Status: fsm.RestartPending}}
			setStatus(s, "db2", fsm.StateStopped, fsm.RoleReplica, false, 26)
		}, ""},
		{func(s *fsm.State) {
			s.Restarts = []fsm.RestartRequest{{ID: 1, Node: "db2", Status: fsm.RestartDone}}
			setStatus(s, "db2", fsm.StateRunningReplica, fsm.RoleReplica, true, 27)
		}, `on_restart replica main "type":"restart_finished"`},
		// Other nodes' changes run nothing here.
		{func(s *fsm.State) { setStatus(s, "db3", fsm.StateStopped, fsm.RoleReplica, false, 28) }, ""},
		// A new cluster configuration: nothing until this node reports it applied; another
		// node's report runs nothing here either.
		{func(s *fsm.State) {
			s.PGConfig = &fsm.PGConfig{Version: 2, Nodes: map[string]fsm.PGConfigStatus{"db3": {Version: 2}}}
		}, ""},
		{func(s *fsm.State) {
			s.PGConfig = &fsm.PGConfig{Version: 2, Nodes: map[string]fsm.PGConfigStatus{"db3": {Version: 2}, "db2": {Version: 2}}}
		}, `on_reload replica main "type":"pg_config_changed"`},
		// The same version reported again (after a restart) is no reload.
		{func(s *fsm.State) {
			s.PGConfig = &fsm.PGConfig{Version: 2, Nodes: map[string]fsm.PGConfigStatus{"db2": {Version: 2, PendingRestart: []string{"shared_buffers"}}}}
		}, ""},
	}
	var prev *fsm.State
	cur := cluster(10)
	var want []string
	for i, st := range steps {
		if prev != nil {
			cur = next(prev, prev.Index+1)
		}
		st.change(cur)
		n.observe(prev, cur)
		prev = cur
		if st.want != "" {
			want = append(want, st.want)
		}
		waitFor(t, "the callbacks of step "+string(rune('0'+i)), func() bool { return len(lines(out)) == len(want) })
	}
	if got := strings.Join(lines(out), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("callbacks:\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}

	// Self-fencing (no quorum to tell) runs on_stop at once, and not again when the cluster
	// hears of it.
	n.SelfFenced("no quorum for 30s")
	waitFor(t, "on_stop after self-fencing", func() bool { return len(lines(out)) == len(want)+1 })
	if l := lines(out); l[len(l)-1] != `on_stop replica main "type":"node_state"` {
		t.Errorf("self-fence: %q", l[len(l)-1])
	}
	fenced := next(prev, prev.Index+1)
	setStatus(fenced, "db2", fsm.StateFenced, fsm.RoleReplica, false, 40)
	n.observe(prev, fenced)
	waitFor(t, "all runs counted", func() bool {
		return counter(set, `pgbastion_callback_runs_total{result="ok"}`) == uint64(len(want)+1)
	})
	if l := lines(out); len(l) != len(want)+1 {
		t.Errorf("on_stop ran again when the cluster heard of the fencing: %q", l)
	}
}

func TestCallbackTimeoutKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	prog, _ := script(t, "sleep 60 &\necho $! > '"+pidFile+"'\nsleep 60")
	cb := Callbacks{OnStop: prog, Timeout: 200 * time.Millisecond}
	if err := cb.Validate("postgresql.callbacks"); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	set := metrics.NewSet()
	n := New(cb, nil, Options{Cluster: "main", Node: "db1", Metrics: set, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	defer n.startWorkers(ctx).Wait()
	defer cancel()
	s0 := cluster(10)
	n.observe(nil, s0)
	s1 := next(s0, 11)
	setStatus(s1, "db1", fsm.StateStopped, fsm.RolePrimary, false, 11)
	start := time.Now()
	n.observe(s0, s1)
	waitFor(t, "the timeout", func() bool { return counter(set, `pgbastion_callback_runs_total{result="failed"}`) == 1 })
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the callback ran %v with a 200ms timeout", took)
	}
	if !strings.Contains(logs.String(), "callback killed after 200ms (postgresql.callbacks.timeout)") {
		t.Errorf("log:\n%s", logs.String())
	}
	// The background child was in the callback's process group and dies with it.
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	waitFor(t, "the callback's child "+pid+" to be killed", func() bool {
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return true
		}
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
		return len(f) > 0 && f[0] == "Z"
	})
}

func TestCallbackValidation(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	_ = os.WriteFile(plain, []byte("x"), 0o644)
	for _, tc := range []struct {
		cb   Callbacks
		want string
	}{
		{Callbacks{OnStart: "notify.sh"}, `on_start: "notify.sh" must be an absolute path`},
		{Callbacks{OnStop: filepath.Join(dir, "missing")}, "on_stop: stat"},
		{Callbacks{OnRestart: plain}, "is not an executable file (chmod +x it)"},
		{Callbacks{OnRoleChange: dir}, "is not an executable file"},
	} {
		err := tc.cb.Validate("postgresql.callbacks")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cb, err, tc.want)
		}
	}
}

// A new member's first start runs on_start; a node whose PostgreSQL was already reported
// running when the daemon started (a restart of pgbastion alone) runs nothing.
func TestCallbacksOnStartOfANewMember(t *testing.T) {
	prog, out := script(t, "")
	_ = os.WriteFile(prog, []byte("#!/bin/sh\necho \"$PGBASTION_NODE $*\" >> '"+out+"'\n"), 0o755)
	cb := Callbacks{OnStart: prog}
	if err := cb.Validate("postgresql.callbacks"); err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	ctx, cancel := context.WithCancel(context.Background())
	fresh := New(cb, nil, Options{Cluster: "main", Node: "db4", Metrics: set})
	running := New(cb, nil, Options{Cluster: "main", Node: "db1", Metrics: set})
	wf, wr := fresh.startWorkers(ctx), running.startWorkers(ctx)
	defer wr.Wait()
	defer wf.Wait()
	defer cancel()

	s0 := cluster(10)
	s0.Members["db4"] = fsm.Member{Name: "db4", RegisteredAt: t0}
	fresh.observe(nil, s0)
	running.observe(nil, s0)
	s1 := next(s0, 11)
	setStatus(s1, "db4", fsm.StateInitializing, fsm.RoleUnknown, false, 11)
	s2 := next(s1, 12)
	setStatus(s2, "db4", fsm.StateRunningReplica, fsm.RoleReplica, true, 12)
	for _, p := range [][2]*fsm.State{{s0, s1}, {s1, s2}} {
		fresh.observe(p[0], p[1])
		running.observe(p[0], p[1])
	}
	waitFor(t, "db4's on_start", func() bool { return counter(set, `pgbastion_callback_runs_total{result="ok"}`) == 1 })
	if got := lines(out); len(got) != 1 || got[0] != "db4 on_start replica main" {
		t.Errorf("callbacks: %q", got)
	}
}

func TestRecentKeepsTheNewestEvents(t *testing.T) {
	n := New(Callbacks{}, nil, Options{Cluster: "main", Node: "db1"})
	prev := cluster(10)
	for i := range recentLimit + 20 {
		cur := next(prev, prev.Index+1)
		cur.Paused = i%2 == 0
		n.observe(prev, cur)
		prev = cur
	}
	r := n.Recent()
	if len(r) != recentLimit {
		t.Fatalf("%d events kept, want %d", len(r), recentLimit)
	}
	if last := r[len(r)-1]; last.Index != prev.Index || last.Cluster != "main" || last.Sender != "db1" {
		t.Errorf("newest: %+v", last)
	}
	if first := r[0]; first.Index != 10+21 {
		t.Errorf("oldest kept: index %d, want %d", first.Index, 10+21)
	}
}

func TestWebhookWithAnInternalCA(t *testing.T) {
	var got atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got.Add(1) }))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	hooks := []Webhook{{URL: srv.URL + "/trusted", Name: "trusted", CAFile: ca}, {URL: srv.URL + "/untrusted", Name: "untrusted"}}
	set, logs := sendMaintenanceEvent(t, hooks)
	waitFor(t, "both deliveries to end", func() bool {
		return counter(set, `pgbastion_webhook_deliveries_total{webhook="trusted",result="ok"}`) == 1 &&
			counter(set, `pgbastion_webhook_deliveries_total{webhook="untrusted",result="failed"}`) == 1
	})
	if got.Load() != 1 {
		t.Errorf("the receiver got %d requests, want 1", got.Load())
	}
	if out := logs.String(); !strings.Contains(out, "set the webhook's ca_file") || strings.Contains(out, "will retry") {
		t.Errorf("an untrusted certificate is not retried and says what to do:\n%s", out)
	}

	bad := Webhook{URL: "https://x", CAFile: filepath.Join(t.TempDir(), "none.pem")}
	if err := bad.Validate("webhooks[0]"); err == nil || !strings.Contains(err.Error(), "webhooks[0].ca_file") {
		t.Errorf("missing ca_file: %v", err)
	}
	_ = os.WriteFile(ca, []byte("not a certificate"), 0o644)
	bad = Webhook{URL: "https://x", CAFile: ca}
	if err := bad.Validate("webhooks[0]"); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Errorf("ca_file without a certificate: %v", err)
	}
}

func TestSubscribeDeliversNewEvents(t *testing.T) {
	n := New(Callbacks{}, nil, Options{Cluster: "main", Node: "db1"})
	ch, stop := n.Subscribe()
	s0 := cluster(10)
	s1 := next(s0, 11)
	s1.Paused = true
	n.observe(s0, s1)
	select {
	case e := <-ch:
		if e.Type != EvMaintenance || e.Cluster != "main" {
			t.Errorf("event %+v", e)
		}
	default:
		t.Fatal("no event delivered")
	}
	stop()
	s2 := next(s1, 12)
	n.observe(s1, s2)
	s3 := next(s2, 13)
	s3.Paused = false
	n.observe(s2, s3)
	if len(ch) != 0 {
		t.Error("an ended subscription still receives events")
	}
	// A subscriber that does not read loses the excess, and nothing blocks.
	ch2, stop2 := n.Subscribe()
	defer stop2()
	prev := s3
	for i := range 100 {
		cur := next(prev, prev.Index+1)
		cur.Paused = i%2 == 0
		n.observe(prev, cur)
		prev = cur
	}
	if len(ch2) != cap(ch2) {
		t.Errorf("%d of %d buffered", len(ch2), cap(ch2))
	}
}

// A node that becomes the Raft leader delivers again the recent events it did not queue
// itself: its predecessor may have died before sending them.
func TestNewLeaderRedeliversRecentEvents(t *testing.T) {
	all := newReceiver(t)
	slack := newReceiver(t)
	hooks := []Webhook{{URL: all.srv.URL}, {URL: slack.srv.URL, Format: "slack", Events: []string{"node_state"}}}
	for i := range hooks {
		if err := hooks[i].Validate("webhooks"); err != nil {
			t.Fatal(err)
		}
	}
	var leader atomic.Bool
	n := New(Callbacks{}, hooks, Options{Cluster: "main", Node: "db3", IsLeader: leader.Load, Metrics: metrics.NewSet(), RetryBase: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer n.startWorkers(ctx).Wait()
	defer cancel()

	recent := time.Now().Add(-5 * time.Second)
	status := func(s *fsm.State, name string, state fsm.NodeState, healthy bool, index uint64, at time.Time) {
		setStatus(s, name, state, fsm.RoleReplica, healthy, index)
		m := s.Members[name]
		m.Status.ReportedAt = at
		s.Members[name] = m
	}
	// As a follower: db2 went down a moment ago; db3's change is older than the window.
	s0 := cluster(10)
	s1 := next(s0, 12)
	status(s1, "db2", fsm.StateStopped, false, 11, recent)
	status(s1, "db3", fsm.StateStopped, false, 12, time.Now().Add(-time.Hour))
	n.observe(s0, s1)
	// Leading now: db2's event again, then the new one.
	leader.Store(true)
	s2 := next(s1, 13)
	s2.Paused = true
	n.observe(s1, s2)
	waitFor(t, "db2's event and the maintenance event", func() bool { return len(all.received()) == 2 })
	got := func(i int) Event {
		var e Event
		if err := json.Unmarshal(all.received()[i].body, &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	if e := got(0); e.ID != "node_state:db2:11" || !e.Redelivered {
		t.Errorf("first delivery: %+v, want db2's node_state, redelivered", e)
	}
	if e := got(1); e.Type != EvMaintenance || e.Redelivered {
		t.Errorf("second delivery: %+v, want the maintenance event, first delivery", e)
	}
	waitFor(t, "the slack message", func() bool { return len(slack.received()) == 1 })
	var msg map[string]string
	_ = json.Unmarshal(slack.received()[0].body, &msg)
	if !strings.HasSuffix(msg["text"], "(sent again by the new Raft leader)") {
		t.Errorf("slack: %q", msg["text"])
	}

	// Leadership lost and won back: only what this node did not queue itself is sent again.
	leader.Store(false)
	s3 := next(s2, 15)
	status(s3, "db2", fsm.StateRunningReplica, true, 14, time.Now())
	n.observe(s2, s3)
	leader.Store(true)
	s4 := next(s3, 16)
	n.observe(s3, s4)
	waitFor(t, "db2's recovery", func() bool { return len(all.received()) == 3 })
	if e := got(2); e.ID != "node_state:db2:14" || !e.Redelivered {
		t.Errorf("third delivery: %+v, want db2's recovery, redelivered", e)
	}
	// Nothing more comes: db3's old event and the ones already queued stay unsent.
	s5 := next(s4, 17)
	s5.Paused = false
	n.observe(s4, s5)
	waitFor(t, "maintenance off", func() bool { return len(all.received()) == 4 })
	if e := got(3); e.Type != EvMaintenance {
		t.Errorf("fourth delivery: %+v, want maintenance off", e)
	}
}

// A node that starts lists what the cluster's logs record, as the past: not delivered, not
// counted.
func TestFirstStateGivesThePast(t *testing.T) {
	all := newReceiver(t)
	hooks := []Webhook{{URL: all.srv.URL}}
	if err := hooks[0].Validate("webhooks"); err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	n := New(Callbacks{}, hooks, Options{Cluster: "main", Node: "db3", IsLeader: func() bool { return true }, Metrics: set, RetryBase: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer n.startWorkers(ctx).Wait()
	defer cancel()

	_, s1 := failover()
	n.observe(nil, s1)
	s2 := next(s1, 20)
	s2.Paused = true
	n.observe(s1, s2)
	waitFor(t, "the maintenance event", func() bool { return len(all.received()) == 1 })
	recent := n.Recent()
	if got, want := types(recent), "primary_changed primary_changed maintenance"; got != want {
		t.Fatalf("recent: %s, want %s (bootstrap, the failover, then the news)", got, want)
	}
	if e := recent[1]; e.ID != "primary_changed:14" || e.Cluster != "main" || e.Sender != "db3" {
		t.Errorf("the failover from the logs: %+v", e)
	}
	if got := counter(set, `pgbastion_cluster_events_total{type="primary_changed",severity="warning"}`); got != 0 {
		t.Errorf("the past was counted: %d", got)
	}
	var e Event
	if err := json.Unmarshal(all.received()[0].body, &e); err != nil || e.Type != EvMaintenance {
		t.Errorf("delivered: %s", all.received()[0].body)
	}
}

// A node that leads for a long time does not keep every event ID it sent: only those still
// among the recent events, which are all a new leadership could send again.
func TestQueuedIDsStayBounded(t *testing.T) {
	all := newReceiver(t)
	hooks := []Webhook{{URL: all.srv.URL}}
	if err := hooks[0].Validate("webhooks"); err != nil {
		t.Fatal(err)
	}
	n := New(Callbacks{}, hooks, Options{Cluster: "main", Node: "db1", IsLeader: func() bool { return true }, Metrics: metrics.NewSet()})
	ctx, cancel := context.WithCancel(context.Background())
	defer n.startWorkers(ctx).Wait()
	defer cancel()
	prev := cluster(10)
	for i := range recentLimit + 100 {
		cur := next(prev, prev.Index+1)
		cur.Paused = i%2 == 0 // a maintenance event each time
		n.observe(prev, cur)
		prev = cur
	}
	if got := len(n.Recent()); got != recentLimit {
		t.Fatalf("%d recent events, want %d", got, recentLimit)
	}
	if got := len(n.queued); got > recentLimit {
		t.Fatalf("%d queued IDs kept, want at most the %d recent events", got, recentLimit)
	}
}
