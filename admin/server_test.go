package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/tracing"
)

// fakeCluster is a real FSM driven by hand, standing in for *ha.Node.
type fakeCluster struct {
	f       *fsm.FSM
	applyMu sync.Mutex // serialises propose
	index   uint64
	name    string
	lease   bool
	lastOp  []string
	lastRef *fsm.TraceRef // what the last switchover request's context said of its trace
	waitErr error
	// replaying: the node is still applying its Raft log after a restart.
	replaying bool
	// onRestart plays the target's agent for a restart request; onReload the members'
	// daemons for a cluster-wide reload.
	onRestart func(id uint64)
	onReload  func(id uint64)
}

func (c *fakeCluster) CaughtUp() bool { return !c.replaying }

func (c *fakeCluster) apply(t *testing.T, cmd fsm.Command) {
	t.Helper()
	c.applyAt(t, cmd, time.Now())
}

func (c *fakeCluster) applyAt(t *testing.T, cmd fsm.Command, at time.Time) {
	t.Helper()
	r, err := c.propose(cmd, at)
	if err == nil {
		err = r.Error()
	}
	if err != nil {
		t.Fatalf("apply %T: %v", cmd, err)
	}
}

// propose applies cmd as the next log entry, as Raft would, and returns the FSM's result.
func (c *fakeCluster) propose(cmd fsm.Command, at time.Time) (fsm.Result, error) {
	b, err := fsm.Encode(cmd, at)
	if err != nil {
		return fsm.Result{}, err
	}
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.index++
	return c.f.Apply(&raft.Log{Index: c.index, Data: b}).(fsm.Result), nil
}

func (c *fakeCluster) Name() string                 { return c.name }
func (c *fakeCluster) State() *fsm.State            { return c.f.State() }
func (c *fakeCluster) Subscribe() *fsm.Subscription { return c.f.Subscribe() }
func (c *fakeCluster) Leader() (string, string)     { return "n1", "127.0.0.1:8300" }
func (c *fakeCluster) Servers() ([]ha.Server, error) {
	return []ha.Server{{ID: "n1", Leader: true}}, nil
}
func (c *fakeCluster) HoldsWriteLease() bool { return c.lease }
func (c *fakeCluster) Switchover(ctx context.Context, leader, candidate string) (uint64, error) {
	c.lastOp = []string{"switchover", leader, candidate}
	c.lastRef = tracing.OperationRef(ctx)
	if candidate == "nope" {
		return 0, fsm.ErrPrecondition
	}
	if candidate == "flap" {
		return 0, fmt.Errorf("forwarded to n2: %s", raft.ErrLeadershipLost.Error())
	}
	return 7, nil
}
func (c *fakeCluster) ScheduleSwitchover(_ context.Context, leader, candidate string, at time.Time) error {
	r, err := c.propose(fsm.ScheduleSwitchover{Leader: leader, Candidate: candidate, At: at}, time.Now())
	if err == nil {
		err = r.Error()
	}
	return err
}
func (c *fakeCluster) CancelScheduledSwitchover(context.Context) error {
	r, err := c.propose(fsm.CancelScheduledSwitchover{Reason: "cancelled by an operator"}, time.Now())
	if err == nil {
		err = r.Error()
	}
	return err
}
func (c *fakeCluster) Failover(_ context.Context, candidate string, force bool) (uint64, error) {
	c.lastOp = []string{"failover", candidate}
	return 8, nil
}
func (c *fakeCluster) WaitOperation(_ context.Context, id uint64) (fsm.Operation, error) {
	return fsm.Operation{ID: id, Kind: fsm.OpSwitchover, Phase: fsm.PhaseDone, NewPrimary: "n2"}, c.waitErr
}
func (c *fakeCluster) SetPause(_ context.Context, paused bool) error {
	r, err := c.propose(fsm.SetPause{Paused: paused}, time.Now())
	if err != nil {
		return err
	}
	return r.Error()
}
func (c *fakeCluster) RequestReinit(_ context.Context, node, reason string) (uint64, error) {
	r, err := c.propose(fsm.RequestReinit{Node: node, Reason: reason}, time.Now())
	if err != nil {
		return 0, err
	}
	if r.Err == nil && c.onRestart != nil {
		go c.onRestart(r.ID)
	}
	return r.ID, r.Error()
}

