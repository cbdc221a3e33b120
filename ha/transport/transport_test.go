package transport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/pgbastion/pgbastion/ha/internal/testpki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type pki struct {
	ca, other       *testpki.CA
	server, client  *tls.Config // node A, signed by ca
	peer            *tls.Config // node B's client side, signed by ca
	intruder        *tls.Config // signed by other, but trusting ca (so it would accept our server)
	noCert          *tls.Config // trusts ca, presents nothing
	tls12, wrongCAs *tls.Config
}

func newPKI(t *testing.T) *pki {
	ca, other := testpki.NewCA(t, "cluster-ca"), testpki.NewCA(t, "other-ca")
	_, _, a := ca.Issue(t, "a")
	_, _, b := ca.Issue(t, "b")
	_, _, x := other.Issue(t, "x")
	p := &pki{ca: ca, other: other}
	p.server, p.client = Configs(a, ca.Pool())
	_, p.peer = Configs(b, ca.Pool())
	_, p.intruder = Configs(x, ca.Pool())
	p.noCert = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool()}
	p.tls12 = p.peer.Clone()
	p.tls12.MinVersion, p.tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	_, p.wrongCAs = Configs(b, other.Pool()) // does not trust the server
	return p
}

func listen(t *testing.T, server, client *tls.Config) *Mux {
	t.Helper()
	m, err := Listen(Config{Bind: "127.0.0.1:0", ServerTLS: server, ClientTLS: client})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func echo(_ context.Context, req []byte) ([]byte, error) {
	if string(req) == "fail" {
		return nil, errors.New("handler says no")
	}
	return append([]byte("echo:"), req...), nil
}

func TestMutualTLSAcceptsClusterPeersOnly(t *testing.T) {
	p := newPKI(t)
	m := listen(t, p.server, p.client)
	m.SetHandler(echo)
	addr := m.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	good := NewClient(p.peer)
	defer good.Close()
	resp, err := good.Call(ctx, addr, []byte("hi"))
	if err != nil || string(resp) != "echo:hi" {
		t.Fatalf("cluster peer: %q %v", resp, err)
	}

	// Certificates from another CA, no certificate, TLS 1.2, or a client that does not trust
	// our CA: each call fails and the handler never runs.
	for name, cfg := range map[string]*tls.Config{
		"other CA": p.intruder, "no client certificate": p.noCert, "TLS 1.2": p.tls12, "untrusted server": p.wrongCAs,
	} {
		c := NewClient(cfg)
		_, err := c.Call(ctx, addr, []byte("hi"))
		c.Close()
		if err == nil {
			t.Errorf("%s: call succeeded", name)
		}
		var re *RemoteError
		if errors.As(err, &re) {
			t.Errorf("%s: reached the handler: %v", name, err)
		}
	}
	// Plain TCP to a TLS port fails too.
	plain := NewClient(nil)
	defer plain.Close()
	if _, err := plain.Call(ctx, addr, []byte("hi")); err == nil {
		t.Error("plain TCP call succeeded")
	}
}

func TestRaftLayerOverMutualTLS(t *testing.T) {
	p := newPKI(t)
	m := listen(t, p.server, p.client)
	layer := m.RaftLayer()
	if layer.Addr().String() != m.ListenAddr().String() {
		t.Fatalf("advertised %s, bound %s", layer.Addr(), m.ListenAddr())
	}

	accepted := make(chan net.Conn, 4)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := layer.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	defer func() { m.Close(); wg.Wait() }()

	// An intruder's raft connection never reaches Accept.
	bad, err := dial(context.Background(), m.Addr().String(), protoRaft, p.intruder)
	if err == nil {
		// TLS 1.3: the client finishes before the server checks its certificate; the
		// rejection shows up as a failed read.
		_ = bad.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, rerr := bad.Read(make([]byte, 1)); rerr == nil {
			t.Fatal("intruder connection stayed open")
		}
		bad.Close()
	}
	select {
	case c := <-accepted:
		t.Fatalf("intruder accepted from %s", c.RemoteAddr())
	case <-time.After(100 * time.Millisecond):
	}

	// A peer's raft connection is accepted and carries bytes both ways.
	peer := listen(t, p.server, p.peer)
	c, err := peer.RaftLayer().Dial(raft.ServerAddress(m.Addr().String()), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var s net.Conn
	select {
	case s = <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("peer not accepted")
	}
	defer s.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q %v", buf, err)
	}
}

func TestRPCErrorsAndReuse(t *testing.T) {
	m := listen(t, nil, nil)
	var calls sync.WaitGroup
	m.SetHandler(func(ctx context.Context, req []byte) ([]byte, error) {
		calls.Add(1)
		defer calls.Done()
		return echo(ctx, req)
	})
	c := NewClient(nil)
	defer c.Close()
	ctx := context.Background()
	_, err := c.Call(ctx, m.Addr().String(), []byte("fail"))
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "handler says no" {
		t.Fatalf("remote error: %v", err)
	}
	for i := 0; i < 5; i++ {
		if resp, err := c.Call(ctx, m.Addr().String(), []byte("x")); err != nil || string(resp) != "echo:x" {
			t.Fatalf("call %d: %q %v", i, resp, err)
		}
	}
	c.mu.Lock()
	idle := len(c.idle[m.Addr().String()])
	c.mu.Unlock()
	if idle != 1 {
		t.Fatalf("sequential calls should reuse one connection, %d idle", idle)
	}
}

func TestOversizedFrameIsRefusedBeforeAllocation(t *testing.T) {
	m := listen(t, nil, nil)
	m.SetHandler(func(context.Context, []byte) ([]byte, error) {
		t.Error("handler called for an oversized frame")
		return nil, nil
	})
	conn, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hdr [5]byte
	hdr[0] = protoRPC
	binary.BigEndian.PutUint32(hdr[1:], MaxFrame+1)
	if _, err := conn.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatalf("server answered %d bytes instead of closing", n)
	}
	// The client refuses to send one too.
	w := bufio.NewWriter(io.Discard)
	if err := writeFrame(w, nil, make([]byte, MaxFrame+1)); err == nil {
		t.Fatal("writeFrame accepted an oversized frame")
	}
}

