package ha

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
	"github.com/pgbastion/pgbastion/ha/internal/testpki"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// tlsNodeConfig is a real node's configuration: BoltDB and file snapshots in dir, mutual TLS
// with certificates from ca.
func tlsNodeConfig(t *testing.T, ca *testpki.CA, dir, name, addr string, peers []Peer) Config {
	cfg := fastConfig(name, peers)
	// Real sockets, TLS handshakes and fsyncs on a loaded test machine: raft's default timings
	// (a leader that misses its lease for 150 ms of scheduling delay steps down).
	cfg.Raft.HeartbeatTimeout, cfg.Raft.ElectionTimeout, cfg.Raft.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
	cfg.Failover.LeaseTimeout, cfg.Failover.PrimaryTimeout = 2*time.Second, 3*time.Second
	cfg.Raft.Bind = addr
	cfg.Raft.DataDir = filepath.Join(dir, name)
	cfg.Raft.TLSEnabled = true
	cfg.Raft.TLSCert, cfg.Raft.TLSKey, cfg.Raft.TLSCA = ca.Files(t, dir, name)
	return cfg
}

func openNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	n, err := Open(cfg, NodeOptions{Logger: testLogger(t).With("node", cfg.Raft.NodeName), Member: MemberInfo{PGHost: "127.0.0.1", PGPort: 5432}})
	if err != nil {
		t.Fatalf("open %s: %v", cfg.Raft.NodeName, err)
	}
	return n
}

// TestMutualTLSClusterRefusesForeignCertificates runs three real nodes (BoltDB log, file
// snapshots, TLS 1.3 with client certificates) and shows that forwarding and backups work over
// the Raft port, that a node restarted on its data directory does not bootstrap again, and that
// a node whose certificate comes from another CA cannot join even when the leader adds it.
func TestMutualTLSClusterRefusesForeignCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, "cluster"), testpki.NewCA(t, "other")
	var peers []Peer
	for _, name := range []string{"n1", "n2", "n3"} {
		peers = append(peers, Peer{Name: name, Address: freeAddr(t)})
	}
	nodes := map[string]*Node{}
	cfgs := map[string]Config{}
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	for _, p := range peers {
		cfgs[p.Name] = tlsNodeConfig(t, ca, dir, p.Name, p.Address, peers)
		nodes[p.Name] = openNode(t, cfgs[p.Name])
	}
	leader := func() *Node {
		for _, n := range nodes {
			if n.IsLeader() {
				return n
			}
		}
		return nil
	}
	await.True(t, 30*time.Second, func() bool {
		if leader() == nil {
			return false
		}
		for _, n := range nodes {
			if len(n.State().Members) != 3 {
				return false
			}
		}
		return true
	}, "three members registered over mutual TLS")

	var follower *Node
	for _, n := range nodes {
		if !n.IsLeader() {
			follower = n
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := retry(ctx, func() error { return follower.SetPause(ctx, true) }); err != nil {
		t.Fatalf("forwarded write over TLS: %v", err)
	}
	var backup bytes.Buffer
	if _, err := follower.Backup(ctx, &backup); err != nil {
		t.Fatalf("forwarded backup over TLS: %v", err)
	}
	if _, st, err := ReadBackup(&backup); err != nil || !st.Paused || len(st.Members) != 3 {
		t.Fatalf("backup: %v", err)
	}

	// Restart a follower on its data directory: it has state, so it does not bootstrap, and it
	// catches up.
	name := follower.Name()
	if err := follower.Close(); err != nil {
		t.Fatal(err)
	}
	nodes[name] = openNode(t, cfgs[name])
	if err := retry(ctx, func() error { return nodes[name].SetPause(ctx, false) }); err != nil {
		t.Fatal(err)
	}
	await.True(t, 10*time.Second, func() bool { return !nodes[name].State().Paused && len(nodes[name].State().Members) == 3 },
		"restarted %s caught up", name)

	// An intruder with a certificate from another CA, added by the leader, never receives
	// anything: every connection fails the TLS handshake in both directions.
	xaddr := freeAddr(t)
	xcfg := tlsNodeConfig(t, other, dir, "x", xaddr, nil)
	// It trusts the cluster CA (so only our side's check stops it) but presents other's cert.
	xcfg.Raft.TLSCA = filepath.Join(dir, "n1-ca.crt")
	x := openNode(t, xcfg)
	defer x.Close()
	l := nodes["n1"] // any member: leader-only operations are forwarded
	await.True(t, 30*time.Second, func() bool { id, _ := l.Leader(); return id != "" }, "a known leader")
	if err := retry(ctx, func() error { return l.AddVoter(ctx, "x", xaddr) }); err != nil {
		t.Logf("AddVoter: %v", err)
	}
	// Two seconds is many heartbeat intervals: the leader keeps trying to replicate to x.
	xctx, xcancel := context.WithTimeout(ctx, 2*time.Second)
	defer xcancel()
	if err := x.SetPause(xctx, true); err == nil {
		t.Fatal("the intruder's write reached the leader")
	}
	// Nor can it talk to the leader directly, even knowing its address.
	b, _ := fsm.Encode(fsm.SetPause{Paused: true}, time.Time{})
	_, leaderAddr := l.Leader()
	if resp, err := x.forward(xctx, leaderAddr, rpcRequest{Kind: rpcApply, Command: b}); err == nil {
		t.Fatalf("the leader accepted a forwarded command from the intruder: %+v", resp)
	}
	if l.State().Paused {
		t.Fatal("the intruder's command was applied")
	}
	if got := len(x.State().Members); got != 0 {
		t.Fatalf("the intruder received the cluster state (%d members)", got)
	}
	if id, _ := x.Leader(); id != "" {
		t.Fatalf("the intruder learned the leader %q", id)
	}
	// Clean up its Raft membership so the cluster's configuration is as before.
	if err := retry(ctx, func() error { return l.RemoveMember(ctx, "x") }); err != nil {
		t.Fatalf("remove intruder: %v", err)
	}
}

// retry runs an idempotent operation again when it failed ambiguously (leadership lost while
// committing), as an operator or the CLI would.
func retry(ctx context.Context, op func() error) error {
	for {
		err := op()
		if err == nil || !strings.Contains(err.Error(), "leadership lost") || ctx.Err() != nil {
			return err
		}
	}
}
