package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// SCRAM pass-through: a proxy that holds only a user's SCRAM secret (StoredKey and ServerKey,
// as PostgreSQL keeps it in pg_authid) cannot log in to PostgreSQL as that user, because the
// SCRAM client proof needs the ClientKey, which only the password yields. When a client
// authenticates to the proxy with SCRAM, though, its proof reveals the ClientKey
// (ClientProof XOR HMAC(StoredKey, AuthMessage)); with it, and the same salt and iteration
// count, the proxy can answer PostgreSQL's SCRAM challenge for that user. PgBouncer does the
// same. The ClientKey is a password equivalent for this server's secret: it is kept in memory
// only, never logged or formatted.

// ErrSCRAMKeyStale is returned by a pass-through login when the server's salt or iteration
// count differ from those of the secret the ClientKey belongs to: the user's password was
// changed in PostgreSQL after the client logged in to the proxy.
var ErrSCRAMKeyStale = errors.New("auth: the server's SCRAM secret differs from the one the client authenticated against (was the password changed?)")

// scramKeys are what a pass-through login needs: the secret's key factors and ServerKey, and
// the ClientKey learned from a client's proof.
type scramKeys struct {
	salt      string // raw bytes
	iters     int
	clientKey []byte
	storedKey []byte
	serverKey []byte
}

// clientKeyFromProof recovers the ClientKey from a verified SCRAM exchange. authMessage is
// client-first-message-bare + "," + server-first-message + "," + client-final-message-without-proof.
// It returns nil when the result does not hash to storedKey (the proof did not verify).
func clientKeyFromProof(storedKey []byte, authMessage string, proof []byte) []byte {
	if len(proof) != len(storedKey) {
		return nil
	}
	mac := hmac.New(sha256.New, storedKey)
	mac.Write([]byte(authMessage))
	key := mac.Sum(nil)
	for i := range key {
		key[i] ^= proof[i]
	}
	sum := sha256.Sum256(key)
	if subtle.ConstantTimeCompare(sum[:], storedKey) != 1 {
		return nil
	}
	return key
}

// splitClientFinal splits a client-final-message into the part without the proof and the
// decoded proof.
func splitClientFinal(msg string) (withoutProof string, proof []byte, ok bool) {
	i := strings.LastIndex(msg, ",p=")
	if i < 0 {
		return "", nil, false
	}
	p, err := base64.StdEncoding.DecodeString(msg[i+3:])
	if err != nil {
		return "", nil, false
	}
	return msg[:i], p, true
}

// CredentialsFromSCRAMKey returns credentials that log in to PostgreSQL as user with a SCRAM
// secret and the ClientKey a client proved (Exchange.SCRAMClientKey) against that secret. The
// server must hold the same secret (salt and iteration count); otherwise Login fails with
// ErrSCRAMKeyStale.
func CredentialsFromSCRAMKey(user string, s *Secret, clientKey []byte) (*Credentials, error) {
	if s == nil || s.kind != SecretSCRAM {
		return nil, fmt.Errorf("%w: pass-through needs a SCRAM secret", ErrUnsupported)
	}
	sum := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(sum[:], s.creds.StoredKey) != 1 {
		return nil, fmt.Errorf("%w: the client key does not belong to this secret", ErrUnsupported)
	}
	return &Credentials{user: user, keys: &scramKeys{
		salt: s.creds.Salt, iters: s.creds.Iters,
		clientKey: append([]byte(nil), clientKey...),
		storedKey: s.creds.StoredKey, serverKey: s.creds.ServerKey,
	}}, nil
}

// scramConversation is the client side of one SCRAM exchange: xdg-go/scram's password-based
// ClientConversation, or keyConversation for pass-through.
type scramConversation interface {
	Step(challenge string) (string, error)
	Valid() bool
	Done() bool
}

// keyConversation answers a server's SCRAM-SHA-256 challenge with a known ClientKey.
type keyConversation struct {
	k        *scramKeys
	step     int
	nonce    string
	bare     string
	wantSig  []byte
	valid    bool
	finished bool
}

func newKeyConversation(k *scramKeys) (*keyConversation, error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return &keyConversation{k: k, nonce: base64.StdEncoding.EncodeToString(b[:])}, nil
}

func (c *keyConversation) Valid() bool { return c.valid }
func (c *keyConversation) Done() bool  { return c.finished }

func (c *keyConversation) Step(challenge string) (string, error) {
	switch c.step {
	case 0:
		c.step++
		// PostgreSQL ignores the SCRAM user name (the startup packet's counts); libpq sends
		// an empty one.
		c.bare = "n=,r=" + c.nonce
		return "n,," + c.bare, nil
	case 1:
		c.step++
		return c.final(challenge)
	case 2:
		c.step++
		c.finished = true
		if strings.HasPrefix(challenge, "e=") {
			return "", fmt.Errorf("server refused the proof: %s", challenge[2:])
		}
		sig, ok := strings.CutPrefix(challenge, "v=")
		if !ok {
			return "", errors.New("malformed server-final-message")
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err != nil || !hmac.Equal(got, c.wantSig) {
			return "", ErrServerSignature
		}
		c.valid = true
		return "", nil
	}
	return "", errors.New("SCRAM conversation already finished")
}

// final reads server-first-message (r=nonce,s=salt,i=iterations) and builds the
// client-final-message with the proof.
func (c *keyConversation) final(serverFirst string) (string, error) {
	var nonce, salt, iter string
	for _, attr := range strings.Split(serverFirst, ",") {
		switch {
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		case strings.HasPrefix(attr, "s="):
			salt = attr[2:]
		case strings.HasPrefix(attr, "i="):
			iter = attr[2:]
		case strings.HasPrefix(attr, "m="):
			return "", errors.New("server-first-message has a mandatory extension")
		}
	}
	if !strings.HasPrefix(nonce, c.nonce) || len(nonce) == len(c.nonce) {
		return "", errors.New("server nonce does not extend the client's")
	}
	s, err := base64.StdEncoding.DecodeString(salt)
	if err != nil {
		return "", errors.New("malformed salt in server-first-message")
	}
	n, err := strconv.Atoi(iter)
	if err != nil {
		return "", errors.New("malformed iteration count in server-first-message")
	}
	if string(s) != c.k.salt || n != c.k.iters {
		return "", ErrSCRAMKeyStale
	}
	withoutProof := "c=biws,r=" + nonce // biws: base64("n,,")
	authMessage := c.bare + "," + serverFirst + "," + withoutProof
	mac := hmac.New(sha256.New, c.k.storedKey)
	mac.Write([]byte(authMessage))
	proof := mac.Sum(nil)
	for i := range proof {
		proof[i] ^= c.k.clientKey[i]
	}
	mac = hmac.New(sha256.New, c.k.serverKey)
	mac.Write([]byte(authMessage))
	c.wantSig = mac.Sum(nil)
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}
