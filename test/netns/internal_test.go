package netns

import (
	"net/netip"
	"testing"
)

func TestMustNotSkip(t *testing.T) {
	for ci, want := range map[string]bool{"true": true, "": false, "false": false, "1": false, "TRUE": false} {
		if got := mustNotSkip(ci); got != want {
			t.Errorf("mustNotSkip(CI=%q) = %v, want %v", ci, got, want)
		}
	}
}

func TestCreatorPID(t *testing.T) {
	for name, want := range map[string]int{
		"pgbt-1234-abcdef-n1": 1234,
		"pgbt-1234-abcdef-sw": 1234,
		"pgbt-x-abcdef-n1":    0,
		"pgbt-0-abcdef-n1":    0,
		"other-1234-abc-n1":   0,
		"pgbt-1234":           0,
	} {
		got, ok := creatorPID(name)
		if ok != (want != 0) || got != want {
			t.Errorf("creatorPID(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	good := Options{}.withDefaults()
	if err := good.validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	for name, o := range map[string]Options{
		"outside 198.18/15": {IPv4: netip.MustParsePrefix("10.0.0.0/24")},
		"too small subnet":  {IPv4: netip.MustParsePrefix("198.18.0.0/25")},
		"ipv6 outside":      {IPv6: netip.MustParsePrefix("fd00::/64")},
		"bad name":          {Nodes: []string{"N1"}},
		"long name":         {Nodes: []string{"abcdefghijklm"}},
		"duplicate":         {Nodes: []string{"n1"}, Clients: []string{"n1"}},
		"reserved":          {Nodes: []string{"sw"}},
	} {
		if err := o.withDefaults().validate(); err == nil {
			t.Errorf("%s: validate accepted %+v", name, o)
		}
	}
}
