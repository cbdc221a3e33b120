package auth

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xdg-go/scram"
)

// scramSecret builds a PostgreSQL SCRAM-SHA-256 secret for password.
func scramSecret(t testing.TB, password string) string {
	t.Helper()
	c, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	salt := []byte("0123456789abcdef")
	creds, err := c.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: 4096})
	if err != nil {
		t.Fatal(err)
	}
	b := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$4096:%s$%s:%s", b(salt), b(creds.StoredKey), b(creds.ServerKey))
}

func md5Secret(user, password string) string { return "md5" + md5Hex(password+user) }

func TestParseUserlist(t *testing.T) {
	scramPW := scramSecret(t, "pw-carol")
	type want struct {
		user string
		kind SecretKind
	}
	cases := []struct {
		name  string
		input string
		want  []want
	}{
		{"empty file", "", nil},
		{"basic", `"alice" "pw"` + "\n", []want{{"alice", SecretPlain}}},
		{"no final newline", `"alice" "pw"`, []want{{"alice", SecretPlain}}},
		{"comments and blanks", "; a comment\n\n   \n  ; indented comment\n\t\"alice\"\t\"pw\"\n",
			[]want{{"alice", SecretPlain}}},
		{"crlf", "\"a\" \"pw\"\r\n\"b\" \"pw\"\r\n", []want{{"a", SecretPlain}, {"b", SecretPlain}}},
		{"quotes escaped", `"we""ird" "p""w"`, []want{{`we"ird`, SecretPlain}}},
		{"rest of line ignored", `"alice" "pw" "2030-01-01" anything`, []want{{"alice", SecretPlain}}},
		{"md5 secret", `"bob" "` + md5Secret("bob", "x") + `"`, []want{{"bob", SecretMD5}}},
		{"md5 secret upper case", `"bob" "md5` + strings.ToUpper(md5Hex("xbob")) + `"`, []want{{"bob", SecretMD5}}},
		{"md5-looking but short is plaintext", `"bob" "md5abc"`, []want{{"bob", SecretPlain}}},
		{"scram secret", `"carol" "` + scramPW + `"`, []want{{"carol", SecretSCRAM}}},
		{"empty password", `"dave" ""`, []want{{"dave", SecretEmpty}}},
		{"spaces in fields", `"a b" "c d"`, []want{{"a b", SecretPlain}}},
		{"several", "\"a\" \"1\"\n;\n\"b\" \"2\"\n\"c\" \"3\"\n",
			[]want{{"a", SecretPlain}, {"b", SecretPlain}, {"c", SecretPlain}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u, err := ParseUserlist("userlist.txt", strings.NewReader(c.input))
			if err != nil {
				t.Fatal(err)
			}
			if u.Len() != len(c.want) {
				t.Fatalf("got %d users %v, want %d", u.Len(), u.Users(), len(c.want))
			}
			for _, w := range c.want {
				s, ok := u.Lookup(w.user)
				if !ok {
					t.Fatalf("user %q missing (have %q)", w.user, u.Users())
				}
				if s.Kind() != w.kind {
					t.Errorf("user %q kind %v, want %v", w.user, s.Kind(), w.kind)
				}
			}
		})
	}
}

