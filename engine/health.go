package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// runHealthChecker is the standalone proxy's role detection: every health_check_interval, and
// at once after a connection error, it asks each backend pg_is_in_recovery() and publishes the
// routing table. Two writable backends at once is a split brain: the proxy then routes writes
// nowhere rather than to a guess.
func (e *Engine) runHealthChecker(ctx context.Context, hc *healthChecker) {
	defer hc.close()
	every := e.conf().cfg.HealthCheckInterval
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		hc.check(ctx)
		if d := e.conf().cfg.HealthCheckInterval; d != every { // reloaded
			every = d
			t.Reset(every)
		}
		select {
		case <-ctx.Done():
			return
		case <-e.stopped:
			return
		case <-t.C:
		case <-e.checkNow:
		}
	}
}

// healthChecker holds the probe connections of a standalone proxy and what it last knew of
// each backend, by address. The backends are the configuration's at each check, so a reload
// can add or remove one.
type healthChecker struct {
	e     *Engine
	conns map[string]*pgconn.PgConn
	// known is each backend's last conclusive role; misses counts inconclusive probes since.
	known  map[string]backendRole
	misses map[string]int
	last   string
}

type backendRole uint8

const (
	roleDown backendRole = iota
	rolePrimary
	roleReplica
)

// maxMisses is how many consecutive inconclusive probes (timeouts) a backend keeps its last
// known role for. A refused connection or a server that says it is shutting down is
// conclusive at once.
const maxMisses = 3

func newHealthChecker(e *Engine) *healthChecker {
	return &healthChecker{e: e, conns: make(map[string]*pgconn.PgConn), known: make(map[string]backendRole), misses: make(map[string]int)}
}

func (hc *healthChecker) close() {
	for _, c := range hc.conns {
		if c != nil {
			_ = c.Close(context.Background())
		}
	}
}

// check probes every backend once (concurrently) and publishes the routing table if it changed.
func (hc *healthChecker) check(ctx context.Context) {
	e := hc.e
	type result struct {
		inRecovery bool
		err        error
	}
	backends := e.conf().cfg.Backends
	// Backends a reload removed: their probe connections close, their state goes. (The
	// routing table published below no longer names them, which retires their pools.)
	for addr, c := range hc.conns {
		if !slices.ContainsFunc(backends, func(b BackendConfig) bool { return b.Addr() == addr }) {
			if c != nil {
				_ = c.Close(context.Background())
			}
			delete(hc.conns, addr)
			delete(hc.known, addr)
			delete(hc.misses, addr)
		}
	}
	results := make([]result, len(backends))
	conns := make([]*pgconn.PgConn, len(backends))
	var wg sync.WaitGroup
	for i, b := range backends {
		conns[i] = hc.conns[b.Addr()]
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := e.probe(ctx, &conns[i], b)
			results[i] = result{r, err}
		}()
	}
	wg.Wait()
	spec := RoutingSpec{Names: map[string]string{}}
	var primaries []string
	for i, b := range backends {
		addr := b.Addr()
		hc.conns[addr] = conns[i]
		if b.Name != "" {
			spec.Names[addr] = b.Name
		}
		r := results[i]
		switch {
		case r.err == nil && r.inRecovery:
			hc.known[addr], hc.misses[addr] = roleReplica, 0
		case r.err == nil:
			hc.known[addr], hc.misses[addr] = rolePrimary, 0
		case inconclusive(r.err) && hc.misses[addr] < maxMisses:
			hc.misses[addr]++
			e.log.Warn("backend probe inconclusive; keeping its last known role", "backend", addr, "misses", hc.misses[addr], "err", r.err)
		default:
			if hc.known[addr] != roleDown {
				e.log.Warn("backend is down", "backend", addr, "err", r.err)
			}
			hc.known[addr] = roleDown
		}
		switch hc.known[addr] {
		case rolePrimary:
			primaries = append(primaries, addr)
		case roleReplica:
			spec.Replicas = append(spec.Replicas, addr)
		}
	}
	switch len(primaries) {
	case 0:
	case 1:
		spec.Primary = primaries[0]
	default:
		e.log.Error("more than one backend accepts writes; refusing to route writes until one is demoted", "writable", primaries)
	}
	key := fmt.Sprint(spec.Primary, spec.Replicas, spec.Names)
	if key != hc.last {
		hc.last = key
		e.SetRouting(spec)
	}
}

// inconclusive reports probe errors that do not prove the backend is down: timeouts.
func inconclusive(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) || pgconn.Timeout(err)
}

// probe asks one backend whether it is in recovery, reconnecting as needed. A probe
// connection left over from before fails when PostgreSQL restarted since (57P01, or a closed
// socket) although the server is up again: that failure says nothing about now, so the probe
// tries once more on a new connection before it reports an error.
func (e *Engine) probe(ctx context.Context, cp **pgconn.PgConn, b BackendConfig) (bool, error) {
	timeout := max(e.conf().cfg.HealthCheckInterval, 2*time.Second)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reused := *cp != nil && !(*cp).IsClosed()
	r, err := e.probeOnce(ctx, cp, b, timeout)
	if err != nil && reused && ctx.Err() == nil {
		r, err = e.probeOnce(ctx, cp, b, timeout)
	}
	return r, err
}

func (e *Engine) probeOnce(ctx context.Context, cp **pgconn.PgConn, b BackendConfig, timeout time.Duration) (bool, error) {
	if *cp == nil || (*cp).IsClosed() {
		cfg, err := pgconn.ParseConfig("sslmode=disable")
		if err != nil {
			return false, err
		}
		cfg.Host, cfg.Port = b.Host, uint16(b.Port)
		cfg.User, cfg.Password = e.checkUser()
		cfg.Database = "postgres"
		cfg.RuntimeParams = map[string]string{"application_name": "pgbastion-health"}
		cfg.ConnectTimeout = timeout
		cfg.Fallbacks = nil
		if bt := e.conf().backendTLS; bt != nil && !isSocketDir(b.Host) {
			// The role check connects as the proxy's server connections do.
			cfg.TLSConfig = bt.cfg.Clone()
			cfg.TLSConfig.ServerName = b.Host
			if bt.mode == "prefer" {
				cfg.Fallbacks = []*pgconn.FallbackConfig{{Host: b.Host, Port: uint16(b.Port)}}
			}
		}
		c, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return false, err
		}
		*cp = c
	}
	res := (*cp).ExecParams(ctx, "SELECT pg_catalog.pg_is_in_recovery()", nil, nil, nil, nil).Read()
	if res.Err != nil {
		_ = (*cp).Close(context.Background())
		*cp = nil
		return false, res.Err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		return false, fmt.Errorf("unexpected answer to pg_is_in_recovery()")
	}
	v, err := strconv.ParseBool(string(res.Rows[0][0]))
	return v, err
}

// checkUser returns the role checker's credentials.
func (e *Engine) checkUser() (string, string) {
	c := &e.conf().cfg
	if c.HealthCheckUser != "" {
		return c.HealthCheckUser, c.HealthCheckPassword
	}
	if c.Server.User != "" {
		return c.Server.User, c.Server.Password
	}
	return "postgres", ""
}

// requestHealthCheck asks the checker to look again now (after a connection error).
func (e *Engine) requestHealthCheck() {
	select {
	case e.checkNow <- struct{}{}:
	default:
	}
}
