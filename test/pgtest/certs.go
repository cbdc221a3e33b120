package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CertSet is throwaway TLS material written as PEM files. Keys are ECDSA P-256.
type CertSet struct {
	Dir string
	// CACert signed ServerCert and ClientCert.
	CACert, CAKey string
	// ServerCert is for CN=localhost with SANs localhost, 127.0.0.1 and ::1. It carries both the
	// serverAuth and clientAuth usages, so Raft peers can use it in both directions.
	ServerCert, ServerKey string
	// ClientCert is a client certificate with CN=postgres (PostgreSQL's cert auth maps the CN to
	// the user name).
	ClientCert, ClientKey string
	// OtherCACert is an unrelated CA; OtherClientCert (CN=postgres) is signed by it. Peers that
	// trust only CACert must reject both.
	OtherCACert, OtherCAKey         string
	OtherClientCert, OtherClientKey string
}

// Certs generates a CertSet in a fresh directory, removed in t.Cleanup. When the test runs as
// root the files are owned by the PostgreSQL OS user, so a server started by Start can read its
// key (PostgreSQL insists the key is 0600 and owned by its user).
func Certs(t testing.TB) *CertSet {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgtest-certs-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	u, err := lookupOSUser()
	if err != nil { // no PostgreSQL user: the files are still fine for Go peers
		u = osUser{}
	}
	c := &CertSet{Dir: dir}
	w := certWriter{dir: dir, user: u}
	now := time.Now()

	ca, caKey := w.ca("pgtest CA", now)
	c.CACert, c.CAKey = w.write("ca", ca, caKey)
	other, otherKey := w.ca("pgtest other CA", now)
	c.OtherCACert, c.OtherCAKey = w.write("other-ca", other, otherKey)

	srv := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	sc, sk := w.leaf(srv, ca, caKey, now)
	c.ServerCert, c.ServerKey = w.write("server", sc, sk)
	cli := &x509.Certificate{
		Subject:     pkix.Name{CommonName: Superuser},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cc, ck := w.leaf(cli, ca, caKey, now)
	c.ClientCert, c.ClientKey = w.write("client", cc, ck)
	oc, ok := w.leaf(cli, other, otherKey, now)
	c.OtherClientCert, c.OtherClientKey = w.write("other-client", oc, ok)
	if w.err != nil {
		t.Fatalf("pgtest: certs: %v", w.err)
	}
	return c
}

// ServerTLS returns a server configuration presenting ServerCert. With requireClientCert it
// demands a client certificate signed by CACert (mTLS).
func (c *CertSet) ServerTLS(t testing.TB, requireClientCert bool) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(c.ServerCert, c.ServerKey)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if requireClientCert {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = c.pool(t, c.CACert)
	}
	return cfg
}

// ClientTLS returns a client configuration that trusts CACert, verifies the server name
// "localhost" and presents ClientCert.
func (c *CertSet) ClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: c.pool(t, c.CACert),
		ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

func (c *CertSet) pool(t testing.TB, file string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatalf("pgtest: no certificate in %s", file)
	}
	return p
}

// certWriter generates and writes certificates, keeping the first error.
type certWriter struct {
	dir    string
	user   osUser
	serial int64
	err    error
}

func (w *certWriter) key() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil && w.err == nil {
		w.err = err
	}
	return k
}

func (w *certWriter) ca(cn string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := w.key()
	if w.err != nil {
		return nil, nil
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	cert, _ := w.sign(tmpl, nil, key, key, now)
	return cert, key
}

func (w *certWriter) leaf(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := w.key()
	if w.err != nil {
		return nil, nil
	}
	return w.sign(tmpl, ca, caKey, key, now)
}

func (w *certWriter) sign(tmpl, parent *x509.Certificate, signer, key *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	if w.err != nil {
		return nil, nil
	}
	w.serial++
	tmpl.SerialNumber = big.NewInt(w.serial)
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(24 * time.Hour)
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		w.err = err
		return nil, nil
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		w.err = err
		return nil, nil
	}
	return cert, key
}

// write stores name.crt (0644) and name.key (0600) and returns their paths.
func (w *certWriter) write(name string, cert *x509.Certificate, key *ecdsa.PrivateKey) (string, string) {
	crt := filepath.Join(w.dir, name+".crt")
	kf := filepath.Join(w.dir, name+".key")
	if w.err != nil {
		return crt, kf
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		w.err = err
		return crt, kf
	}
	if err := w.user.writeOwned(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		w.err = fmt.Errorf("write %s: %w", crt, err)
	}
	if err := w.user.writeOwned(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil && w.err == nil {
		w.err = fmt.Errorf("write %s: %w", kf, err)
	}
	return crt, kf
}
