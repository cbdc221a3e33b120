package netlink

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Config is the `vip:` section of pgbastion.yaml. The zero Address disables the VIP.
//
//	vip:
//	  address: 198.18.0.200/24   # IPv4 CIDR, IPv6 CIDR, or a bare address (/32, /128)
//	  interface: eth0
//	  resign_timeout: 5s
type Config struct {
	// Address is the floating IP with the prefix length it gets on the interface. A bare address
	// means a host prefix (/32 or /128). Empty disables the VIP.
	Address string `yaml:"address"`
	// Interface is the network interface that carries the VIP, e.g. eth0.
	Interface string `yaml:"interface"`
	// ResignTimeout bounds how long shutdown keeps trying to remove the VIP before giving up
	// (the daemon then exits and reports that the VIP may still be present). While running, a
	// failed removal is retried until it succeeds.
	ResignTimeout time.Duration `yaml:"resign_timeout"`
	// CheckInterval is how often the interface is re-read to catch a VIP that someone else added
	// or removed. Address change notifications from the kernel usually catch it sooner.
	CheckInterval time.Duration `yaml:"check_interval"`
	// GARPCount is how many announcements follow each acquisition: gratuitous ARP (a request and
	// a reply) for IPv4, an unsolicited neighbour advertisement for IPv6. The first is sent at
	// once. Several are needed because Linux ignores a second update of a neighbour entry within
	// its locktime (1 s by default) and because a switch or peer may miss one.
	GARPCount int `yaml:"garp_count"`
	// GARPInterval is the time between announcements.
	GARPInterval time.Duration `yaml:"garp_interval"`
}

// Defaults.
const (
	DefaultResignTimeout = 5 * time.Second
	DefaultCheckInterval = time.Second
	DefaultGARPCount     = 5
	DefaultGARPInterval  = 500 * time.Millisecond
)

// Limits enforced by Validate.
const (
	minCheckInterval = 50 * time.Millisecond
	minGARPInterval  = 10 * time.Millisecond
	maxGARPCount     = 100
	maxIfNameLen     = 15 // IFNAMSIZ - 1
	labelSuffix      = ":pgb"
)

// DefaultConfig returns a Config with every default filled in and the VIP disabled. Decode the
// YAML section into it so that absent keys keep their defaults.
func DefaultConfig() Config {
	return Config{
		ResignTimeout: DefaultResignTimeout,
		CheckInterval: DefaultCheckInterval,
		GARPCount:     DefaultGARPCount,
		GARPInterval:  DefaultGARPInterval,
	}
}

// Enabled reports whether a VIP is configured.
func (c Config) Enabled() bool { return c.Address != "" }

// Validate checks the configuration without touching the system (it does not look the interface
// up: an interface may appear after start-up, and the manager reports it if it is missing).
// A disabled VIP is valid whatever the other fields say.
func (c Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	if _, err := parseAddress(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("vip.address %q: %w", c.Address, err))
	}
	if err := validateIfName(c.Interface); err != nil {
		errs = append(errs, fmt.Errorf("vip.interface %q: %w", c.Interface, err))
	}
	if c.ResignTimeout <= 0 {
		errs = append(errs, fmt.Errorf("vip.resign_timeout %v: must be positive", c.ResignTimeout))
	}
	if c.CheckInterval < minCheckInterval {
		errs = append(errs, fmt.Errorf("vip.check_interval %v: must be at least %v", c.CheckInterval, minCheckInterval))
	}
	if c.GARPCount < 1 || c.GARPCount > maxGARPCount {
		errs = append(errs, fmt.Errorf("vip.garp_count %d: must be between 1 and %d", c.GARPCount, maxGARPCount))
	}
	if c.GARPInterval < minGARPInterval {
		errs = append(errs, fmt.Errorf("vip.garp_interval %v: must be at least %v", c.GARPInterval, minGARPInterval))
	}
	return errors.Join(errs...)
}

// Prefix returns the VIP with its prefix length. It fails only if Validate would.
func (c Config) Prefix() (netip.Prefix, error) { return parseAddress(c.Address) }

// parseAddress accepts "a.b.c.d/n", "x::y/n" or a bare address, and rejects addresses that can
// never be a service address.
func parseAddress(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, errors.New("not an IP address in CIDR notation (e.g. 198.18.0.200/24 or 2001:db8::10/64)")
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, errors.New("not an IP address (e.g. 198.18.0.200/24 or 2001:db8::10/64)")
		}
		if a.Zone() != "" {
			return netip.Prefix{}, errors.New("must not carry a zone")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	a := p.Addr()
	switch {
	case a.Is4In6():
		return netip.Prefix{}, errors.New("IPv4-mapped IPv6 address: write the IPv4 address instead")
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return netip.Prefix{}, errors.New("must be a unicast address that is not loopback, link-local or unspecified")
	}
	if a.Is4() && p.Bits() < 31 {
		if a == p.Masked().Addr() {
			return netip.Prefix{}, fmt.Errorf("is the network address of %s", p.Masked())
		}
		if a == lastAddr(p) {
			return netip.Prefix{}, fmt.Errorf("is the broadcast address of %s", p.Masked())
		}
	}
	return p, nil
}

// lastAddr returns the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	hostBits := 32 - p.Bits()
	for i := 3; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	return netip.AddrFrom4(b)
}

func validateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("required when vip.address is set")
	case len(name) > maxIfNameLen:
		return fmt.Errorf("longer than %d characters", maxIfNameLen)
	case name == "." || name == "..":
		return errors.New("not an interface name")
	case strings.ContainsAny(name, "/: \t\n"):
		return errors.New("must not contain '/', ':' or whitespace")
	}
	return nil
}

// label is the IPv4 address label ("eth0:pgb") that marks the VIP in `ip addr` output, or "" when
// the interface name is too long for the 15-character limit.
func label(ifname string) string {
	if len(ifname)+len(labelSuffix) > maxIfNameLen {
		return ""
	}
	return ifname + labelSuffix
}
