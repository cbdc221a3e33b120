package main

import "testing"

func TestPublishedAddresses(t *testing.T) {
	for _, c := range []struct {
		addrs []string
		want  string
	}{
		{[]string{"10.0.0.1:8300", "0.0.0.0:8300", "127.0.0.1"}, "10.0.0.1"},
		{[]string{"", "0.0.0.0:8300", "10.0.0.2"}, "10.0.0.2"},
		{[]string{"", "[::]:8300", "db3.example.net"}, "db3.example.net"},
		{[]string{"", "0.0.0.0:8300", "0.0.0.0"}, ""},
	} {
		if got := advertisedHost(c.addrs...); got != c.want {
			t.Errorf("advertisedHost(%q) = %q, want %q", c.addrs, got, c.want)
		}
	}
	for _, c := range []struct{ listen, host, want string }{
		{"0.0.0.0:8080", "10.0.0.1", "10.0.0.1:8080"},
		{":5432", "10.0.0.1", "10.0.0.1:5432"},
		{"[::]:5433", "fd00::1", "[fd00::1]:5433"},
		{"127.0.0.1:8080", "10.0.0.1", "127.0.0.1:8080"}, // a chosen interface stays
		{"0.0.0.0:8080", "", "0.0.0.0:8080"},             // nothing better known
		{"", "10.0.0.1", ""},                             // listener off
	} {
		if got := reachable(c.listen, c.host); got != c.want {
			t.Errorf("reachable(%q, %q) = %q, want %q", c.listen, c.host, got, c.want)
		}
	}
}