func (c *fakeCluster) RequestRestart(_ context.Context, node, reason string) (uint64, error) {
	r, err := c.propose(fsm.RequestRestart{Node: node, Reason: reason}, time.Now())
	if err != nil {
		return 0, err
	}
	if r.Err == nil && c.onRestart != nil {
		go c.onRestart(r.ID)
	}
	return r.ID, r.Error()
}
func (c *fakeCluster) UpdatePGConfig(_ context.Context, set map[string]string, reset []string, ifVersion uint64) (uint64, error) {
	r, err := c.propose(fsm.UpdatePGConfig{Set: set, Reset: reset, IfVersion: ifVersion}, time.Now())
	if err != nil {
		return 0, err
	}
	return r.ID, r.Error()
}
func (c *fakeCluster) SetPGHBA(_ context.Context, lines []string, ifVersion uint64) (uint64, error) {
	r, err := c.propose(fsm.SetPGHBA{Lines: lines, IfVersion: ifVersion}, time.Now())
	if err != nil {
		return 0, err
	}
	return r.ID, r.Error()
}
func (c *fakeCluster) ControllerWaiting() string { return "no replica can be promoted" }
func (c *fakeCluster) RequestReload(context.Context) (uint64, error) {
	r, err := c.propose(fsm.RequestReload{}, time.Now())
	if err != nil {
		return 0, err
	}
	if c.onReload != nil {
		go c.onReload(r.ID)
	}
	return r.ID, r.Error()
}

func (c *fakeCluster) AddVoter(_ context.Context, name, addr string) error {
	c.lastOp = []string{"add", name, addr}
	if name == "n2" {
		return &fsm.Error{Code: fsm.CodeConflict, Message: "n2 is a voter already"}
	}
	return nil
}

func (c *fakeCluster) RemoveMember(_ context.Context, name string) error {
	c.lastOp = []string{"remove", name}
	if name == "n1" {
		return &fsm.Error{Code: fsm.CodePrecondition, Message: "n1 is the primary"}
	}
	return nil
}
func (c *fakeCluster) Backup(_ context.Context, w io.Writer) (ha.BackupInfo, error) {
	_, err := w.Write([]byte("backup-bytes"))
	return ha.BackupInfo{Index: 42}, err
}
func (c *fakeCluster) Restore(_ context.Context, r io.Reader) (ha.BackupInfo, error) {
	b, _ := io.ReadAll(r)
	c.lastOp = []string{"restore", string(b)}
	return ha.BackupInfo{Index: 42}, nil
}

func newCluster(t *testing.T, self string) *fakeCluster {
	c := &fakeCluster{f: fsm.New(slog.Default(), nil), name: self, lease: true}
	for _, n := range []string{"n1", "n2"} {
		c.apply(t, fsm.RegisterMember{Name: n, RaftAddress: n + ":8300", Tags: fsm.Tags{FailoverPriority: 1}})
	}
	c.apply(t, fsm.SetPrimary{Node: "n1", Reason: "bootstrap"})
	c.apply(t, fsm.ReportStatus{Node: "n1", Status: fsm.NodeStatus{Role: fsm.RolePrimary, State: fsm.StateRunningPrimary, Healthy: true, FlushLSN: 1000}})
	c.apply(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true, ReceivedLSN: 900, ReplayedLSN: 900}})
	return c
}

func startAPI(t *testing.T, token string, c Cluster) string {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", token
	s, err := New(cfg, Sources{Cluster: c}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, s)
}

// startServer runs s until the test ends and returns its base URL.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(5 * time.Second)
	for s.Addr() == "" {
		if time.Now().After(deadline) {
			t.Fatal("API did not start")
		}
		time.Sleep(time.Millisecond)
	}
	return "http://" + s.Addr()
}

