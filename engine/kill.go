package engine

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/pgbastion/pgbastion/pgwire"
)

// Operator actions on connections: PgBouncer's KILL_CLIENT, KILL and RECONNECT, from the admin
// console, the API (DELETE /proxy/connections/{id}, POST /proxy/kill, POST /proxy/reconnect)
// and pgbastion ctl proxy.

// KillResult says what a KILL did.
type KillResult struct {
	// Clients is how many client connections were closed; Servers how many server
	// connections were retired (idle ones closed at once, the others as their clients let
	// them go).
	Clients, Servers int
	// Busy counts stream-path clients (TLS, slow readers) that stayed busy past a short wait
	// and were not looked at; they keep their connections.
	Busy int
	// Paused: the database is paused (a standalone proxy) until it is resumed.
	Paused bool
}

// stuckStreamWait bounds how long an operator action waits for a busy stream-path client.
const stuckStreamWait = time.Second

// KillClient closes the client connection whose ID is id (SHOW CLIENTS' ptr column, the id
// of GET /proxy/connections), as if it had disconnected: a request it has running is cancelled
// in PostgreSQL and its server closed, an open transaction is rolled back (server.abandoned).
// The client gets FATAL 57P01 saying an operator closed it. It reports whether such a client
// was found.
func (e *Engine) KillClient(id string) bool { return e.killClient(nil, id) }

func (e *Engine) killClient(self *client, id string) bool {
	var found atomic.Bool
	e.eachClient(self, func(cl *client) {
		if connID(cl) == id {
			found.Store(true)
			cl.kill("KILL_CLIENT")
		}
	}, func(cl *client) {
		// Busy (writing to a slow reader, say): its connection is closed under it, which
		// ends its handler. It gets no message.
		if connID(cl) == id {
			found.Store(true)
			e.m.clientsKilled.Inc()
			cl.stream.closeClient()
		}
	})
	if found.Load() {
		e.log.Info("operator closed a client connection", "client", id)
	}
	return found.Load()
}

// KillDatabase closes every client connection to the database db (as KillClient does) and
// retires every server connection to it. On a standalone proxy it first pauses the database,
// as PgBouncer's KILL does: clients that come back log in, but their transactions wait until
// ResumeDatabase (so that, say, DROP DATABASE finds no session in the way). A cluster
// member's pools are paused only by switchovers: there new clients come in at once.
func (e *Engine) KillDatabase(db string) KillResult { return e.killDatabase(nil, db) }

func (e *Engine) killDatabase(self *client, db string) KillResult {
	paused := false
	if len(e.cfg.Backends) > 0 {
		e.setDBPaused(db, true)
		paused = true
	}
	var clients atomic.Int64
	busy := e.eachClient(self, func(cl *client) {
		if cl.database == db && cl.state != csConsole {
			clients.Add(1)
			cl.kill("KILL " + db)
		}
	}, nil)
	r := KillResult{Clients: int(clients.Load()), Busy: busy, Servers: e.Reconnect(db), Paused: paused}
	e.log.Warn("operator killed a database's connections", "database", db, "clients", r.Clients, "servers", r.Servers, "paused", paused)
	return r
}

// Reconnect retires the server connections of database db's pools (every pool when db is
// empty), PgBouncer's RECONNECT: idle ones close at once, those in use when their client
// lets them go (at the end of the transaction in transaction mode, of the session in session
// mode); new ones are opened as clients need them. Use it after changing something
// PostgreSQL reads only when a session starts (pg_hba.conf, a role's settings,
// session_preload_libraries…). It returns how many server connections it retired.
func (e *Engine) Reconnect(db string) int {
	now := time.Now()
	n := 0
	for _, pe := range e.poolEntries() {
		if db != "" && pe.key.database != db {
			continue
		}
		idle, others := pe.p.Reconnect(now)
		for _, s := range idle {
			s.closeAsync()
		}
		// Servers being connected now count as open but are new: they stay.
		n += len(idle) + max(0, others-int(pe.dialing.Load()))
	}
	e.m.reconnects.Add(n)
	return n
}

