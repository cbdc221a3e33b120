package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	vnl "github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package creates; Sweep relies on it.
const Prefix = "pgbt-"

// Iface is the name of every member's interface inside its namespace.
const Iface = "eth0"

// Address ranges the harness may use (RFC 2544 and its IPv6 twin from RFC 5180).
var (
	allowedV4 = netip.MustParsePrefix("198.18.0.0/15")
	allowedV6 = netip.MustParsePrefix("2001:2::/48")
)

// Options describes a Cluster. The zero value gives nodes n1, n2, n3 and one client.
type Options struct {
	// Nodes and Clients name the members: lower-case letters and digits, at most 12 characters.
	// Nodes get host numbers 1, 2, ...; clients 101, 102, ....
	Nodes   []string
	Clients []string
	// IPv4 is the members' subnet, inside 198.18.0.0/15, at most /24. Default 198.18.0.0/24.
	IPv4 netip.Prefix
	// IPv6 is the members' IPv6 subnet, inside 2001:2::/48. Default 2001:2::/64. Addresses are
	// added without duplicate address detection, so they are usable at once.
	IPv6 netip.Prefix
}

func (o Options) withDefaults() Options {
	if o.Nodes == nil {
		o.Nodes = []string{"n1", "n2", "n3"}
	}
	if o.Clients == nil {
		o.Clients = []string{"client"}
	}
	if !o.IPv4.IsValid() {
		o.IPv4 = netip.MustParsePrefix("198.18.0.0/24")
	}
	if !o.IPv6.IsValid() {
		o.IPv6 = netip.MustParsePrefix("2001:2::/64")
	}
	return o
}

var memberName = regexp.MustCompile(`^[a-z][a-z0-9]{0,11}$`)

func (o Options) validate() error {
	var errs []error
	seen := map[string]bool{"sw": true}
	for _, n := range slices.Concat(o.Nodes, o.Clients) {
		if !memberName.MatchString(n) {
			errs = append(errs, fmt.Errorf("member name %q: want [a-z][a-z0-9]{0,11}", n))
		}
		if seen[n] {
			errs = append(errs, fmt.Errorf("member name %q: used twice or reserved", n))
		}
		seen[n] = true
	}
	if len(o.Nodes) > 100 || len(o.Clients) > 100 {
		errs = append(errs, errors.New("at most 100 nodes and 100 clients"))
	}
	if !o.IPv4.Addr().Is4() || o.IPv4.Bits() > 24 || !allowedV4.Contains(o.IPv4.Addr()) || o.IPv4.Bits() < allowedV4.Bits() {
		errs = append(errs, fmt.Errorf("IPv4 %s: want a subnet of at least /24 inside %s", o.IPv4, allowedV4))
	}
	if !o.IPv6.Addr().Is6() || o.IPv6.Bits() > 120 || !allowedV6.Contains(o.IPv6.Addr()) || o.IPv6.Bits() < allowedV6.Bits() {
		errs = append(errs, fmt.Errorf("IPv6 %s: want a subnet inside %s", o.IPv6, allowedV6))
	}
	return errors.Join(errs...)
}

// Cluster is a set of network namespaces cabled to one bridge.
type Cluster struct {
	// ID prefixes every namespace name of this cluster.
	ID      string
	t       testing.TB
	sw      string // the switch namespace
	members []*Node
}

// Node is one member of a Cluster: a PGBastion node or a client.
type Node struct {
	// Name is the member name from Options; NS is its network namespace's name (usable with
	// `ip netns exec` and `ip -n`).
	Name, NS string
	// IPv4 and IPv6 are eth0's addresses with the subnet's prefix length.
	IPv4, IPv6 netip.Prefix
	// MAC is eth0's hardware address.
	MAC net.HardwareAddr
	// Client says whether the member was listed in Options.Clients.
	Client bool

	c      *Cluster
	port   string          // the switch-side veth end in the switch namespace
	handle vnetns.NsHandle // open namespace file, for WithNetns-style APIs
	nl     *vnl.Handle     // netlink socket inside the namespace, for reads
}

// New creates the cluster and registers its removal with t.Cleanup; it first sweeps leftovers of
// crashed runs. It calls Require, so on a machine without root or iproute2 the test is skipped
// (or fails under CI).
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	Require(t)
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		t.Fatalf("netns.New: %v", err)
	}
	if removed, err := Sweep(); err != nil {
		t.Logf("netns: sweeping leftovers: %v", err)
	} else if len(removed) > 0 {
		t.Logf("netns: removed leftovers of crashed runs: %v", removed)
	}

	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	c := &Cluster{ID: fmt.Sprintf("%s%d-%s", Prefix, os.Getpid(), hex.EncodeToString(rnd[:])), t: t}
	c.sw = c.ID + "-sw"
	// Registered before anything exists, so a half-built cluster is removed too.
	t.Cleanup(c.destroy)

	if err := c.build(opts); err != nil {
		t.Fatalf("netns.New: %v", err)
	}
	return c
}

