// Package netlink holds the floating IP (VIP): it adds the address to an interface with netlink
// and announces it with gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6).
//
// The rule it enforces is that the VIP is held only by the node that is the primary and holds its
// lease; on lease loss, demotion or shutdown it is removed at once, and a node that finds the VIP
// on itself while not entitled removes it. Missing privileges (CAP_NET_ADMIN, CAP_NET_RAW) are
// reported, never fatal.
package netlink