func TestParseUserlistErrors(t *testing.T) {
	const pw = "Tr0ub4dor&3"
	good := scramSecret(t, pw)
	cases := []struct {
		name, input string
		line        int
		msg         string
	}{
		{"unquoted user", "alice \"" + pw + "\"", 1, "must start with a double-quoted user name"},
		{"unterminated user", "\"alice " + pw, 1, "user name has no closing double quote"},
		{"empty user", `"" "` + pw + `"`, 1, "user name is empty"},
		{"no password", "\n\"alice\"", 2, "no password field"},
		{"no password, spaces", "\"alice\"   ", 1, "no password field"},
		{"no space", `"alice""` + pw + `"`, 1, "no password field"}, // "alice""pw" reads as one field; the message must not quote it
		{"unquoted password", `"alice" ` + pw, 1, "double-quoted password"},
		{"unterminated password", `"alice" "` + pw, 1, "password has no closing double quote"},
		{"unescaped quote in password", `"alice" "` + pw + `"x"`, 1, "unexpected text right after the password"},
		{"duplicate", "\"a\" \"1\"\n\"b\" \"2\"\n\"a\" \"" + pw + "\"", 3, "duplicate user name (first defined on line 1)"},
		{"bad scram iterations", `"a" "SCRAM-SHA-256$x` + pw + `:c2FsdA==$` + good[strings.LastIndex(good, "$")+1:] + `"`, 1, "bad iteration count"},
		{"bad scram salt", `"a" "SCRAM-SHA-256$4096:!` + pw + `$` + good[strings.LastIndex(good, "$")+1:] + `"`, 1, "bad salt"},
		{"bad scram stored key", `"a" "` + good[:strings.LastIndex(good, "$")+1] + pw + `:` + good[strings.LastIndex(good, ":")+1:] + `"`, 1, "bad StoredKey"},
		{"bad scram server key", `"a" "` + good[:strings.LastIndex(good, ":")+1] + pw + `"`, 1, "bad ServerKey"},
		{"scram missing keys", `"a" "SCRAM-SHA-256$4096:` + pw + `"`, 1, "missing '$'"},
		{"long user", `"` + strings.Repeat("u", MaxUsernameLen+1) + `" "` + pw + `"`, 1, "user name longer than"},
		{"long password", `"a" "` + pw + strings.Repeat("p", MaxPasswordLen) + `"`, 1, "password longer than"},
		{"long line", `"a" "` + pw + `"` + strings.Repeat(" ", MaxUserlistLine), 1, "line longer than"},
		{"nul in user", "\"a\x00b\" \"" + pw + "\"", 1, "NUL"},
		{"nul in password", "\"a\" \"" + pw + "\x00\"", 1, "NUL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseUserlist("users.txt", strings.NewReader(c.input))
			if err == nil {
				t.Fatal("accepted")
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			prefix := fmt.Sprintf("users.txt:%d: ", c.line)
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %q, want prefix %q and %q", err, prefix, c.msg)
			}
			if strings.Contains(err.Error(), pw) {
				t.Fatalf("error leaks the password: %q", err)
			}
		})
	}
}

func TestParseUserlistReportsEveryBadLine(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 30; i++ {
		b.WriteString("bad\n\"ok" + fmt.Sprint(i) + "\" \"x\"\n")
	}
	_, err := ParseUserlist("f", strings.NewReader(b.String()))
	if err == nil {
		t.Fatal("accepted")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxReportErrors+1 || !strings.HasPrefix(lines[0], "f:1: ") ||
		!strings.HasPrefix(lines[1], "f:3: ") || lines[maxReportErrors] != "f: 10 more bad lines" {
		t.Fatalf("error lines:\n%s", err)
	}
}

func TestParseUserlistSizeLimit(t *testing.T) {
	const max = 1000
	if _, err := parseUserlist("big", strings.NewReader(strings.Repeat("\n", max+1)), max); err == nil ||
		!strings.Contains(err.Error(), "larger than 1000 bytes") {
		t.Fatalf("oversized file: %v", err)
	}
	if _, err := parseUserlist("fits", strings.NewReader(strings.Repeat("\n", max)), max); err != nil {
		t.Fatalf("file of exactly the limit: %v", err)
	}
}

func TestLoadUserlist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(`"alice" "pw"`+"\n"+`oops`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadUserlist(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+":2: ") {
		t.Fatalf("got %v, want an error at %s:2", err, path)
	}
	if _, err := LoadUserlist(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	const pw = "hunter2-very-secret"
	secrets := []string{pw, md5Secret("u", pw), scramSecret(t, pw)}
	for _, raw := range secrets {
		s, err := ParseSecret("u", raw)
		if err != nil {
			t.Fatal(err)
		}
		var logged strings.Builder
		slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "secret", s)
		for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x", s, s, s, s, s, s),
			fmt.Sprintf("%+v", struct{ S *Secret }{s}), logged.String()} {
			if strings.Contains(out, pw) || strings.Contains(out, raw) ||
				strings.Contains(out, md5Hex(pw+"u")) {
				t.Fatalf("secret printed: %s", out)
			}
		}
	}
	c := NewCredentials("u", pw)
	if out := fmt.Sprintf("%v %+v %#v %s", c, c, c, c); strings.Contains(out, pw) {
		t.Fatalf("credentials printed: %s", out)
	}
}

func TestSCRAMDerivedOnce(t *testing.T) {
	s, err := ParseSecret("u", "pw")
	if err != nil {
		t.Fatal(err)
	}
	a, ok1 := s.scramCredentials()
	b, ok2 := s.scramCredentials()
	if !ok1 || !ok2 || a.Salt != b.Salt || string(a.StoredKey) != string(b.StoredKey) ||
		a.Iters != DefaultSCRAMIterations || len(a.Salt) != scramSaltLen {
		t.Fatalf("derived credentials differ or are malformed: %v/%v", ok1, ok2)
	}
	s2, _ := ParseSecret("u", "pw")
	c, _ := s2.scramCredentials()
	if c.Salt == a.Salt {
		t.Fatal("two secrets derived with the same salt: salt is not random")
	}
}