func (c *Cluster) build(opts Options) error {
	if err := ipCmd("netns", "add", c.sw); err != nil {
		return err
	}
	if err := ipCmd("-n", c.sw, "link", "set", "lo", "up"); err != nil {
		return err
	}
	if err := ipCmd("-n", c.sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"); err != nil {
		return err
	}
	if err := ipCmd("-n", c.sw, "link", "set", "br0", "up"); err != nil {
		return err
	}
	for i, name := range opts.Nodes {
		if err := c.addMember(name, i+1, false, opts); err != nil {
			return err
		}
	}
	for i, name := range opts.Clients {
		if err := c.addMember(name, i+101, true, opts); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) addMember(name string, host int, client bool, opts Options) error {
	n := &Node{
		Name:   name,
		NS:     c.ID + "-" + name,
		IPv4:   netip.PrefixFrom(nthAddr(opts.IPv4.Masked().Addr(), host), opts.IPv4.Bits()),
		IPv6:   netip.PrefixFrom(nthAddr(opts.IPv6.Masked().Addr(), host), opts.IPv6.Bits()),
		Client: client,
		c:      c,
		port:   "p-" + name,
		handle: vnetns.None(),
	}
	c.members = append(c.members, n) // before creation, so that destroy closes what was opened
	steps := [][]string{
		{"netns", "add", n.NS},
		{"-n", n.NS, "link", "set", "lo", "up"},
		{"-n", c.sw, "link", "add", n.port, "type", "veth", "peer", "name", Iface, "netns", n.NS},
		{"-n", c.sw, "link", "set", n.port, "master", "br0"},
		{"-n", c.sw, "link", "set", n.port, "up"},
		{"-n", n.NS, "addr", "add", n.IPv4.String(), "dev", Iface},
		{"-n", n.NS, "addr", "add", n.IPv6.String(), "dev", Iface, "nodad"},
		{"-n", n.NS, "link", "set", Iface, "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	var err error
	if n.handle, err = vnetns.GetFromName(n.NS); err != nil {
		return fmt.Errorf("opening namespace %s: %w", n.NS, err)
	}
	if n.nl, err = vnl.NewHandleAt(n.handle, unix.NETLINK_ROUTE); err != nil {
		return fmt.Errorf("netlink socket in %s: %w", n.NS, err)
	}
	l, err := n.nl.LinkByName(Iface)
	if err != nil {
		return fmt.Errorf("%s: %w", n.NS, err)
	}
	n.MAC = l.Attrs().HardwareAddr
	return nil
}

// nthAddr returns base + n.
func nthAddr(base netip.Addr, n int) netip.Addr {
	a := base
	for range n {
		a = a.Next()
	}
	return a
}

// destroy kills whatever still runs in the cluster's namespaces and deletes them. It removes
// every namespace whose name starts with the cluster's ID, so it also cleans a half-built one.
func (c *Cluster) destroy() {
	for _, n := range c.members {
		if n.nl != nil {
			n.nl.Close()
		}
		if n.handle.IsOpen() {
			n.handle.Close()
		}
	}
	if err := removeNamespaces(c.ID + "-"); err != nil {
		c.t.Errorf("netns: cleaning up cluster %s: %v", c.ID, err)
	}
}

// Node returns the member called name and fails the test if there is none.
func (c *Cluster) Node(name string) *Node {
	c.t.Helper()
	for _, n := range c.members {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("netns: cluster has no member %q", name)
	return nil
}

// Nodes returns the members that are not clients, in Options order.
func (c *Cluster) Nodes() []*Node {
	var out []*Node
	for _, n := range c.members {
		if !n.Client {
			out = append(out, n)
		}
	}
	return out
}

// Members returns every member, nodes first.
func (c *Cluster) Members() []*Node { return slices.Clone(c.members) }

// Holders returns the names of the members that have ip on any interface right now.
//
// Members are read one after another, which is no snapshot: an address moving from a member
// read early to one read late would show both as holders at once although they never held it
// together. So each member is read twice, in order and then in reverse order, and counts only
// when it held ip both times: any two members' readings then nest (x, y, ..., y, x), and both
// counting means both held it at the inner readings, as long as no member drops the address
// and takes it back within one look (microseconds; a move takes milliseconds).
func (c *Cluster) Holders(ip netip.Addr) ([]string, error) {
	held := make([]int, len(c.members))
	look := func(i int) error {
		has, err := c.members[i].HasAddr(ip)
		if has {
			held[i]++
		}
		return err
	}
	for i := range c.members {
		if err := look(i); err != nil {
			return nil, err
		}
	}
	for i := len(c.members) - 1; i >= 0; i-- {
		if err := look(i); err != nil {
			return nil, err
		}
	}
	var out []string
	for i, n := range c.members {
		if held[i] == 2 {
			out = append(out, n.Name)
		}
	}
	return out, nil
}

// Member methods may be called from several goroutines: each member's netlink handle serialises
// its own requests.

// Path returns the file that names the member's namespace (/run/netns/NS), for tools and
// APIs that take a path.
func (n *Node) Path() string { return netnsDir + "/" + n.NS }

// Handle returns the member's namespace as an open handle (for netlink.NewHandleAt and similar).
// It stays open until the cluster is removed; do not close it.
func (n *Node) Handle() vnetns.NsHandle { return n.handle }

// HasAddr reports whether ip is on any interface of the member.
func (n *Node) HasAddr(ip netip.Addr) (bool, error) {
	family := vnl.FAMILY_V4
	if ip.Is6() {
		family = vnl.FAMILY_V6
	}
	var (
		addrs []vnl.Addr
		err   error
	)
	for range 3 {
		if addrs, err = n.nl.AddrList(nil, family); !errors.Is(err, vnl.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return false, fmt.Errorf("%s: listing addresses: %w", n.Name, err)
	}
	for _, a := range addrs {
		if a.IP.Equal(ip.AsSlice()) {
			return true, nil
		}
	}
	return false, nil
}

// Neighbour returns the link-layer address the member's neighbour table holds for ip on eth0,
// or nil when there is no usable entry (none, incomplete or failed).
func (n *Node) Neighbour(ip netip.Addr) (net.HardwareAddr, error) {
	l, err := n.nl.LinkByName(Iface)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	family := vnl.FAMILY_V4
	if ip.Is6() {
		family = vnl.FAMILY_V6
	}
	neighs, err := n.nl.NeighList(l.Attrs().Index, family)
	if err != nil {
		return nil, fmt.Errorf("%s: listing neighbours: %w", n.Name, err)
	}
	for _, e := range neighs {
		if e.IP.Equal(ip.AsSlice()) && e.State&(vnl.NUD_INCOMPLETE|vnl.NUD_FAILED) == 0 && len(e.HardwareAddr) > 0 {
			return e.HardwareAddr, nil
		}
	}
	return nil, nil
}

// Poke sends one UDP datagram from the member to ip (port 9, discard), which makes its kernel
// resolve ip's link-layer address. Await the result with Neighbour.
func (n *Node) Poke(ip netip.Addr) error {
	c, err := n.DialContext(context.Background(), "udp", netip.AddrPortFrom(ip, 9).String())
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("pgbastion"))
	return err
}

// Do runs fn inside the member's network namespace: sockets fn opens belong to it, and stay
// there when used from other goroutines later. fn runs on a fresh goroutine locked to its OS
// thread; the thread is thrown away afterwards, so no goroutine ever runs in the wrong namespace.
func (n *Node) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime ends the thread when we return
		if err := vnetns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("entering %s: %w", n.NS, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener inside the member's namespace; it can be used from any goroutine.
func (n *Node) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// DialContext connects from inside the member's namespace. Its signature fits
// net.Dialer-style hooks such as pgconn.Config.DialFunc, so a client library can run "in" a
// client namespace without a subprocess.
func (n *Node) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Command returns a command that runs name inside the member's namespace (through `ip netns
// exec`, which execs it, so the PID is the command's) in its own process group. Cancelling ctx
// kills the whole group.
func (n *Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs a short command inside the member's namespace and returns its combined output; the
// error includes the output.
func (n *Node) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// CutLink takes the switch side of the member's cable down: its eth0 loses carrier and nothing
// gets through until RestoreLink.
func (n *Node) CutLink() error {
	return ipCmd("-n", n.c.sw, "link", "set", n.port, "down")
}

// RestoreLink undoes CutLink and returns once the member's eth0 is operationally up again.
func (n *Node) RestoreLink() error {
	if err := ipCmd("-n", n.c.sw, "link", "set", n.port, "up"); err != nil {
		return err
	}
	return WaitFor(5*time.Second, time.Millisecond, func() error {
		l, err := n.nl.LinkByName(Iface)
		if err != nil {
			return err
		}
		if s := l.Attrs().OperState; s != vnl.OperUp {
			return fmt.Errorf("%s: %s is %s", n.Name, Iface, s)
		}
		return nil
	})
}

// Isolate detaches the member's cable from the bridge: its link stays up (no carrier loss) but
// no frame passes either way, as when the path behind a switch port dies silently. Rejoin undoes
// it. (A disabled bridge port would do the same, but without STP this kernel puts it straight
// back into forwarding state, and it has no netem for 100% loss.)
func (n *Node) Isolate() error {
	return ipCmd("-n", n.c.sw, "link", "set", "dev", n.port, "nomaster")
}

// Rejoin attaches the member's cable to the bridge again.
func (n *Node) Rejoin() error {
	return ipCmd("-n", n.c.sw, "link", "set", "dev", n.port, "master", "br0")
}

// ipCmd runs iproute2's ip; the error carries its output.
func ipCmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
