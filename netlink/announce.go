package netlink

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// announcer tells the segment that the VIP now lives at this interface's MAC address.
type announcer interface {
	announce() error
	close() error
}

// errNoHardwareAddr means the interface has no MAC address (loopback, tun, ...), so there is no
// neighbour cache to update and nothing to announce.
var errNoHardwareAddr = errors.New("interface has no hardware address")

// openAnnouncer opens the raw socket for the VIP's family on interface ifname. The caller must
// be in the VIP's namespace (enterNetns) and stay there while it uses the announcer: the IPv6
// socket resolves the interface name at every send. The VIP must already be on the interface:
// arp.Dial needs an IPv4 address there, and the IPv6 advertisement is sent from the VIP itself
// (added with IFA_F_NODAD, so it is not tentative).
func openAnnouncer(ifname string, vip netip.Addr) (announcer, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("looking up interface %s: %w", ifname, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("%s: %w", ifname, errNoHardwareAddr)
	}
	if vip.Is4() {
		c, err := arp.Dial(ifi)
		if err != nil {
			return nil, privilegeError(fmt.Errorf("opening ARP socket on %s: %w", ifname, err), "CAP_NET_RAW")
		}
		return &garp{c: c, mac: ifi.HardwareAddr, vip: vip}, nil
	}
	c, _, err := ndp.Listen(ifi, ndp.Addr(vip.String()))
	if err != nil {
		return nil, privilegeError(fmt.Errorf("opening ICMPv6 socket on %s: %w", ifname, err), "CAP_NET_RAW")
	}
	return &unsolicitedNA{c: c, mac: ifi.HardwareAddr, vip: vip}, nil
}

// garp sends gratuitous ARP in both forms peers may expect, each with sender and target protocol
// address set to the VIP and broadcast on the segment: a request, and a reply whose target
// hardware address is our own (Linux counts a reply as gratuitous only then, and only a
// gratuitous one may override a neighbour entry updated less than its locktime ago).
type garp struct {
	c   *arp.Client
	mac net.HardwareAddr
	vip netip.Addr
}

func (g *garp) announce() error {
	for _, v := range []struct {
		op  arp.Operation
		tha net.HardwareAddr
	}{{arp.OperationRequest, ethernet.Broadcast}, {arp.OperationReply, g.mac}} {
		p, err := arp.NewPacket(v.op, g.mac, g.vip, v.tha, g.vip)
		if err != nil {
			return fmt.Errorf("building gratuitous ARP: %w", err)
		}
		if err := g.c.WriteTo(p, ethernet.Broadcast); err != nil {
			return privilegeError(fmt.Errorf("sending gratuitous ARP: %w", err), "CAP_NET_RAW")
		}
	}
	return nil
}

func (g *garp) close() error { return g.c.Close() }

// unsolicitedNA sends an unsolicited neighbour advertisement with the override flag to the
// all-nodes group (RFC 4861 §7.2.6). Linux updates an existing neighbour entry from it; it does
// not create one unless net.ipv6.conf.*.accept_untracked_na is set.
type unsolicitedNA struct {
	c   *ndp.Conn
	mac net.HardwareAddr
	vip netip.Addr
}

func (u *unsolicitedNA) announce() error {
	m := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: u.vip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: u.mac}},
	}
	if err := u.c.WriteTo(m, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
		return privilegeError(fmt.Errorf("sending neighbour advertisement: %w", err), "CAP_NET_RAW")
	}
	return nil
}

func (u *unsolicitedNA) close() error { return u.c.Close() }
