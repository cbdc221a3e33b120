// Package cluster runs real PGBastion clusters for end-to-end tests: one pgbastion process per
// node, each managing its own PostgreSQL, on loopback ports. It offers the faults the failover
// scenarios need (kill -9 of a postmaster or of a whole node, SIGSTOP, restart) and views of
// the cluster through each node's API and proxy.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/ha/pgctl"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// Options shape a cluster.
type Options struct {
	// Nodes is the number of members (default 3).
	Nodes int
	// PoolMode is session or transaction (default transaction).
	PoolMode string
	// Extra is YAML appended to every node's configuration (top-level sections).
	Extra string
	// ProxyExtra is YAML added to every node's proxy section, one setting per line without
	// indentation (for example "local_socket: true").
	ProxyExtra string
	// ServerExtra is added to every node's proxy.server flow mapping, after user and password
	// (for example "tls: {mode: verify-full, ca: /path}").
	ServerExtra string
	// QueryWaitTimeout bounds how long the proxy holds a client without a primary.
	QueryWaitTimeout time.Duration
	// NodeExtra is YAML appended to the configuration of the named node only (for example
	// its tags section).
	NodeExtra map[string]string
	// Parameters override or add to the PostgreSQL parameters every node runs with (the
	// defaults are fsync off, synchronous_commit off and wal_keep_size 512MB).
	Parameters map[string]string
	// PostgreSQLExtra is YAML added to every node's postgresql section, one setting per line
	// without indentation (for example "slot_cleanup_interval: 3s"). Extra cannot carry these:
	// a second postgresql section would be a duplicate key.
	PostgreSQLExtra string
}

// Cluster is a running cluster.
type Cluster struct {
	t        testing.TB
	Dir      string
	Password string
	Token    string
	Nodes    []*Node
	opts     Options
}

// Node is one member.
type Node struct {
	c       *Cluster
	Name    string
	Index   int
	RW, RO  string
	API     string
	Raft    string
	PGPort  int
	Dir     string
	D       *daemon.Daemon
	config  string
	stopped bool
	// back is when the node's daemon was last restarted or resumed: a status it reported
	// before then is stale (it may still say RUNNING_REPLICA from before the failure).
	back time.Time
}

// Start launches a cluster and waits until it has a primary and streaming replicas.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	pgtest.Require(t, pgtest.PostgreSQL())
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.PoolMode == "" {
		opts.PoolMode = "transaction"
	}
	if opts.QueryWaitTimeout == 0 {
		opts.QueryWaitTimeout = 30 * time.Second
	}
	dir, err := os.MkdirTemp("", "pgbastion-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, Dir: dir, Password: "pw" + strconv.Itoa(os.Getpid()), Token: "token-" + strconv.Itoa(os.Getpid()), opts: opts}
	t.Cleanup(c.cleanup)
	for i := 0; i < opts.Nodes; i++ {
		n := &Node{c: c, Name: fmt.Sprintf("node%d", i+1), Index: i, RW: daemon.FreeAddr(t), RO: daemon.FreeAddr(t),
			API: daemon.FreeAddr(t), Raft: daemon.FreeAddr(t), PGPort: daemon.FreePort(t), Dir: filepath.Join(dir, fmt.Sprintf("node%d", i+1))}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		n.config = c.configFor(n)
	}
	// All members start together: a Raft group needs a majority to elect a leader.
	for _, n := range c.Nodes {
		n.D = daemon.StartYAML(t, n.config, n.API)
	}
	c.WaitHealthy(opts.Nodes-1, 3*time.Minute)
	return c
}

// AddNode starts one more node, not listed in its own raft.peers (so it does not bootstrap a
// group of its own) and with postgresql.bootstrap off: it waits until a member adds it to the
// Raft group (POST /members), then registers itself and clones its data.
func (c *Cluster) AddNode(t testing.TB) *Node {
	t.Helper()
	i := len(c.Nodes)
	n := &Node{c: c, Name: fmt.Sprintf("node%d", i+1), Index: i, RW: daemon.FreeAddr(t), RO: daemon.FreeAddr(t),
		API: daemon.FreeAddr(t), Raft: daemon.FreeAddr(t), PGPort: daemon.FreePort(t), Dir: filepath.Join(c.Dir, fmt.Sprintf("node%d", i+1))}
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n.config = c.configWithPeers(n, c.Nodes)
	c.Nodes = append(c.Nodes, n)
	n.D = daemon.StartYAML(t, n.config, n.API)
	return n
}

