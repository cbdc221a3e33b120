package auth

import (
	"net/netip"
	"strings"
	"testing"
)

const testHBA = `# TYPE  DATABASE        USER            ADDRESS                 METHOD
hostssl all             admin           10.0.0.0/8              cert
host    all             admin           all                     reject
host    sameuser        all             192.168.1.0 255.255.255.0 md5
host    "all",app       alice,"bob smith" 10.1.0.0/16           scram-sha-256   # trailing comment
hostnossl app           all             ::1/128                 trust
host    all             all             0.0.0.0/0               scram-sha-256
`

func TestHBAMatchesTheFirstRule(t *testing.T) {
	h, err := ParseHBA("hba.conf", strings.NewReader(testHBA))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		addr     string
		tls      bool
		db, user string
		want     HBAMethod
		line     int
	}{
		{"10.2.3.4", true, "app", "admin", HBACert, 2},
		{"10.2.3.4", false, "app", "admin", HBAReject, 3},
		{"192.168.1.77", false, "carol", "carol", HBAMD5, 4},
		{"192.168.1.77", false, "app", "carol", HBASCRAM, 7},    // not sameuser: falls to the last line
		{"10.1.2.3", false, "all", "bob smith", HBASCRAM, 5},    // a database literally named "all"
		{"10.1.2.3", false, "other", "alice", HBASCRAM, 7},      // "all" quoted is a name, not the keyword
		{"::1", false, "app", "x", HBATrust, 6},                 // hostnossl without TLS
		{"::ffff:10.1.0.9", false, "app", "alice", HBASCRAM, 5}, // an IPv4-mapped client
	} {
		m, line, ok := h.Match(netip.MustParseAddr(c.addr), c.tls, c.db, c.user)
		if !ok || m != c.want || line != c.line {
			t.Errorf("%s tls=%v %s/%s: %v line %d (%v), want %v line %d", c.addr, c.tls, c.db, c.user, m, line, ok, c.want, c.line)
		}
	}
	if _, _, ok := h.Match(netip.MustParseAddr("::1"), true, "app", "x"); ok {
		t.Error("an IPv6 TLS client matched a rule (only 0.0.0.0/0 is left, which is IPv4)")
	}
	if got := h.Methods(); !got[HBACert] || !got[HBAMD5] || len(got) != 5 {
		t.Errorf("methods %v", got)
	}
}

func TestHBARefusesWhatItCannotHonour(t *testing.T) {
	for line, want := range map[string]string{
		`local all all`:                                 "expected local DATABASE USER METHOD",
		`local all all 127.0.0.1/32 md5`:                "a local line has no address",
		`host all all 10.0.0.0/8 peer`:                  "peer needs a local line",
		`host all all 10.0.0.0/8 password`:              "cleartext",
		`host all all 10.0.0.0/8 ident`:                 "not supported",
		`host all +admins 10.0.0.0/8 md5`:               "+group",
		`host @dbs all 10.0.0.0/8 md5`:                  "@file",
		`host all all db.example.com md5`:               "host names",
		`host all all samenet md5`:                      "samenet",
		`host all all 10.0.0.0/33 md5`:                  "invalid address prefix",
		`host all all 10.0.0.1 255.0.255.0 md5`:         "not contiguous",
		`host all all 10.0.0.1 md5`:                     "netmask",
		`host all all 10.0.0.0/8 scram-sha-256 foo=bar`: "options",
		`host all all 10.0.0.0/8 cert`:                  "hostssl",
		`host replication all 10.0.0.0/8 md5`:           "replication",
		`host all all`:                                  "expected TYPE",
		`host "all all 10.0.0.0/8 md5`:                  "unterminated",
		`gss all all 10.0.0.0/8 md5`:                    "unknown connection type",
	} {
		_, err := ParseHBA("hba.conf", strings.NewReader("# ok\n"+line+"\n"))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "hba.conf:2:") {
			t.Errorf("%q: %v, want an error at hba.conf:2 saying %q", line, err, want)
		}
	}
}

// local lines apply to Unix-socket clients only, host lines never to them.
func TestHBALocalLines(t *testing.T) {
	h, err := ParseHBA("hba.conf", strings.NewReader(`
local  all   app        peer
local  all   all        scram-sha-256
host   all   all        0.0.0.0/0   trust
`))
	if err != nil {
		t.Fatal(err)
	}
	if m, line, ok := h.MatchLocal("db", "app"); !ok || m != HBAPeer || line != 2 {
		t.Errorf("local app: %v line %d (%v)", m, line, ok)
	}
	if m, line, ok := h.MatchLocal("db", "bob"); !ok || m != HBASCRAM || line != 3 {
		t.Errorf("local bob: %v line %d (%v)", m, line, ok)
	}
	if m, line, ok := h.Match(netip.MustParseAddr("10.0.0.1"), false, "db", "app"); !ok || m != HBATrust || line != 4 {
		t.Errorf("TCP app: %v line %d (%v), want the host line", m, line, ok)
	}
	only, _ := ParseHBA("hba.conf", strings.NewReader("host all all 0.0.0.0/0 trust\n"))
	if _, _, ok := only.MatchLocal("db", "app"); ok {
		t.Error("a host line matched a Unix-socket client")
	}
}

func FuzzParseHBA(f *testing.F) {
	f.Add(testHBA)
	f.Add("host a,\"b,c\" d 1.2.3.4 255.255.255.255 trust\n")
	f.Add("host all all ::/0 md5 # x\n\"")
	f.Add("local all app peer\nlocal all all md5\n")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHBA("fuzz", strings.NewReader(s))
		if err != nil {
			return
		}
		for _, a := range []string{"127.0.0.1", "::1", "10.1.2.3"} {
			if m, _, ok := h.Match(netip.MustParseAddr(a), a == "::1", "db", "user"); ok && (!h.Methods()[m] || m == HBAPeer) {
				t.Fatalf("matched method %q that no rule names, or peer over TCP", m)
			}
		}
	})
}
