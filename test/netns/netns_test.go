package netns_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/netns"
)

func TestClusterAddressesAndNeighbours(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"n1", "n2"}})
	n1, n2, client := c.Node("n1"), c.Node("n2"), c.Node("client")

	if got, want := n1.IPv4.String(), "198.18.0.1/24"; got != want {
		t.Errorf("n1 IPv4 = %s, want %s", got, want)
	}
	if got, want := client.IPv4.String(), "198.18.0.101/24"; got != want {
		t.Errorf("client IPv4 = %s, want %s", got, want)
	}
	if bytes.Equal(n1.MAC, n2.MAC) || len(n1.MAC) != 6 {
		t.Errorf("MACs n1=%s n2=%s: want two distinct Ethernet addresses", n1.MAC, n2.MAC)
	}
	if got := len(c.Nodes()); got != 2 {
		t.Errorf("Nodes() = %d members, want 2 (the client is not a node)", got)
	}

	// Each member sees only its own address.
	holders, err := c.Holders(n1.IPv4.Addr())
	if err != nil || !slices.Equal(holders, []string{"n1"}) {
		t.Errorf("Holders(n1) = %v, %v; want [n1]", holders, err)
	}

	// A command runs inside the namespace.
	out, err := n2.Run(t.Context(), "ip", "-o", "addr", "show", "dev", netns.Iface)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, n2.IPv4.String()) || strings.Contains(out, n1.IPv4.String()) {
		t.Errorf("ip addr inside n2 shows:\n%s\nwant %s and not %s", out, n2.IPv4, n1.IPv4)
	}

	// Neighbour resolution over the bridge, for both families.
	for _, ip := range []netip.Addr{n1.IPv4.Addr(), n1.IPv6.Addr()} {
		if err := client.Poke(ip); err != nil {
			t.Fatal(err)
		}
		netns.Eventually(t, 5*time.Second, "client to resolve "+ip.String(), func() error {
			mac, err := client.Neighbour(ip)
			if err != nil {
				return err
			}
			if !bytes.Equal(mac, n1.MAC) {
				return fmt.Errorf("client's neighbour entry for %s is %q, want n1's %s", ip, mac, n1.MAC)
			}
			return nil
		})
	}
}

// tcpReachable reports whether from can open a TCP connection to l within timeout.
func tcpReachable(t *testing.T, from *netns.Node, l net.Listener, timeout time.Duration) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	conn, err := from.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func TestLinkFaults(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"n1"}})
	n1, client := c.Node("n1"), c.Node("client")
	l, err := n1.Listen("tcp", netip.AddrPortFrom(n1.IPv4.Addr(), 5432).String())
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
			conn.Close()
		}
	}()

	if !tcpReachable(t, client, l, 5*time.Second) {
		t.Fatal("client cannot reach n1 before any fault")
	}
	for _, f := range []struct {
		name      string
		cut, undo func() error
	}{
		{"link down", n1.CutLink, n1.RestoreLink},
		{"detached from the bridge", n1.Isolate, n1.Rejoin},
	} {
		if err := f.cut(); err != nil {
			t.Fatal(err)
		}
		if tcpReachable(t, client, l, 300*time.Millisecond) {
			t.Errorf("%s: client still reaches n1", f.name)
		}
		if err := f.undo(); err != nil {
			t.Fatal(err)
		}
		if !tcpReachable(t, client, l, 5*time.Second) {
			t.Errorf("after undoing %s: client cannot reach n1", f.name)
		}
	}
}

// procState returns the state letter from /proc/<pid>/stat (R, S, T, Z, ...).
func procState(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return "", fmt.Errorf("unexpected stat %q", s)
	}
	return s[i+2 : i+3], nil
}

func awaitState(t *testing.T, pid int, want string) {
	t.Helper()
	netns.Eventually(t, 5*time.Second, fmt.Sprintf("pid %d in state %s", pid, want), func() error {
		got, err := procState(pid)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("state %s", got)
		}
		return nil
	})
}

