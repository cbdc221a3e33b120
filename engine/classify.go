package engine

import (
	"bytes"
	"regexp"
	"strings"

	"github.com/pgbastion/pgbastion/pool"
)

type queryKind uint8

const (
	qOther queryKind = iota
	qDeallocate
	qSet
	qSessionState
)

type queryClass struct {
	kind queryKind
	// name is the statement name (DEALLOCATE) or setting name (SET/RESET), lower case.
	name  string
	sql   string
	reset bool
	// config marks a qSet made by set_config(name, value, false).
	config bool
	value  string
}

// setting returns the session setting a qSet statement changes.
func (c queryClass) setting() *pool.Setting {
	if c.reset {
		return &pool.Setting{Name: c.name}
	}
	return &pool.Setting{Name: c.name, SQL: c.sql, Config: c.config, Value: c.value}
}

// classifyQuery recognises, in a short simple Query, the statements that change session state a
// transaction pooler must follow: DEALLOCATE of a client's statement, SET/RESET of one setting,
// and statements whose effect the proxy cannot replay (PREPARE, LISTEN, SET ROLE and the like),
// which make the server need a reset before reuse. Anything with more than one statement or
// that it does not understand is qOther, or qSessionState when it starts like one of those.
func classifyQuery(q []byte) queryClass {
	if !mayChangeSession(q) {
		return queryClass{}
	}
	s := strings.TrimSpace(stripComments(string(q)))
	s = strings.TrimSuffix(s, ";")
	s = strings.TrimSpace(s)
	if s == "" || strings.Contains(s, ";") {
		if hasSessionKeyword(s) || holdsAdvisoryLock(q) || hasSetConfig(q) && !onlyLocalSetConfig(s) {
			return queryClass{kind: qSessionState}
		}
		return queryClass{}
	}
	if hasSetConfig(q) {
		if c, ok := classifySetConfig(s); ok {
			return c
		}
	}
	words := strings.Fields(s)
	first := strings.ToUpper(words[0])
	switch first {
	case "DEALLOCATE":
		w := words[1:]
		if len(w) > 0 && strings.EqualFold(w[0], "PREPARE") {
			w = w[1:]
		}
		if len(w) == 1 && !strings.EqualFold(w[0], "ALL") {
			return queryClass{kind: qDeallocate, name: identName(w[0])}
		}
	case "SET":
		w := words[1:]
		if len(w) > 0 && strings.EqualFold(w[0], "LOCAL") {
			return queryClass{} // ends with the transaction
		}
		if len(w) > 0 && strings.EqualFold(w[0], "SESSION") {
			w = w[1:]
			if len(w) > 0 && strings.EqualFold(w[0], "AUTHORIZATION") {
				return queryClass{kind: qSessionState}
			}
			if len(w) > 0 && strings.EqualFold(w[0], "CHARACTERISTICS") {
				return queryClass{kind: qSessionState}
			}
		}
		if len(w) == 0 {
			return queryClass{}
		}
		name := w[0]
		if i := strings.IndexAny(name, "="); i > 0 {
			name = name[:i]
		}
		lname := strings.ToLower(name)
		switch lname {
		case "role", "transaction", "constraints":
			return queryClass{kind: qSessionState}
		}
		if strings.HasPrefix(lname, "\"") || !isIdent(lname) {
			return queryClass{kind: qSessionState}
		}
		return queryClass{kind: qSet, name: lname, sql: s}
	case "RESET":
		if len(words) == 2 {
			n := strings.ToLower(words[1])
			if n == "all" || n == "role" || n == "session" {
				return queryClass{kind: qSessionState}
			}
			if isIdent(n) {
				return queryClass{kind: qSet, name: n, reset: true}
			}
		}
		return queryClass{kind: qSessionState}
	}
	if hasSessionKeyword(s) || holdsAdvisoryLock(q) {
		return queryClass{kind: qSessionState}
	}
	return queryClass{}
}

// setConfigSession matches a statement that is just one set_config call with literal
// arguments, as applications and ORMs send it: SELECT [pg_catalog.]set_config('name', 'value',
// is_local) [AS alias]. Literals with backslashes are left out (their meaning depends on
// standard_conforming_strings).
var setConfigSession = regexp.MustCompile(`(?is)^select\s+(?:pg_catalog\s*\.\s*)?set_config\s*\(\s*'((?:[^'\\]|'')*)'\s*,\s*'((?:[^'\\]|'')*)'\s*,\s*(true|false|'(?:t|f|true|false|on|off|yes|no|1|0)')\s*\)\s*(?:as\s+(?:\w+|"[^"]*"))?$`)