func TestUnknownProtocolByteAndSilentPeerAreDropped(t *testing.T) {
	m := listen(t, nil, nil)
	conn, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte{'?'})
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection with an unknown protocol byte stayed open")
	}
	// RPC before a handler is installed is refused, not queued.
	c := NewClient(nil)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, m.Addr().String(), []byte("x")); err == nil {
		t.Fatal("call without a handler succeeded")
	}
}

func TestCallHonoursContext(t *testing.T) {
	m := listen(t, nil, nil)
	release := make(chan struct{})
	m.SetHandler(func(ctx context.Context, req []byte) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return req, nil
	})
	defer close(release)
	c := NewClient(nil)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Call(ctx, m.Addr().String(), []byte("x")); err == nil {
		t.Fatal("call outlived its context")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("call took %s after its deadline", d)
	}
}

func TestListenRejectsUnadvertisableAddress(t *testing.T) {
	_, err := Listen(Config{Bind: "0.0.0.0:0"})
	if err == nil || !strings.Contains(err.Error(), "raft.advertise") {
		t.Fatalf("Listen on 0.0.0.0 without advertise: %v", err)
	}
	m, err := Listen(Config{Bind: "0.0.0.0:0", Advertise: "127.0.0.1:8300"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Addr().String() != "127.0.0.1:8300" {
		t.Fatalf("advertised %s", m.Addr())
	}
}

func TestLoadTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "ca")
	cert, key, caFile := ca.Files(t, dir, "n1")
	srv, cli, err := LoadTLS(TLSFiles{CertFile: cert, KeyFile: key, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	if srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.MinVersion != tls.VersionTLS13 || cli.RootCAs == nil {
		t.Fatalf("mutual TLS not configured: %+v", srv)
	}
	srv, _, err = LoadTLS(TLSFiles{CertFile: cert, KeyFile: key})
	if err != nil || srv.ClientAuth != tls.NoClientCert {
		t.Fatalf("without CA: %v %v", srv.ClientAuth, err)
	}
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, bytes.Repeat([]byte("x"), 10), 0o600)
	if _, _, err := LoadTLS(TLSFiles{CertFile: cert, KeyFile: key, CAFile: bad}); err == nil {
		t.Fatal("accepted a CA file without certificates")
	}
	if _, _, err := LoadTLS(TLSFiles{CertFile: cert}); err == nil {
		t.Fatal("accepted a missing key")
	}
}

// TestAdvertiseAHostName: a host name is advertised as written (peers resolve it each time
// they dial, so a node whose address changes is found under its name), and peers reach the
// node through it; an unspecified or portless address is still refused.
func TestAdvertiseAHostName(t *testing.T) {
	m, err := Listen(Config{Bind: "127.0.0.1:0", Advertise: "db1.cluster.local:8300"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := m.RaftLayer().Addr().String(); got != "db1.cluster.local:8300" {
		t.Fatalf("advertised %s, want the name as written", got)
	}
	// A peer dialing a name reaches the node.
	_, port, _ := net.SplitHostPort(m.ListenAddr().String())
	m.SetHandler(func(_ context.Context, req []byte) ([]byte, error) { return append([]byte("re: "), req...), nil })
	c := NewClient(nil)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := c.Call(ctx, "localhost:"+port, []byte("hi")); err != nil || string(out) != "re: hi" {
		t.Fatalf("call through the name: %q, %v", out, err)
	}
	for _, bad := range []string{"0.0.0.0:8300", "[::]:8300", ":8300", "localhost", "db1:0"} {
		if m2, err := Listen(Config{Bind: "127.0.0.1:0", Advertise: bad}); err == nil {
			m2.Close()
			t.Errorf("advertise %q accepted", bad)
		}
	}
}
