// Package netlink holds the floating IP (VIP): it adds the address to an interface with netlink
// and announces it with gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6).
//
// # The rule
//
// The VIP is on this node only while the node is entitled to it, and the HA core decides that:
// entitled means primary in the FSM AND holding the lease. The core says so with
// Manager.SetEntitled (latest value wins, never blocks) or Manager.Release (revoke and wait).
// Loss of entitlement, and shutdown, remove the address at once; a VIP found on this node while
// it is not entitled, whoever put it there, is removed; a VIP that disappears while the node is
// entitled is put back and announced again. This package never decides entitlement itself: it
// has no view of Raft, PostgreSQL or peers, and must not grow one.
//
// # Lifecycle
//
// cmd/pgbastion builds a Manager from Config with New (which also checks CAP_NET_ADMIN and
// CAP_NET_RAW and logs what is missing) and runs Manager.Run in its own goroutine for the life
// of the daemon. Run reconciles the interface with the entitlement at once on every change, on
// every kernel address notification for the VIP, every check_interval, and after a failure
// with a back-off; when its context ends it removes the VIP, retrying for up to resign_timeout.
// Each acquisition is followed by garp_count announcements garp_interval apart; announcements
// stop the moment entitlement is lost, and a held VIP is announced again when its link comes
// back up.
//
// # Failure is reported, never fatal
//
// Missing privileges, a missing interface and netlink errors end up in Status (for /nodes and
// metrics) and in the log, once per distinct problem, with what to do about them; the rest of
// the daemon keeps running. Run returns an error only if the VIP may have been left on the
// interface at shutdown.
//
// # Concurrency
//
// SetEntitled, Release and Status are safe from any goroutine. Run owns every netlink request
// and raw socket; announcements run on a goroutine of their own that Run starts and stops.
// With WithNetns the manager works in another network namespace (tests run several nodes in one
// process that way); sockets are then opened on an OS thread locked into that namespace and
// thrown away afterwards.
//
// The package name is the kernel interface it speaks; it imports vishvananda/netlink as vnl.
package netlink
