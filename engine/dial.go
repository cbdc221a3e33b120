package engine

import (
	"context"
	"net"
	"path/filepath"
	"strings"
)

// isSocketDir reports whether a backend host names a Unix-socket directory rather than a
// network host: as in libpq, a host that starts with a slash.
func isSocketDir(host string) bool { return strings.HasPrefix(host, "/") }

// dialBackend opens a connection to a backend address (host:port, as in the routing table).
// A host that is a directory is PostgreSQL's Unix-socket directory: the connection goes to the
// socket file PostgreSQL creates there for that port (.s.PGSQL.<port>), which skips the TCP
// stack on both sides of every message — the cheaper way to reach PostgreSQL on the same host.
func dialBackend(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && isSocketDir(host) {
		return d.DialContext(ctx, "unix", filepath.Join(host, ".s.PGSQL."+port))
	}
	return d.DialContext(ctx, "tcp", addr)
}
