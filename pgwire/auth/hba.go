package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// Bounds of an hba file.
const (
	MaxHBASize  = 4 << 20
	MaxHBALine  = 8192
	maxHBARules = 10000
)

// HBAMethod is what a host-based authentication rule asks of a matching client.
type HBAMethod string

// The methods an hba file may name (PgBouncer's subset of pg_hba.conf's).
const (
	HBATrust  HBAMethod = "trust"
	HBAReject HBAMethod = "reject"
	HBAMD5    HBAMethod = "md5"
	HBASCRAM  HBAMethod = "scram-sha-256"
	HBACert   HBAMethod = "cert"
	// HBAPeer (local lines only): the client's operating-system user, as the kernel reports
	// it for the socket, must be the database user it asks for.
	HBAPeer HBAMethod = "peer"
)

// HBA is a parsed host-based authentication file in pg_hba.conf's format (PgBouncer's
// auth_hba_file): the first rule that matches a connection's type, database, user and client
// address decides its method; no match refuses it. Immutable, safe for concurrent use.
type HBA struct {
	rules []hbaRule
}

type hbaRule struct {
	line   int
	local  bool // a local line: Unix-socket connections only
	ssl    int8 // 0: host (either), 1: hostssl, -1: hostnossl
	dbs    []hbaName
	users  []hbaName
	any    bool // address "all"
	prefix netip.Prefix
	method HBAMethod
}

// hbaName is a database or user field entry: a keyword (all, sameuser) unless it was quoted.
type hbaName struct {
	name    string
	keyword bool
}

// LoadHBA reads and parses an hba file.
func LoadHBA(path string) (*HBA, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseHBA(path, f)
}

// ParseHBA parses pg_hba.conf's format from r; name is used in error messages. Each line is
// `TYPE DATABASE USER ADDRESS METHOD` with TYPE host, hostssl or hostnossl; DATABASE all,
// sameuser or names; USER all or names (comma-separated lists, double quotes make a name of a
// keyword or keep spaces and commas); ADDRESS all, a CIDR prefix, or an address followed by a
// netmask; METHOD trust, reject, md5, scram-sha-256 or cert. `local DATABASE USER METHOD` lines
// apply to clients on the proxy's Unix sockets, with peer as a further method. '#' starts a
// comment. What a proxy cannot honour is refused with the line and the reason rather than
// ignored: @file inclusions, +group names, host names, samehost/samenet, other methods and
// method options. Errors list every bad line (up to 20).
func ParseHBA(name string, r io.Reader) (*HBA, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxHBASize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxHBASize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, MaxHBASize)
	}
	h := &HBA{}
	var errs []error
	for i, line := range bytes.Split(data, []byte("\n")) {
		if len(errs) >= maxReportErrors {
			break
		}
		n := i + 1
		bad := func(format string, args ...any) {
			errs = append(errs, &ParseError{File: name, Line: n, Msg: fmt.Sprintf(format, args...)})
		}
		if len(line) > MaxHBALine {
			bad("line longer than %d bytes", MaxHBALine)
			continue
		}
		fields, err := hbaFields(string(line))
		if err != nil {
			bad("%v", err)
			continue
		}
		if len(fields) == 0 {
			continue
		}
		if len(h.rules) >= maxHBARules {
			bad("more than %d rules", maxHBARules)
			break
		}
		rule, msg := parseHBARule(n, fields)
		if msg != "" {
			bad("%s", msg)
			continue
		}
		h.rules = append(h.rules, rule)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return h, nil
}

// hbaToken is one whitespace-separated field: its comma-separated items, each marked quoted
// or not.
type hbaToken []hbaName