// setConfigLocal matches one set_config call whose is_local argument is a literal true: its
// change ends with the transaction (the common row-level-security idiom).
var setConfigLocal = regexp.MustCompile(`(?is)\bset_config\s*\((?:[^()';]|'(?:[^']|'')*')*,\s*(?:true|'(?:t|true|on|yes|1)')\s*\)`)

var setConfigWord = regexp.MustCompile(`(?i)\bset_config\b`)

// classifySetConfig follows set_config(name, value, false), which changes the session like a
// SET does but completes as "SELECT 1". A single call with literal arguments is followed
// (its value is replayed on the client's next servers like a reported setting's); one with is_local true is
// transaction-local and changes nothing afterwards; any other use (arguments the proxy cannot
// read, several calls, other statements around it) makes the server need a reset before
// reuse, so that the setting cannot leak to another client. ok is false when s does not
// concern set_config after all.
func classifySetConfig(s string) (queryClass, bool) {
	if m := setConfigSession.FindStringSubmatch(s); m != nil {
		switch strings.ToLower(strings.Trim(m[3], "'")) {
		case "true", "t", "on", "yes", "1":
			return queryClass{}, false // transaction-local: other statements decide
		}
		name := strings.ToLower(strings.ReplaceAll(m[1], "''", "'"))
		value := strings.ReplaceAll(m[2], "''", "'")
		if name == "" {
			return queryClass{kind: qSessionState}, true
		}
		return queryClass{kind: qSet, name: name, config: true, value: value}, true
	}
	if onlyLocalSetConfig(s) {
		return queryClass{}, false
	}
	return queryClass{kind: qSessionState}, true
}

// onlyLocalSetConfig reports whether every set_config in s is a transaction-local call.
func onlyLocalSetConfig(s string) bool {
	return len(setConfigWord.FindAllStringIndex(s, -1)) == len(setConfigLocal.FindAllStringIndex(s, -1))
}

// hasSetConfig is the cheap, allocation-free test for the word set_config in any letter case.
func hasSetConfig(q []byte) bool { return anyUnderscore(q, isSetConfigAt) }

var setConfigName = []byte("SET_CONFIG")

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// holdsAdvisoryLock reports a call of a session-level advisory lock function
// (pg_advisory_lock, pg_try_advisory_lock and their _shared forms; the _xact_ forms end with
// the transaction and do not match). The lock outlives the client's transaction on that
// server, so the server must be reset (DISCARD ALL unlocks all) before another client gets it.
func holdsAdvisoryLock(q []byte) bool { return anyUnderscore(q, isAdvisoryLockAt) }

var advisoryLockName = []byte("ADVISORY_LOCK")

// isAdvisoryLockAt reports whether the underscore at q[i] is the one of "advisory_lock", in
// any letter case.
func isAdvisoryLockAt(q []byte, i int) bool {
	return i >= 8 && i+5 <= len(q) && asciiEqualFold(q[i-8:i+5], advisoryLockName)
}

// isSetConfigAt reports whether the underscore at q[i] is the one of a word "set_config".
func isSetConfigAt(q []byte, i int) bool {
	return i >= 3 && i+7 <= len(q) && asciiEqualFold(q[i-3:i+7], setConfigName) && (i == 3 || !isWordByte(q[i-4]))
}

// callsSessionFunction is holdsAdvisoryLock(q) || hasSetConfig(q) in one pass over the
// underscores of q.
func callsSessionFunction(q []byte) bool {
	return anyUnderscore(q, func(q []byte, i int) bool { return isAdvisoryLockAt(q, i) || isSetConfigAt(q, i) })
}

// anyUnderscore reports whether at holds for the position of some underscore in q. The names
// the screens look for (set_config, advisory_lock) each contain one, so a vectorised search
// for underscores visits only the few candidate positions of a query.
func anyUnderscore(q []byte, at func(q []byte, i int) bool) bool {
	for i := 0; i < len(q); i++ {
		j := bytes.IndexByte(q[i:], '_')
		if j < 0 {
			return false
		}
		i += j
		if at(q, i) {
			return true
		}
	}
	return false
}

