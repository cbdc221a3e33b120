package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/netns"
)

func TestMain(m *testing.M) { daemon.Main(m) }

// holds returns a condition: node n holds the VIP (want) or does not.
func holds(n *Node, want bool) func() error {
	return func() error {
		h, err := n.HoldsVIP()
		if err != nil {
			return err
		}
		if h != want {
			return fmt.Errorf("%s holds the VIP: %v", n.Name, h)
		}
		return nil
	}
}

// neighbourIs returns a condition: the client's neighbour entry for the VIP names n's MAC.
func neighbourIs(c *Cluster, n *Node) func() error {
	return func() error {
		hw, err := c.Client.Neighbour(VIP)
		if err != nil {
			return err
		}
		if hw.String() != n.NS.MAC.String() {
			return fmt.Errorf("the client's neighbour entry for the VIP is %q (%s), want %s's %s", hw, c.owner(hw), n.Name, n.NS.MAC)
		}
		return nil
	}
}

// waitNewPrimary waits until the nodes other than old agree on a healthy primary other than
// old, and returns it.
func waitNewPrimary(t *testing.T, c *Cluster, old *Node, timeout time.Duration) *Node {
	t.Helper()
	var others []*Node
	for _, n := range c.Nodes {
		if n != old {
			others = append(others, n)
		}
	}
	var name string
	netns.Eventually(t, timeout, "a new primary named by the nodes other than "+old.Name, func() error {
		name = ""
		for _, n := range others {
			v, err := n.View()
			if err != nil {
				return err
			}
			state, healthy, _ := v.Status(v.Primary)
			if v.Primary == "" || v.Primary == old.Name || !healthy || state != "RUNNING_PRIMARY" {
				return fmt.Errorf("%s sees primary %q (%s, healthy %v)", n.Name, v.Primary, state, healthy)
			}
			if name != "" && name != v.Primary {
				return fmt.Errorf("the nodes disagree: %s and %s", name, v.Primary)
			}
			name = v.Primary
		}
		return nil
	})
	return c.Node(name)
}

// waitRejoined waits until old runs as a healthy replica again, as node via sees it.
func waitRejoined(t *testing.T, via, old *Node, timeout time.Duration) {
	t.Helper()
	netns.Eventually(t, timeout, old.Name+" to rejoin as a replica", func() error {
		v, err := via.View()
		if err != nil {
			return err
		}
		state, healthy, reason := v.Status(old.Name)
		if state == "RUNNING_REPLICA" && healthy {
			return nil
		}
		return fmt.Errorf("%s is %s (healthy %v, reason %q)", old.Name, state, healthy, reason)
	})
}

// msList formats durations in milliseconds: "[125 234 105] ms".
func msList(ds []time.Duration) string {
	var b strings.Builder
	for i, d := range ds {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, d.Milliseconds())
	}
	return "[" + b.String() + "] ms"
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
