package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/notify"
)

// The web UI is checked in a real browser: headless Chromium driven over the DevTools protocol.
// `chromium --dump-dom --virtual-time-budget` cannot do it: the page keeps an EventSource open,
// and Chromium's virtual time does not advance while a request is pending, so the dump never
// comes.

// findBrowser returns a Chromium-like browser, or skips the test (fails it in CI, which must
// have one: .ci/run installs it).
func findBrowser(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium, chromium-browser or google-chrome in PATH; CI must have one (.ci/run installs chromium)")
	}
	t.Skip("no chromium, chromium-browser or google-chrome in PATH")
	return ""
}

// runAPI serves src on addr until stop is called or the test ends.
func runAPI(t *testing.T, addr string, src Sources) (stop func(), url string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = addr, "", "s3cret"
	s, err := New(cfg, src, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	deadline := time.Now().Add(5 * time.Second)
	for s.Addr() == "" {
		select {
		case <-done:
			t.Fatalf("the API did not start on %s", addr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the API did not start")
		}
		time.Sleep(time.Millisecond)
	}
	return stop, "http://" + s.Addr()
}

// recordingCluster counts the operator's mutations the page sends, and plays the agents that
// execute restart requests.
type recordingCluster struct {
	*fakeCluster
	mu          sync.Mutex
	switchovers [][2]string // leader, candidate
	failovers   []string    // "candidate force=bool"
	pauses      []bool
	restarts    []string // "node: reason"
	reinits     []string // "node: reason"
	// holdRestart, when set, keeps the agents from answering until it is closed.
	holdRestart chan struct{}
	// refuseRestart: the agent of a node listed refuses, with this message.
	refuseRestart map[string]string
}

// RequestRestart holds mu while it changes the FSM: the agent's answer (playAgent) changes it
// from another goroutine.
func (c *recordingCluster) RequestRestart(ctx context.Context, node, reason string) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.restarts = append(c.restarts, node+": "+reason)
	return c.fakeCluster.RequestRestart(ctx, node, reason)
}

func (c *recordingCluster) RequestReinit(ctx context.Context, node, reason string) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reinits = append(c.reinits, node+": "+reason)
	return c.fakeCluster.RequestReinit(ctx, node, reason)
}

// holdAgents keeps the agents from answering until release is called (at the latest when the
// test ends); the agents of the nodes in refuse then refuse, with that message.
func (c *recordingCluster) holdAgents(t *testing.T, refuse map[string]string) (release func()) {
	hold := make(chan struct{})
	c.mu.Lock()
	c.holdRestart, c.refuseRestart = hold, refuse
	c.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release)
	return release
}

// playAgent is the restarted node's agent: it answers restart id when holdRestart allows,
// successfully unless refuseRestart says otherwise.
func (c *recordingCluster) playAgent(id uint64) {
	c.mu.Lock()
	hold := c.holdRestart
	c.mu.Unlock()
	if hold != nil {
		<-hold
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r, _ := c.State().Restart(id)
	fin := fsm.FinishRestart{ID: id, Node: r.Node, Success: true}
	if msg := c.refuseRestart[r.Node]; msg != "" {
		fin.Success, fin.Message = false, msg
	}
	_, _ = c.propose(fin, time.Now())
}

func (c *recordingCluster) Switchover(ctx context.Context, leader, candidate string) (uint64, error) {
	c.mu.Lock()
	c.switchovers = append(c.switchovers, [2]string{leader, candidate})
	c.mu.Unlock()
	return c.fakeCluster.Switchover(ctx, leader, candidate)
}

func (c *recordingCluster) Failover(ctx context.Context, candidate string, force bool) (uint64, error) {
	c.mu.Lock()
	c.failovers = append(c.failovers, fmt.Sprintf("%s force=%v", candidate, force))
	c.mu.Unlock()
	return c.fakeCluster.Failover(ctx, candidate, force)
}

func (c *recordingCluster) SetPause(ctx context.Context, paused bool) error {
	c.mu.Lock()
	c.pauses = append(c.pauses, paused)
	c.mu.Unlock()
	return c.fakeCluster.SetPause(ctx, paused)
}

func (c *recordingCluster) calls() (sw [][2]string, fo []string, pauses []bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append(sw, c.switchovers...), append(fo, c.failovers...), append(pauses, c.pauses...)
}

func (c *recordingCluster) restartCalls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.restarts...)
}

func (c *recordingCluster) reinitCalls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.reinits...)
}

// eventLog plays the notifier's record of cluster events (Sources.Events).
type eventLog struct {
	mu     sync.Mutex
	events []notify.Event
}

func (l *eventLog) add(evs ...notify.Event) {
	l.mu.Lock()
	l.events = append(l.events, evs...)
	l.mu.Unlock()
}

