package netlink_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/netlink"
	"github.com/pgbastion/pgbastion/test/netns"
)

const (
	vip4 = "198.18.0.200/24"
	vip6 = "2001:2::200/64"
)

func config(address string) netlink.Config {
	c := netlink.DefaultConfig()
	c.Address, c.Interface = address, netns.Iface
	return c
}

func testLogger(t *testing.T, node string) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", node)
}

// startManager runs a Manager for node until the end of the test, and checks then that Run
// returned without error.
func startManager(t *testing.T, node *netns.Node, cfg netlink.Config) *netlink.Manager {
	t.Helper()
	m, err := netlink.New(cfg, testLogger(t, node.Name), netlink.WithNetns(node.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", node.Name, err)
		}
	})
	return m
}

func holds(n *netns.Node, ip netip.Addr, want bool) func() error {
	return func() error {
		has, err := n.HasAddr(ip)
		if err != nil {
			return err
		}
		if has != want {
			return fmt.Errorf("%s holds %s: %v", n.Name, ip, has)
		}
		return nil
	}
}

// waitTimed polls cond every millisecond and returns how long it took to hold.
func waitTimed(t *testing.T, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	if err := netns.WaitFor(10*time.Second, time.Millisecond, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return time.Since(start)
}

func TestEntitlementLossRemovesAtOnce(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"a"}, Clients: []string{}})
	a := c.Node("a")
	ip := netip.MustParsePrefix(vip4).Addr()
	m := startManager(t, a, config(vip4))

	for round := range 3 {
		m.SetEntitled(true)
		m.SetEntitled(true) // idempotent
		acquire := waitTimed(t, "the VIP on a", holds(a, ip, true))
		netns.Eventually(t, 5*time.Second, "Status().Held", func() error {
			if st := m.Status(); !st.Held || !st.Entitled {
				return fmt.Errorf("status %+v", st)
			}
			return nil
		})
		out, err := a.Run(t.Context(), "ip", "-o", "-4", "addr", "show", "dev", netns.Iface)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(out, " 198.18.0.200/24 "); n != 1 || !strings.Contains(out, "eth0:pgb") {
			t.Fatalf("ip addr shows the VIP %d times (want once, labelled eth0:pgb):\n%s", n, out)
		}

		m.SetEntitled(false)
		release := waitTimed(t, "the VIP to leave a", holds(a, ip, false))
		t.Logf("round %d: VIP on the interface %v after SetEntitled(true), off %v after SetEntitled(false)", round+1, acquire, release)
	}
	netns.Eventually(t, 5*time.Second, "Status() to settle", func() error {
		st := m.Status()
		if st.Held || st.Acquisitions != 3 || st.Releases != 3 || st.ForeignRemovals != 0 || st.Error != "" {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})

	// Release is the synchronous form.
	m.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the VIP on a", holds(a, ip, true))
	start := time.Now()
	if err := m.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("Release returned after %v", time.Since(start))
	if err := holds(a, ip, false)(); err != nil {
		t.Fatalf("after Release: %v", err)
	}
}

