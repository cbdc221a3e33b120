package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/pgctl"
	"github.com/pgbastion/pgbastion/netlink"
	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/netns"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// Every node has the whole port space of its namespace to itself, so the ports are the
// documented defaults (PostgreSQL on 5434 because the proxy owns 5432 and 5433).
const (
	ProxyRWPort = 5432
	ProxyROPort = 5433
	PGPort      = 5434
	APIPort     = 8080
	RaftPort    = 8300
)

// VIP is the floating IP every cluster of this package configures, on eth0 of each node.
var VIP = netip.MustParseAddr("198.18.0.200")

const vipPrefix = "198.18.0.200/24"

// Options shape a cluster.
type Options struct {
	// Nodes is the number of members (default 3), named n1, n2, ...; n1 bootstraps the cluster
	// and is the first primary.
	Nodes int
	// QueryWaitTimeout bounds how long a proxy holds a client without a primary (default 30 s).
	QueryWaitTimeout time.Duration
	// Unprivileged names the nodes whose pgbastion runs without CAP_NET_ADMIN and CAP_NET_RAW
	// (setpriv drops them from the bounding set; the process is still root otherwise).
	Unprivileged []string
	// Extra is YAML appended to every node's configuration (top-level sections).
	Extra string
}

// Cluster is a running cluster: one network namespace per node on a bridge, each with its own
// pgbastion (and its PostgreSQL, a child of it) on its own address, and a client namespace.
type Cluster struct {
	t        testing.TB
	Net      *netns.Cluster
	Client   *netns.Node
	Nodes    []*Node
	Dir      string
	Password string
	Token    string
	opts     Options
}

// Node is one member.
type Node struct {
	c    *Cluster
	Name string
	NS   *netns.Node
	// Addr is the node's own address (eth0): Raft, PostgreSQL and the API listen on it.
	Addr   netip.Addr
	Dir    string
	D      *daemon.Daemon
	config string
	opts   daemon.Options
	api    daemon.APIClient
}

// Start builds the namespaces, starts every node's pgbastion inside its namespace and waits
// until the cluster has a healthy primary and streaming replicas. Everything is removed at the
// end of the test: daemons are stopped (SIGTERM, which also releases the VIP), PostgreSQL is
// stopped, the namespaces (and whatever still runs in them) are deleted, then the data.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	pgtest.Require(t, pgtest.PostgreSQL(), pgtest.Programs("pg_basebackup", "pg_rewind"))
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.QueryWaitTimeout == 0 {
		opts.QueryWaitTimeout = 30 * time.Second
	}
	if len(opts.Unprivileged) > 0 {
		netns.RequireCommand(t, "setpriv", "util-linux")
	}
	var names []string
	for i := range opts.Nodes {
		names = append(names, fmt.Sprintf("n%d", i+1))
	}
	// Cleanups run last-registered first: data removal (registered first) runs after the
	// namespaces are gone, which is after PostgreSQL is stopped, which is after the daemons.
	// The daemons' logs live in t.TempDir, whose removal is registered by its first call: call
	// it now, so that the logs are still there when c.cleanup runs.
	_ = t.TempDir()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // PostgreSQL runs as postgres
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if os.Getenv("PGTEST_KEEP") == "" {
			_ = os.RemoveAll(dir)
		} else {
			t.Logf("kept %s (PGTEST_KEEP)", dir)
		}
	})
	net := netns.New(t, netns.Options{Nodes: names, Clients: []string{"client"}})
	sweepDirs(t) // after New, whose sweep killed the PostgreSQL servers of crashed runs
	c := &Cluster{t: t, Net: net, Client: net.Node("client"), Dir: dir,
		Password: "pw" + strconv.Itoa(os.Getpid()), Token: "token-" + strconv.Itoa(os.Getpid()), opts: opts}
	t.Cleanup(c.cleanup)
	for _, name := range names {
		ns := net.Node(name)
		n := &Node{c: c, Name: name, NS: ns, Addr: ns.IPv4.Addr(), Dir: filepath.Join(dir, name)}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		n.api = daemon.APIClient{Addr: n.API(), Token: c.Token, HTTP: &http.Client{Timeout: 5 * time.Second,
			Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}}}
		n.opts = daemon.Options{Netns: ns.Path(), Dial: ns.DialContext}
		if slices.Contains(opts.Unprivileged, name) {
			n.opts.Wrapper = []string{"setpriv", "--inh-caps=-all", "--bounding-set=-net_admin,-net_raw", "--"}
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		n.config = c.configFor(n)
	}
	// All members start together: a Raft group needs a majority to elect a leader.
	began := time.Now()
	for _, n := range c.Nodes {
		n.D = daemon.StartYAMLWith(t, n.config, n.opts, n.API())
	}
	p := c.WaitHealthy(opts.Nodes-1, 3*time.Minute)
	t.Logf("cluster %s healthy %s after its daemons started (primary %s)", net.ID, ms(time.Since(began)), p.Name)
	return c
}

