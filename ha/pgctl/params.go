package pgctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// localParamOwners are the parameters postgresql.parameters may not set, and where they are set
// instead: PGBastion writes them from other settings, or manages them itself.
var localParamOwners = map[string]string{
	"listen_addresses":          "postgresql.host",
	"port":                      "postgresql.port",
	"unix_socket_directories":   "postgresql.socket_dir",
	"data_directory":            "postgresql.data_dir",
	"config_file":               "the data directory's postgresql.conf",
	"primary_conninfo":          "PGBastion (it points each standby at the primary)",
	"primary_slot_name":         "PGBastion (one slot per member)",
	"synchronous_standby_names": "PGBastion (failover.synchronous_mode)",
}

// validateParameters checks postgresql.parameters: names of the form PostgreSQL's have, none
// PGBastion owns, and no value that would stop replication. PostgreSQL checks the values (see
// ReloadParameters).
func validateParameters(params map[string]string) []error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(params)) {
		v, low := params[name], strings.ToLower(name)
		switch {
		case !fsm.ValidPGParamName(low):
			errs = append(errs, fmt.Errorf("postgresql.parameters: %q is not a PostgreSQL parameter name", name))
		case localParamOwners[low] != "":
			errs = append(errs, fmt.Errorf("postgresql.parameters.%s: set by %s, not here", name, localParamOwners[low]))
		case strings.HasPrefix(low, "recovery_target"):
			errs = append(errs, fmt.Errorf("postgresql.parameters.%s: a recovery target would stop a standby; PGBastion manages recovery", name))
		case strings.ContainsAny(v, "\x00\n\r"):
			errs = append(errs, fmt.Errorf("postgresql.parameters.%s: the value contains a NUL byte or a line break", name))
		case low == "wal_level" && strings.EqualFold(strings.TrimSpace(v), "minimal"):
			errs = append(errs, errors.New("postgresql.parameters.wal_level: minimal would stop replication; use replica or logical"))
		case low == "hot_standby" && isOff(v):
			errs = append(errs, errors.New("postgresql.parameters.hot_standby: off would keep replicas from serving reads and from being checked; leave it on"))
		}
	}
	return errs
}

func isOff(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "off", "false", "no", "0", "of":
		return true
	}
	return false
}

// ReloadParameters makes params the postgresql.parameters in effect (a reload of pgbastion's
// configuration) and says what became of them. postgresql.pgbastion.conf is rewritten and
// PostgreSQL's own parser checks the whole configuration as a start would (postgres -C): a
// name it does not know or a value it refuses puts the previous file back and is returned as
// an error in PostgreSQL's words, so no file PostgreSQL could not start with is left behind.
// A running PostgreSQL then reloads; the outcome names the parameters that wait for its next
// restart, and those the cluster-wide configuration (ALTER SYSTEM) overrides.
func (c *Controller) ReloadParameters(ctx context.Context, params map[string]string) (string, error) {
	i := c.inst
	if errs := validateParameters(params); len(errs) != 0 {
		return "", errors.Join(errs...)
	}
	params = maps.Clone(params)
	i.settingsMu.Lock()
	defer i.settingsMu.Unlock()
	if !i.HasData() {
		i.parameters = params
		return "no data directory yet: PostgreSQL starts with them", nil
	}
	path := filepath.Join(i.cfg.DataDir, settingsFile)
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading %s: %w", settingsFile, err)
	}
	want := i.settingsContent(params)
	if bytes.Equal(old, want) {
		i.parameters = params
		return "already in effect", nil
	}
	if err := i.writeOwned(path, want); err != nil {
		return "", fmt.Errorf("writing %s: %w", settingsFile, err)
	}
	if err := i.checkConfig(ctx, params); err != nil {
		if old == nil {
			err = errors.Join(err, os.Remove(path))
		} else if werr := i.writeOwned(path, old); werr != nil {
			return "", fmt.Errorf("PostgreSQL refuses them: %v; putting the previous %s back failed too, so fix it before PostgreSQL restarts: %v", err, path, werr)
		}
		return "", fmt.Errorf("PostgreSQL refuses them: %v; the previous settings stay in effect", err)
	}
	i.parameters = params
	if !i.PostmasterAlive() {
		return "PostgreSQL is not running: it starts with them", nil
	}
	conn, err := i.Connect(ctx)
	if err != nil {
		return "", fmt.Errorf("%s rewritten, but PostgreSQL could not be asked to reload it: %w", settingsFile, err)
	}
	defer conn.Close(context.Background())
	r := conn.ExecParams(ctx, `SELECT pg_catalog.clock_timestamp()::text, pg_catalog.pg_reload_conf(),
	coalesce((SELECT pg_catalog.string_agg(f.name, ', ' ORDER BY f.name) FROM pg_catalog.pg_file_settings f
	  WHERE f.sourcefile = $1 AND f.error IS NULL AND NOT f.applied
	    AND EXISTS (SELECT 1 FROM pg_catalog.pg_file_settings g WHERE g.name = f.name AND g.sourcefile LIKE '%postgresql.auto.conf')), '')`,
		[][]byte{[]byte(path)}, nil, nil, nil).Read()
	if r.Err != nil {
		return "", fmt.Errorf("reloading PostgreSQL: %w", r.Err)
	}
	outcome := "loaded by PostgreSQL"
	if shadowed := string(r.Rows[0][2]); shadowed != "" {
		outcome += "; the cluster-wide configuration (ctl config) overrides " + shadowed
	}
	pending, err := c.pendingRestart(ctx, string(r.Rows[0][0]))
	if err != nil {
		return outcome, nil // loaded; only the list of what waits for a restart is missing
	}
	if len(pending) > 0 {
		outcome += "; waiting for a restart of PostgreSQL: " + strings.Join(pending, ", ")
	}
	i.log.Info("postgresql.parameters reloaded", "outcome", outcome)
	return outcome, nil
}

// checkConfig has PostgreSQL read its configuration as a start would (postgres -C, which
// also works while the server runs) and returns what it refuses, in its words. params are
// given on the command line too: PostgreSQL checks only the last value it reads of a
// parameter, and the cluster-wide configuration (postgresql.auto.conf, read last) may hide
// one of them, which would then stop PostgreSQL from starting once that is removed.
func (i *Instance) checkConfig(ctx context.Context, params map[string]string) error {
	args := []string{"-D", i.cfg.DataDir, "-C", "data_directory"}
	for _, name := range slices.Sorted(maps.Keys(params)) {
		args = append(args, "-c", name+"="+params[name])
	}
	cmd := i.command(ctx, "postgres", args...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	var msgs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, level := range []string{"LOG:  ", "FATAL:  ", "ERROR:  "} {
			if k := strings.Index(line, level); k >= 0 {
				msgs = append(msgs, strings.TrimSpace(line[k+len(level):]))
			}
		}
	}
	if len(msgs) == 0 {
		return fmt.Errorf("postgres -C: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return errors.New(strings.Join(msgs, "; "))
}
