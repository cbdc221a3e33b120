package netlink

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netlinkTimeout bounds every netlink request so that a wedged kernel socket cannot stall the
// reconcile loop forever.
const netlinkTimeout = 2 * time.Second

// iface does the address operations on one interface in one network namespace. It is used by
// the Run goroutine only.
type iface struct {
	h      *vnl.Handle
	name   string
	prefix netip.Prefix
	label  string // IPv4 only; "" for IPv6 or when the interface name is too long
}

func openIface(ns netns.NsHandle, name string, prefix netip.Prefix) (*iface, error) {
	h, err := vnl.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink socket: %w", err)
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("setting netlink socket timeout: %w", err)
	}
	i := &iface{h: h, name: name, prefix: prefix}
	if prefix.Addr().Is4() {
		i.label = label(name)
	}
	return i, nil
}

func (i *iface) close() { i.h.Close() }

// errNoInterface reports that the configured interface does not exist (yet, or any more).
var errNoInterface = errors.New("interface not found")

func (i *iface) link() (vnl.Link, error) {
	l, err := i.h.LinkByName(i.name)
	if err != nil {
		var nf vnl.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("%w: %s", errNoInterface, i.name)
		}
		return nil, fmt.Errorf("looking up interface %s: %w", i.name, err)
	}
	return l, nil
}

func (i *iface) family() int {
	if i.prefix.Addr().Is4() {
		return vnl.FAMILY_V4
	}
	return vnl.FAMILY_V6
}

// find returns the addresses on the link that carry the VIP, whatever their prefix length or
// label (a stale copy left by an older configuration counts too).
func (i *iface) find(link vnl.Link) ([]vnl.Addr, error) {
	vip := net.IP(i.prefix.Addr().AsSlice())
	var (
		addrs []vnl.Addr
		err   error
	)
	for range 3 { // a dump interrupted by a concurrent change is incomplete: read it again
		addrs, err = i.h.AddrList(link, i.family())
		if !errors.Is(err, vnl.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", i.name, err)
	}
	var found []vnl.Addr
	for _, a := range addrs {
		if a.IP.Equal(vip) {
			found = append(found, a)
		}
	}
	return found, nil
}

// exact reports whether found holds the VIP with the configured prefix length.
func (i *iface) exact(found []vnl.Addr) bool {
	for _, a := range found {
		if ones, _ := a.Mask.Size(); ones == i.prefix.Bits() {
			return true
		}
	}
	return false
}

// add puts the VIP on the link. It is idempotent: AddrReplace succeeds when the address is
// already there. IPv6 addresses skip duplicate address detection so that they are usable (and
// can be announced) at once.
func (i *iface) add(link vnl.Link) error {
	a := &vnl.Addr{IPNet: ipNet(i.prefix), Label: i.label}
	if i.prefix.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := i.h.AddrReplace(link, a); err != nil {
		return privilegeError(fmt.Errorf("adding %s to %s: %w", i.prefix, i.name, err), "CAP_NET_ADMIN")
	}
	return nil
}

// remove deletes the given copies of the VIP, or the configured one when addrs is empty. An
// address that is already gone counts as removed.
func (i *iface) remove(link vnl.Link, addrs []vnl.Addr) error {
	nets := []*net.IPNet{ipNet(i.prefix)}
	if len(addrs) > 0 {
		nets = nets[:0]
		for _, a := range addrs {
			nets = append(nets, &net.IPNet{IP: a.IP, Mask: a.Mask})
		}
	}
	var errs []error
	for _, n := range nets {
		err := i.h.AddrDel(link, &vnl.Addr{IPNet: n})
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, privilegeError(fmt.Errorf("removing %s from %s: %w", n, i.name, err), "CAP_NET_ADMIN"))
		}
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// enterNetns moves the calling goroutine into network namespace ns for the rest of its life, so
// that the sockets it opens, and the interface names it resolves, belong to ns. It locks the
// goroutine to its OS thread and never unlocks it: when the goroutine exits, the runtime throws
// the thread away instead of reusing one that sits in another namespace. Call it only on a
// goroutine that ends when its work is done. A closed handle means the current namespace and
// does nothing.
func enterNetns(ns netns.NsHandle) error {
	if !ns.IsOpen() {
		return nil
	}
	runtime.LockOSThread()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("entering network namespace: %w", err)
	}
	return nil
}