func (c *Cluster) configFor(n *Node) string {
	var peers []daemon.Peer
	for _, p := range c.Nodes {
		peers = append(peers, daemon.Peer{Name: p.Name, Address: p.hostPort(RaftPort)})
	}
	return daemon.Member{
		Name:     n.Name,
		ListenRW: fmt.Sprintf("0.0.0.0:%d", ProxyRWPort), ListenRO: fmt.Sprintf("0.0.0.0:%d", ProxyROPort),
		API: n.API(), Token: c.Token,
		Raft: n.hostPort(RaftPort), Peers: peers,
		Dir: n.Dir, PGHost: n.Addr.String(), PGPort: PGPort, Password: c.Password, Bootstrap: n.Name == "n1",
		QueryWaitTimeout: c.opts.QueryWaitTimeout,
		VIPAddress:       vipPrefix, VIPInterface: netns.Iface,
		Extra: c.opts.Extra,
	}.YAML()
}

// cleanup stops PostgreSQL on every node once the daemons are gone (their own cleanups, which
// run before this one, stop them and show their logs when the test failed).
func (c *Cluster) cleanup() {
	for _, n := range c.Nodes {
		if n.D != nil {
			n.D.Kill(c.t) // a no-op for a daemon that already stopped
		}
	}
	for _, n := range c.Nodes {
		n.stopPostgres()
	}
	if logs := os.Getenv("PGBASTION_E2E_LOGS"); logs != "" {
		c.saveLogs(logs)
	}
}

// saveLogs copies every daemon's whole log and PostgreSQL's log to dir/<test>/ (set
// PGBASTION_E2E_LOGS to keep them; a failed test shows only their tails).
func (c *Cluster) saveLogs(dir string) {
	dst := filepath.Join(dir, strings.ReplaceAll(c.t.Name(), "/", "_"))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		c.t.Logf("saving logs: %v", err)
		return
	}
	for _, n := range c.Nodes {
		if n.D != nil {
			_ = os.WriteFile(filepath.Join(dst, n.Name+".log"), []byte(n.D.Log()), 0o644)
		}
		if b, err := os.ReadFile(filepath.Join(n.Dir, "pgdata.log")); err == nil {
			_ = os.WriteFile(filepath.Join(dst, n.Name+"-postgresql.log"), b, 0o644)
		}
	}
	c.t.Logf("logs saved in %s", dst)
}

// dirPrefix starts the name of every cluster's directory in os.TempDir(), followed by the PID
// of the test binary that made it.
const dirPrefix = "pgbastion-e2e-"

// sweepDirs removes the directories of clusters whose test binary no longer runs (it was
// killed before its cleanup ran; its daemons died with it, and netns.New killed whatever was
// left in its namespaces).
func sweepDirs(t testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), dirPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // its test binary still runs
		}
		if err := os.RemoveAll(d); err != nil {
			t.Logf("removing %s, left by a crashed run: %v", d, err)
		}
	}
}

