package netlink

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Address, c.Interface = "198.18.0.200/24", "eth0"
	return c
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr string // substring; "" means valid
	}{
		{"defaults, disabled", func(c *Config) { *c = DefaultConfig() }, ""},
		{"disabled ignores the rest", func(c *Config) { *c = Config{} }, ""},
		{"ipv4 cidr", nil, ""},
		{"bare ipv4", func(c *Config) { c.Address = "198.18.0.200" }, ""},
		{"ipv6 cidr", func(c *Config) { c.Address = "2001:2::200/64" }, ""},
		{"bare ipv6", func(c *Config) { c.Address = "2001:2::200" }, ""},
		{"ipv4 /31", func(c *Config) { c.Address = "198.18.0.0/31" }, ""},
		{"garbage", func(c *Config) { c.Address = "vip" }, `vip.address "vip": not an IP address`},
		{"bad prefix", func(c *Config) { c.Address = "198.18.0.200/33" }, "CIDR notation"},
		{"network address", func(c *Config) { c.Address = "198.18.0.0/24" }, "network address of 198.18.0.0/24"},
		{"broadcast address", func(c *Config) { c.Address = "198.18.0.255/24" }, "broadcast address"},
		{"loopback", func(c *Config) { c.Address = "127.0.0.2/8" }, "not loopback"},
		{"unspecified", func(c *Config) { c.Address = "0.0.0.0/0" }, "not loopback"},
		{"multicast", func(c *Config) { c.Address = "224.0.0.5" }, "unicast"},
		{"link-local v6", func(c *Config) { c.Address = "fe80::1/64" }, "link-local"},
		{"mapped", func(c *Config) { c.Address = "::ffff:198.18.0.200" }, "IPv4-mapped"},
		{"zone", func(c *Config) { c.Address = "2001:2::200%eth0" }, "zone"},
		{"no interface", func(c *Config) { c.Interface = "" }, "vip.interface \"\": required"},
		{"long interface", func(c *Config) { c.Interface = "abcdefghijklmnop" }, "longer than 15"},
		{"slash interface", func(c *Config) { c.Interface = "eth0/1" }, "must not contain"},
		{"alias interface", func(c *Config) { c.Interface = "eth0:1" }, "must not contain"},
		{"zero resign", func(c *Config) { c.ResignTimeout = 0 }, "vip.resign_timeout 0s: must be positive"},
		{"tiny check", func(c *Config) { c.CheckInterval = time.Millisecond }, "vip.check_interval"},
		{"no garp", func(c *Config) { c.GARPCount = 0 }, "vip.garp_count 0"},
		{"garp storm", func(c *Config) { c.GARPCount = 1000 }, "vip.garp_count 1000"},
		{"tiny garp interval", func(c *Config) { c.GARPInterval = time.Microsecond }, "vip.garp_interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			if tc.mod != nil {
				tc.mod(&c)
			}
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Config{Address: "x", ResignTimeout: -1}
	err := c.Validate()
	for _, want := range []string{"vip.address", "vip.interface", "vip.resign_timeout", "vip.check_interval", "vip.garp_count", "vip.garp_interval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to mention %s", err, want)
		}
	}
}

func TestYAMLKeepsDefaults(t *testing.T) {
	c := DefaultConfig()
	src := "address: 198.18.0.200/24\ninterface: eth1\nresign_timeout: 2s\ngarp_interval: 250ms\n"
	if err := yaml.Unmarshal([]byte(src), &c); err != nil {
		t.Fatal(err)
	}
	want := Config{
		Address: "198.18.0.200/24", Interface: "eth1", ResignTimeout: 2 * time.Second,
		CheckInterval: DefaultCheckInterval, GARPCount: DefaultGARPCount, GARPInterval: 250 * time.Millisecond,
	}
	if c != want {
		t.Fatalf("decoded %+v\nwant    %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte("garp_count: many\n"), &c); err == nil {
		t.Error("yaml accepted garp_count: many")
	}
}

func TestPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.0.200":    "198.18.0.200/32",
		"198.18.0.200/24": "198.18.0.200/24",
		"2001:2::200":     "2001:2::200/128",
		"2001:2::200/64":  "2001:2::200/64",
	} {
		c := validConfig()
		c.Address = in
		got, err := c.Prefix()
		if err != nil || got != netip.MustParsePrefix(want) {
			t.Errorf("Prefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}

func TestLabel(t *testing.T) {
	for ifname, want := range map[string]string{
		"eth0":         "eth0:pgb",
		"enp0s31f6":    "enp0s31f6:pgb",
		"abcdefghijk":  "abcdefghijk:pgb", // 15 characters: the limit
		"abcdefghijkl": "",
	} {
		if got := label(ifname); got != want {
			t.Errorf("label(%q) = %q, want %q", ifname, got, want)
		}
	}
}

func TestLastAddr(t *testing.T) {
	for p, want := range map[string]string{
		"198.18.0.7/24": "198.18.0.255",
		"198.18.0.7/15": "198.19.255.255",
		"198.18.0.7/30": "198.18.0.7",
		"198.18.3.7/22": "198.18.3.255",
		"198.18.0.7/0":  "255.255.255.255",
	} {
		if got := lastAddr(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("lastAddr(%s) = %s, want %s", p, got, want)
		}
	}
}

func TestPrivilegeDecoding(t *testing.T) {
	// CapEff of root (all capabilities), of a systemd unit with the two ambient capabilities,
	// and of an unprivileged user.
	for mask, want := range map[uint64]Privileges{
		0x000001ffffffffff: {NetAdmin: true, NetRaw: true},
		0x0000000000003000: {NetAdmin: true, NetRaw: true},
		0x0000000000001000: {NetAdmin: true},
		0x0000000000002000: {NetRaw: true},
		0:                  {},
	} {
		if got := privilegesFromMask(mask); got != want {
			t.Errorf("privilegesFromMask(%#x) = %+v, want %+v", mask, got, want)
		}
	}
	if p := (Privileges{NetAdmin: true, NetRaw: true}).Problem(); p != "" {
		t.Errorf("Problem() with both capabilities = %q, want empty", p)
	}
	p := Privileges{}.Problem()
	for _, want := range []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW", "root"} {
		if !strings.Contains(p, want) {
			t.Errorf("Problem() = %q; want it to mention %q", p, want)
		}
	}
	if p := (Privileges{NetAdmin: true}).Problem(); strings.Contains(p, "CAP_NET_ADMIN (") || !strings.Contains(p, "CAP_NET_RAW") {
		t.Errorf("Problem() without CAP_NET_RAW only = %q", p)
	}
	if _, err := CurrentPrivileges(); err != nil {
		t.Errorf("CurrentPrivileges: %v", err)
	}
}

func TestPrivilegeError(t *testing.T) {
	err := privilegeError(fmt.Errorf("adding x: %w", unix.EPERM), "CAP_NET_ADMIN")
	if !errors.Is(err, ErrPrivilege) || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "needs CAP_NET_ADMIN") {
		t.Errorf("privilegeError(EPERM) = %v", err)
	}
	other := fmt.Errorf("adding x: %w", unix.ENODEV)
	if got := privilegeError(other, "CAP_NET_ADMIN"); got != other {
		t.Errorf("privilegeError(ENODEV) = %v, want it unchanged", got)
	}
}
