package engine

import (
	"crypto/tls"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"
)

// Conn is one client or server connection as the admin console's SHOW CLIENTS and SHOW
// SERVERS list it.
type Conn struct {
	Server bool
	// ID identifies the connection for Link (PgBouncer prints its object's address there too).
	ID, Link       string
	User, Database string
	// State: clients "login", "active" (logged in, not waiting), "waiting" (for a server) or
	// "active_cancel_req" (a cancel connection whose cancel is on its way to PostgreSQL);
	// servers "active" (attached to a client), "idle", "used" (being reset or checked, or held
	// until a cancel for its last client lands).
	State              string
	Addr, Local        string // host:port of the far end and of this end
	Connected, Request time.Time
	// Wait is how long a waiting client has waited for a server.
	Wait time.Duration
	// RemotePID is a server's backend process ID (0 for clients).
	RemotePID uint32
	TLS       string
	AppName   string
	// Prepared counts a client's named statements, or the statements prepared on a server.
	Prepared int
	// Loop is the event loop the connection is on; -1 is the stream path (TLS, slow readers).
	Loop int
}

// streamPathWait bounds how long a snapshot waits for a stream-path client that is busy
// (its handler holds the client's lock, perhaps writing to a slow reader).
const streamPathWait = 50 * time.Millisecond

// loopSnapshotWait bounds how long a snapshot waits for an event loop to answer.
const loopSnapshotWait = 2 * time.Second

// Conns lists the proxy's client and server connections, clients first, each kind in the
// order they connected. It waits for every event loop to list its own connections, so it
// must not run on one. Connections moving between paths while it runs may be missing.
func (e *Engine) Conns() []Conn { return e.conns(nil) }

// conns is Conns; self, if not nil, is a stream-path client whose lock the caller holds.
func (e *Engine) conns(self *client) []Conn {
	// Every loop lists its own connections, all at once; a loop that answers after the wait
	// is left out.
	var (
		mu     sync.Mutex
		listed []Conn
	)
	if late := e.onLoops(func(lp *loop) {
		rows := lp.conns()
		mu.Lock()
		listed = append(listed, rows...)
		mu.Unlock()
	}); late > 0 {
		e.log.Warn("event loops did not list their connections in time; SHOW CLIENTS/SERVERS is incomplete", "loops", late)
	}
	mu.Lock()
	out := listed
	listed = nil // a late loop's rows go nowhere
	mu.Unlock()
	seen := make(map[string]bool, len(out))
	for _, c := range out {
		seen[c.ID] = true
	}

	// Clients on the stream path, read under their lock.
	streams := e.streamClientList()
	linked := map[string]string{} // server ID -> client ID, for servers off the loops
	for _, cl := range streams {
		if seen[connID(cl)] {
			continue
		}
		var c Conn
		switch {
		case cl == self:
			c = cl.describe(time.Now())
		case lockWithin(cl, streamPathWait):
			c = cl.describe(time.Now())
			cl.mu.Unlock()
		default:
			c = Conn{ID: connID(cl), State: "active", Loop: -1} // busy: it is handling traffic
		}
		c.Loop = -1
		if c.Link != "" {
			linked[c.Link] = c.ID
		}
		out = append(out, c)
	}

	// Servers off the loops (serving stream-path clients). What is read of them is set before
	// they join their backend's list, under its lock.
	e.routeMu.Lock()
	backends := make([]*backend, 0, len(e.backends))
	for _, b := range e.backends {
		backends = append(backends, b)
	}
	e.routeMu.Unlock()
	for _, b := range backends {
		b.mu.Lock()
		for s := range b.servers {
			id := connID(s)
			if seen[id] {
				continue
			}
			c := Conn{Server: true, ID: id, State: "idle", Addr: b.addr, Connected: s.born, RemotePID: s.pid, Loop: -1, TLS: s.tlsDesc}
			if s.pe != nil {
				c.User, c.Database = s.pe.key.user, s.pe.key.database
			}
			if cid, ok := linked[id]; ok {
				c.State, c.Link = "active", cid
			}
			out = append(out, c)
		}
		b.mu.Unlock()
	}

	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Server != out[j].Server {
			return !out[i].Server
		}
		return out[i].Connected.Before(out[j].Connected)
	})
	return out
}