func TestStaleAndForeignVIP(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"a"}, Clients: []string{}})
	a := c.Node("a")
	ip := netip.MustParsePrefix(vip4).Addr()

	// Left behind by a crashed run, with another prefix length.
	if _, err := a.Run(t.Context(), "ip", "addr", "add", "198.18.0.200/32", "dev", netns.Iface); err != nil {
		t.Fatal(err)
	}
	cfg := config(vip4)
	cfg.CheckInterval = time.Hour // only kernel notifications can catch what follows quickly
	m := startManager(t, a, cfg)
	took := waitTimed(t, "the stale VIP to be removed at start", holds(a, ip, false))
	t.Logf("stale VIP removed %v after start", took)

	// Someone adds it while the node is not entitled.
	if _, err := a.Run(t.Context(), "ip", "addr", "add", vip4, "dev", netns.Iface); err != nil {
		t.Fatal(err)
	}
	took = waitTimed(t, "the foreign VIP to be removed", holds(a, ip, false))
	t.Logf("foreign VIP removed %v after `ip addr add` returned", took)
	netns.Eventually(t, 5*time.Second, "two foreign removals counted", func() error {
		if st := m.Status(); st.ForeignRemovals != 2 || st.Held {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})

	// Someone removes it while the node is entitled.
	m.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the VIP on a", holds(a, ip, true))
	if _, err := a.Run(t.Context(), "ip", "addr", "del", vip4, "dev", netns.Iface); err != nil {
		t.Fatal(err)
	}
	took = waitTimed(t, "the VIP to be re-added", holds(a, ip, true))
	t.Logf("removed VIP re-added %v after `ip addr del` returned", took)
	netns.Eventually(t, 5*time.Second, "two acquisitions counted", func() error {
		if st := m.Status(); st.Acquisitions != 2 || !st.Held {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

func TestRunShutdownRemovesVIP(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"a"}, Clients: []string{}})
	a := c.Node("a")
	ip := netip.MustParsePrefix(vip6).Addr()
	m, err := netlink.New(config(vip6), testLogger(t, "a"), netlink.WithNetns(a.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	m.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the VIP on a", holds(a, ip, true))
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("Run returned %v after cancel", time.Since(start))
	if err := holds(a, ip, false)(); err != nil {
		t.Fatalf("after shutdown: %v", err)
	}
	if err := m.Run(t.Context()); err == nil {
		t.Error("second Run returned nil, want an error")
	}
}

func TestMissingInterfaceIsReportedNotFatal(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"a"}, Clients: []string{}})
	cfg := config(vip4)
	cfg.Interface = "nope0"
	m := startManager(t, c.Node("a"), cfg)
	m.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the error in Status", func() error {
		if st := m.Status(); !strings.Contains(st.Error, "interface not found: nope0") || st.Held {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := m.Release(ctx); err != nil {
		t.Errorf("Release with no interface: %v", err)
	}
}

func TestDisabled(t *testing.T) {
	m, err := netlink.New(netlink.DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m.SetEntitled(true)
	if st := m.Status(); st.Enabled || st.Held {
		t.Errorf("status %+v", st)
	}
	if err := m.Release(t.Context()); err != nil {
		t.Errorf("Release: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := m.Run(ctx); err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := netlink.New(netlink.Config{Address: "nonsense"}, nil); err == nil {
		t.Error("New accepted an invalid config")
	}
}

// serveName answers every TCP connection on port 5432 with the node's name, so a client can
// tell which node the VIP reached.
func serveName(t *testing.T, n *netns.Node, network string) {
	t.Helper()
	l, err := n.Listen(network, ":5432")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte(n.Name + "\n"))
			conn.Close()
		}
	}()
}

func askName(t *testing.T, client *netns.Node, network string, ip netip.Addr) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := client.DialContext(ctx, network, netip.AddrPortFrom(ip, 5432).String())
	if err != nil {
		t.Fatalf("client to %s: %v", ip, err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from %s: %v", ip, err)
	}
	return strings.TrimSpace(line)
}

func neighbourIs(client, owner *netns.Node, ip netip.Addr) func() error {
	return func() error {
		mac, err := client.Neighbour(ip)
		if err != nil {
			return err
		}
		if !bytes.Equal(mac, owner.MAC) {
			return fmt.Errorf("%s's neighbour entry for %s is %q, want %s's %s", client.Name, ip, mac, owner.Name, owner.MAC)
		}
		return nil
	}
}

// testMove moves the VIP between two nodes several times and checks that the client's neighbour
// table follows through the announcements alone (the client sends nothing after the first
// connection) and that no sample ever shows the VIP on both nodes.
func testMove(t *testing.T, address, network string) {
	c := netns.New(t, netns.Options{Nodes: []string{"a", "b"}})
	a, b, client := c.Node("a"), c.Node("b"), c.Node("client")
	ip := netip.MustParsePrefix(address).Addr()
	ma, mb := startManager(t, a, config(address)), startManager(t, b, config(address))
	serveName(t, a, network)
	serveName(t, b, network)
	sampler := c.SampleHolders(ip, 10*time.Millisecond)

	ma.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the VIP on a", holds(a, ip, true))
	if got := askName(t, client, network, ip); got != "a" {
		t.Fatalf("the VIP answered from %q, want a", got)
	}
	netns.Eventually(t, 5*time.Second, "the client's entry for a", neighbourIs(client, a, ip))

	from, to := struct {
		n *netns.Node
		m *netlink.Manager
	}{a, ma}, struct {
		n *netns.Node
		m *netlink.Manager
	}{b, mb}
	for move := range 4 {
		start := time.Now()
		if err := from.m.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		released := time.Since(start)
		to.m.SetEntitled(true)
		onNew := waitTimed(t, "the VIP on "+to.n.Name, holds(to.n, ip, true))
		neigh := waitTimed(t, "the client's neighbour entry to follow", neighbourIs(client, to.n, ip))
		t.Logf("move %d %s→%s: %s released in %v; on %s %v after that; client's neighbour entry showed %s's MAC %v after that",
			move+1, from.n.Name, to.n.Name, from.n.Name, released, to.n.Name, onNew, to.n.Name, onNew+neigh)
		if got := askName(t, client, network, ip); got != to.n.Name {
			t.Fatalf("after move %d the VIP answered from %q, want %s", move+1, got, to.n.Name)
		}
		from, to = to, from
	}

	samples := sampler.Stop()
	if err := netns.CheckAtMostOne(samples); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d samples every 10 ms over %v: the VIP was never on two nodes", len(samples), samples[len(samples)-1].At.Sub(samples[0].At).Round(time.Millisecond))
	for _, m := range []*netlink.Manager{ma, mb} {
		if st := m.Status(); st.Announcements == 0 || st.AnnounceError != "" {
			t.Errorf("announcements: %d, error %q", st.Announcements, st.AnnounceError)
		}
	}
}