func do(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRoleChecksFollowTheStateAndTheLease(t *testing.T) {
	c1 := newCluster(t, "n1")
	u1 := startAPI(t, "", c1)
	c2 := newCluster(t, "n2")
	u2 := startAPI(t, "", c2)
	for _, tc := range []struct {
		url, path string
		method    string
		want      int
	}{
		{u1, "/primary", "GET", 200}, {u1, "/master", "HEAD", 200}, {u1, "/replica", "GET", 503},
		{u1, "/read-only", "GET", 200}, {u1, "/health", "OPTIONS", 200},
		{u2, "/primary", "GET", 503}, {u2, "/replica", "GET", 200}, {u2, "/replica?lag=50", "GET", 503},
		{u2, "/replica?lag=1kB", "GET", 200}, {u2, "/read-write", "GET", 503},
	} {
		if code, body := do(t, tc.method, tc.url+tc.path, "", ""); code != tc.want {
			t.Errorf("%s %s on %s: %d, want %d (%s)", tc.method, tc.path, tc.url, code, tc.want, body)
		}
	}
	// Patroni's filters: replication_state (n2 reports no upstream yet: not streaming) and tags.
	for path, want := range map[string]int{
		"/replica?replication_state=streaming":       503,
		"/replica?tag_nofailover=false":              200,
		"/replica?tag_nofailover=true":               503,
		"/read-only?tag_failover_priority=1&lag=1kB": 200,
		"/replica?tag_colour=red":                    503,
		"/replica?replication_state=stopped":         503,
	} {
		if code, body := do(t, "GET", u2+path, "", ""); code != want {
			t.Errorf("%s on n2: %d, want %d (%s)", path, code, want, body)
		}
	}
	c2.apply(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true,
		ReceivedLSN: 900, ReplayedLSN: 900, Following: "n1"}})
	if code, body := do(t, "GET", u2+"/replica?replication_state=streaming", "", ""); code != 200 {
		t.Errorf("/replica?replication_state=streaming on a streaming n2: %d (%s)", code, body)
	}
	if _, body := do(t, "GET", u2+"/replica?tag_colour=red", "", ""); !strings.Contains(body, `no tag \"colour\"`) {
		t.Errorf("an unknown tag: %s", body)
	}
	// A primary that lost its write lease must not attract writes.
	c1.lease = false
	if code, _ := do(t, "GET", u1+"/primary", "", ""); code != 503 {
		t.Errorf("/primary without the lease: %d, want 503", code)
	}
	// A node replaying its log after a restart answers no role check, and /nodes says its view
	// is the past.
	c1.lease, c2.replaying = true, true
	for _, path := range []string{"/replica", "/read-only", "/health"} {
		if code, body := do(t, "GET", u2+path, "", ""); code != 503 || !strings.Contains(body, "replaying") {
			t.Errorf("%s while replaying: %d %s, want 503 saying why", path, code, body)
		}
	}
	if code, body := do(t, "GET", u2+"/nodes", "", ""); code != 200 || !strings.Contains(body, `"caught_up": false`) || !strings.Contains(body, "not current") {
		t.Errorf("/nodes while replaying: %d %s", code, body)
	}
	if code, body := do(t, "GET", u1+"/nodes", "", ""); code != 200 || !strings.Contains(body, `"caught_up": true`) {
		t.Errorf("/nodes when current: %d %s", code, body)
	}
	// Liveness does not depend on the cluster: a replaying node is alive.
	if code, _ := do(t, "GET", u2+"/liveness", "", ""); code != 200 {
		t.Errorf("/liveness while replaying: %d", code)
	}
	if code, _ := do(t, "GET", u2+"/readiness", "", ""); code != 503 {
		t.Errorf("/readiness while replaying: %d", code)
	}
}

