package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// proveSCRAM runs a whole SCRAM exchange of a client with password against v and returns the
// finished exchange (nil with the error when it failed).
func proveSCRAM(t *testing.T, v *Verifier, user, password string) (*Exchange, error) {
	t.Helper()
	ex, conv, serverFirst := scramExchange(t, v, user, password)
	final, err := conv.Step(serverFirst)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := (&pgproto3.SASLResponse{Data: []byte(final)}).Encode(nil)
	out, done, err := ex.Step(nil, msg[5:])
	if err != nil {
		return nil, err
	}
	if !done {
		t.Fatalf("not done after the final message: %q", out)
	}
	return ex, nil
}

// TestSCRAMPassThroughLogsInToPostgreSQL: a proxy that has only the SCRAM secret PostgreSQL
// stores logs in to PostgreSQL as the user with the ClientKey a client proved, and no longer
// once the password was changed in PostgreSQL.
func TestSCRAMPassThroughLogsInToPostgreSQL(t *testing.T) {
	p := startAuthPostgres(t)
	stored := p.QueryString(t, "SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'")
	secret, err := ParseSecret("scramuser", stored)
	if err != nil || secret.Kind() != SecretSCRAM {
		t.Fatalf("secret: %v %v", secret, err)
	}
	v, err := NewVerifier(VerifierConfig{Method: MethodSCRAM, LookupByCaller: true})
	if err != nil {
		t.Fatal(err)
	}
	var ex Exchange
	out, _, err := ex.BeginWith(nil, v, "scramuser", secret, true)
	if err != nil || len(out) == 0 || ex.SCRAMClientKey() != nil || ex.Secret() != nil {
		t.Fatalf("before the proof: %v, key known %v", err, ex.SCRAMClientKey() != nil)
	}

	// A client with the wrong password learns nothing and yields no key.
	bad := newVerifierWith(t, MethodSCRAM, "scramuser", secret)
	if ex, err := proveSCRAM(t, bad, "scramuser", "wrong"); err == nil || ex != nil {
		t.Fatalf("a wrong password was accepted: %v", err)
	}
	good, err := proveSCRAM(t, bad, "scramuser", "scram pw é")
	if err != nil {
		t.Fatal(err)
	}
	key := good.SCRAMClientKey()
	if len(key) != scramKeyLen || good.Secret() != secret {
		t.Fatalf("client key %d bytes, secret %v", len(key), good.Secret())
	}

	login := func(c *Credentials) (*Session, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sess, err := c.Login(ctx, conn, []Param{{"database", "postgres"}})
		if err == nil {
			if got := simpleQuery(t, conn, "SELECT current_user"); got != "scramuser" {
				t.Fatalf("logged in as %q", got)
			}
		}
		return sess, err
	}
	creds, err := CredentialsFromSCRAMKey("scramuser", secret, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
		if got := fmt.Sprintf(verb, creds); got != `auth.Credentials(user="scramuser")` {
			t.Fatalf("%s formats credentials as %s", verb, got)
		}
	}
	sess, err := login(creds)
	if err != nil || sess.Method != "scram-sha-256" {
		t.Fatalf("pass-through login: %v", err)
	}

	// A key that does not belong to the secret is refused before any login.
	wrong := bytes.Clone(key)
	wrong[0] ^= 1
	if _, err := CredentialsFromSCRAMKey("scramuser", secret, wrong); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("foreign key: %v", err)
	}

	// md5user's server asks for md5: a SCRAM key cannot answer, and says so.
	md5creds, _ := CredentialsFromSCRAMKey("md5user", secret, key)
	if _, err := login(md5creds); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("md5 server: %v", err)
	}

	p.Exec(t, "ALTER ROLE scramuser PASSWORD 'changed'")
	if _, err := login(creds); !errors.Is(err, ErrSCRAMKeyStale) {
		t.Fatalf("after the password changed: %v", err)
	}
}

// newVerifierWith returns a verifier whose only user is user with secret.
func newVerifierWith(t *testing.T, m Method, user string, s *Secret) *Verifier {
	t.Helper()
	return newVerifier(t, m, oneSecret{user, s}, false)
}

type oneSecret struct {
	user string
	s    *Secret
}

func (o oneSecret) Lookup(user string) (*Secret, bool) { return o.s, user == o.user }

// TestSCRAMClientKeyOnlyFromStoredSecrets: a plaintext secret needs no pass-through and yields
// no key; an md5 client switched to SCRAM by a SCRAM secret does.
func TestSCRAMClientKeyOnlyFromStoredSecrets(t *testing.T) {
	plain, _ := ParseSecret("u", "pw")
	ex, err := proveSCRAM(t, newVerifierWith(t, MethodSCRAM, "u", plain), "u", "pw")
	if err != nil || ex.SCRAMClientKey() != nil || ex.Secret() != plain {
		t.Fatalf("plaintext secret: %v, key %v", err, ex.SCRAMClientKey() != nil)
	}
	creds, _ := plain.scramCredentials()
	scramSecret := &Secret{kind: SecretSCRAM, creds: creds}
	ex, err = proveSCRAM(t, newVerifierWith(t, MethodMD5, "u", scramSecret), "u", "pw")
	if err != nil || len(ex.SCRAMClientKey()) != scramKeyLen {
		t.Fatalf("md5 client on a SCRAM secret: %v", err)
	}
	if _, err := CredentialsFromSCRAMKey("u", scramSecret, ex.SCRAMClientKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := CredentialsFromSCRAMKey("u", plain, ex.SCRAMClientKey()); err == nil {
		t.Fatal("pass-through credentials from a plaintext secret")
	}
}
