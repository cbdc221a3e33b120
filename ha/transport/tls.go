package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSFiles names the PEM files of a node's Raft TLS identity.
type TLSFiles struct {
	CertFile string // this node's certificate (chain), presented to peers in both directions
	KeyFile  string
	// CAFile, when set, turns on mutual TLS: peers must present a certificate signed by one
	// of these CAs, and peers' server certificates are verified against them too. Without it,
	// only the server side is authenticated, against the system roots.
	CAFile string
}

// LoadTLS builds the server and client configurations for the Raft port: TLS 1.3 only; with a
// CA, RequireAndVerifyClientCert. The client configuration's ServerName is left empty; Dial
// sets it to the host of the address it dials, so certificates must name the peers' Raft
// addresses (IP or DNS SANs).
func LoadTLS(f TLSFiles) (server, client *tls.Config, err error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, nil, errors.New("tls: a certificate and a key are required")
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: load key pair %s, %s: %w", f.CertFile, f.KeyFile, err)
	}
	var pool *x509.CertPool
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("tls: read CA %s: %w", f.CAFile, err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("tls: no certificates in CA file %s", f.CAFile)
		}
	}
	server, client = Configs(cert, pool)
	return server, client, nil
}

// Configs builds the TLS configurations from a loaded certificate and an optional CA pool (nil:
// no client authentication, system roots for servers).
func Configs(cert tls.Certificate, ca *x509.CertPool) (server, client *tls.Config) {
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}
	if ca != nil {
		server.ClientAuth = tls.RequireAndVerifyClientCert
		server.ClientCAs = ca
		client.RootCAs = ca
	}
	return server, client
}
