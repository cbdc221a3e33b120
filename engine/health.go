package engine

import (
	"context"
	"fmt"
	"strconv"
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

// healthChecker holds the probe connections of a standalone proxy.
type healthChecker struct {
	e     *Engine
	conns []*pgconn.PgConn
	last  string
}

func (hc *healthChecker) close() {
	for _, c := range hc.conns {
		if c != nil {
			_ = c.Close(context.Background())
		}
	}
}

// check probes every backend once and publishes the routing table if it changed.
func (hc *healthChecker) check(ctx context.Context) {
	e := hc.e
	conns := hc.conns
	{
		spec := RoutingSpec{Names: map[string]string{}}
		var primaries []string
		for i, b := range e.cfg.Backends {
			addr := b.Addr()
			if b.Name != "" {
				spec.Names[addr] = b.Name
			}
			inRecovery, err := e.probe(ctx, &conns[i], b)
			if err != nil {
				e.log.Debug("backend probe failed", "backend", addr, "err", err)
				continue
			}
			if inRecovery {
				spec.Replicas = append(spec.Replicas, addr)
			} else {
				primaries = append(primaries, addr)
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
}

// probe asks one backend whether it is in recovery, reconnecting as needed.
func (e *Engine) probe(ctx context.Context, cp **pgconn.PgConn, b BackendConfig) (bool, error) {
	timeout := e.cfg.HealthCheckInterval
	if timeout > 2*time.Second {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if *cp == nil || (*cp).IsClosed() {
		cfg, err := pgconn.ParseConfig("sslmode=disable")
		if err != nil {
			return false, err
		}
		cfg.Host, cfg.Port = b.Host, uint16(b.Port)
		cfg.User, cfg.Password, cfg.Database = e.checkUser(), e.cfg.Server.Password, "postgres"
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

func (e *Engine) checkUser() string {
	if e.cfg.Server.User != "" {
		return e.cfg.Server.User
	}
	return "postgres"
}

// requestHealthCheck asks the checker to look again now (after a connection error).
func (e *Engine) requestHealthCheck() {
	select {
	case e.checkNow <- struct{}{}:
	default:
	}
}