// hbaFields splits a line into fields, honouring double quotes and dropping a comment.
func hbaFields(line string) ([]hbaToken, error) {
	var fields []hbaToken
	var cur hbaToken
	var item strings.Builder
	inField, inQuote, quoted := false, false, false
	endItem := func() {
		cur = append(cur, hbaName{name: item.String(), keyword: !quoted})
		item.Reset()
		quoted = false
	}
	endField := func() {
		if inField {
			endItem()
			fields = append(fields, cur)
			cur, inField = nil, false
		}
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '"':
			inQuote = false
		case inQuote:
			item.WriteByte(c)
		case c == '#':
			endField()
			return fields, nil
		case c == ' ' || c == '\t' || c == '\r':
			endField()
		case c == '"':
			inField, inQuote, quoted = true, true, true
		case c == ',':
			if !inField {
				return nil, errors.New("a list starts with a comma")
			}
			endItem()
		default:
			inField = true
			item.WriteByte(c)
		}
	}
	if inQuote {
		return nil, errors.New("unterminated quoted string")
	}
	endField()
	return fields, nil
}

func parseHBARule(line int, f []hbaToken) (hbaRule, string) {
	r := hbaRule{line: line}
	single := func(t hbaToken) (string, bool) {
		return t[0].name, len(t) == 1 && t[0].keyword
	}
	typ, ok := single(f[0])
	if !ok {
		return r, "the connection type must be one word"
	}
	switch typ {
	case "host":
	case "hostssl":
		r.ssl = 1
	case "hostnossl":
		r.ssl = -1
	case "local":
		r.local = true
	case "hostgssenc", "hostnogssenc":
		return r, typ + " is not supported: the proxy does not offer GSSAPI encryption"
	default:
		return r, fmt.Sprintf("unknown connection type %q (use host, hostssl or hostnossl)", typ)
	}
	if r.local && len(f) < 4 {
		return r, "expected local DATABASE USER METHOD"
	}
	if !r.local && len(f) < 5 {
		return r, "expected TYPE DATABASE USER ADDRESS METHOD"
	}
	for _, n := range f[1] {
		switch {
		case n.name == "":
			return r, "empty database name"
		case n.keyword && strings.HasPrefix(n.name, "@"):
			return r, "@file inclusions are not supported; list the databases"
		case n.keyword && (n.name == "samerole" || n.name == "samegroup"):
			return r, n.name + " is not supported: the proxy does not know role membership"
		case n.keyword && n.name == "replication":
			return r, "replication connections are not supported through the proxy"
		}
	}
	r.dbs = f[1]
	for _, n := range f[2] {
		switch {
		case n.name == "":
			return r, "empty user name"
		case n.keyword && strings.HasPrefix(n.name, "@"):
			return r, "@file inclusions are not supported; list the users"
		case n.keyword && strings.HasPrefix(n.name, "+"):
			return r, "+group names are not supported: the proxy does not know role membership; list the users"
		}
	}
	r.users = f[2]
	if r.local {
		if a, _ := single(f[3]); looksLikeAddress(a) {
			return r, "a local line has no address: local DATABASE USER METHOD"
		}
		return parseHBAMethod(r, f[3:])
	}
	addr, ok := single(f[3])
	if !ok {
		return r, "the address must be one word"
	}
	rest := f[4:]
	switch {
	case addr == "all":
		r.any = true
	case addr == "samehost" || addr == "samenet":
		return r, addr + " is not supported; give the address prefix"
	case strings.Contains(addr, "/"):
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return r, fmt.Sprintf("invalid address prefix %q", addr)
		}
		r.prefix = p.Masked()
	default:
		ip, err := netip.ParseAddr(addr)
		if err != nil {
			return r, fmt.Sprintf("invalid address %q: host names are not supported; give an address prefix", addr)
		}
		mask, ok := single(rest[0])
		if !ok || len(rest) < 2 {
			return r, "an address without a prefix length must be followed by a netmask"
		}
		m, err := netip.ParseAddr(mask)
		if err != nil || m.BitLen() != ip.BitLen() {
			return r, fmt.Sprintf("invalid netmask %q", mask)
		}
		bits, ok := maskBits(m.AsSlice())
		if !ok {
			return r, fmt.Sprintf("netmask %q is not contiguous", mask)
		}
		r.prefix = netip.PrefixFrom(ip, bits).Masked()
		rest = rest[1:]
	}
	return parseHBAMethod(r, rest)
}

