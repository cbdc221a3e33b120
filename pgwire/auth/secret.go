package auth

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/xdg-go/scram"
)

// SecretKind says what a stored secret is.
type SecretKind uint8

// Secret kinds.
const (
	// SecretEmpty is an empty password: every password login fails, as in PostgreSQL.
	SecretEmpty SecretKind = iota
	// SecretPlain is a plaintext password; it serves md5 and scram-sha-256.
	SecretPlain
	// SecretMD5 is "md5" + hex(md5(password + username)); it serves md5 only.
	SecretMD5
	// SecretSCRAM is PostgreSQL's SCRAM-SHA-256 secret; it serves scram-sha-256 (and md5
	// clients are switched to SCRAM, as PostgreSQL does).
	SecretSCRAM
)

func (k SecretKind) String() string {
	switch k {
	case SecretEmpty:
		return "empty"
	case SecretPlain:
		return "plaintext"
	case SecretMD5:
		return "md5"
	case SecretSCRAM:
		return "scram-sha-256"
	}
	return "SecretKind(" + strconv.Itoa(int(k)) + ")"
}

// SCRAM parameters for secrets derived from plaintext passwords (PostgreSQL's defaults).
const (
	DefaultSCRAMIterations = 4096
	scramSaltLen           = 16
	scramKeyLen            = 32 // SHA-256
	scramPrefix            = "SCRAM-SHA-256$"
	maxSCRAMIterations     = 1 << 30
)

// Secret is one user's stored password in one of the forms of SecretKind. It is immutable
// except for the cached SCRAM credentials of a plaintext password, which are derived once;
// it is safe for concurrent use. Formatting a Secret (any verb) or logging it shows only its
// kind.
type Secret struct {
	kind   SecretKind
	plain  string
	md5hex string // hex(md5(password + username)) for SecretPlain and SecretMD5
	creds  scram.StoredCredentials

	derive  sync.Once
	derived scram.StoredCredentials
	err     error
}

// ParseSecret classifies a stored password for user the way PgBouncer's auth_file and
// PostgreSQL's pg_authid do: "md5" followed by 32 hex digits is an md5 secret, a string starting
// "SCRAM-SHA-256$" must be a well-formed SCRAM secret, anything else is plaintext. Errors never
// contain the password.
func ParseSecret(user, password string) (*Secret, error) {
	switch {
	case password == "":
		return &Secret{kind: SecretEmpty}, nil
	case isMD5Secret(password):
		return &Secret{kind: SecretMD5, md5hex: strings.ToLower(password[3:])}, nil
	case strings.HasPrefix(password, scramPrefix):
		creds, err := parseSCRAMSecret(password)
		if err != nil {
			return nil, err
		}
		return &Secret{kind: SecretSCRAM, creds: creds}, nil
	}
	return &Secret{kind: SecretPlain, plain: password, md5hex: md5Hex(password + user)}, nil
}

// Kind returns the kind of the secret.
func (s *Secret) Kind() SecretKind { return s.kind }

// Format prints the kind only, for every verb, so a Secret cannot leak through fmt.
func (s *Secret) Format(f fmt.State, _ rune) {
	if s == nil {
		fmt.Fprint(f, "auth.Secret(nil)")
		return
	}
	fmt.Fprintf(f, "auth.Secret(%s)", s.kind)
}

// LogValue logs the kind only.
func (s *Secret) LogValue() slog.Value { return slog.StringValue(fmt.Sprint(s)) }

// scramCredentials returns the SCRAM-SHA-256 credentials the secret can verify with, deriving
// and caching them for a plaintext password (PBKDF2, once per Secret).
func (s *Secret) scramCredentials() (scram.StoredCredentials, bool) {
	switch s.kind {
	case SecretSCRAM:
		return s.creds, true
	case SecretPlain:
		s.derive.Do(func() { s.derived, s.err = deriveSCRAM(s.plain) })
		return s.derived, s.err == nil
	}
	return scram.StoredCredentials{}, false
}

// deriveSCRAM computes SCRAM-SHA-256 stored credentials with a random salt, applying SASLprep
// to the password when it can, as PostgreSQL does.
func deriveSCRAM(password string) (scram.StoredCredentials, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return scram.StoredCredentials{}, err
	}
	c, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		if c, err = scram.SHA256.NewClientUnprepped("", password, ""); err != nil {
			return scram.StoredCredentials{}, errors.New("cannot prepare password for SCRAM")
		}
	}
	return c.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: DefaultSCRAMIterations})
}

func isMD5Secret(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for i := 3; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// parseSCRAMSecret parses SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64).
// Errors say which part is wrong, never what it contains.
func parseSCRAMSecret(s string) (scram.StoredCredentials, error) {
	var c scram.StoredCredentials
	rest := strings.TrimPrefix(s, scramPrefix)
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return c, errors.New("malformed SCRAM secret: missing '$' before the keys")
	}
	iter, salt, ok := strings.Cut(params, ":")
	if !ok {
		return c, errors.New("malformed SCRAM secret: missing ':' between iterations and salt")
	}
	n, err := strconv.Atoi(iter)
	if err != nil || n < 1 || n > maxSCRAMIterations {
		return c, errors.New("malformed SCRAM secret: bad iteration count")
	}
	saltb, err := base64.StdEncoding.Strict().DecodeString(salt)
	if err != nil || len(saltb) == 0 {
		return c, errors.New("malformed SCRAM secret: bad salt")
	}
	stored, server, ok := strings.Cut(keys, ":")
	if !ok {
		return c, errors.New("malformed SCRAM secret: missing ':' between StoredKey and ServerKey")
	}
	sk, err := base64.StdEncoding.Strict().DecodeString(stored)
	if err != nil || len(sk) != scramKeyLen {
		return c, errors.New("malformed SCRAM secret: bad StoredKey")
	}
	vk, err := base64.StdEncoding.Strict().DecodeString(server)
	if err != nil || len(vk) != scramKeyLen {
		return c, errors.New("malformed SCRAM secret: bad ServerKey")
	}
	c.Salt, c.Iters, c.StoredKey, c.ServerKey = string(saltb), n, sk, vk
	return c, nil
}