// lockWithin takes cl.mu if it comes free within d.
func lockWithin(cl *client, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if cl.mu.TryLock() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func connID(p any) string { return fmt.Sprintf("%p", p) }

// conns lists the loop's connections; it runs on the loop.
func (lp *loop) conns() []Conn {
	now := time.Now()
	out := make([]Conn, 0, len(lp.clients)+len(lp.servers))
	for cl := range lp.clients {
		if cl.closed {
			continue
		}
		c := cl.describe(now)
		c.Loop = lp.idx
		out = append(out, c)
	}
	for s := range lp.servers {
		if s.closing || s.gone {
			continue
		}
		c := s.describe()
		c.Loop = lp.idx
		out = append(out, c)
	}
	return out
}

// describe reads a client's row; the caller owns the client (its loop, or its lock).
func (cl *client) describe(now time.Time) Conn {
	c := Conn{ID: connID(cl), User: cl.user, Database: cl.database, Connected: cl.acceptedAt, Request: cl.lastActive,
		Addr: cl.remote(), Prepared: len(cl.stmts)}
	switch {
	case cl.state == csStartup || cl.state == csAuth || cl.state == csLookup || cl.state == csLogin:
		c.State = "login"
	case cl.state == csCancel:
		c.State = "active_cancel_req" // PgBouncer's name for a client whose cancel is on its way
	case cl.waiting || cl.dialing:
		c.State = "waiting"
		if !cl.waitSince.IsZero() {
			c.Wait = now.Sub(cl.waitSince)
		}
	default:
		c.State = "active"
	}
	if cl.srv != nil {
		c.Link = connID(cl.srv)
	}
	switch {
	case cl.conn != nil && cl.conn.LocalAddr() != nil:
		c.Local = cl.conn.LocalAddr().String()
	case cl.role == RoleRO && cl.e.roAddr != nil: // the stream path: the listener's address
		c.Local = cl.e.roAddr.String()
	case cl.e.rwAddr != nil:
		c.Local = cl.e.rwAddr.String()
	}
	if cl.params != nil {
		c.AppName, _ = cl.params.Get("application_name")
	}
	if cl.tlsDone && cl.tin != nil {
		c.TLS = tlsSummary(cl.tin.tc)
	} else if cl.tlsDone && cl.stream != nil && cl.stream.conn != nil {
		// Only once the handshake is done: ConnectionState waits for a handshake under way.
		c.TLS = tlsSummary(cl.stream.conn)
	}
	return c
}

// describe reads a server's row; it runs on the server's loop.
func (s *server) describe() Conn {
	c := Conn{Server: true, ID: connID(s), Addr: s.b.addr, Connected: s.born, Request: s.lastUsed, RemotePID: s.pid}
	if s.pe != nil {
		c.User, c.Database = s.pe.key.user, s.pe.key.database
	}
	switch {
	case s.client != nil:
		c.State, c.Link = "active", connID(s.client)
	case s.resetting || s.checkFor != nil || s.cancelHold:
		c.State = "used"
	default:
		c.State = "idle"
	}
	if s.stmts != nil {
		c.Prepared = s.stmts.Len()
	}
	if s.params != nil {
		c.AppName, _ = s.params.Get("application_name")
	}
	if s.conn != nil && s.conn.LocalAddr() != nil {
		c.Local = s.conn.LocalAddr().String()
	}
	c.TLS = s.tlsDesc
	return c
}

// tlsSummary is PgBouncer's tls column: version and cipher, empty without TLS.
func tlsSummary(nc net.Conn) string {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return ""
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete {
		return ""
	}
	// "TLSv1.3/TLS_AES_128_GCM_SHA256", as PgBouncer writes it (Go says "TLS 1.3").
	return strings.Replace(tls.VersionName(cs.Version), " ", "v", 1) + "/" + tls.CipherSuiteName(cs.CipherSuite)
}