// looksLikeAddress reports whether a field is an ADDRESS of a host line rather than a method.
func looksLikeAddress(a string) bool {
	_, err := netip.ParseAddr(a)
	return err == nil || strings.Contains(a, "/") || a == "all" || a == "samehost" || a == "samenet"
}

// parseHBAMethod reads a rule's method (and refuses options) from the fields after its
// address (a local line has none).
func parseHBAMethod(r hbaRule, rest []hbaToken) (hbaRule, string) {
	method, ok := rest[0][0].name, len(rest[0]) == 1 && rest[0][0].keyword
	if !ok {
		return r, "the method must be one word"
	}
	switch m := HBAMethod(method); m {
	case HBATrust, HBAReject, HBAMD5, HBASCRAM, HBACert, HBAPeer:
		r.method = m
	case "password":
		return r, "password (cleartext) is not supported; use scram-sha-256 or md5"
	default:
		return r, fmt.Sprintf("method %q is not supported (use trust, reject, md5, scram-sha-256, cert, or peer on local lines)", method)
	}
	if len(rest) > 1 {
		return r, "method options are not supported"
	}
	if r.method == HBACert && r.ssl != 1 {
		return r, "cert needs a hostssl line"
	}
	if r.method == HBAPeer && !r.local {
		return r, "peer needs a local line: the kernel knows the other side's user only on a Unix socket"
	}
	return r, ""
}

// maskBits returns the prefix length of a contiguous netmask.
func maskBits(b []byte) (int, bool) {
	bits, done := 0, false
	for _, x := range b {
		for i := 7; i >= 0; i-- {
			set := x&(1<<i) != 0
			switch {
			case set && done:
				return 0, false
			case set:
				bits++
			default:
				done = true
			}
		}
	}
	return bits, true
}

// Match returns the method of the first rule matching a TCP connection from addr (tls: it
// uses TLS) for database and user, with the rule's line; ok is false when no rule matches.
func (h *HBA) Match(addr netip.Addr, tls bool, database, user string) (m HBAMethod, line int, ok bool) {
	addr = addr.Unmap()
	for _, r := range h.rules {
		if r.local || r.ssl == 1 && !tls || r.ssl == -1 && tls {
			continue
		}
		if !r.any && !r.prefix.Contains(addr) {
			continue
		}
		if !matchNames(r.dbs, database, user, true) || !matchNames(r.users, user, user, false) {
			continue
		}
		return r.method, r.line, true
	}
	return "", 0, false
}

// MatchLocal returns the method of the first local rule matching a Unix-socket connection for
// database and user, with the rule's line; ok is false when no rule matches.
func (h *HBA) MatchLocal(database, user string) (m HBAMethod, line int, ok bool) {
	for _, r := range h.rules {
		if r.local && matchNames(r.dbs, database, user, true) && matchNames(r.users, user, user, false) {
			return r.method, r.line, true
		}
	}
	return "", 0, false
}

// LocalLine returns the line of the first local rule, 0 when there is none.
func (h *HBA) LocalLine() int {
	for _, r := range h.rules {
		if r.local {
			return r.line
		}
	}
	return 0
}

// Methods lists the methods the rules use.
func (h *HBA) Methods() map[HBAMethod]bool {
	out := map[HBAMethod]bool{}
	for _, r := range h.rules {
		out[r.method] = true
	}
	return out
}

func matchNames(list []hbaName, name, user string, database bool) bool {
	for _, n := range list {
		switch {
		case n.keyword && n.name == "all":
			return true
		case database && n.keyword && n.name == "sameuser":
			if name == user {
				return true
			}
		case n.name == name:
			return true
		}
	}
	return false
}