func TestMoveIPv4GratuitousARP(t *testing.T) {
	t.Parallel()
	testMove(t, vip4, "tcp4")
}

func TestMoveIPv6UnsolicitedNA(t *testing.T) {
	t.Parallel()
	testMove(t, vip6, "tcp6")
}

// TestMoveAcrossLinkFaults is the VIP half of "the primary's link is cut": the cut-off node
// drops the VIP although its link is down (its lease is gone), the new holder takes it while its
// own link is down too, and announces it again once the link is back, so the client follows
// without sending anything itself.
func TestMoveAcrossLinkFaults(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"a", "b"}})
	a, b, client := c.Node("a"), c.Node("b"), c.Node("client")
	ip := netip.MustParsePrefix(vip4).Addr()
	cfg := config(vip4)
	cfg.CheckInterval = 200 * time.Millisecond
	// One announcement per burst, so that only the re-announcement after the link comes back
	// can reach the client.
	cfg.GARPCount = 1
	ma, mb := startManager(t, a, cfg), startManager(t, b, cfg)
	serveName(t, a, "tcp4")
	serveName(t, b, "tcp4")
	sampler := c.SampleHolders(ip, 10*time.Millisecond)

	ma.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the VIP on a", holds(a, ip, true))
	if got := askName(t, client, "tcp4", ip); got != "a" {
		t.Fatalf("the VIP answered from %q, want a", got)
	}

	if err := a.CutLink(); err != nil {
		t.Fatal(err)
	}
	if err := ma.Release(t.Context()); err != nil {
		t.Fatalf("releasing on a node whose link is down: %v", err)
	}
	if err := b.CutLink(); err != nil {
		t.Fatal(err)
	}
	mb.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the VIP on b, announced into a dead link", func() error {
		if st := mb.Status(); !st.Held || (st.Announcements == 0 && st.AnnounceError == "") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if err := b.RestoreLink(); err != nil {
		t.Fatal(err)
	}
	took := waitTimed(t, "the client's neighbour entry to show b after b's link came back", neighbourIs(client, b, ip))
	t.Logf("client's neighbour entry showed b's MAC %v after b's link came back (check_interval %v)", took, cfg.CheckInterval)
	if got := askName(t, client, "tcp4", ip); got != "b" {
		t.Fatalf("the VIP answered from %q, want b", got)
	}

	if err := a.RestoreLink(); err != nil {
		t.Fatal(err)
	}
	if got := askName(t, client, "tcp4", ip); got != "b" {
		t.Fatalf("after a came back the VIP answered from %q, want b", got)
	}
	if err := netns.CheckAtMostOne(sampler.Stop()); err != nil {
		t.Fatal(err)
	}
}

// The privilege tests re-run this test binary inside a namespace under setpriv; helperEnv tells
// the child which VIP to manage.
const helperEnv = "PGBASTION_VIP_HELPER"