func (l *eventLog) recent() []notify.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func TestWebUIInBrowser(t *testing.T) {
	bin := findBrowser(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	fc := newCluster(t, "n1")
	// n2's agent last reported 90 s ago, with a reason that is markup: it must show as text.
	const markup = `<img src=x id=injected> & "quotes"`
	fc.applyAt(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true,
		ReceivedLSN: 900, ReplayedLSN: 900, Reason: markup}}, time.Now().Add(-90*time.Second))
	if _, err := fc.UpdatePGConfig(ctx, map[string]string{"work_mem": "64MB"}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.SetPGHBA(ctx, []string{"hostssl all all 10.0.0.0/8 scram-sha-256"}, 0); err != nil {
		t.Fatal(err)
	}
	fc.apply(t, fsm.ReportPGHBA{Node: "n2", Version: 1, Error: "PostgreSQL refuses the cluster-wide pg_hba[0]: " + markup})
	// Both nodes wait for a restart to apply shared_buffers.
	for _, n := range []string{"n1", "n2"} {
		fc.apply(t, fsm.ReportPGConfig{Node: n, Version: 1, PendingRestart: []string{"shared_buffers"}})
	}
	c := &recordingCluster{fakeCluster: fc}
	fc.onRestart = c.playAgent
	// What the notifier recorded, oldest first; one message is markup, which must show as text.
	const eventMarkup = `no primary: <img src=x onerror=alert(1)> & "n1" no longer takes writes`
	now := time.Now()
	evlog := &eventLog{}
	evlog.add(
		notify.Event{ID: "leader_changed:1", Type: notify.EvLeaderChanged, Severity: notify.SevInfo, At: now.Add(-20 * time.Minute), Index: 1,
			Node: "n1", Message: "n1 is the Raft leader (epoch 1)"},
		notify.Event{ID: "primary_changed:3", Type: notify.EvPrimaryChanged, Severity: notify.SevInfo, At: now.Add(-19 * time.Minute), Index: 3,
			Node: "n1", Primary: "n1", Message: "n1 is the primary"},
		notify.Event{ID: "no_primary:7", Type: notify.EvNoPrimary, Severity: notify.SevCritical, At: now.Add(-10 * time.Minute), Index: 7,
			Node: "n1", OldPrimary: "n1", Message: eventMarkup},
		notify.Event{ID: "node_state:n2:9", Type: notify.EvNodeState, Severity: notify.SevWarning, At: now.Add(-5 * time.Minute), Index: 9,
			Node: "n2", Message: "n2: RUNNING_REPLICA → STOPPED, PostgreSQL does not accept connections"},
	)
	// This node's proxy: one full pool whose user name is markup, one paused idle pool.
	const userMarkup = `<b id=injected2>web</b>`
	proxy := func() ProxyStatus {
		return ProxyStatus{Clients: 1003, WritesTo: "10.0.0.1:5432", Paused: true, ClientsHeld: 7, InFlight: 2, Pools: []PoolStatus{
			{Backend: "10.0.0.1:5432", Database: "app", User: userMarkup, Clients: 1001, ServersActive: 20, Size: 20, Reserve: 5,
				ClientsWaiting: 980, MaxWaitSeconds: 0.0813},
			{Backend: "10.0.0.1:5432", Database: "app", User: "batch", ServersIdle: 2, Size: 20, Paused: true},
		}}
	}
	// Its connections: a client holding a server, and one waiting whose address is markup.
	const addrMarkup = `<i id=injected3>10.0.0.9:3333</i>`
	conns := func() []ConnStatus {
		return []ConnStatus{
			{Kind: "client", ID: "c1", Link: "s1", User: "web", Database: "app", State: "active", Addr: "10.0.0.9:2222",
				ConnectedAt: now.Add(-90 * time.Second), BackendPID: 4242, ApplicationName: "shop", TLS: "TLSv1.3/TLS_AES_128_GCM_SHA256"},
			{Kind: "client", ID: "c2", User: "web", Database: "app", State: "waiting", WaitSeconds: 1.5, Addr: addrMarkup,
				ConnectedAt: now.Add(-5 * time.Second)},
			{Kind: "server", ID: "s1", Link: "c1", User: "web", Database: "app", State: "active", Addr: "10.0.0.1:5432", BackendPID: 4242},
		}
	}
	var (
		killMu sync.Mutex
		killed []string
	)
	ops := &ProxyOps{KillClient: func(id string) bool {
		killMu.Lock()
		defer killMu.Unlock()
		killed = append(killed, id)
		return true
	}}
	src := Sources{Cluster: c, Events: evlog.recent, Proxy: proxy, Connections: conns, ProxyOps: ops}
	stop, base := runAPI(t, "127.0.0.1:0", src)

	b := startBrowser(ctx, t, bin)
	b.navigate(ctx, base+"/ui/")

	if !t.Run("renders the cluster", func(t *testing.T) {
		b.waitText(ctx, t, "#nodes tr[data-node=n1] td", "n1")
		b.waitText(ctx, t, "#nodes tr[data-node=n2] td", "n2")
		b.waitText(ctx, t, "#ov-primary", "n1")
		b.waitText(ctx, t, "#ov-leader", "n1")
		b.waitText(ctx, t, "#pg-params tr[data-param=work_mem]", "work_mem64MB")
		b.waitText(ctx, t, "#hba-lines tr[data-hba-line='0']", "0hostssl all all 10.0.0.0/8 scram-sha-256")
		b.waitText(ctx, t, "#hba-nodes tr[data-hba-node=n2]", "n21noPostgreSQL refuses the cluster-wide pg_hba[0]: "+markup)
		b.waitText(ctx, t, "#ov-failover", "active")
		// The stale node is flagged, the fresh one is not; lag is in words.
		// (At least 90 s: on a loaded machine the page may take more than 10 s to come.)
		noReport := regexp.MustCompile(`no report for (\d+)s`)
		b.waitUntil(ctx, t, "#nodes tr[data-node=n2]", "no report for 90 s or more", func(got string) bool {
			m := noReport.FindStringSubmatch(got)
			if m == nil {
				return false
			}
			n, _ := strconv.Atoi(m[1])
			return n >= 90
		})
		if got := b.text(ctx, t, "#nodes tr[data-node=n1]"); strings.Contains(got, "no report") {
			t.Errorf("n1 reported just now but is flagged: %q", got)
		}
		b.waitContains(ctx, t, "#nodes tr[data-node=n2]", "100 B")
		// API text is inserted as text, never parsed as markup.
		b.waitContains(ctx, t, "#nodes tr[data-node=n2]", markup)
		if n := b.eval(ctx, t, `document.querySelectorAll('#injected, main img').length`); string(n) != "0" {
			t.Errorf("a node's reason became markup: %s elements", n)
		}
		b.waitContains(ctx, t, "#history", "bootstrap")
		b.waitText(ctx, t, "#live", "live")
		// The proxy's pools, with what to notice; names are text.
		b.waitContains(ctx, t, "#proxy-summary", "1003 client connections; writes go to 10.0.0.1:5432.")
		b.waitContains(ctx, t, "#proxy-summary", "PAUSED by an operator (pgbastion ctl proxy resume ends it): 7 clients wait, 2 transactions in flight.")
		b.waitText(ctx, t, "#pools tr[data-pool='10.0.0.1:5432/app/batch']", "10.0.0.1:5432appbatch002200—paused: new transactions wait")
		b.waitText(ctx, t, "#pools tbody tr:first-child", "10.0.0.1:5432app"+userMarkup+"100120020+598081 msfull: clients wait for a server")
		if n := string(b.eval(ctx, t, `document.querySelectorAll('#injected2').length`)); n != "0" {
			t.Errorf("a pool's user name became markup: %s elements", n)
		}
		// Connections on demand: the API wants the token; with it, waiting clients first.
		b.expectFailures("/proxy/connections")
		b.eval(ctx, t, `document.getElementById('conns-go').click()`)
		b.waitContains(ctx, t, "#conns-note", "HTTP 401")
		b.waitContains(ctx, t, "#conns-note", "enter the API token above")
		b.setToken(ctx, t, "s3cret")
		b.eval(ctx, t, `document.getElementById('conns-go').click()`)
		b.waitContains(ctx, t, "#conns-note", "2 client connections, 1 waiting; 1 server connection (listed")
		b.waitContains(ctx, t, "#conns tbody tr:first-child", addrMarkup+"webappwaiting1.5 s—")
		b.waitContains(ctx, t, "#conns tr[data-conn=c1]", "10.0.0.9:2222webappactive—4242shop1m")
		b.waitContains(ctx, t, "#conns tr[data-conn=c1]", "ago"+"TLSv1.3/TLS_AES_128_GCM_SHA256")
		if n := string(b.eval(ctx, t, `document.querySelectorAll('#injected3').length`)); n != "0" {
			t.Errorf("a client's address became markup: %s elements", n)
		}
		// Closing a client asks first; declining sends nothing.
		const closeC1 = `document.querySelector('#conns tr[data-conn=c1] button[data-kill]').click()`
		b.answerDialogs(false, "")
		b.eval(ctx, t, closeC1)
		b.waitDialog(ctx, t, "Close client 10.0.0.9:2222 (web@app)?")
		b.answerDialogs(true, "")
		b.eval(ctx, t, closeC1)
		b.waitContains(ctx, t, "#result", "Closing client 10.0.0.9:2222 (web@app): done.")
		b.waitContains(ctx, t, "#result", "a query it was running was cancelled")
		killMu.Lock()
		if fmt.Sprint(killed) != "[c1]" {
			t.Errorf("the API closed clients %v, want [c1]", killed)
		}
		killMu.Unlock()
		b.eval(ctx, t, `document.getElementById('forget-token').click()`)
	}) {
		return
	}

	t.Run("cluster events", func(t *testing.T) {
		// Newest first, each with its time, a severity that stands out when it is not info,
		// and the message as text. The page has rendered: a failure here leaves the later
		// subtests time to run.
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		rows := `[...document.querySelectorAll('#cluster-events tbody tr')].map((r) => [r.dataset.event, r.className,
			r.cells[1].querySelector('.badge').className, r.cells[1].textContent, r.cells[2].textContent])`
		want := `[["node_state:n2:9","","badge warn","warning","node_state"],` +
			`["no_primary:7","critical","badge bad","critical","no_primary"],` +
			`["primary_changed:3","","badge","info","primary_changed"],` +
			`["leader_changed:1","","badge","info","leader_changed"]]`
		b.waitUntil(ctx, t, "#cluster-events tbody", "the four events, newest first: "+want, func(string) bool {
			return string(b.eval(ctx, t, rows)) == want
		})
		b.waitContains(ctx, t, "#cluster-events tr[data-event='node_state:n2:9']", "n2: RUNNING_REPLICA → STOPPED, PostgreSQL does not accept connections")
		b.waitContains(ctx, t, "#cluster-events tr[data-event='no_primary:7']", eventMarkup)
		if n := b.eval(ctx, t, `document.querySelectorAll('img').length`); string(n) != "0" {
			t.Errorf("an event's message became markup: %s img elements", n)
		}
		when := regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$`)
		if got := b.text(ctx, t, "#cluster-events tr[data-event='no_primary:7'] td"); !when.MatchString(got) {
			t.Errorf("event time %q, want YYYY-MM-DD hh:mm:ss", got)
		}
		if got := b.eval(ctx, t, `document.getElementById('events-note').hidden`); string(got) != "true" {
			t.Errorf("the events card shows a note: %s", b.text(ctx, t, "#events-note"))
		}
	})

	if !t.Run("follows the events", func(t *testing.T) {
		// The page is live, so it does not poll. The first change may still be picked up by
		// the refresh the page makes when its event stream opens; the second can only come
		// through the stream (the page's safety refresh is every 30 s).
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		// The notifier records its event as the state changes: the events card follows too.
		evlog.add(notify.Event{ID: "maintenance:20", Type: notify.EvMaintenance, Severity: notify.SevWarning, At: time.Now(), Index: 20,
			Message: "maintenance mode on: no automatic failover until it is resumed"})
		fc.apply(t, fsm.SetPause{Paused: true})
		b.waitContains(wctx, t, "#ov-failover", "PAUSED")
		b.waitContains(wctx, t, "#alerts", "Maintenance mode")
		b.waitContains(wctx, t, "#cluster-events tbody tr:first-child", "warningmaintenancemaintenance mode on: no automatic failover")
		// A booked switchover is shown until it is cancelled.
		fc.apply(t, fsm.ScheduleSwitchover{Leader: "n1", Candidate: "n2", At: time.Now().Add(time.Hour)})
		b.waitContains(wctx, t, "#alerts", "Switchover scheduled:from n1 to n2 at ")
		fc.apply(t, fsm.CancelScheduledSwitchover{Reason: "cancelled by an operator"})
		b.waitUntil(wctx, t, "#alerts", "the booking gone", func(got string) bool { return !strings.Contains(got, "Switchover scheduled") })
		fc.apply(t, fsm.RequestSwitchover{Leader: "n1", Candidate: "n2"})
		b.waitContains(wctx, t, "#ov-operation", "switchover #1: checkpoint")
		b.waitContains(wctx, t, "#alerts", "Switchover #1 in progress")
	}) {
		return
	}

	t.Run("mutations", func(t *testing.T) {
		b.eval(ctx, t, `document.getElementById('pause').click()`)
		b.waitContains(ctx, t, "#result", "enter the API token first")

		// A wrong token: the API's message is shown as it is.
		b.setToken(ctx, t, "wrong")
		b.eval(ctx, t, `document.getElementById('pause').click()`)
		b.waitContains(ctx, t, "#result", "Pause failed (HTTP 401")
		b.waitContains(ctx, t, "#result", "missing or wrong bearer token (send 'Authorization: Bearer <api.token>')")

		b.setToken(ctx, t, "s3cret")
		if got := string(b.eval(ctx, t, `[sessionStorage.getItem('pgbastion.api-token'), localStorage.length, location.href.includes('s3cret')]`)); got != `["s3cret",0,false]` {
			t.Errorf("token storage [sessionStorage, localStorage entries, in URL]: %s", got)
		}
		// Resume asks first; declining sends nothing.
		b.answerDialogs(false, "")
		b.eval(ctx, t, `document.getElementById('resume').click()`)
		b.waitDialog(ctx, t, "Automatic failover resumes at once; if the primary is down, a failover may start immediately.")
		b.answerDialogs(true, "")
		b.eval(ctx, t, `document.getElementById('resume').click()`)
		b.waitContains(ctx, t, "#result", "Resume: done.")

		// Switchover asks first; declining sends nothing.
		b.waitContains(ctx, t, "#sw-candidate", "n2")
		b.answerDialogs(false, "")
		b.eval(ctx, t, `document.getElementById('sw-go').click()`)
		b.waitDialog(ctx, t, "Switch over from n1 to n2?")
		b.answerDialogs(true, "")
		b.eval(ctx, t, `document.getElementById('sw-go').click()`)
		b.waitContains(ctx, t, "#result", "switchover finished: n2 is the primary")

		// With a time, the switchover is booked; the booking can be cancelled from the page.
		at := time.Now().Add(2 * time.Hour).Truncate(time.Minute)
		b.eval(ctx, t, fmt.Sprintf(`document.getElementById('sw-at').value = %q`, at.Format("2006-01-02T15:04")))
		b.answerDialogs(true, "")
		b.eval(ctx, t, `document.getElementById('sw-go').click()`)
		b.waitContains(ctx, t, "#result", "Scheduling a switchover to n2: booked.")
		if sch := c.State().ScheduledSwitchover; sch == nil || !sch.At.Equal(at) || sch.Candidate != "n2" {
			t.Fatalf("booked %+v, want n2 at %s", sch, at)
		}
		b.eval(ctx, t, `document.getElementById('sw-at').value = ''`)
		b.waitUntil(ctx, t, "#sw-cancel", "the cancel button shown", func(string) bool {
			return string(b.eval(ctx, t, `document.getElementById('sw-cancel').hidden`)) == "false"
		})
		b.eval(ctx, t, `document.getElementById('sw-cancel').click()`)
		b.waitContains(ctx, t, "#result", "Cancelling the scheduled switchover: done.")
		if c.State().ScheduledSwitchover != nil {
			t.Fatal("the booking is still there after the cancel")
		}

		// A forced failover goes ahead only when the candidate's name is typed.
		b.eval(ctx, t, `document.getElementById('fo-force').click(); document.getElementById('fo-candidate').value = 'n2'`)
		b.waitVisible(ctx, t, "#fo-force-warning")
		b.answerDialogs(true, "n3")
		b.eval(ctx, t, `document.getElementById('fo-go').click()`)
		b.waitContains(ctx, t, "#result", `Forced failover cancelled: you typed "n3", not "n2".`)
		b.answerDialogs(true, "n2")
		b.eval(ctx, t, `document.getElementById('fo-go').click()`)
		b.waitContains(ctx, t, "#result", "Forced failover to n2: done.")

		sw, fo, pauses := c.calls()
		if fmt.Sprint(sw) != "[[n1 n2]]" || fmt.Sprint(fo) != "[n2 force=true]" || fmt.Sprint(pauses) != "[false]" {
			t.Errorf("the API received switchovers %v, failovers %v, pauses %v; want [[n1 n2]], [n2 force=true], [false]", sw, fo, pauses)
		}
	})

	t.Run("restarts", func(t *testing.T) {
		const n2 = "#nodes tr[data-node=n2] button[data-restart]"
		isDisabled := fmt.Sprintf(`document.querySelector(%q).disabled`, n2)
		// The replica can be restarted; the primary cannot, and the alert says what to do.
		b.waitText(ctx, t, n2, "Restart…")
		b.waitContains(ctx, t, "#nodes tr[data-node=n1]", "switch over first")
		if n := b.eval(ctx, t, `document.querySelectorAll('#nodes tr[data-node=n1] button').length`); string(n) != "0" {
			t.Errorf("the primary's row has %s buttons, want none", n)
		}
		b.waitContains(ctx, t, "#alerts", "n1 is the primary: switch over first, then restart it as a replica.")
		b.waitText(ctx, t, "#restarts tbody", "no restart requested")

		// Declining sends nothing.
		b.answerDialogs(false, "")
		b.eval(ctx, t, fmt.Sprintf(`document.querySelector(%q).click()`, n2))
		b.waitDialog(ctx, t, "Restart PostgreSQL on n2?\n\nIt applies the pending parameters: shared_buffers.")

		// Accepted: the button is disabled until the agent has answered.
		release := c.holdAgents(t, nil)
		b.answerDialogs(true, "")
		b.eval(ctx, t, fmt.Sprintf(`document.querySelector(%q).click()`, n2))
		b.waitContains(ctx, t, "#result", "Restart of n2: waiting for the cluster")
		b.waitUntil(ctx, t, n2, "disabled", func(string) bool { return string(b.eval(ctx, t, isDisabled)) == "true" })
		b.waitContains(ctx, t, "#restarts tr[data-restart-id='1']", "pending")
		release()
		b.waitContains(ctx, t, "#result", "Restart of n2: done.")
		b.waitUntil(ctx, t, n2, "enabled", func(string) bool { return string(b.eval(ctx, t, isDisabled)) == "false" })
		b.waitContains(ctx, t, "#restarts tr[data-restart-id='1']", "n2done")
		b.waitContains(ctx, t, "#restarts tr[data-restart-id='1']", "from the web UI to apply shared_buffers")

		// Refused by the agent: its reason is shown as the API gives it.
		const refusal = "a switchover is in progress (operation 1); ask again when it has finished"
		c.mu.Lock()
		c.holdRestart, c.refuseRestart = nil, map[string]string{"n2": refusal}
		c.mu.Unlock()
		b.eval(ctx, t, fmt.Sprintf(`document.querySelector(%q).click()`, n2))
		b.waitContains(ctx, t, "#result", "Restart of n2 failed (HTTP 409")
		b.waitContains(ctx, t, "#result", "restart of n2: "+refusal)
		// Newest first.
		b.waitContains(ctx, t, "#restarts tbody tr:first-child", "2n2failed")
		b.waitContains(ctx, t, "#restarts tbody tr:first-child", refusal)
		b.waitContains(ctx, t, "#restarts tbody tr:nth-child(2)", "1n2done")

		if got := c.restartCalls(); fmt.Sprint(got) != "[n2: from the web UI to apply shared_buffers n2: from the web UI to apply shared_buffers]" {
			t.Errorf("the API received restarts %q, want two of n2 (the declined one sent nothing)", got)
		}
	})

	t.Run("reinitialisation", func(t *testing.T) {
		const n2 = "#nodes tr[data-node=n2] button[data-reinit]"
		click := fmt.Sprintf(`document.querySelector(%q).click()`, n2)
		state := fmt.Sprintf(`(() => { const b = document.querySelector(%q); return b.disabled + ' ' + b.title; })()`, n2)
		// Offered for the replica, never for the primary.
		b.waitText(ctx, t, n2, "Reinitialize…")
		if n := b.eval(ctx, t, `document.querySelectorAll('#nodes tr[data-node=n1] button').length`); string(n) != "0" {
			t.Errorf("the primary's row has %s buttons, want none", n)
		}

		// Declining the prompt sends nothing, and neither does typing another name.
		b.answerDialogs(false, "")
		b.eval(ctx, t, click)
		b.waitDialog(ctx, t, "REINITIALIZE n2 from the primary n1?\n\nThis DELETES the data directory of n2")
		b.waitDialog(ctx, t, `Type "n2" to go ahead.`)
		b.answerDialogs(true, "n1")
		b.eval(ctx, t, click)
		b.waitContains(ctx, t, "#result", `Reinitialisation of n2 cancelled: you typed "n1", not "n2".`)
		if got := c.reinitCalls(); len(got) != 0 {
			t.Fatalf("the API received reinitialisations %q before the name was typed", got)
		}

		// The name typed: the request goes; n2's buttons wait for its agent, which refuses
		// (an operation is in progress). Its answer is shown as the API gives it.
		const refusal = "a switchover is in progress (operation 1); ask again when it has finished"
		release := c.holdAgents(t, map[string]string{"n2": refusal})
		b.answerDialogs(true, "n2")
		b.eval(ctx, t, click)
		b.waitContains(ctx, t, "#result", "Reinitialisation of n2: waiting for the cluster")
		b.waitContains(ctx, t, "#restarts tr[data-restart-id='3']", "n2 reinitpending")
		b.waitUntil(ctx, t, n2, "disabled while reinitialisation #3 is pending", func(string) bool {
			return string(b.eval(ctx, t, state)) == `"true reinitialisation #3 is running"`
		})
		release()
		b.waitContains(ctx, t, "#result", "Reinitialisation of n2 failed (HTTP 409")
		b.waitContains(ctx, t, "#result", "reinitialisation of n2: "+refusal)
		b.waitContains(ctx, t, "#restarts tr[data-restart-id='3']", "n2 reinitfailed")

		// Accepted.
		c.mu.Lock()
		c.holdRestart, c.refuseRestart = nil, nil
		c.mu.Unlock()
		b.waitUntil(ctx, t, n2, "enabled", func(string) bool { return string(b.eval(ctx, t, state)) == `"false "` })
		b.eval(ctx, t, click)
		b.waitContains(ctx, t, "#result", "Reinitialisation of n2: done.")
		b.waitContains(ctx, t, "#restarts tbody tr:first-child", "4n2 reinitdone")

		if got := c.reinitCalls(); fmt.Sprint(got) != "[n2: from the web UI n2: from the web UI]" {
			t.Errorf("the API received reinitialisations %q, want two of n2", got)
		}
		if got := c.restartCalls(); len(got) != 2 {
			t.Errorf("the API received restarts %q, want the two of the restarts test", got)
		}
	})

	outer := t
	t.Run("reconnects", func(t *testing.T) {
		// The API goes away (pgbastion restarts): the page says so at once and keeps
		// showing the last figures; when the API is back, it is live again.
		b.allowNetworkErrors(true)
		stop()
		b.waitText(ctx, t, "#live", "disconnected — retrying")
		b.waitContains(ctx, t, "#alerts", "API error (GET /nodes")
		b.waitText(ctx, t, "#ov-primary", "n1")
		// Until the test ends, not this subtest: the page stays on it until it navigates away,
		// and its requests failing meanwhile would be reported as the browser's problems.
		_, again := runAPI(outer, strings.TrimPrefix(base, "http://"), src)
		if again != base {
			t.Fatalf("restarted on %s, not %s", again, base)
		}
		b.waitText(ctx, t, "#live", "live")
		b.waitUntil(ctx, t, "#alerts", "no API error", func(got string) bool { return !strings.Contains(got, "API error") })
		b.allowNetworkErrors(false)
	})

	t.Run("a node without an event log", func(t *testing.T) {
		// Its GET /cluster/events answers 503 (an older node's, 404): the card says so and the
		// rest of the page works, without an API error.
		b.expectFailures("/cluster/events?", "/proxy")
		_, bare := runAPI(outer, "127.0.0.1:0", Sources{Cluster: c})
		b.navigate(ctx, bare+"/ui/")
		b.waitText(ctx, t, "#ov-primary", "n1")
		b.waitText(ctx, t, "#events-note", "This node has no cluster events to show: this node does not record cluster events.")
		if got := string(b.eval(ctx, t, `[document.getElementById('events-body').hidden, document.getElementById('cluster-events').getClientRects().length]`)); got != "[true,0]" {
			t.Errorf("the events table [hidden, boxes]: %s, want [true,0]", got)
		}
		b.waitText(ctx, t, "#proxy-note", "This node runs no proxy.")
		b.waitText(ctx, t, "#live", "live")
		if got := b.text(ctx, t, "#alerts"); strings.Contains(got, "API error") {
			t.Errorf("alerts: %q", got)
		}
	})

	t.Run("a standalone proxy", func(t *testing.T) {
		// No cluster: its cluster endpoints and the event stream answer 501. The page keeps
		// polling them until the test ends, so their failures stay expected (and the proxy
		// stays up until then: a refused connection is no better).
		b.allowNetworkErrors(true)
		_, solo := runAPI(outer, "127.0.0.1:0", Sources{})
		b.navigate(ctx, solo+"/ui/")
		b.waitContains(ctx, t, "#alerts", "Standalone proxy")
		b.waitContains(ctx, t, "#events-note", "runs as a standalone proxy")
		b.waitText(ctx, t, "#live", "no live updates — polling every 5 s")
	})

	// Nothing was refused by the page's own Content-Security-Policy, and nothing threw.
	if p := b.problems(); len(p) > 0 {
		t.Errorf("browser console:\n%s", strings.Join(p, "\n"))
	}
	t.Logf("browser test took %v", time.Since(start).Round(time.Millisecond))
}

// browser is headless Chromium with one page, driven over the DevTools protocol through
// --remote-debugging-pipe: JSON messages ended by a NUL byte, commands to the browser's fd 3,
// answers and events from its fd 4.
type browser struct {
	t       *testing.T
	toPipe  *os.File
	wmu     sync.Mutex
	done    chan struct{} // closed when the browser's output ends
	session string

	mu       sync.Mutex
	nextID   int
	waiting  map[int]chan cdpMessage
	console  []string
	dialogs  []string
	accept   bool
	typeText string
	// offline: the test stopped the API; failed requests are expected.
	offline bool
	// failing: requests whose URL contains one of these fail on purpose.
	failing []string
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

func startBrowser(ctx context.Context, t *testing.T, bin string) *browser {
	t.Helper()
	cmdR, cmdW, err := os.Pipe() // we write commands; the browser reads fd 3
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe() // the browser writes fd 4; we read
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-extensions", "--no-first-run", "--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.ExtraFiles = []*os.File{cmdR, outW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // renderers and helpers go with it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmdR.Close()
	outW.Close()
	b := &browser{t: t, toPipe: cmdW, done: make(chan struct{}), waiting: map[int]chan cdpMessage{}}
	go b.read(outR)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.call(cctx, "", "Browser.close", nil, nil)
		select {
		case <-exited:
		case <-cctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		cmdW.Close()
		if t.Failed() {
			t.Logf("browser stderr (last 2000 bytes):\n%s", tail(stderr.String(), 2000))
		}
	})
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatalf("starting %s: %v\n%s", bin, err, tail(stderr.String(), 2000))
	}
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached); err != nil {
		t.Fatal(err)
	}
	b.session = attached.SessionID
	for _, domain := range []string{"Page", "Runtime", "Log"} {
		if err := b.call(ctx, b.session, domain+".enable", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// call sends a command (to the browser, or to the page when session is set) and waits for its
// answer.
func (b *browser) call(ctx context.Context, session, method string, params, result any) error {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.waiting[id] = ch
	b.mu.Unlock()
	msg, err := json.Marshal(map[string]any{"id": id, "method": method, "params": orEmpty(params), "sessionId": session})
	if err != nil {
		return err
	}
	b.wmu.Lock()
	_, err = b.toPipe.Write(append(msg, 0))
	b.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return fmt.Errorf("%s: %s", method, m.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(m.Result, result)
		}
		return nil
	case <-b.done:
		return fmt.Errorf("%s: the browser exited", method)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

func orEmpty(params any) any {
	if params == nil {
		return struct{}{}
	}
	return params
}

// read dispatches answers to their callers and handles events: dialogs are answered as
// answerDialogs says; console errors, exceptions and CSP violations are kept.
func (b *browser) read(r *os.File) {
	defer close(b.done)
	br := bufio.NewReader(r)
	for {
		raw, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.waiting[m.ID]
			delete(b.waiting, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m
			}
			continue
		}
		b.event(m)
	}
}

func (b *browser) event(m cdpMessage) {
	switch m.Method {
	case "Page.javascriptDialogOpening":
		var p struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(m.Params, &p)
		b.mu.Lock()
		b.dialogs = append(b.dialogs, p.Message)
		answer := map[string]any{"accept": b.accept, "promptText": b.typeText}
		b.mu.Unlock()
		// Not from this goroutine: the answer to the command comes through it.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = b.call(ctx, m.SessionID, "Page.handleJavaScriptDialog", answer, nil)
		}()
	case "Runtime.exceptionThrown":
		var p struct {
			Details struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		_ = json.Unmarshal(m.Params, &p)
		b.keep("exception: " + p.Details.Text + " " + p.Details.Exception.Description)
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string `json:"type"`
			Args []struct {
				Value any `json:"value"`
			} `json:"args"`
		}
		_ = json.Unmarshal(m.Params, &p)
		if p.Type == "error" || p.Type == "warning" || p.Type == "assert" {
			b.keep(fmt.Sprintf("console.%s: %v", p.Type, p.Args))
		}
	case "Log.entryAdded":
		var p struct {
			Entry struct {
				Source string `json:"source"`
				Level  string `json:"level"`
				Text   string `json:"text"`
				URL    string `json:"url"`
			} `json:"entry"`
		}
		_ = json.Unmarshal(m.Params, &p)
		e := p.Entry
		// The 401 and the 409s are the test's doing; the browser asks for a favicon there is
		// none of.
		b.mu.Lock()
		expected := e.Source == "network" && (b.offline || strings.HasSuffix(e.URL, "/pause") || strings.HasSuffix(e.URL, "/restart") ||
			strings.HasSuffix(e.URL, "/reinitialize") || strings.HasSuffix(e.URL, "/favicon.ico") ||
			slices.ContainsFunc(b.failing, func(s string) bool { return strings.Contains(e.URL, s) }))
		b.mu.Unlock()
		if (e.Level == "error" || e.Level == "warning") && !expected {
			b.keep(fmt.Sprintf("%s %s: %s %s", e.Source, e.Level, e.Text, e.URL))
		}
	}
}

func (b *browser) keep(s string) {
	b.mu.Lock()
	b.console = append(b.console, s)
	b.mu.Unlock()
}

func (b *browser) problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

func (b *browser) allowNetworkErrors(offline bool) {
	b.mu.Lock()
	b.offline = offline
	b.mu.Unlock()
}

// expectFailures says that requests whose URL contains one of parts fail on purpose.
func (b *browser) expectFailures(parts ...string) {
	b.mu.Lock()
	b.failing = append(b.failing, parts...)
	b.mu.Unlock()
}

// answerDialogs sets how the next confirm and prompt dialogs are answered.
func (b *browser) answerDialogs(accept bool, typeText string) {
	b.mu.Lock()
	b.accept, b.typeText = accept, typeText
	b.mu.Unlock()
}

func (b *browser) navigate(ctx context.Context, url string) {
	b.t.Helper()
	if err := b.call(ctx, b.session, "Page.navigate", map[string]any{"url": url}, nil); err != nil {
		b.t.Fatal(err)
	}
}

// eval runs a JavaScript expression in the page and returns its value as JSON.
func (b *browser) eval(ctx context.Context, t *testing.T, expr string) json.RawMessage {
	t.Helper()
	v, err := b.evalErr(ctx, expr)
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

func (b *browser) evalErr(ctx context.Context, expr string) (json.RawMessage, error) {
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := b.call(ctx, b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res); err != nil {
		return nil, err
	}
	if res.Exception != nil {
		return nil, errors.New(res.Exception.Text)
	}
	return res.Result.Value, nil
}

// text returns the text of the element selector matches ("" when none does).
func (b *browser) text(ctx context.Context, t *testing.T, selector string) string {
	t.Helper()
	var s string
	sel, _ := json.Marshal(selector)
	_ = json.Unmarshal(b.eval(ctx, t, fmt.Sprintf(`(document.querySelector(%s) || {textContent: ''}).textContent`, sel)), &s)
	return s
}

// waitUntil polls the page until ok holds for the selector's text, failing at ctx's deadline.
func (b *browser) waitUntil(ctx context.Context, t *testing.T, selector, want string, ok func(string) bool) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var got string
	for {
		got = b.text(ctx, t, selector)
		if ok(got) {
			return
		}
		if p := b.problems(); len(p) > 0 {
			// A refused script or style, or an exception: no point waiting.
			t.Fatalf("%s: got %q, want %s; browser console:\n%s", selector, got, want, strings.Join(p, "\n"))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: got %q, want %s (%v)\npage text:\n%s", selector, got, want, ctx.Err(), b.pageText())
		case <-tick.C:
		}
	}
}

func (b *browser) pageText() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := b.evalErr(ctx, `document.body.innerText`)
	if err != nil {
		return err.Error()
	}
	var s string
	_ = json.Unmarshal(v, &s)
	return s
}

func (b *browser) waitText(ctx context.Context, t *testing.T, selector, want string) {
	t.Helper()
	b.waitUntil(ctx, t, selector, fmt.Sprintf("%q", want), func(got string) bool { return strings.TrimSpace(got) == want })
}

func (b *browser) waitContains(ctx context.Context, t *testing.T, selector, want string) {
	t.Helper()
	b.waitUntil(ctx, t, selector, fmt.Sprintf("text containing %q", want), func(got string) bool { return strings.Contains(got, want) })
}

func (b *browser) waitVisible(ctx context.Context, t *testing.T, selector string) {
	t.Helper()
	sel, _ := json.Marshal(selector)
	expr := fmt.Sprintf(`(() => { const e = document.querySelector(%s); return !!e && !e.hidden && e.getClientRects().length > 0; })()`, sel)
	b.waitUntil(ctx, t, selector, "visible", func(string) bool { return string(b.eval(ctx, t, expr)) == "true" })
}

// waitDialog waits for a dialog whose message contains want.
func (b *browser) waitDialog(ctx context.Context, t *testing.T, want string) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		b.mu.Lock()
		seen := append([]string(nil), b.dialogs...)
		b.mu.Unlock()
		for _, d := range seen {
			if strings.Contains(d, want) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no dialog saying %q; dialogs: %q", want, seen)
		case <-tick.C:
		}
	}
}

// setToken types the API token as the operator would.
func (b *browser) setToken(ctx context.Context, t *testing.T, token string) {
	t.Helper()
	v, _ := json.Marshal(token)
	b.eval(ctx, t, fmt.Sprintf(`(() => { const e = document.getElementById('token'); e.value = %s; e.dispatchEvent(new Event('input')); })()`, v))
}
