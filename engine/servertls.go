package engine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/pgbastion/pgbastion/pgwire"
)

// TLS towards PostgreSQL (proxy.server.tls, PgBouncer's server_tls_*). A server connection
// negotiates TLS and logs in on a goroutine with blocking I/O, like any other; then it lives on
// an event loop as a plain one does, its tls.Conn working from memory as a TLS client's does
// (tlsloop.go): the server's OnTraffic feeds it the ciphertext gnet read and handles the
// plaintext it decrypts, and what the proxy writes to the server is encrypted into the
// server's loop writer. When the server moves (to another loop, or to a client on the stream
// path) its tls.Conn goes with it: ciphertext gnet had read but the server had not handled is
// put back in front of the transport, and the transport switches to the socket the new home
// reads.

// serverTLSModes are the accepted values of proxy.server.tls.mode.
var serverTLSModes = map[string]bool{"disable": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

func (c ServerTLSConfig) mode() string {
	if c.Mode == "" {
		return "prefer"
	}
	return c.Mode
}

func (c ServerTLSConfig) validate() []error {
	var errs []error
	m := c.mode()
	switch {
	case m == "allow":
		errs = append(errs, errors.New("proxy.server.tls.mode: allow (plaintext first, TLS only if PostgreSQL insists) is not supported; use prefer, which tries TLS first, or disable"))
	case !serverTLSModes[m]:
		errs = append(errs, fmt.Errorf("proxy.server.tls.mode: %q is not one of disable, prefer, require, verify-ca, verify-full", c.Mode))
	}
	if (m == "verify-ca" || m == "verify-full") && c.CA == "" {
		errs = append(errs, fmt.Errorf("proxy.server.tls.mode %s needs proxy.server.tls.ca, the CA that signed PostgreSQL's certificate", m))
	}
	if (c.Cert == "") != (c.Key == "") {
		errs = append(errs, errors.New("proxy.server.tls: cert and key go together (a client certificate for PostgreSQL and its key); set both or neither"))
	}
	if m == "disable" && (c.CA != "" || c.Cert != "") {
		errs = append(errs, errors.New("proxy.server.tls: ca, cert and key are used only with TLS; mode is disable"))
	}
	return errs
}

// backendTLS is the loaded proxy.server.tls: a client configuration without a server name
// (each connection sets its backend's host).
type backendTLS struct {
	mode string
	cfg  *tls.Config
}

// loadBackendTLS reads the files of proxy.server.tls; nil when mode is disable.
func loadBackendTLS(c ServerTLSConfig) (*backendTLS, error) {
	m := c.mode()
	if m == "disable" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("proxy.server.tls: loading certificate %s and key %s: %w", c.Cert, c.Key, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	var roots *x509.CertPool
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("proxy.server.tls.ca: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("proxy.server.tls.ca: %s holds no PEM certificate", c.CA)
		}
		cfg.RootCAs = roots
	}
	switch m {
	case "verify-full":
		// crypto/tls checks the chain and that the certificate names ServerName.
	case "verify-ca":
		// The chain only, whatever name the certificate carries (libpq's verify-ca).
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("PostgreSQL presented no certificate")
			}
			opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
			for _, ic := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(ic)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	default:
		// prefer and require encrypt without verifying who answers, as libpq does.
		cfg.InsecureSkipVerify = true
	}
	return &backendTLS{mode: m, cfg: cfg}, nil
}

var sslRequest = pgwire.AppendSSLRequest(nil)