// TestHelperProcess is the child of TestPrivileges; run normally it returns at once. It asks for
// the VIP, waits until it holds and has announced it or has reported a problem, prints its
// Status, and shuts down.
func TestHelperProcess(t *testing.T) {
	address := os.Getenv(helperEnv)
	if address == "" {
		return
	}
	m, err := netlink.New(config(address), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	m.SetEntitled(true)
	err = netns.WaitFor(10*time.Second, 5*time.Millisecond, func() error {
		st := m.Status()
		if st.Error != "" || st.AnnounceError != "" || (st.Held && st.Announcements > 0) {
			return nil
		}
		return errors.New("neither announced nor failed yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := json.Marshal(m.Status())
	fmt.Printf("STATUS %s\n", st)
	cancel()
	if err := <-done; err != nil {
		fmt.Printf("RUN-ERROR %v\n", err)
	}
}

// TestPrivileges runs a manager with the privileges of the systemd unit (a non-root user with
// ambient CAP_NET_ADMIN and CAP_NET_RAW), and as root without one or both of them: the missing
// privilege is reported clearly, the process does not crash, and no VIP is left behind.
func TestPrivileges(t *testing.T) {
	t.Parallel()
	netns.RequireCommand(t, "setpriv", "util-linux")
	c := netns.New(t, netns.Options{Nodes: []string{"a", "b", "c"}, Clients: []string{}})
	// The child may run as nobody, so it needs a copy of the test binary it can reach.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	helper := dir + "/netlink.test"
	if err := os.WriteFile(helper, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParsePrefix(vip4).Addr()
	for _, tc := range []struct {
		name        string
		setpriv     []string
		node        *netns.Node
		privileges  netlink.Privileges
		held        bool
		wantInError string // in Status.Error or Status.AnnounceError; "" means no error at all
		wantMissing string // in Status.PrivilegeProblem; "" means no problem
	}{
		{
			name:       "as the systemd unit grants",
			setpriv:    []string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"},
			node:       c.Node("a"),
			privileges: netlink.Privileges{NetAdmin: true, NetRaw: true},
			held:       true,
		},
		{
			name:        "no CAP_NET_ADMIN",
			setpriv:     []string{"--inh-caps=-all", "--bounding-set=-net_admin,-net_raw"},
			node:        c.Node("b"),
			wantInError: "needs CAP_NET_ADMIN",
			wantMissing: "CAP_NET_ADMIN (cannot add or remove the VIP)",
		},
		{
			name:        "no CAP_NET_RAW",
			setpriv:     []string{"--inh-caps=-all", "--bounding-set=-net_raw"},
			node:        c.Node("c"),
			privileges:  netlink.Privileges{NetAdmin: true},
			held:        true,
			wantInError: "needs CAP_NET_RAW",
			wantMissing: "CAP_NET_RAW (cannot announce",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string(nil), tc.setpriv...), "--", helper, "-test.run=^TestHelperProcess$", "-test.count=1")
			p := tc.node.Start(t, func(cmd *exec.Cmd) {
				cmd.Env = append(os.Environ(), helperEnv+"="+vip4)
			}, "setpriv", args...)
			if err := p.Wait(30 * time.Second); err != nil {
				t.Fatalf("the helper did not exit cleanly (%v):\n%s", err, p.Output())
			}
			out := p.Output()
			_, js, ok := strings.Cut(out, "STATUS ")
			if !ok {
				t.Fatalf("no status in helper output:\n%s", out)
			}
			js, _, _ = strings.Cut(js, "\n")
			var st netlink.Status
			if err := json.Unmarshal([]byte(js), &st); err != nil {
				t.Fatalf("status %q: %v", js, err)
			}
			if st.Privileges != tc.privileges {
				t.Errorf("privileges %+v, want %+v", st.Privileges, tc.privileges)
			}
			if tc.wantMissing == "" {
				if st.PrivilegeProblem != "" || st.Error != "" || st.AnnounceError != "" || st.Announcements == 0 {
					t.Errorf("with both capabilities: %+v", st)
				}
			} else {
				if !strings.Contains(st.PrivilegeProblem, tc.wantMissing) || !strings.Contains(st.PrivilegeProblem, "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW") {
					t.Errorf("privilege_problem %q: want it to name %q and the fix", st.PrivilegeProblem, tc.wantMissing)
				}
				if errs := st.Error + " | " + st.AnnounceError; !strings.Contains(errs, tc.wantInError) {
					t.Errorf("errors %q: want %q", errs, tc.wantInError)
				}
				if !strings.Contains(out, "vip will not work") {
					t.Errorf("no start-up log line about the missing privilege in:\n%s", out)
				}
			}
			if st.Held != tc.held {
				t.Errorf("held = %v, want %v", st.Held, tc.held)
			}
			if strings.Contains(out, "RUN-ERROR") {
				t.Errorf("shutdown reported an error:\n%s", out)
			}
			// Never left behind, whatever the privileges.
			if has, err := tc.node.HasAddr(ip); err != nil || has {
				t.Errorf("after the helper exited, %s holds %s: %v, %v", tc.node.Name, ip, has, err)
			}
			t.Logf("reported: privilege_problem=%q error=%q announce_error=%q", st.PrivilegeProblem, st.Error, st.AnnounceError)
		})
	}
}

// Status is meant for /nodes: check the JSON shape stays snake_case and complete.
func TestStatusJSON(t *testing.T) {
	b, err := json.Marshal(netlink.Status{Enabled: true, Address: vip4, Interface: "eth0", Held: true, Since: time.Unix(1, 0)})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"enabled":true`, `"address":"198.18.0.200/24"`, `"interface":"eth0"`, `"held":true`, `"since":`, `"privileges":{"net_admin":false,"net_raw":false}`, `"acquisitions":0`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Errorf("JSON %s lacks %s", b, key)
		}
	}
	if bytes.Contains(b, []byte(`"error"`)) || bytes.Contains(b, []byte(`"last_announced"`)) {
		t.Errorf("JSON %s shows empty fields", b)
	}
}
