package pgctl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
)

var _ ha.Settings = (*Controller)(nil)

// listQuoteParams take a list of names that PostgreSQL quotes one by one: ALTER SYSTEM needs
// each element as its own literal ('a', 'b'); one literal 'a,b' would be a single name "a,b".
var listQuoteParams = map[string]bool{
	"local_preload_libraries":   true,
	"session_preload_libraries": true,
	"shared_preload_libraries":  true,
	"search_path":               true,
	"temp_tablespaces":          true,
}

// paramSQL is a parameter name as SQL: each dot-separated part quoted.
func paramSQL(name string) string { return pgx.Identifier(strings.Split(name, ".")).Sanitize() }

// settingLiteral quotes s as an SQL string literal that means the same whatever
// standard_conforming_strings is (the cluster-wide configuration may change it): with a
// backslash in it, an escape string literal (E prefix) with the backslashes doubled.
func settingLiteral(s string) string {
	if !strings.Contains(s, `\`) {
		return quoteLiteral(s)
	}
	return "E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
}

// valueSQL is the right-hand side of ALTER SYSTEM SET name = ... for value.
func valueSQL(name, value string) string {
	if !listQuoteParams[name] || strings.TrimSpace(value) == "" {
		return settingLiteral(value)
	}
	var elems []string
	for _, e := range strings.Split(value, ",") {
		e = strings.TrimSpace(e)
		if len(e) >= 2 && e[0] == '"' && e[len(e)-1] == '"' {
			e = strings.ReplaceAll(e[1:len(e)-1], `""`, `"`)
		}
		elems = append(elems, settingLiteral(e))
	}
	return strings.Join(elems, ", ")
}

// ApplySettings implements ha.Settings: ALTER SYSTEM SET and RESET, one statement per
// parameter (a refused one does not stop the others), a reload, and then the parameters a
// new session reports as pending a restart.
func (c *Controller) ApplySettings(ctx context.Context, set map[string]string, reset []string) (ha.SettingsResult, error) {
	res := ha.SettingsResult{Refused: map[string]string{}}
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.Background())
	run := func(name, sql string) error {
		_, err := conn.Exec(ctx, sql).ReadAll()
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			res.Refused[name] = pe.Message
			return nil
		}
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(set)) {
		if err := run(name, "ALTER SYSTEM SET "+paramSQL(name)+" = "+valueSQL(name, set[name])); err != nil {
			return res, err
		}
	}
	for _, name := range reset {
		if err := run(name, "ALTER SYSTEM RESET "+paramSQL(name)); err != nil {
			return res, err
		}
		if strings.HasPrefix(res.Refused[name], "unrecognized configuration parameter") {
			delete(res.Refused, name) // nothing to remove
		}
	}
	r := conn.ExecParams(ctx, `SELECT pg_catalog.clock_timestamp()::text, pg_catalog.pg_reload_conf()`, nil, nil, nil, nil).Read()
	if r.Err != nil {
		return res, fmt.Errorf("reloading the configuration: %w", r.Err)
	}
	before := string(r.Rows[0][0])
	res.PendingRestart, err = c.pendingRestart(ctx, before)
	return res, err
}

// pendingRestart waits until a new session runs with a configuration loaded after before (a
// server timestamp) and returns the parameters it reports as pending a restart. The
// postmaster reloads asynchronously; after about two seconds the current answer is taken.
func (c *Controller) pendingRestart(ctx context.Context, before string) ([]string, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		conn, err := c.inst.Connect(ctx)
		if err != nil {
			return nil, err
		}
		r := conn.ExecParams(ctx, `SELECT pg_catalog.pg_conf_load_time() > $1::timestamptz,
	coalesce((SELECT pg_catalog.string_agg(name, ',' ORDER BY name) FROM pg_catalog.pg_settings WHERE pending_restart), '')`,
			[][]byte{[]byte(before)}, nil, nil, nil).Read()
		conn.Close(context.Background())
		if r.Err != nil {
			return nil, r.Err
		}
		if string(r.Rows[0][0]) == "t" || time.Now().After(deadline) {
			if s := string(r.Rows[0][1]); s != "" {
				return strings.Split(s, ","), nil
			}
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// CheckSettings checks a configuration change against this node's running PostgreSQL before
// it is committed: set names a parameter PostgreSQL knows (or a custom extension.name one),
// not a read-only one, and a parameter a session may set gets its value tried with
// set_config in a transaction that is rolled back. Values of the others are checked by ALTER
// SYSTEM on each node, which refuses what PostgreSQL would not start with. ok is false when
// PostgreSQL could not be asked.
func (c *Controller) CheckSettings(ctx context.Context, set map[string]string) (ok bool, err error) {
	if len(set) == 0 {
		return true, nil
	}
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return false, nil
	}
	defer conn.Close(context.Background())
	names := slices.Sorted(maps.Keys(set))
	// server_version and server_version_num come along for the messages and the version check.
	r := conn.ExecParams(ctx, `SELECT name, context, setting FROM pg_catalog.pg_settings
	WHERE name = ANY($1::text[]) OR name IN ('server_version', 'server_version_num')`,
		[][]byte{[]byte("{" + strings.Join(names, ",") + "}")}, nil, nil, nil).Read()
	if r.Err != nil {
		return false, nil
	}
	contexts, running := map[string]string{}, map[string]string{}
	for _, row := range r.Rows {
		contexts[string(row[0])], running[string(row[0])] = string(row[1]), string(row[2])
	}
	version := running["server_version"]
	versionNum, _ := strconv.Atoi(running["server_version_num"])
	var errs []error
	for _, name := range names {
		ctxName, known := contexts[name]
		switch {
		case !known && !strings.Contains(name, "."):
			errs = append(errs, fmt.Errorf("%s: PostgreSQL %s has no such parameter", name, version))
		case !known && versionNum < 170000:
			// Before PostgreSQL 17, ALTER SYSTEM refuses a custom parameter nobody defined.
			errs = append(errs, fmt.Errorf("%s: PostgreSQL %s does not know it yet; load the extension that defines it first (shared_preload_libraries, then a restart)", name, version))
		case fsm.StandbyMinimums[name] && lowers(set[name], running[name]):
			errs = append(errs, fmt.Errorf("%s = %s is lower than the %s this cluster runs with: a standby cannot start with less than its primary, "+
				"so a restarted replica would stay down. Lowering it is not supported through the cluster configuration; raise it, or leave it", name, set[name], running[name]))
		case ctxName == "internal":
			errs = append(errs, fmt.Errorf("%s is read-only: PostgreSQL fixes it when it is built or initialised", name))
		case ctxName == "user" || ctxName == "superuser":
			if _, err := conn.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				return false, nil
			}
			rr := conn.ExecParams(ctx, `SELECT pg_catalog.set_config($1, $2, true)`, [][]byte{[]byte(name), []byte(set[name])}, nil, nil, nil).Read()
			if _, err := conn.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
				return false, nil
			}
			var pe *pgconn.PgError
			if errors.As(rr.Err, &pe) {
				errs = append(errs, errors.New(pe.Message))
			} else if rr.Err != nil {
				return false, nil
			}
		}
	}
	return true, errors.Join(errs...)
}

// lowers reports whether value, an integer, is below current; a value that is not an integer
// is left to PostgreSQL to refuse.
func lowers(value, current string) bool {
	v, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
	c, err2 := strconv.ParseInt(current, 10, 64)
	return err == nil && err2 == nil && v < c
}