func TestPatroniReadinessAndSyncChecks(t *testing.T) {
	c1 := newCluster(t, "n1")
	u1 := startAPI(t, "", c1)
	c2 := newCluster(t, "n2")
	u2 := startAPI(t, "", c2)
	check := func(url, path string, want int) {
		t.Helper()
		if code, body := do(t, "GET", url+path, "", ""); code != want {
			t.Errorf("%s on %s: %d, want %d (%s)", path, url, code, want, body)
		}
	}
	check(u1, "/liveness", 200)
	check(u1, "/readiness", 200) // the primary with its lease
	check(u2, "/readiness", 200) // a healthy replica
	// No synchronous standby recorded: n2 is asynchronous; the primary is neither.
	check(u2, "/sync", 503)
	check(u2, "/async", 200)
	check(u1, "/sync", 503)
	check(u1, "/async", 503)
	c2.apply(t, fsm.SetSyncStandbys{Nodes: []string{"n2"}})
	check(u2, "/sync", 200)
	check(u2, "/synchronous", 200)
	check(u2, "/asynchronous", 503)
	// An unhealthy replica is not ready, and neither sync nor async.
	c2.apply(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateStopped}})
	check(u2, "/readiness", 503)
	check(u2, "/sync", 503)
	check(u2, "/async", 503)
}

func TestMutationsNeedTheToken(t *testing.T) {
	open := startAPI(t, "", newCluster(t, "n1"))
	if code, body := do(t, "POST", open+"/switchover", "", `{"candidate":"n2"}`); code != 403 || !strings.Contains(body, "api.token") {
		t.Errorf("without a configured token: %d %s", code, body)
	}
	c := newCluster(t, "n1")
	u := startAPI(t, "s3cret", c)
	if code, _ := do(t, "POST", u+"/switchover", "", `{"candidate":"n2"}`); code != 401 {
		t.Errorf("no token: %d", code)
	}
	if code, _ := do(t, "POST", u+"/switchover", "wrong", `{"candidate":"n2"}`); code != 401 {
		t.Errorf("wrong token: %d", code)
	}
	code, body := do(t, "POST", u+"/switchover", "s3cret", `{"leader":"n1","candidate":"n2"}`)
	if code != 200 || !strings.Contains(body, `"new_primary": "n2"`) {
		t.Errorf("switchover: %d %s", code, body)
	}
	if strings.Join(c.lastOp, ",") != "switchover,n1,n2" {
		t.Errorf("switchover called with %v", c.lastOp)
	}
	if code, body := do(t, "POST", u+"/switchover", "s3cret", `{"candidate":"flap"}`); code != 503 || !strings.Contains(body, "send it again") {
		t.Errorf("switchover while the Raft leader changes: %d %s, want 503 saying to retry", code, body)
	}
	if code, _ := do(t, "POST", u+"/switchover", "s3cret", `{"candidate":"nope"}`); code != 412 {
		t.Errorf("precondition failure: %d, want 412", code)
	}
	if code, _ := do(t, "POST", u+"/switchover", "s3cret", `{"candidat":"n2"}`); code != 400 {
		t.Errorf("unknown JSON field: %d, want 400", code)
	}
	if code, body := do(t, "GET", u+"/raft/backup", "s3cret", ""); code != 200 || body != "backup-bytes" {
		t.Errorf("backup: %d %q", code, body)
	}
	if code, _ := do(t, "GET", u+"/raft/backup", "", ""); code != 401 {
		t.Errorf("backup without token: %d", code)
	}
	if code, _ := do(t, "POST", u+"/raft/restore", "s3cret", "backup-bytes"); code != 200 || strings.Join(c.lastOp, ",") != "restore,backup-bytes" {
		t.Errorf("restore: %d %v", code, c.lastOp)
	}
	if code, _ := do(t, "DELETE", u+"/members/n2", "", ""); code != 401 {
		t.Errorf("remove member without token: %d", code)
	}
	if code, body := do(t, "DELETE", u+"/members/n2", "s3cret", ""); code != 200 || strings.Join(c.lastOp, ",") != "remove,n2" ||
		!strings.Contains(body, "replication slot") {
		t.Errorf("remove member: %d %s %v", code, body, c.lastOp)
	}
	if code, _ := do(t, "DELETE", u+"/members/n1", "s3cret", ""); code != 412 {
		t.Errorf("removing the primary: %d, want 412", code)
	}
	// POST /members adds a voter; a bad body is refused before the cluster is asked.
	if code, _ := do(t, "POST", u+"/members", "", `{"name": "n4", "raft_address": "10.0.0.4:8300"}`); code != 401 {
		t.Errorf("add member without token: %d", code)
	}
	if code, body := do(t, "POST", u+"/members", "s3cret", `{"name": "n4", "raft_address": "10.0.0.4:8300"}`); code != 200 ||
		strings.Join(c.lastOp, ",") != "add,n4,10.0.0.4:8300" || !strings.Contains(body, "clones its data") {
		t.Errorf("add member: %d %s %v", code, body, c.lastOp)
	}
	c.lastOp = nil
	for _, bad := range []string{`{"name": "n4"}`, `{"name": "n4", "raft_address": "10.0.0.4"}`, `{"raft_address": "10.0.0.4:8300"}`, `{"name": "n4", "address": "x:1"}`} {
		if code, _ := do(t, "POST", u+"/members", "s3cret", bad); code != 400 || c.lastOp != nil {
			t.Errorf("add member %s: %d %v, want 400 without asking the cluster", bad, code, c.lastOp)
		}
	}
	if code, body := do(t, "POST", u+"/members", "s3cret", `{"name": "n2", "raft_address": "10.0.0.2:8300"}`); code != 409 || !strings.Contains(body, "voter already") {
		t.Errorf("adding a voter again: %d %s, want 409", code, body)
	}
	c.waitErr = context.DeadlineExceeded
	if code, _ := do(t, "POST", u+"/failover", "s3cret", `{"candidate":"n2"}`); code != 202 {
		t.Errorf("slow failover: %d, want 202", code)
	}
}