func (n *Node) stopPostgres() {
	inst, err := pgctl.New(pgctl.Config{DataDir: filepath.Join(n.Dir, "pgdata"), Host: n.Addr.String(), Port: PGPort,
		Superuser: "postgres", Password: n.c.Password}, nil)
	if err != nil {
		n.c.t.Errorf("%s: %v", n.Name, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = inst.Stop(ctx, pgctl.Immediate) // whatever is left is killed with the namespace
}

func (n *Node) hostPort(port int) string {
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(port))
}

// API returns the address of the node's REST API (reachable only from inside its namespace,
// or from the bridge).
func (n *Node) API() string { return n.hostPort(APIPort) }

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

// NodeByAddr returns the member whose address is a (nil when none is).
func (c *Cluster) NodeByAddr(a netip.Addr) *Node {
	for _, n := range c.Nodes {
		if n.Addr == a {
			return n
		}
	}
	return nil
}

// HoldsVIP reports whether the VIP is on any of the node's interfaces, as its own namespace
// sees it.
func (n *Node) HoldsVIP() (bool, error) { return n.NS.HasAddr(VIP) }

// View is GET /nodes as one member answers it.
type View struct{ daemon.Nodes }

// Status of one node in a view.
func (v View) Status(name string) (state string, healthy bool, reason string) {
	st := v.Node(name).Status
	return st.State, st.Healthy, st.Reason
}

// LocalVIP returns the VIP status the answering node reports about itself (nil when absent).
func (v View) LocalVIP() *netlink.Status {
	raw, ok := v.Node(v.ThisNode).Local["vip"]
	if !ok {
		return nil
	}
	var st netlink.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil
	}
	return &st
}

// get reads a JSON document from the node's API.
func (n *Node) get(path string, into any) error { return n.api.Get(path, into) }

// View reads GET /nodes from this node's API.
func (n *Node) View() (View, error) {
	v, err := n.api.Nodes()
	if err != nil {
		return View{}, fmt.Errorf("%s: %w", n.Name, err)
	}
	return View{v}, nil
}

// History is GET /history.
type History struct {
	History []fsm.HistoryEntry `json:"history"`
}

// History reads GET /history from this node's API.
func (n *Node) History() (History, error) {
	var h History
	return h, n.get("/history", &h)
}

// Directives reads GET /directives from this node's API.
func (n *Node) Directives() ([]fsm.Directive, error) {
	var d struct {
		Directives []fsm.Directive `json:"directives"`
	}
	return d.Directives, n.get("/directives", &d)
}

// PromotedAt returns the last history entry that made name the primary, after after, and the
// acknowledgement of the PROMOTE directive that preceded it (zero when it is no longer listed
// or there was none, as at bootstrap), as node from sees them.
func (c *Cluster) PromotedAt(from *Node, name string, after time.Time) (fsm.HistoryEntry, time.Time, error) {
	h, err := from.History()
	if err != nil {
		return fsm.HistoryEntry{}, time.Time{}, err
	}
	var entry fsm.HistoryEntry
	for _, e := range h.History {
		if e.NewPrimary == name && e.At.After(after) {
			entry = e
		}
	}
	if entry.NewPrimary == "" {
		return entry, time.Time{}, fmt.Errorf("%s's history has no promotion of %s after %s", from.Name, name, after.Format(timeFormat))
	}
	ds, err := from.Directives()
	if err != nil {
		return entry, time.Time{}, err
	}
	var acked time.Time
	for _, d := range ds {
		if d.Type == fsm.DirectivePromote && d.Target == name && d.Status == fsm.DirectiveDone && !d.FinishedAt.After(entry.At) && d.FinishedAt.After(after) {
			acked = d.FinishedAt
		}
	}
	return entry, acked, nil
}

// AnyView reads /nodes from the first node in order (or in prefer, first) that answers.
func (c *Cluster) AnyView(prefer ...*Node) (View, error) {
	var last error
	for _, n := range append(slices.Clone(prefer), c.Nodes...) {
		v, err := n.View()
		if err == nil {
			return v, nil
		}
		last = err
	}
	return View{}, last
}