// secureBackend negotiates TLS on a new connection to the backend at addr as
// proxy.server.tls says. It returns the connection to log in over and, with TLS, its loopTLS
// (the tls.Conn over a socket-mode transport); plain connections return nc and nil. Sockets
// in a directory (Unix sockets) stay plain.
func (e *Engine) secureBackend(ctx context.Context, nc net.Conn, addr string) (net.Conn, *loopTLS, error) {
	bt := e.conf().backendTLS
	host, _, _ := net.SplitHostPort(addr)
	if bt == nil || isSocketDir(host) {
		return nc, nil, nil
	}
	// The backend may leave its role (or the dial time out) while it does not answer.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := nc.Write(sslRequest); err != nil {
		return nil, nil, fmt.Errorf("asking PostgreSQL at %s for TLS: %w", addr, unwrapOp(err))
	}
	var answer [1]byte
	if _, err := io.ReadFull(nc, answer[:]); err != nil {
		return nil, nil, fmt.Errorf("asking PostgreSQL at %s for TLS: %w", addr, unwrapOp(err))
	}
	switch answer[0] {
	case 'S':
	case 'N':
		if bt.mode == "prefer" {
			return nc, nil, nil
		}
		return nil, nil, sqlErr(pgwire.ConnectionFailure,
			fmt.Sprintf("PostgreSQL at %s does not accept TLS, which proxy.server.tls.mode %s requires", addr, bt.mode),
			"turn ssl on in PostgreSQL (ssl_cert_file, ssl_key_file), or lower proxy.server.tls.mode to prefer or disable")
	default:
		return nil, nil, fmt.Errorf("PostgreSQL at %s answered the TLS request with %q, not S or N", addr, answer[0])
	}
	cfg := bt.cfg.Clone()
	cfg.ServerName = host
	tr := &tlsTransport{nc: nc, local: nc.LocalAddr(), remote: nc.RemoteAddr()}
	tc := tls.Client(tr, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		hint := "check proxy.server.tls (ca, cert, key) against PostgreSQL's ssl_cert_file and ssl_ca_file"
		if bt.mode == "verify-full" {
			hint += fmt.Sprintf("; verify-full needs the certificate to name %s (as a DNS name or IP address SAN)", host)
		}
		return nil, nil, sqlErr(pgwire.ConnectionFailure, fmt.Sprintf("TLS handshake with PostgreSQL at %s failed: %v", addr, err), hint)
	}
	// handle forwards results in pieces, but holds other messages whole (an ErrorResponse,
	// any message for no client): room for the largest, as on the stream path.
	return tc, &loopTLS{tc: tc, tr: tr, max: e.maxClientInput()}, nil
}

// setSocket makes nc the server's connection off the loops (stream path); a TLS server's
// tls.Conn reads and writes it from now on.
func (s *server) setSocket(nc net.Conn) {
	s.nc = nc
	if x := s.sec; x != nil {
		x.tr.nc, x.tr.onLoop, x.tr.out = nc, false, nil
	}
}

// reader is what the stream path reads the server's plaintext from.
func (s *server) reader() io.Reader {
	if s.sec != nil {
		return s.sec.tc
	}
	return s.nc
}

// onTrafficTLS is onTraffic for a TLS server on a loop: decrypt what gnet read, handle it,
// and go on while records remain.
func (s *server) onTrafficTLS(c gnet.Conn) gnet.Action {
	x := s.sec
	if b, _ := c.Peek(-1); len(b) > 0 {
		x.tr.feed(b)
		_, _ = c.Discard(len(b))
	}
	for {
		starved, err := x.decrypt()
		if x.hi > x.lo {
			n, herr := s.handle(x.pending())
			x.lo += n
			if herr != nil {
				s.fail(herr)
				return gnet.Close
			}
			if s.detaching || s.closing {
				break
			}
			if n == 0 && x.hi-x.lo >= x.max {
				s.fail(errors.New("a message from PostgreSQL did not fit the TLS input buffer"))
				return gnet.Close
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.fail(fmt.Errorf("TLS: %w", err))
			}
			return gnet.Close
		}
		if starved {
			break
		}
	}
	x.release()
	if s.detaching {
		return s.finishDetach(c)
	}
	if s.closing {
		return gnet.Close
	}
	return gnet.None
}

// takePlain returns the decrypted input not yet handled (a copy) and forgets it.
func (x *loopTLS) takePlain() []byte {
	if x.hi == x.lo {
		return nil
	}
	b := append([]byte(nil), x.pending()...)
	x.lo = x.hi
	x.release()
	return b
}

// CheckTLSFiles reads the certificate and key files cfg names (proxy.tls, proxy.server.tls),
// as a start or reload would, so that `pgbastion check` finds a missing or unreadable one.
func CheckTLSFiles(cfg Config) error {
	var errs []error
	if m := cfg.TLS.Mode; m != "disable" && m != "" {
		if _, err := serverTLSConfig(cfg.TLS); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := loadBackendTLS(cfg.Server.TLS); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
