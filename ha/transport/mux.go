package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The first byte a dialer writes selects the protocol of the connection.
const (
	protoRaft byte = 'R'
	protoRPC  byte = 'F'
)

// handshakeTimeout bounds the TLS handshake and the protocol byte of an accepted connection.
const handshakeTimeout = 5 * time.Second

// Config configures a Mux.
type Config struct {
	// Bind is the address to listen on (host:port; port 0 picks one).
	Bind string
	// Advertise is the address peers dial; empty means the listener's address, which then
	// must not be unspecified (0.0.0.0).
	Advertise string
	// ServerTLS and ClientTLS enable TLS (both or neither).
	ServerTLS, ClientTLS *tls.Config
	Logger               *slog.Logger
}

// Mux owns the Raft port. It accepts connections (TLS-wrapped when configured) and dispatches
// each by its first byte: Raft connections go to the raft.StreamLayer it provides, RPC
// connections to the Handler. It is safe for concurrent use.
type Mux struct {
	ln        net.Listener
	advertise net.Addr
	clientTLS *tls.Config
	log       *slog.Logger

	raftCh chan net.Conn

	mu      sync.Mutex
	handler Handler
	conns   map[net.Conn]struct{}
	closed  bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Listen binds the port and starts accepting.
func Listen(cfg Config) (*Mux, error) {
	if (cfg.ServerTLS == nil) != (cfg.ClientTLS == nil) {
		return nil, errors.New("transport: ServerTLS and ClientTLS must be set together")
	}
	ln, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("transport: listen on %s: %w", cfg.Bind, err)
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	addr, err := advertised(adv, logger)
	if err != nil {
		ln.Close()
		return nil, err
	}
	if cfg.ServerTLS != nil {
		ln = tls.NewListener(ln, cfg.ServerTLS)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mux{
		ln: ln, advertise: addr, clientTLS: cfg.ClientTLS, log: logger,
		raftCh: make(chan net.Conn), conns: map[net.Conn]struct{}{},
		ctx: ctx, cancel: cancel,
	}
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

// hostPort is an advertised address as written: an IP address and port, or a host name and
// port that peers resolve each time they dial, so that a node whose address changes (a
// container or a Kubernetes pod started again) is found under its name.
type hostPort string

func (a hostPort) Network() string { return "tcp" }
func (a hostPort) String() string  { return string(a) }

// advertised checks the address peers are to dial: an IP address that is not unspecified, or
// a host name. A name that does not resolve here is logged, not refused: in Kubernetes a
// pod's name resolves only once the pod is published.
func advertised(adv string, log *slog.Logger) (net.Addr, error) {
	host, port, err := net.SplitHostPort(adv)
	if err != nil {
		return nil, fmt.Errorf("transport: advertise address %q: %w", adv, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil || port == "0" {
		return nil, fmt.Errorf("transport: advertise address %q: bad port", adv)
	}
	if ip := net.ParseIP(host); ip != nil || host == "" {
		if ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("transport: advertise address %q is not an address peers can dial; set raft.advertise", adv)
		}
		return hostPort(adv), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
		log.Warn("raft.advertise does not resolve here (yet); peers must be able to resolve it to reach this node", "advertise", adv, "err", err)
	}
	return hostPort(adv), nil
}

// Addr is the advertised address.
func (m *Mux) Addr() net.Addr { return m.advertise }

// ListenAddr is the address the listener is bound to.
func (m *Mux) ListenAddr() net.Addr { return m.ln.Addr() }

// SetHandler installs the RPC handler. RPC connections that arrive before it is set are
// refused.
func (m *Mux) SetHandler(h Handler) {
	m.mu.Lock()
	m.handler = h
	m.mu.Unlock()
}

func (m *Mux) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.conns[c] = struct{}{}
	return true
}

func (m *Mux) untrack(c net.Conn) {
	m.mu.Lock()
	delete(m.conns, c)
	m.mu.Unlock()
}

func (m *Mux) acceptLoop() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			if m.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.log.Warn("accept failed", "error", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-m.ctx.Done():
				return
			}
			continue
		}
		if !m.track(c) {
			c.Close()
			return
		}
		m.wg.Add(1)
		go m.dispatch(c)
	}
}

// dispatch completes the handshake and reads the protocol byte off the accept loop, so a slow
// or hostile peer delays nobody else.
func (m *Mux) dispatch(c net.Conn) {
	defer m.wg.Done()
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.HandshakeContext(m.ctx); err != nil {
			m.log.Warn("tls handshake refused", "remote", c.RemoteAddr().String(), "error", err)
			m.drop(c)
			return
		}
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		m.log.Debug("connection closed before its protocol byte", "remote", c.RemoteAddr().String(), "error", err)
		m.drop(c)
		return
	}
	_ = c.SetDeadline(time.Time{})
	switch b[0] {
	case protoRaft:
		// Raft's NetworkTransport owns it from here and closes it when its peer goes away; it
		// stays tracked so that Close can end it (raft never closes inbound connections on
		// shutdown, which would leave their goroutines blocked in Read).
		select {
		case m.raftCh <- &trackedConn{Conn: c, m: m}:
		case <-m.ctx.Done():
			m.drop(c)
		}
	case protoRPC:
		m.mu.Lock()
		h := m.handler
		m.mu.Unlock()
		if h == nil {
			m.drop(c)
			return
		}
		m.serveRPC(c, h)
		m.drop(c)
	default:
		m.log.Warn("unknown protocol byte", "remote", c.RemoteAddr().String(), "byte", b[0])
		m.drop(c)
	}
}

func (m *Mux) drop(c net.Conn) {
	c.Close()
	m.untrack(c)
}

// trackedConn is an accepted Raft connection; closing it forgets it.
type trackedConn struct {
	net.Conn
	m *Mux
}

func (c *trackedConn) Close() error {
	c.m.untrack(c.Conn)
	return c.Conn.Close()
}

// Close stops accepting, closes every accepted connection (RPC and Raft) and waits for the
// goroutines it started.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	conns := m.conns
	m.conns = map[net.Conn]struct{}{}
	m.mu.Unlock()
	m.cancel()
	err := m.ln.Close()
	for c := range conns {
		c.Close()
	}
	m.wg.Wait()
	return err
}

// dial opens a connection to addr and writes the protocol byte.
func (m *Mux) dial(ctx context.Context, addr string, proto byte) (net.Conn, error) {
	return dial(ctx, addr, proto, m.clientTLS)
}

func dial(ctx context.Context, addr string, proto byte, clientTLS *tls.Config) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(deadline)
	}
	if clientTLS != nil {
		cfg := clientTLS.Clone()
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				c.Close()
				return nil, err
			}
			cfg.ServerName = host
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
		}
		c = tc
	}
	if _, err := c.Write([]byte{proto}); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// RaftLayer returns the raft.StreamLayer view of the mux.
func (m *Mux) RaftLayer() raft.StreamLayer { return raftLayer{m} }

type raftLayer struct{ m *Mux }

func (l raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.raftCh:
		return c, nil
	case <-l.m.ctx.Done():
		return nil, net.ErrClosed
	}
}

func (l raftLayer) Close() error   { return l.m.Close() }
func (l raftLayer) Addr() net.Addr { return l.m.advertise }

func (l raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(l.m.ctx, timeout)
	defer cancel()
	return l.m.dial(ctx, string(addr), protoRaft)
}