func (c *Cluster) configFor(n *Node) string { return c.configWithPeers(n, c.Nodes) }

// configWithPeers is n's configuration with raft.peers listing members.
func (c *Cluster) configWithPeers(n *Node, members []*Node) string {
	var peers []string
	for _, p := range members {
		peers = append(peers, fmt.Sprintf("    - {name: %s, address: %s}", p.Name, p.Raft))
	}
	params := map[string]string{"fsync": "off", "synchronous_commit": "off", "wal_keep_size": "512MB"}
	for k, v := range c.opts.Parameters {
		params[k] = v
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(params)) {
		kv = append(kv, fmt.Sprintf("%s: %q", k, params[k]))
	}
	level := "info"
	if os.Getenv("PGBASTION_TEST_DEBUG") != "" {
		level = "debug"
	}
	return fmt.Sprintf(`proxy:
  listen_rw: %s
  listen_ro: %s
  event_loops: 2
  pool: {enabled: true, mode: %s, default_pool_size: 10, query_wait_timeout: %s}
  server: {user: postgres, password: %s%s}
%s
api:
  listen: %s
  metrics_listen: ""
  token: %s
  operation_wait: 2m
raft:
  node_name: %s
  bind: %s
  advertise: %s
  data_dir: %s/raft
  peers:
%s
postgresql:
  data_dir: %s/pgdata
  host: 127.0.0.1
  port: %d
  superuser: postgres
  password: %s
  remove_data_directory_on_rewind_failure: true
  bootstrap: %t
  parameters: {%s}
%s
log: {level: %s}
%s
%s
`, n.RW, n.RO, c.opts.PoolMode, c.opts.QueryWaitTimeout, c.Password, serverExtra(c.opts.ServerExtra), indent(c.opts.ProxyExtra, "  "), n.API, c.Token, n.Name, n.Raft, n.Raft, n.Dir,
		strings.Join(peers, "\n"), n.Dir, n.PGPort, c.Password, n.Index == 0, strings.Join(kv, ", "), indent(c.opts.PostgreSQLExtra, "  "), level,
		c.opts.Extra, c.opts.NodeExtra[n.Name])
}

func serverExtra(s string) string {
	if s == "" {
		return ""
	}
	return ", " + s
}

// indent prefixes every non-empty line of s.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n")
}

// cleanup stops every daemon (the test/daemon harness does that too) and every PostgreSQL.
func (c *Cluster) cleanup() {
	for _, n := range c.Nodes {
		if n.D != nil {
			n.D.Kill(c.t)
		}
	}
	for _, n := range c.Nodes {
		n.stopPostgres(pgctl.Immediate)
	}
	if c.t.Failed() || os.Getenv("PGTEST_KEEP") != "" {
		for _, n := range c.Nodes {
			if n.D != nil {
				c.t.Logf("%s log tail:\n%s", n.Name, n.D.LogTail())
			}
		}
	}
	if os.Getenv("PGTEST_KEEP") == "" {
		_ = os.RemoveAll(c.Dir)
	}
}

func (n *Node) pg() *pgctl.Instance {
	inst, err := pgctl.New(pgctl.Config{DataDir: filepath.Join(n.Dir, "pgdata"), Port: n.PGPort, Superuser: "postgres", Password: n.c.Password}, nil)
	if err != nil {
		n.c.t.Fatalf("%s: %v", n.Name, err)
	}
	return inst
}

func (n *Node) stopPostgres(mode pgctl.StopMode) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = n.pg().Stop(ctx, mode)
}

