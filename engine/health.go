package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
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
	t := time.NewTicker(e.cfg.HealthCheckInterval)
	defer t.Stop()
	for {
		hc.check(ctx)
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
// each backend.
type healthChecker struct {
	e     *Engine
	conns []*pgconn.PgConn
	// known is each backend's last conclusive role; misses counts inconclusive probes since.
	known  []backendRole
	misses []int
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
	n := len(e.cfg.Backends)
	return &healthChecker{e: e, conns: make([]*pgconn.PgConn, n), known: make([]backendRole, n), misses: make([]int, n)}
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
	results := make([]result, len(e.cfg.Backends))
	var wg sync.WaitGroup
	for i, b := range e.cfg.Backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := e.probe(ctx, &hc.conns[i], b)
			results[i] = result{r, err}
		}()
	}
	wg.Wait()
	spec := RoutingSpec{Names: map[string]string{}}
	var primaries []string
	for i, b := range e.cfg.Backends {
		addr := b.Addr()
		if b.Name != "" {
			spec.Names[addr] = b.Name
		}
		r := results[i]
		switch {
		case r.err == nil && r.inRecovery:
			hc.known[i], hc.misses[i] = roleReplica, 0
		case r.err == nil:
			hc.known[i], hc.misses[i] = rolePrimary, 0
		case inconclusive(r.err) && hc.misses[i] < maxMisses:
			hc.misses[i]++
			e.log.Warn("backend probe inconclusive; keeping its last known role", "backend", addr, "misses", hc.misses[i], "err", r.err)
		default:
			if hc.known[i] != roleDown {
				e.log.Warn("backend is down", "backend", addr, "err", r.err)
			}
			hc.known[i] = roleDown
		}
		switch hc.known[i] {
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
	key := fmt.Sprint(spec.Primary, spec.Replicas)
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

// probe asks one backend whether it is in recovery, reconnecting as needed.
func (e *Engine) probe(ctx context.Context, cp **pgconn.PgConn, b BackendConfig) (bool, error) {
	timeout := max(e.cfg.HealthCheckInterval, 2*time.Second)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
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