func TestProcessKillPauseResume(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"n1"}, Clients: []string{}})
	n1 := c.Node("n1")
	// A shell with a child: signals must reach the whole group.
	p := n1.Start(t, nil, "sh", "-c", "sleep 600 & echo started; wait")
	netns.Eventually(t, 5*time.Second, "the shell to start its child", func() error {
		if !strings.Contains(p.Output(), "started") {
			return errors.New("no output yet")
		}
		return nil
	})

	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	awaitState(t, p.Pid(), "T")
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	awaitState(t, p.Pid(), "S")
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	err := p.Wait(5 * time.Second)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys() == nil || !strings.Contains(exit.String(), "killed") {
		t.Fatalf("Wait after Kill = %v, want an exit by SIGKILL", err)
	}
	// The child went with the group: no process is left in the namespace.
	netns.Eventually(t, 5*time.Second, "the namespace to be empty", func() error {
		out, err := exec.CommandContext(t.Context(), "ip", "netns", "pids", n1.NS).Output()
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			return fmt.Errorf("pids left: %s", s)
		}
		return nil
	})
}

func TestSamplerSeesTwoHolders(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"n1", "n2"}, Clients: []string{}})
	vip := netip.MustParseAddr("198.18.0.200")
	s := c.SampleHolders(vip, 10*time.Millisecond)
	for _, n := range c.Nodes() {
		if _, err := n.Run(t.Context(), "ip", "addr", "add", "198.18.0.200/32", "dev", netns.Iface); err != nil {
			t.Fatal(err)
		}
	}
	netns.Eventually(t, 5*time.Second, "a sample with both holders", func() error {
		h, err := c.Holders(vip)
		if err != nil {
			return err
		}
		if len(h) != 2 {
			return fmt.Errorf("holders %v", h)
		}
		return nil
	})
	samples := s.Stop() // takes one last sample, which sees both
	err := netns.CheckAtMostOne(samples)
	if err == nil {
		t.Fatalf("CheckAtMostOne accepted %d samples although both nodes held %s", len(samples), vip)
	}
	t.Logf("as intended: %v", strings.SplitN(err.Error(), "\n", 2)[0])
}

func TestCleanupRemovesEverything(t *testing.T) {
	var id string
	t.Run("cluster", func(t *testing.T) {
		c := netns.New(t, netns.Options{Nodes: []string{"n1"}})
		id = c.ID
		c.Node("n1").Start(t, nil, "sleep", "600")
	})
	out, err := exec.CommandContext(t.Context(), "ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), id) {
		t.Errorf("namespaces of %s left after cleanup:\n%s", id, out)
	}
}

func TestSweepRemovesOnlyDeadRuns(t *testing.T) {
	netns.Require(t)
	// A PID that no longer runs: a finished child's.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%s%d-dead00-n1", netns.Prefix, dead.Process.Pid)
	live := fmt.Sprintf("%s%d-live00-n1", netns.Prefix, os.Getpid())
	for _, name := range []string{stale, live} {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", name, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	}
	removed, err := netns.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	// Another test binary's New may have swept it first; either way it must be gone.
	if _, err := os.Stat("/run/netns/" + stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale namespace %s still there after Sweep (removed %v): %v", stale, removed, err)
	}
	if slices.Contains(removed, live) {
		t.Errorf("Sweep removed %s, which belongs to this live process", live)
	}
	if _, err := os.Stat("/run/netns/" + live); err != nil {
		t.Errorf("live namespace gone: %v", err)
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	err := netns.WaitFor(time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Errorf("WaitFor = %v after %d calls; want nil after 3", err, n)
	}
	err = netns.WaitFor(20*time.Millisecond, time.Millisecond, func() error { return io.EOF })
	if !errors.Is(err, io.EOF) {
		t.Errorf("WaitFor timeout error = %v; want it to wrap the condition's last error", err)
	}
}
