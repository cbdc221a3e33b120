package cluster

import (
	"context"
	"testing"
	"time"
)

// TestLocalSocket: with proxy.local_socket every node's proxy reaches its own PostgreSQL
// through the Unix socket and the other nodes' over TCP, and after a switchover the new
// primary's node reaches it through the socket while the old one's goes over TCP.
func TestLocalSocket(t *testing.T) {
	c := Start(t, Options{ProxyExtra: "local_socket: true"})
	primary, _ := c.WaitOneWritablePrimary(time.Minute)
	check := func(primary *Node) {
		t.Helper()
		for _, n := range c.Nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, err := c.Connect(ctx, n.RW)
			if err != nil {
				cancel()
				t.Fatalf("connect through %s: %v", n.Name, err)
			}
			// client_addr is NULL for a connection over a Unix socket.
			var overSocket bool
			var port int
			err = conn.QueryRow(ctx, "SELECT client_addr IS NULL, current_setting('port')::int FROM pg_stat_activity WHERE pid = pg_backend_pid()").Scan(&overSocket, &port)
			conn.Close(context.Background())
			cancel()
			if err != nil {
				t.Fatalf("through %s: %v", n.Name, err)
			}
			if port != primary.PGPort || overSocket != (n == primary) {
				t.Fatalf("writes through %s reach port %d over the socket %v; want the primary %s (port %d) over the socket only from its own node",
					n.Name, port, overSocket, primary.Name, primary.PGPort)
			}
		}
	}
	check(primary)
	cand := c.Others(primary)[0]
	c.Switchover(t, cand.Name)
	if p := c.WaitPrimaryOtherThan(t, primary, 2*time.Minute); p != cand {
		t.Fatalf("switchover to %s made %s the primary", cand.Name, p.Name)
	}
	c.WaitOneWritablePrimary(time.Minute)
	check(cand)
}
