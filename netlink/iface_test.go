package netlink

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/netns"
)

// TestAddRemoveIdempotent runs the raw address operations twice each in a real namespace.
func TestAddRemoveIdempotent(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"a"}, Clients: []string{}})
	a := c.Node("a")
	for _, vip := range []string{"198.18.0.200/24", "2001:2::200/64"} {
		t.Run(vip, func(t *testing.T) {
			p := netip.MustParsePrefix(vip)
			ifc, err := openIface(a.Handle(), netns.Iface, p)
			if err != nil {
				t.Fatal(err)
			}
			defer ifc.close()
			link, err := ifc.link()
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				if err := ifc.add(link); err != nil {
					t.Fatalf("add #%d: %v", i+1, err)
				}
			}
			found, err := ifc.find(link)
			if err != nil {
				t.Fatal(err)
			}
			if len(found) != 1 || !ifc.exact(found) {
				t.Fatalf("after two adds found %v, want exactly %s once", found, p)
			}
			if p.Addr().Is4() && found[0].Label != "eth0:pgb" {
				t.Errorf("label = %q, want eth0:pgb", found[0].Label)
			}
			if p.Addr().Is6() && found[0].Flags&0x02 == 0 { // IFA_F_NODAD
				t.Errorf("flags = %#x, want IFA_F_NODAD", found[0].Flags)
			}
			for i := range 2 {
				if err := ifc.remove(link, nil); err != nil {
					t.Fatalf("remove #%d: %v", i+1, err)
				}
			}
			if has, err := a.HasAddr(p.Addr()); err != nil || has {
				t.Fatalf("after two removes HasAddr = %v, %v; want false", has, err)
			}
			// The node's own address is untouched.
			addr := a.IPv4.Addr()
			if p.Addr().Is6() {
				addr = a.IPv6.Addr()
			}
			if has, err := a.HasAddr(addr); err != nil || !has {
				t.Fatalf("node address %s gone: %v, %v", addr, has, err)
			}
		})
	}
}

// TestPeriodicCheckAlone turns kernel notifications off and shows that the periodic check by
// itself removes a foreign VIP and restores a removed one.
func TestPeriodicCheckAlone(t *testing.T) {
	t.Parallel()
	c := netns.New(t, netns.Options{Nodes: []string{"a"}, Clients: []string{}})
	a := c.Node("a")
	cfg := DefaultConfig()
	cfg.Address, cfg.Interface, cfg.CheckInterval = "198.18.0.200/24", netns.Iface, 200*time.Millisecond
	ip := netip.MustParseAddr("198.18.0.200")
	m, err := New(cfg, nil, WithNetns(a.Handle()), func(m *Manager) { m.pollOnly = true })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	netns.Eventually(t, 5*time.Second, "the first reconcile", func() error {
		if m.Status().Since.IsZero() {
			return errors.New("not yet")
		}
		return nil
	})
	holds := func(want bool) func() error {
		return func() error {
			if has, err := a.HasAddr(ip); err != nil || has != want {
				return fmt.Errorf("a holds %s: %v (%v)", ip, has, err)
			}
			return nil
		}
	}

	if _, err := a.Run(t.Context(), "ip", "addr", "add", "198.18.0.200/32", "dev", netns.Iface); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := netns.WaitFor(10*time.Second, time.Millisecond, holds(false)); err != nil {
		t.Fatal(err)
	}
	t.Logf("foreign VIP removed by the periodic check %v after it appeared (check_interval %v)", time.Since(start), cfg.CheckInterval)

	m.SetEntitled(true)
	netns.Eventually(t, 5*time.Second, "the VIP on a", holds(true))
	if _, err := a.Run(t.Context(), "ip", "addr", "del", cfg.Address, "dev", netns.Iface); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := netns.WaitFor(10*time.Second, time.Millisecond, holds(true)); err != nil {
		t.Fatal(err)
	}
	t.Logf("removed VIP restored by the periodic check %v after it vanished", time.Since(start))
}
