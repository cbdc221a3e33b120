package pgctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
)

// Slots implements ha.Replication: the physical replication slots.
func (c *Controller) Slots(ctx context.Context) ([]ha.Slot, error) {
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, `SELECT slot_name, active FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1`,
		nil, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, res.Err
	}
	out := make([]ha.Slot, 0, len(res.Rows))
	for _, r := range res.Rows {
		out = append(out, ha.Slot{Name: string(r[0]), Active: string(r[1]) == "t"})
	}
	return out, nil
}

// CreateSlot implements ha.Replication.
func (c *Controller) CreateSlot(ctx context.Context, name string) error {
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return createSlot(ctx, conn, name)
}

// createSlot creates a physical slot that reserves WAL at once; one that exists is fine.
func createSlot(ctx context.Context, conn *pgconn.PgConn, name string) error {
	res := conn.ExecParams(ctx, `SELECT pg_catalog.pg_create_physical_replication_slot($1, true)
	WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)`,
		[][]byte{[]byte(name)}, nil, nil, nil).Read()
	var pe *pgconn.PgError
	if errors.As(res.Err, &pe) && pe.Code == "42710" { // created meanwhile
		return nil
	}
	return res.Err
}

// AdvanceSlot implements ha.Replication. PostgreSQL never moves a slot backwards or past the
// current WAL position; a slot in use (its member streams from this server again) is left
// alone.
func (c *Controller) AdvanceSlot(ctx context.Context, name string, lsn fsm.LSN) error {
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, `SELECT pg_catalog.pg_replication_slot_advance(slot_name,
	  LEAST($2::pg_lsn, CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END))
	FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND NOT active AND restart_lsn < $2::pg_lsn`,
		[][]byte{[]byte(name), []byte(lsn.String())}, nil, nil, nil).Read()
	var pe *pgconn.PgError
	if errors.As(res.Err, &pe) && pe.Code == "55006" { // became active meanwhile
		return nil
	}
	return res.Err
}

// DropSlot implements ha.Replication.
func (c *Controller) DropSlot(ctx context.Context, name string, terminate bool) error {
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	args := [][]byte{[]byte(name)}
	for {
		if terminate {
			res := conn.ExecParams(ctx, `SELECT pg_catalog.pg_terminate_backend(active_pid) FROM pg_catalog.pg_replication_slots
			WHERE slot_name = $1 AND active_pid IS NOT NULL`, args, nil, nil, nil).Read()
			if res.Err != nil {
				return res.Err
			}
		}
		res := conn.ExecParams(ctx, `SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
		WHERE slot_name = $1 AND NOT active`, args, nil, nil, nil).Read()
		var pe *pgconn.PgError
		if res.Err != nil && !(errors.As(res.Err, &pe) && (pe.Code == "55006" || pe.Code == "42704")) { // in use; gone meanwhile
			return res.Err
		}
		left := conn.ExecParams(ctx, `SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, args, nil, nil, nil).Read()
		if left.Err != nil {
			return left.Err
		}
		if len(left.Rows) == 0 {
			return nil
		}
		if !terminate {
			return fmt.Errorf("replication slot %q is in use", name)
		}
		// The WAL sender is exiting (or its standby reconnected): look again shortly.
		select {
		case <-ctx.Done():
			return fmt.Errorf("replication slot %q is still in use: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// SetSyncStandbyNames implements ha.Replication: ALTER SYSTEM, reload, and wait until a new
// session sees the value and every streaming WAL sender has taken it up (its sync_priority is
// positive exactly for the standbys want names). Only then are commits released by the new
// rule alone, so the flush position read afterwards bounds everything acknowledged before.
func (c *Controller) SetSyncStandbyNames(ctx context.Context, want ha.SyncNames) (fsm.LSN, error) {
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return 0, err
	}
	// Two queries: ALTER SYSTEM cannot run in the implicit transaction of a multi-statement
	// query.
	_, err = conn.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = "+quoteLiteral(want.Value)).ReadAll()
	if err == nil {
		_, err = conn.Exec(ctx, "SELECT pg_catalog.pg_reload_conf()").ReadAll()
	}
	conn.Close(context.Background())
	if err != nil {
		return 0, fmt.Errorf("setting synchronous_standby_names: %w", err)
	}
	for {
		lsn, ok, err := c.syncInEffect(ctx, want)
		if err != nil {
			return 0, err
		}
		if ok {
			return lsn, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("synchronous_standby_names = %q not in effect yet: %w", want.Value, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// syncInEffect checks, in a new session (which reads the reloaded configuration), that the
// server runs with want, and returns its flush position (0 in recovery).
func (c *Controller) syncInEffect(ctx context.Context, want ha.SyncNames) (fsm.LSN, bool, error) {
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return 0, false, err
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, `SELECT pg_catalog.current_setting('synchronous_standby_names'), pg_catalog.pg_is_in_recovery()`,
		nil, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, false, res.Err
	}
	if string(res.Rows[0][0]) != want.Value {
		return 0, false, nil
	}
	if string(res.Rows[0][1]) == "t" {
		return 0, true, nil // a standby: no WAL senders count on it
	}
	res = conn.ExecParams(ctx, `SELECT application_name, sync_priority FROM pg_catalog.pg_stat_replication
	WHERE state IN ('streaming', 'catchup')`, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, false, res.Err
	}
	for _, r := range res.Rows {
		prio, _ := strconv.Atoi(string(r[1]))
		named := want.Value == "*" || slices.ContainsFunc(want.Standbys, func(s string) bool { return strings.EqualFold(s, string(r[0])) })
		if named != (prio > 0) {
			return 0, false, nil
		}
	}
	res = conn.ExecParams(ctx, `SELECT pg_catalog.pg_current_wal_flush_lsn()::text`, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, false, res.Err
	}
	return parseLSN(res.Rows[0][0]), true, nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// SystemID returns the database system identifier of the data directory (pg_controldata).
func (i *Instance) SystemID(ctx context.Context) (string, error) {
	m, err := i.controlData(ctx)
	if err != nil {
		return "", err
	}
	id := m["Database system identifier"]
	if id == "" {
		return "", fmt.Errorf("pg_controldata of %s shows no database system identifier", i.cfg.DataDir)
	}
	return id, nil
}

// ConnectTo opens a control-plane connection as the superuser to another node's PostgreSQL,
// over TLS when that server offers it (sslmode=prefer, as replication and pg_rewind connect),
// so that a pg_hba.conf of hostssl lines only admits it.
func (i *Instance) ConnectTo(ctx context.Context, host string, port int) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%d sslmode=prefer", conninfoValue(host), port))
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Password, cfg.Database = i.cfg.Superuser, i.cfg.Password, "postgres"
	cfg.RuntimeParams = map[string]string{"application_name": "pgbastion"}
	cfg.ConnectTimeout = 5 * time.Second
	return pgconn.ConnectConfig(ctx, cfg)
}