// WaitHealthy waits until the cluster has a healthy primary and at least replicas healthy
// streaming replicas (as the first answering node in prefer, then in order, sees it), and
// returns the primary.
func (c *Cluster) WaitHealthy(replicas int, timeout time.Duration, prefer ...*Node) *Node {
	c.t.Helper()
	var last View
	var lastErr error
	err := netns.WaitFor(timeout, 100*time.Millisecond, func() error {
		v, err := c.AnyView(prefer...)
		if err != nil {
			lastErr = err
			return err
		}
		last = v
		return v.Healthy(replicas)
	})
	if err != nil {
		c.t.Fatalf("cluster not healthy within %s (want a primary and %d replicas): %v (last error %v); last view: %+v", timeout, replicas, err, lastErr, last)
	}
	return c.Node(last.Primary)
}

// Switchover asks node via's API to move the primary to candidate and waits for the answer.
func (c *Cluster) Switchover(t testing.TB, via *Node, candidate string) {
	t.Helper()
	if err := via.api.Switchover(candidate, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// ConnConfig returns a pgx configuration for host:port that dials from inside member from's
// namespace. It sets no connect timeout: the caller's context bounds the attempt (a proxy
// without a primary may hold a login for up to query_wait_timeout before it answers 57P03).
func (c *Cluster) ConnConfig(from *netns.Node, host string, port int) *pgx.ConnConfig {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres password=%s dbname=postgres sslmode=disable",
		host, port, c.Password))
	if err != nil {
		c.t.Fatal(err)
	}
	cfg.DialFunc = from.DialContext
	return cfg
}

// Connect opens a connection from inside member from's namespace.
func (c *Cluster) Connect(ctx context.Context, from *netns.Node, host string, port int) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, c.ConnConfig(from, host, port))
}

// CreateProbeTable creates the table Write inserts into, through the primary's proxy.
func (c *Cluster) CreateProbeTable(t testing.TB, primary *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, c.Client, primary.Addr.String(), ProxyRWPort)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS e2e_probe (at timestamptz NOT NULL DEFAULT clock_timestamp(), via text)"); err != nil {
		t.Fatal(err)
	}
	// Replication is asynchronous: a fault right now could lose the table on the next primary.
	for _, n := range c.Nodes {
		netns.Eventually(t, 30*time.Second, "the probe table on "+n.Name, func() error {
			conn, err := c.Connect(ctx, c.Client, n.Addr.String(), PGPort)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			var ok bool
			if err := conn.QueryRow(ctx, "SELECT to_regclass('e2e_probe') IS NOT NULL").Scan(&ok); err != nil {
				return err
			}
			if !ok {
				return errNotYet
			}
			return nil
		})
	}
}

// Write connects from member from to host:port, inserts a row and returns the address of the
// PostgreSQL server that committed it (inet_server_addr()).
func (c *Cluster) Write(ctx context.Context, from *netns.Node, host string, port int) (netip.Addr, error) {
	conn, err := c.Connect(ctx, from, host, port)
	if err != nil {
		return netip.Addr{}, err
	}
	defer conn.Close(context.Background())
	var server netip.Prefix
	err = conn.QueryRow(ctx, "INSERT INTO e2e_probe (via) VALUES ($1) RETURNING inet_server_addr()", from.Name+"->"+host).Scan(&server)
	return server.Addr(), err
}

// WaitWritesReach waits until a write from member from through host:port commits on node
// want's PostgreSQL.
func (c *Cluster) WaitWritesReach(t testing.TB, from *netns.Node, host string, port int, want *Node, timeout time.Duration) {
	t.Helper()
	netns.Eventually(t, timeout, fmt.Sprintf("a write from %s through %s:%d to reach %s", from.Name, host, port, want.Name), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := c.Write(ctx, from, host, port)
		if err != nil {
			return err
		}
		if got != want.Addr {
			return fmt.Errorf("the write reached %s", got)
		}
		return nil
	})
}

const timeFormat = "15:04:05.000"

// errNotYet is what polling conditions return while waiting.
var errNotYet = errors.New("not yet")

// ms formats a duration in whole milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