func TestNodesAndEvents(t *testing.T) {
	c := newCluster(t, "n1")
	// n2 last reported 90 s ago: /nodes must show that its status is old.
	c.applyAt(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true, ReceivedLSN: 900, ReplayedLSN: 900}},
		time.Now().Add(-90*time.Second))
	c.apply(t, fsm.RenewLease{Node: "n1"})
	u := startAPI(t, "", c)
	code, body := do(t, "GET", u+"/nodes", "", "")
	var got struct {
		Primary string `json:"primary"`
		Waiting string `json:"controller_waiting"`
		Nodes   []struct {
			Name      string   `json:"name"`
			IsPrimary bool     `json:"is_primary"`
			StatusAge *float64 `json:"status_age_seconds"`
			LeaseAge  *float64 `json:"lease_age_seconds"`
		} `json:"nodes"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &got) != nil || got.Primary != "n1" || len(got.Nodes) != 2 || !got.Nodes[0].IsPrimary ||
		got.Waiting != "no replica can be promoted" {
		t.Fatalf("/nodes: %d %s", code, body)
	}
	if n1, n2 := got.Nodes[0], got.Nodes[1]; n1.StatusAge == nil || *n1.StatusAge > 30 || n1.LeaseAge == nil || *n1.LeaseAge > 30 ||
		n2.StatusAge == nil || *n2.StatusAge < 90 || n2.LeaseAge != nil {
		t.Fatalf("/nodes status and lease ages: %s", body)
	}
	resp, err := http.Get(u + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	line, _ := r.ReadString('\n')
	if line != "event: state\n" {
		t.Fatalf("first SSE line %q", line)
	}
	// A change is streamed.
	c.apply(t, fsm.SetPause{Paused: true})
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"paused":true`) {
			break
		}
	}
}