// PostmasterPID reads the running postmaster's PID (0 when none).
func (n *Node) PostmasterPID() int {
	b, err := os.ReadFile(filepath.Join(n.Dir, "pgdata", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	return pid
}

// KillPostgres sends SIGKILL to the node's postmaster.
func (n *Node) KillPostgres(t testing.TB) {
	t.Helper()
	pid := n.PostmasterPID()
	if pid == 0 {
		t.Fatalf("%s: no postmaster.pid", n.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("%s: kill postmaster %d: %v", n.Name, pid, err)
	}
}

// KillNode kills the node's pgbastion and its PostgreSQL with SIGKILL, as a crashed host would.
func (n *Node) KillNode(t testing.TB) {
	t.Helper()
	pid := n.PostmasterPID()
	n.D.Kill(t)
	if pid != 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	n.stopped = true
}

// StopDaemon stops the node's pgbastion gracefully (PostgreSQL keeps running).
func (n *Node) StopDaemon(t testing.TB) {
	t.Helper()
	_ = n.D.Stop(t)
	n.stopped = true
}

// Restart starts the node's pgbastion again with the same configuration.
func (n *Node) Restart(t testing.TB) {
	t.Helper()
	n.back = time.Now()
	n.D = daemon.StartYAML(t, n.config, n.API)
	n.stopped = false
}

// Pause and Resume send SIGSTOP and SIGCONT to the node's pgbastion.
func (n *Node) Pause(t testing.TB)  { n.D.Pause(t) }
func (n *Node) Resume(t testing.TB) { n.back = time.Now(); n.D.Resume(t) }

// Alive reports whether the node's daemon is meant to be running.
func (n *Node) Alive() bool { return !n.stopped }

// View is GET /nodes.
type View struct {
	Primary    string `json:"primary"`
	RaftLeader string `json:"raft_leader"`
	ThisNode   string `json:"this_node"`
	// CaughtUp is false while the node replays its Raft log after a restart (its view is
	// the past then).
	CaughtUp bool                `json:"caught_up"`
	Nodes    []daemon.NodeStatus `json:"nodes"`
}

// View reads GET /nodes from this node's API.
func (n *Node) View() (View, error) {
	var v View
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + n.API + "/nodes")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return v, json.Unmarshal(b, &v)
}

// node returns the status of the node called name in the view (zero when it is not listed).
func (v View) node(name string) daemon.NodeStatus {
	return daemon.Nodes{Nodes: v.Nodes}.Node(name)
}

// Status of one node in a view.
func (v View) Status(name string) (role, state string, healthy bool, reason string) {
	s := v.node(name).Status
	return s.Role, s.State, s.Healthy, s.Reason
}

// ReportedAt is when a node's status in the view was reported.
func (v View) ReportedAt(name string) time.Time { return v.node(name).Status.ReportedAt }

// current reports whether a status of node name reported at `at` comes from its current
// run: one reported before the node was restarted or resumed describes the past.
func (c *Cluster) current(name string, at time.Time) bool {
	for _, n := range c.Nodes {
		if n.Name == name {
			return !at.Before(n.back)
		}
	}
	return true
}

// Others returns the members other than n, in order.
func (c *Cluster) Others(n *Node) []*Node {
	var out []*Node
	for _, m := range c.Nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// Node returns the member called name.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// AnyView reads /nodes from the first live node that answers with a current view (not one
// still replaying its log after a restart).
func (c *Cluster) AnyView() (View, error) {
	var last error
	for _, n := range c.Nodes {
		if !n.Alive() {
			continue
		}
		v, err := n.View()
		if err == nil && v.CaughtUp {
			return v, nil
		}
		if err == nil {
			err = fmt.Errorf("%s is catching up with the cluster state", n.Name)
		}
		last = err
	}
	if last == nil {
		last = errors.New("no live node")
	}
	return View{}, last
}

// WaitHealthy waits until the cluster has a healthy primary and at least replicas healthy
// streaming replicas, and returns the primary.
func (c *Cluster) WaitHealthy(replicas int, timeout time.Duration) *Node {
	c.t.Helper()
	var last View
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		v, err := c.AnyView()
		if err == nil {
			last = v
			p, r := 0, 0
			for _, n := range v.Nodes {
				switch {
				case !c.current(n.Name, n.Status.ReportedAt):
				case n.Name == v.Primary && n.Status.Healthy && n.Status.State == "RUNNING_PRIMARY":
					p++
				case n.Status.Healthy && n.Status.State == "RUNNING_REPLICA":
					r++
				}
			}
			if p == 1 && r >= replicas {
				return c.Node(v.Primary)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("cluster not healthy within %s (want a primary and %d replicas); last view: %+v", timeout, replicas, last)
	return nil
}

// DSN returns a connection string to a proxy address.
func (c *Cluster) DSN(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=postgres password=%s dbname=postgres sslmode=disable connect_timeout=5", host, port, c.Password)
}

// Connect opens a connection through a proxy address.
func (c *Cluster) Connect(ctx context.Context, addr string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, c.DSN(addr))
}

// WritableThrough reports the port of the PostgreSQL that a write through addr reached, after
// checking that it really accepted the write (pg_is_in_recovery() is false and an INSERT works).
// The port is the server's setting, not inet_server_port(), which is NULL when the proxy
// reaches PostgreSQL through its Unix socket (proxy.local_socket).
func (c *Cluster) WritableThrough(ctx context.Context, addr string) (int, error) {
	conn, err := c.Connect(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS pgbastion_probe (at timestamptz)"); err != nil {
		return 0, err
	}
	var port int
	err = conn.QueryRow(ctx, "INSERT INTO pgbastion_probe VALUES (now()) RETURNING current_setting('port')::int").Scan(&port)
	return port, err
}

// WaitOneWritablePrimary waits until a write through every live node's read-write port
// succeeds and all of them reach the same PostgreSQL, which must be the primary the cluster
// names. It returns the primary and how long it took.
func (c *Cluster) WaitOneWritablePrimary(timeout time.Duration) (*Node, time.Duration) {
	c.t.Helper()
	p, took, err := c.WritablePrimary(timeout)
	if err != nil {
		c.t.Fatal(err)
	}
	return p, took
}

// WritablePrimary is WaitOneWritablePrimary returning an error when no single primary becomes
// writable in time (two writable primaries still fail the test at once).
func (c *Cluster) WritablePrimary(timeout time.Duration) (*Node, time.Duration, error) {
	c.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, port := true, 0
		for _, n := range c.Nodes {
			if !n.Alive() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			p, err := c.WritableThrough(ctx, n.RW)
			cancel()
			if err != nil {
				ok, lastErr = false, fmt.Errorf("write through %s: %w", n.Name, err)
				break
			}
			if port != 0 && p != port {
				c.t.Fatalf("TWO WRITABLE PRIMARIES: writes through different nodes reached PostgreSQL ports %d and %d", port, p)
			}
			port = p
		}
		if ok && port != 0 {
			v, err := c.AnyView()
			if err == nil && v.Primary != "" && c.Node(v.Primary).PGPort == port {
				return c.Node(v.Primary), time.Since(start), nil
			}
			lastErr = fmt.Errorf("writes reach port %d but the cluster names %q the primary", port, v.Primary)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, 0, fmt.Errorf("no single writable primary through every live proxy within %s: %v", timeout, lastErr)
}

// Switchover asks a live node's API to move the primary to candidate and waits for the answer.
func (c *Cluster) Switchover(t testing.TB, candidate string) {
	t.Helper()
	c.SwitchoverWithHeaders(t, candidate, nil)
}

// SwitchoverWithHeaders is Switchover with more request headers (traceparent, X-Request-ID).
func (c *Cluster) SwitchoverWithHeaders(t testing.TB, candidate string, header map[string]string) {
	t.Helper()
	for _, n := range c.Nodes {
		if !n.Alive() {
			continue
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+n.API+"/switchover", strings.NewReader(`{"candidate":"`+candidate+`"}`))
		req.Header.Set("Authorization", "Bearer "+c.Token)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		client := http.Client{Timeout: 3 * time.Minute}
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("switchover to %s: %s: %s", candidate, resp.Status, body)
		}
		return
	}
	t.Fatal("switchover: no node answered")
}

// WaitPrimaryOtherThan waits until the cluster names a healthy primary other than old.
func (c *Cluster) WaitPrimaryOtherThan(t testing.TB, old *Node, timeout time.Duration) *Node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if v, err := c.AnyView(); err == nil && v.Primary != "" && v.Primary != old.Name {
			if _, state, healthy, _ := v.Status(v.Primary); healthy && state == "RUNNING_PRIMARY" {
				return c.Node(v.Primary)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no primary other than %s within %s", old.Name, timeout)
	return nil
}

// WaitRejoined waits until old runs as a healthy replica again. A deposed primary is FENCED
// for a while (its PostgreSQL stopped, the reason in /nodes) before it is told to follow the
// new primary; it must not stay there.
func (c *Cluster) WaitRejoined(t testing.TB, old *Node, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var role, state, reason string
	for time.Now().Before(deadline) {
		if v, err := c.AnyView(); err == nil {
			var healthy bool
			role, state, healthy, reason = v.Status(old.Name)
			if state == "RUNNING_REPLICA" && healthy && c.current(old.Name, v.ReportedAt(old.Name)) {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not rejoin as a replica within %s (last: role=%s state=%s reason=%q)", old.Name, timeout, role, state, reason)
}