// sessionWords start statements whose effect may outlive the transaction.
var sessionWords = [][]byte{[]byte("SET"), []byte("RESET"), []byte("DEALLOCATE"), []byte("PREPARE"),
	[]byte("LISTEN"), []byte("LOAD"), []byte("DISCARD"), []byte("DECLARE"), []byte("CREATE")}

// mayChangeSession is the cheap, allocation-free first test of a statement text (a simple
// Query, or the text of a Parse): only when it reports true is the text classified. It looks at
// the first word of every statement (skipping comments and quoted text) and for session-level
// advisory locks.
func mayChangeSession(q []byte) bool {
	i := 0
	for i < len(q) {
		i = skipSpaceAndComments(q, i)
		start := i
		for i < len(q) && (q[i] >= 'a' && q[i] <= 'z' || q[i] >= 'A' && q[i] <= 'Z') {
			i++
		}
		w := q[start:i]
		for _, sw := range sessionWords {
			if len(w) == len(sw) && asciiEqualFold(w, sw) {
				return true
			}
		}
		// Skip to the end of this statement, stepping over quoted text. Most statements
		// quote nothing: found with a few vectorised searches instead of a byte loop.
		end := len(q)
		if k := bytes.IndexByte(q[i:], ';'); k >= 0 {
			end = i + k
		}
		if seg := q[i:end]; bytes.IndexByte(seg, '\'') < 0 && bytes.IndexByte(seg, '"') < 0 && bytes.IndexByte(seg, '$') < 0 {
			i = end + 1
			continue
		}
		for i < len(q) && q[i] != ';' {
			if !stmtSpecial[q[i]] {
				i++
				continue
			}
			switch c := q[i]; c {
			case '\'', '"':
				i++
				for i < len(q) && q[i] != c {
					i++
				}
			case '$':
				if i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9' {
					break // a parameter ($1): no dollar-quote tag starts with a digit
				}
				// Dollar quoting may hide anything: classify the text properly.
				return true
			}
			i++
		}
		i++
	}
	return callsSessionFunction(q)
}

// stmtSpecial marks the bytes mayChangeSession must look at inside a statement.
var stmtSpecial = [256]bool{'\'': true, '"': true, '$': true}

// hasSessionKeyword reports statements whose effects outlive the transaction on that server.
func hasSessionKeyword(s string) bool {
	for _, stmt := range strings.Split(s, ";") {
		f := strings.Fields(stmt)
		if len(f) == 0 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "PREPARE", "LISTEN", "SET", "RESET", "LOAD", "DISCARD":
			return true
		case "DECLARE":
			if strings.Contains(strings.ToUpper(stmt), "WITH HOLD") {
				return true
			}
		case "CREATE":
			u := strings.ToUpper(stmt)
			if (strings.Contains(u, " TEMP ") || strings.Contains(u, " TEMPORARY ")) && !strings.Contains(u, "ON COMMIT DROP") {
				return true
			}
		}
	}
	return false
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' && i > 0) {
			return false
		}
	}
	return true
}

// identName returns a statement name as PostgreSQL stores it: unquoted names fold to lower case.
func identName(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
	}
	return strings.ToLower(s)
}

// stripComments removes -- and /* */ comments outside string literals.
func stripComments(s string) string {
	if !strings.Contains(s, "--") && !strings.Contains(s, "/*") {
		return s
	}
	var b strings.Builder
	inStr := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inStr:
			b.WriteByte(c)
			if c == '\'' {
				inStr = false
			}
		case c == '\'':
			inStr = true
			b.WriteByte(c)
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' {
				i++
			}
			b.WriteByte(' ')
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			i += 2
			for i+1 < len(s) && !(s[i] == '*' && s[i+1] == '/') {
				i++
			}
			i++
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func skipSpaceAndComments(q []byte, i int) int {
	for i < len(q) {
		switch {
		case q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r' || q[i] == '(':
			i++
		case q[i] == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case q[i] == '/' && i+1 < len(q) && q[i+1] == '*':
			i += 2
			for i+1 < len(q) && !(q[i] == '*' && q[i+1] == '/') {
				i++
			}
			i = min(i+2, len(q)) // past "*/", or the end of an unterminated comment
		default:
			return i
		}
	}
	return i
}

func asciiEqualFold(a, b []byte) bool {
	for i := range a {
		x, y := a[i], b[i]
		if x >= 'a' && x <= 'z' {
			x -= 'a' - 'A'
		}
		if y >= 'a' && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