// TestProxyPauseAndReloadEndpoints: POST /proxy/pause and /reload need the token; a cluster
// member (no PauseProxy) refuses the pause with what to do instead; a bad wait is a 400; a
// pause that runs out of wait answers 202 with the transactions still in flight; a refused
// reload is a 400 that says nothing changed.
func TestProxyPauseAndReloadEndpoints(t *testing.T) {
	member := startAPI(t, "tok", newCluster(t, "n1"))
	if code, _ := do(t, "POST", member+"/proxy/pause", "", ""); code != 401 {
		t.Errorf("pause without the token: %d", code)
	}
	if code, body := do(t, "POST", member+"/proxy/pause", "tok", ""); code != 409 || !strings.Contains(body, "switchover") {
		t.Errorf("pause on a cluster member: %d %s", code, body)
	}
	if code, body := do(t, "POST", member+"/reload", "tok", ""); code != 503 {
		t.Errorf("reload without a reloader: %d %s", code, body)
	}

	inFlight := 3
	resumed, pausedDB := false, ""
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", "tok"
	s, err := New(cfg, Sources{
		PauseProxy: func(ctx context.Context, db string) (int, error) {
			pausedDB = db
			if inFlight > 0 {
				<-ctx.Done()
				return inFlight, ctx.Err()
			}
			return 0, nil
		},
		ResumeProxy: func(db string) bool { resumed = true; return db != "nope" },
		Reload:      func() (any, error) { return nil, errors.New("x.yaml:3: unknown key") },
	}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)
	if code, body := do(t, "POST", u+"/proxy/pause", "tok", `{"wait_seconds": -1}`); code != 400 {
		t.Errorf("negative wait: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/proxy/pause", "tok", `{"wait_seconds": 0.05}`); code != 202 || !strings.Contains(body, `"in_flight": 3`) {
		t.Errorf("pause that ran out of wait: %d %s", code, body)
	}
	inFlight = 0
	if code, body := do(t, "POST", u+"/proxy/pause", "tok", ""); code != 200 || !strings.Contains(body, `"drained": true`) {
		t.Errorf("pause: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/proxy/resume", "tok", ""); code != 200 || !resumed {
		t.Errorf("resume: %d %s", code, body)
	}
	// One database.
	if code, body := do(t, "POST", u+"/proxy/pause", "tok", `{"database": "app"}`); code != 200 || pausedDB != "app" ||
		!strings.Contains(body, `database \"app\" paused`) {
		t.Errorf("pause of one database: %d %s (paused %q)", code, body, pausedDB)
	}
	if code, body := do(t, "POST", u+"/proxy/resume", "tok", `{"database": "nope"}`); code != 404 || !strings.Contains(body, "is not paused") {
		t.Errorf("resume of a database not paused: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/reload", "tok", ""); code != 400 || !strings.Contains(body, "nothing changed") || !strings.Contains(body, "x.yaml:3") {
		t.Errorf("refused reload: %d %s", code, body)
	}
}

// The proxy's KILL_CLIENT, KILL and RECONNECT endpoints: token required, bodies checked,
// answers say what happened.
func TestProxyKillAndReconnectEndpoints(t *testing.T) {
	var calls []string
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", "tok"
	s, err := New(cfg, Sources{ProxyOps: &ProxyOps{
		KillClient: func(id string) bool { calls = append(calls, "kill-client "+id); return id == "0xc0001" },
		KillDatabase: func(db string) KillResult {
			calls = append(calls, "kill "+db)
			return KillResult{Clients: 3, Servers: 2, Busy: 1, Paused: true, Message: "closed 3 client connections; 1 busy clients were not checked"}
		},
		Reconnect: func(db string) int { calls = append(calls, "reconnect "+db); return 5 },
	}}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/proxy/reconnect", ""}, {"POST", "/proxy/kill", `{"database": "app"}`}, {"DELETE", "/proxy/connections/0xc0001", ""},
	} {
		if code, _ := do(t, r.method, u+r.path, "", r.body); code != 401 {
			t.Errorf("%s %s without the token: %d", r.method, r.path, code)
		}
	}
	if len(calls) != 0 {
		t.Fatalf("ran without the token: %v", calls)
	}
	if code, body := do(t, "POST", u+"/proxy/reconnect", "tok", ""); code != 200 || !strings.Contains(body, "5 server connections of every database") {
		t.Errorf("reconnect: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/proxy/reconnect", "tok", `{"database": "app"}`); code != 200 || !strings.Contains(body, `database \"app\"`) {
		t.Errorf("reconnect app: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/proxy/kill", "tok", ""); code != 400 || !strings.Contains(body, "name the database") {
		t.Errorf("kill without a database: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/proxy/kill", "tok", `{"db": "app"}`); code != 400 {
		t.Errorf("kill with an unknown field: %d %s", code, body)
	}
	if code, body := do(t, "POST", u+"/proxy/kill", "tok", `{"database": "app"}`); code != 200 ||
		!strings.Contains(body, `"clients_closed": 3`) || !strings.Contains(body, `"servers_retired": 2`) || !strings.Contains(body, "1 busy clients") || !strings.Contains(body, `"paused": true`) {
		t.Errorf("kill: %d %s", code, body)
	}
	if code, body := do(t, "DELETE", u+"/proxy/connections/0xc0002", "tok", ""); code != 404 || !strings.Contains(body, "GET /proxy/connections") {
		t.Errorf("kill of an unknown client: %d %s", code, body)
	}
	if code, body := do(t, "DELETE", u+"/proxy/connections/0xc0001", "tok", ""); code != 200 || !strings.Contains(body, "cancelled") {
		t.Errorf("kill client: %d %s", code, body)
	}
	want := []string{"reconnect ", "reconnect app", "kill app", "kill-client 0xc0002", "kill-client 0xc0001"}
	if strings.Join(calls, ",") != strings.Join(want, ",") {
		t.Errorf("calls %q, want %q", calls, want)
	}

	member := startAPI(t, "tok", newCluster(t, "n1")) // no proxy sources
	if code, body := do(t, "POST", member+"/proxy/reconnect", "tok", ""); code != 404 || !strings.Contains(body, "no proxy") {
		t.Errorf("reconnect without a proxy: %d %s", code, body)
	}
}

// POST /switchover with scheduled_at books a switchover (202); GET /cluster shows it; DELETE
// /switchover cancels it; a bad time or a booking the state machine refuses says why.
func TestScheduledSwitchoverEndpoints(t *testing.T) {
	c := newCluster(t, "n1")
	u := startAPI(t, "tok", c)
	at := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	body := fmt.Sprintf(`{"candidate": "n2", "scheduled_at": %q}`, at.Format(time.RFC3339))
	if code, _ := do(t, "POST", u+"/switchover", "", body); code != 401 {
		t.Errorf("scheduling without the token: %d", code)
	}
	if code, _ := do(t, "DELETE", u+"/switchover", "", ""); code != 401 {
		t.Errorf("cancelling without the token: %d", code)
	}
	for _, bad := range []struct {
		body string
		code int
		want string
	}{
		{`{"candidate": "n2", "scheduled_at": "tomorrow 3am"}`, 400, "RFC 3339"},
		{`{"candidate": "n2", "scheduled_at": "2026-11-28T03:00:00"}`, 400, "with its zone"},
		{fmt.Sprintf(`{"candidate": "n2", "scheduled_at": %q}`, time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)), 400, "not in the future"},
		{fmt.Sprintf(`{"candidate": "n9", "scheduled_at": %q}`, at.Format(time.RFC3339)), 412, `n9\" does not exist`},
	} {
		if code, got := do(t, "POST", u+"/switchover", "tok", bad.body); code != bad.code || !strings.Contains(got, bad.want) {
			t.Errorf("POST /switchover %s: %d %s, want %d with %q", bad.body, code, got, bad.code, bad.want)
		}
	}
	code, got := do(t, "POST", u+"/switchover", "tok", body)
	if code != 202 || !strings.Contains(got, "switchover from n1 to n2 scheduled at "+at.Format(time.RFC3339)) {
		t.Fatalf("scheduling: %d %s", code, got)
	}
	if sch := c.State().ScheduledSwitchover; sch == nil || !sch.At.Equal(at) || sch.Leader != "n1" || sch.Candidate != "n2" {
		t.Fatalf("the state holds %+v", sch)
	}
	if code, got := do(t, "GET", u+"/cluster", "", ""); code != 200 || !strings.Contains(got, `"scheduled_switchover"`) {
		t.Errorf("GET /cluster: %d %s", code, got)
	}
	if code, got := do(t, "POST", u+"/switchover", "tok", body); code != 409 || !strings.Contains(got, "already scheduled") {
		t.Errorf("a second booking: %d %s", code, got)
	}
	if code, got := do(t, "DELETE", u+"/switchover", "tok", ""); code != 200 || !strings.Contains(got, "cancelled") {
		t.Errorf("cancel: %d %s", code, got)
	}
	if last := c.State().LastScheduledSwitchover; c.State().ScheduledSwitchover != nil || last == nil || last.Outcome != "cancelled by an operator" {
		t.Errorf("after cancelling: booked %+v, last %+v", c.State().ScheduledSwitchover, last)
	}
	if code, got := do(t, "DELETE", u+"/switchover", "tok", ""); code != 404 || !strings.Contains(got, "no switchover is scheduled") {
		t.Errorf("cancel with nothing booked: %d %s", code, got)
	}
}

// TestPatroniStatusEndpoint: GET /patroni has Patroni's shape — state, role, xlog positions in
// bytes, tags, and the primary's streaming standbys with their sync_state.
func TestPatroniStatusEndpoint(t *testing.T) {
	c1 := newCluster(t, "n1")
	c1.apply(t, fsm.RegisterMember{Name: "n2", RaftAddress: "n2:8300", Tags: fsm.Tags{FailoverPriority: 1, ReplicateFrom: "n3", NoSync: true}})
	c1.apply(t, fsm.ReportStatus{Node: "n1", Status: fsm.NodeStatus{Role: fsm.RolePrimary, State: fsm.StateRunningPrimary, Healthy: true,
		FlushLSN: 0x3000, Timeline: 2, SystemID: "7300000000000000001", Streaming: []string{"n2"}}})
	c1.apply(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true,
		ReceivedLSN: 0x2f00, ReplayedLSN: 0x2e00, Timeline: 2, Following: "n1"}})
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", ""
	s, err := New(cfg, Sources{Cluster: c1, Version: "1.2.3", Scope: "main"}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u1 := startServer(t, s)
	get := func(url string) map[string]any {
		t.Helper()
		code, body := do(t, "GET", url+"/patroni", "", "")
		if code != 200 {
			t.Fatalf("/patroni: %d %s", code, body)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	p := get(u1)
	want := map[string]any{"state": "running", "role": "primary", "timeline": 2.0, "cluster_unlocked": false,
		"database_system_identifier": "7300000000000000001",
		"xlog":                       map[string]any{"location": 12288.0},
		"patroni":                    map[string]any{"version": "1.2.3", "scope": "main", "name": "n1"},
		"replication":                []any{map[string]any{"application_name": "n2", "state": "streaming", "sync_state": "async"}},
	}
	for k, w := range want {
		if fmt.Sprint(p[k]) != fmt.Sprint(w) {
			t.Errorf("primary %s = %v, want %v", k, p[k], w)
		}
	}
	c1.apply(t, fsm.SetSyncStandbys{Nodes: []string{"n2"}})
	if got := fmt.Sprint(get(u1)["replication"]); !strings.Contains(got, "sync_state:sync") {
		t.Errorf("replication with n2 synchronous: %s", got)
	}

	c2 := &fakeCluster{f: c1.f, name: "n2", lease: true}
	r := get(startAPI(t, "", c2))
	for k, w := range map[string]any{"state": "running", "role": "replica", "replication_state": "streaming",
		"xlog": map[string]any{"received_location": 12032.0, "replayed_location": 11776.0, "paused": false},
		"tags": map[string]any{"nosync": true, "replicatefrom": "n3"}} {
		if fmt.Sprint(r[k]) != fmt.Sprint(w) {
			t.Errorf("replica %s = %v, want %v", k, r[k], w)
		}
	}
	c1.apply(t, fsm.SetPause{Paused: true})
	c1.apply(t, fsm.ReportStatus{Node: "n2", Status: fsm.NodeStatus{State: fsm.StateFenced}})
	if r := get(startAPI(t, "", c2)); r["state"] != "stopped" || r["pause"] != true {
		t.Errorf("fenced and paused: %v", r)
	}
	c2.replaying = true
	if code, body := do(t, "GET", startAPI(t, "", c2)+"/patroni", "", ""); code != 503 || !strings.Contains(body, "replaying") {
		t.Errorf("replaying: %d %s", code, body)
	}
}