// loopList returns the event loops (gnet reports them as it starts them).
func (e *Engine) loopList() []*loop {
	e.loopMu.Lock()
	defer e.loopMu.Unlock()
	return append([]*loop(nil), e.loops...)
}

// onLoops runs f on every event loop, all at once, and waits for them up to
// loopSnapshotWait. It returns how many had not run f by then (they still will). It must not
// run on an event loop.
func (e *Engine) onLoops(f func(lp *loop)) (late int) {
	loops := e.loopList()
	done := make(chan struct{}, len(loops)) // buffered: a loop that runs f late must not block
	for _, lp := range loops {
		lp.exec(func() {
			f(lp)
			done <- struct{}{}
		})
	}
	deadline := time.After(loopSnapshotWait)
	for i := range loops {
		select {
		case <-done:
		case <-deadline:
			return len(loops) - i
		}
	}
	return 0
}

// streamClientList returns the clients whose stream goroutine runs (TLS, slow readers).
func (e *Engine) streamClientList() []*client {
	e.streamMu.Lock()
	defer e.streamMu.Unlock()
	out := make([]*client, 0, len(e.streamClients))
	for cl := range e.streamClients {
		out = append(out, cl)
	}
	return out
}

// hasStreamClients reports whether any client is on the stream path.
func (e *Engine) hasStreamClients() bool {
	e.streamMu.Lock()
	defer e.streamMu.Unlock()
	return len(e.streamClients) > 0
}

// poolEntries lists every pool of every backend.
func (e *Engine) poolEntries() []*poolEntry {
	e.routeMu.Lock()
	defer e.routeMu.Unlock()
	var out []*poolEntry
	for _, b := range e.backends {
		b.mu.Lock()
		for _, pe := range b.pools {
			out = append(out, pe)
		}
		b.mu.Unlock()
	}
	return out
}

// kill closes the client for an operator's command; it runs on the client's owner.
func (cl *client) kill(command string) {
	if cl.closed {
		return
	}
	cl.e.m.clientsKilled.Inc()
	cl.fail(sqlErr(pgwire.AdminShutdown, fmt.Sprintf("terminating connection: an operator closed it (%s)", command), ""))
}

// eachClient runs act on every live client, each on the goroutine that owns it (its event
// loop, or under its lock on the stream path), and returns when all have run. self, if not
// nil, is a stream-path client whose lock the caller holds. It returns how many stream-path
// clients it skipped because they stayed busy (a handler writing to a slow reader holds the
// lock); onBusy, if not nil, is called for each without its lock (it may read only what
// never changes). act runs on several loops at once. It must not run on an event loop.
// Clients moving between paths meanwhile may be missed.
func (e *Engine) eachClient(self *client, act, onBusy func(cl *client)) (busy int) {
	if late := e.onLoops(func(lp *loop) {
		for cl := range lp.clients {
			if !cl.closed {
				act(cl)
			}
		}
	}); late > 0 {
		e.log.Warn("event loops did not answer in time; an operator's command may reach their clients late", "loops", late)
	}

	streams := e.streamClientList()
	for _, cl := range streams {
		switch {
		case cl == self:
			act(cl)
		case lockWithin(cl, stuckStreamWait):
			if !cl.closed {
				act(cl)
			}
			cl.mu.Unlock()
		default:
			busy++
			if onBusy != nil {
				onBusy(cl)
			}
		}
	}
	return busy
}

// KillNotice describes what KILL did, for the console and the API.
func (r KillResult) KillNotice(db, resume string) string {
	msg := fmt.Sprintf("closed %d client connections and retired %d server connections of database %q", r.Clients, r.Servers, db)
	if r.Paused {
		msg += fmt.Sprintf("; the database is paused: clients may connect, their transactions wait until %s", resume)
	} else {
		msg += "; new connections are accepted (a cluster member's pools are paused only by switchovers)"
	}
	if r.Busy > 0 {
		msg += fmt.Sprintf("; %d busy clients were not checked, run KILL again", r.Busy)
	}
	return msg
}
