package engine

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// serverTLSConfig builds the TLS configuration the proxy presents to clients.
func serverTLSConfig(c TLSConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("proxy.tls: loading certificate %s and key %s: %w", c.Cert, c.Key, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("proxy.tls.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("proxy.tls.ca: %s holds no PEM certificate", c.CA)
		}
		cfg.ClientCAs = pool
		switch c.Mode {
		case "verify-ca", "verify-full":
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		default:
			cfg.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	return cfg, nil
}
