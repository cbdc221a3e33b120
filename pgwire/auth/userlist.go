package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// Bounds of an auth_file. Usernames and passwords match PgBouncer's MAX_USERNAME and
// MAX_PASSWORD, so every file PgBouncer loads loads here.
const (
	MaxUserlistSize = 64 << 20
	MaxUserlistLine = 8192
	MaxUsernameLen  = 128
	MaxPasswordLen  = 2048
	maxReportErrors = 20
)

// Userlist is a parsed auth_file: user name to secret. It is immutable and safe for concurrent
// use; a reload builds a new one.
type Userlist struct {
	users map[string]*Secret
}

// ParseError is one bad line of an auth_file. It never contains a password or secret.
type ParseError struct {
	File string
	Line int
	Msg  string
}

func (e *ParseError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// LoadUserlist reads and parses an auth_file.
func LoadUserlist(path string) (*Userlist, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseUserlist(path, f)
}

// ParseUserlist parses PgBouncer's auth_file format from r; name is used in error messages.
//
// Each line is `"username" "password"`; a double quote inside a field is written twice; lines
// starting with ';' and blank lines are ignored, as is anything after the password that is
// separated from it by whitespace. The password is plaintext, an md5 secret or a SCRAM-SHA-256
// secret (see ParseSecret). A user may appear once. The error lists every bad line (up to 20),
// each as a *ParseError, joined.
func ParseUserlist(name string, r io.Reader) (*Userlist, error) {
	return parseUserlist(name, r, MaxUserlistSize)
}

func parseUserlist(name string, r io.Reader, maxSize int) (*Userlist, error) {
	data, err := io.ReadAll(io.LimitReader(r, int64(maxSize)+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > maxSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxSize)
	}
	u := &Userlist{users: make(map[string]*Secret)}
	defined := make(map[string]int)
	var errs []error
	bad := 0
	fail := func(line int, format string, args ...any) {
		bad++
		if len(errs) < maxReportErrors {
			errs = append(errs, &ParseError{File: name, Line: line, Msg: fmt.Sprintf(format, args...)})
		}
	}
	for lineno := 1; len(data) > 0; lineno++ {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > MaxUserlistLine {
			fail(lineno, "line longer than %d bytes", MaxUserlistLine)
			continue
		}
		user, password, msg := parseUserlistLine(line)
		if msg != "" {
			fail(lineno, "%s", msg)
			continue
		}
		if user == "" { // blank or comment line
			continue
		}
		if prev, dup := defined[user]; dup {
			fail(lineno, "duplicate user name (first defined on line %d)", prev)
			continue
		}
		s, err := ParseSecret(user, password)
		if err != nil {
			fail(lineno, "%v", err)
			continue
		}
		defined[user] = lineno
		u.users[user] = s
	}
	if bad > len(errs) {
		errs = append(errs, fmt.Errorf("%s: %d more bad lines", name, bad-len(errs)))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return u, nil
}

// parseUserlistLine parses one line. A blank or comment line returns empty strings and no
// message. msg says what is wrong without quoting any part of the line, not even the user
// name: on a malformed line what looks like the user name may hold the password.
func parseUserlistLine(line []byte) (user, password, msg string) {
	p := bytes.TrimLeft(line, " \t")
	if len(p) == 0 || p[0] == ';' {
		return "", "", ""
	}
	if p[0] != '"' {
		return "", "", `line must start with a double-quoted user name`
	}
	user, p, ok := cutQuoted(p)
	if !ok {
		return "", "", "user name has no closing double quote"
	}
	switch {
	case user == "":
		return "", "", "user name is empty"
	case len(user) > MaxUsernameLen:
		return "", "", fmt.Sprintf("user name longer than %d bytes", MaxUsernameLen)
	case bytes.IndexByte([]byte(user), 0) >= 0:
		return "", "", "user name contains a NUL byte"
	}
	rest := bytes.TrimLeft(p, " \t")
	if len(rest) == 0 {
		return "", "", "no password field after the user name"
	}
	if len(rest) == len(p) || rest[0] != '"' {
		return "", "", `expected whitespace and a double-quoted password after the user name (write a double quote inside a field as "")`
	}
	password, p, ok = cutQuoted(rest)
	switch {
	case !ok:
		return "", "", "password has no closing double quote"
	case len(password) > MaxPasswordLen:
		return "", "", fmt.Sprintf("password longer than %d bytes", MaxPasswordLen)
	case bytes.IndexByte([]byte(password), 0) >= 0:
		return "", "", "password contains a NUL byte"
	case len(p) > 0 && p[0] != ' ' && p[0] != '\t':
		return "", "", `unexpected text right after the password's closing quote (write a double quote inside a field as "")`
	}
	return user, password, ""
}

// cutQuoted reads a double-quoted field at the start of p ("" inside is one quote).
func cutQuoted(p []byte) (field string, rest []byte, ok bool) {
	var b []byte
	for i := 1; i < len(p); i++ {
		if p[i] != '"' {
			continue
		}
		if i+1 < len(p) && p[i+1] == '"' {
			b = append(b, p[1:i+1]...)
			p = p[i+1:]
			i = 0
			continue
		}
		b = append(b, p[1:i]...)
		return string(b), p[i+1:], true
	}
	return "", nil, false
}

// Lookup returns the secret of user.
func (u *Userlist) Lookup(user string) (*Secret, bool) {
	s, ok := u.users[user]
	return s, ok
}

// Len returns the number of users.
func (u *Userlist) Len() int { return len(u.users) }

// Users returns the user names, sorted.
func (u *Userlist) Users() []string {
	names := make([]string, 0, len(u.users))
	for n := range u.users {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DeriveSCRAM derives the SCRAM credentials of every plaintext password now (PBKDF2, about a
// millisecond each), so that no first login pays for it on an event loop. Call it off the event
// loop after loading when the method is scram-sha-256.
func (u *Userlist) DeriveSCRAM() {
	for _, s := range u.users {
		s.scramCredentials()
	}
}
