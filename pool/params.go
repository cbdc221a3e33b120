package pool

import (
	"hash/maphash"
	"slices"
	"strings"
)

// untracked lists reported parameters a client cannot change with SET, or must not have
// replayed: they describe the server or the login, not the session.
var untracked = map[string]bool{
	"server_version":        true,
	"server_version_num":    true,
	"server_encoding":       true,
	"integer_datetimes":     true,
	"is_superuser":          true,
	"session_authorization": true,
	"in_hot_standby":        true,
}

// Tracked reports whether a setting is part of a client's session state that follows it from
// server to server.
func Tracked(name string) bool { return !untracked[name] }

var paramSeed = maphash.MakeSeed()

func settingHash(name, value string) uint64 {
	var h maphash.Hash
	h.SetSeed(paramSeed)
	h.WriteString(name)
	h.WriteByte(0)
	h.WriteString(value)
	return h.Sum64()
}

// Params is a set of session settings (name to value) with a fingerprint that lets two sets be
// compared in O(1) on every attach; only when fingerprints differ is the full difference built.
// Used by the goroutine that owns the connection.
//
// A value that starts with a NUL byte is a SQL statement to replay verbatim (a SET the client
// ran that the server does not report); any other value is applied with set_config.
type Params struct {
	m  map[string]string
	fp uint64
}

// SQLValue marks a value as a statement to replay verbatim.
func SQLValue(stmt string) string { return "\x00" + stmt }

// IsSQLValue reports whether v was made by SQLValue.
func IsSQLValue(v string) bool { return len(v) > 0 && v[0] == 0 }

// NewParams returns an empty set.
func NewParams() *Params { return &Params{m: make(map[string]string)} }

// Set records name=value. Untracked names are stored but excluded from the fingerprint.
func (p *Params) Set(name, value string) {
	old, had := p.m[name]
	if had && old == value {
		return
	}
	if Tracked(name) {
		if had {
			p.fp -= settingHash(name, old)
		}
		p.fp += settingHash(name, value)
	}
	p.m[name] = value
}

// SetBytes is Set for values decoded from the wire; it allocates only when the value changed.
func (p *Params) SetBytes(name, value []byte) bool {
	if old, ok := p.m[string(name)]; ok && old == string(value) {
		return false
	}
	p.Set(string(name), string(value))
	return true
}

// Delete removes a setting.
func (p *Params) Delete(name string) {
	if old, ok := p.m[name]; ok {
		if Tracked(name) {
			p.fp -= settingHash(name, old)
		}
		delete(p.m, name)
	}
}

// Get returns a setting's value.
func (p *Params) Get(name string) (string, bool) {
	v, ok := p.m[name]
	return v, ok
}

// Has reports whether name is set.
func (p *Params) Has(name string) bool {
	_, ok := p.m[name]
	return ok
}

// Canonical returns the spelling under which p holds a setting: setting names are
// case-insensitive in PostgreSQL, but reported ones keep the server's spelling ("TimeZone",
// "DateStyle"). It returns name itself when p has no such setting.
func (p *Params) Canonical(name string) string {
	if _, ok := p.m[name]; ok {
		return name
	}
	for k := range p.m {
		if strings.EqualFold(k, name) {
			return k
		}
	}
	return name
}

// Len returns the number of settings.
func (p *Params) Len() int { return len(p.m) }

// Each calls f for every setting in name order.
func (p *Params) Each(f func(name, value string)) {
	names := make([]string, 0, len(p.m))
	for k := range p.m {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		f(k, p.m[k])
	}
}

// CopyFrom replaces the contents with those of q.
func (p *Params) CopyFrom(q *Params) {
	clear(p.m)
	for k, v := range q.m {
		p.m[k] = v
	}
	p.fp = q.fp
}

// SameTracked reports whether p and q agree on every tracked setting (by fingerprint).
func (p *Params) SameTracked(q *Params) bool { return p.fp == q.fp }

// SyncSQL returns the SQL that makes a server whose settings are server match the client's
// settings want: set_config for values that differ (set_config takes the value as text, so
// list-valued settings such as search_path keep their meaning) and RESET for settings the
// server has that the client does not. It returns "" when nothing differs. The server's Params
// are updated to the expected result.
func SyncSQL(want, server *Params) string {
	if want.SameTracked(server) {
		return ""
	}
	var b strings.Builder
	var sets, stmts []string
	want.Each(func(name, value string) {
		if !Tracked(name) {
			return
		}
		if cur, ok := server.m[name]; ok && cur == value {
			return
		}
		if IsSQLValue(value) {
			stmts = append(stmts, value[1:])
			return
		}
		sets = append(sets, "pg_catalog.set_config("+quoteLiteral(name)+", "+quoteLiteral(value)+", false)")
	})
	var resets []string
	server.Each(func(name, _ string) {
		if !Tracked(name) {
			return
		}
		if _, ok := want.m[name]; !ok {
			resets = append(resets, name)
		}
	})
	if len(sets) > 0 {
		b.WriteString("SELECT ")
		b.WriteString(strings.Join(sets, ", "))
		b.WriteString(";")
	}
	for _, st := range stmts {
		b.WriteString(st)
		b.WriteString(";")
	}
	for _, name := range resets {
		b.WriteString("RESET ")
		b.WriteString(quoteIdent(name))
		b.WriteString(";")
	}
	for _, name := range resets {
		server.Delete(name)
	}
	want.Each(func(name, value string) {
		if Tracked(name) {
			server.Set(name, value)
		}
	})
	return b.String()
}

// quoteLiteral quotes s as an escape-string literal, correct whatever the server's
// standard_conforming_strings.
func quoteLiteral(s string) string {
	var b strings.Builder
	b.WriteString("E'")
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
