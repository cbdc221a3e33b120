package netlink

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrPrivilege marks an operation that failed because the process lacks CAP_NET_ADMIN (adding
// or removing the VIP) or CAP_NET_RAW (announcing it). Test with errors.Is.
var ErrPrivilege = errors.New("missing privilege")

// privilegeHint says what to do; it is part of every privilege message.
const privilegeHint = "run pgbastion as root or grant it AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW " +
	"(see docs/systemd/pgbastion.service)"

// Privileges says which of the capabilities the VIP needs the process has in its effective set.
type Privileges struct {
	// NetAdmin (CAP_NET_ADMIN) is needed to add and remove the address.
	NetAdmin bool `json:"net_admin"`
	// NetRaw (CAP_NET_RAW) is needed to send gratuitous ARP and neighbour advertisements.
	NetRaw bool `json:"net_raw"`
}

// Problem returns "" when both capabilities are present, otherwise a message that names what is
// missing, what stops working and what to do.
func (p Privileges) Problem() string {
	var missing []string
	if !p.NetAdmin {
		missing = append(missing, "CAP_NET_ADMIN (cannot add or remove the VIP)")
	}
	if !p.NetRaw {
		missing = append(missing, "CAP_NET_RAW (cannot announce the VIP with gratuitous ARP or neighbour advertisements)")
	}
	if len(missing) == 0 {
		return ""
	}
	return "missing " + strings.Join(missing, " and ") + ": " + privilegeHint
}

// Capability numbers from linux/capability.h.
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// CurrentPrivileges reads the effective capability set of the calling thread with capget(2).
// All threads of a Go process share one set unless something changed it per thread.
func CurrentPrivileges() (Privileges, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return Privileges{}, fmt.Errorf("reading capabilities: %w", err)
	}
	return privilegesFromMask(uint64(data[1].Effective)<<32 | uint64(data[0].Effective)), nil
}

// privilegesFromMask decodes an effective-capability bit mask (the CapEff line of
// /proc/<pid>/status).
func privilegesFromMask(eff uint64) Privileges {
	return Privileges{
		NetAdmin: eff&(1<<capNetAdmin) != 0,
		NetRaw:   eff&(1<<capNetRaw) != 0,
	}
}

// privilegeError turns EPERM/EACCES from a netlink or socket call into an ErrPrivilege error
// that names the capability and says what to do; other errors pass through unchanged.
func privilegeError(err error, capability string) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %w: needs %s; %s", ErrPrivilege, err, capability, privilegeHint)
	}
	return err
}
