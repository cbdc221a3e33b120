package pgctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
)

// hbaHeader starts every pg_hba.conf PGBastion writes: its agent's SQL, pg_ctl and the
// replica tools run over the Unix socket, which only the OS users allowed into the socket
// directory reach.
const hbaHeader = "# written by PGBastion\n" +
	"local all all trust\n" +
	"local replication all trust\n"

// validateHBA checks postgresql.pg_hba: one pg_hba.conf line per entry, of a kind PostgreSQL
// knows and with its fields (fsm.CheckHBALine). PostgreSQL checks the rest: at a reload before
// the file is loaded (ReloadHBA), at a start by failing it, its log naming the line.
func validateHBA(lines []string) []error {
	var errs []error
	for n, l := range lines {
		if err := fsm.CheckHBALine(l); err != nil {
			errs = append(errs, fmt.Errorf("postgresql.pg_hba[%d]: %w", n, err))
		}
	}
	return errs
}

// hbaLines returns the pg_hba list in effect: the node's own postgresql.pg_hba (as configured
// at start, then as reloaded) when it has one, else the cluster-wide list.
func (i *Instance) hbaLines() []string {
	i.hbaMu.Lock()
	defer i.hbaMu.Unlock()
	return i.effectiveHBA()
}

func (i *Instance) effectiveHBA() []string {
	if len(i.hba) > 0 {
		return i.hba
	}
	return i.clusterHBA
}

// hbaContent is the pg_hba.conf that lines ask for.
func hbaContent(lines []string) []byte {
	var b strings.Builder
	b.WriteString(hbaHeader)
	b.WriteString(hbaListHeader)
	for _, l := range lines {
		b.WriteString(strings.TrimSpace(l))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// hbaListHeader ends the lines before postgresql.pg_hba's own: postgresql.pg_hba[k] is line
// hbaFirstLine+k of the file.
const (
	hbaListHeader = "# postgresql.pg_hba (changes here are overwritten)\n"
	hbaFirstLine  = 5
)

// writeHBA writes pg_hba.conf from postgresql.pg_hba when it is set and the file differs;
// changed says whether it wrote.
func (i *Instance) writeHBA() (changed bool, err error) {
	i.hbaFileMu.Lock()
	defer i.hbaFileMu.Unlock()
	return i.writeHBALocked(i.hbaLines())
}

func (i *Instance) writeHBALocked(lines []string) (changed bool, err error) {
	if len(lines) == 0 || !i.HasData() {
		return false, nil
	}
	if i.refusedHBA != nil && slices.Equal(lines, i.refusedHBA) {
		// PostgreSQL refused these lines while it ran: written now, they would stop its next
		// start. The file keeps the lines it has.
		i.log.Error("pg_hba.conf keeps its previous lines: PostgreSQL refused the pg_hba list in effect; correct it and reload")
		return false, nil
	}
	path := filepath.Join(i.cfg.DataDir, "pg_hba.conf")
	want := hbaContent(lines)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, want) {
		return false, nil
	}
	if err := i.writeOwned(path, want); err != nil {
		return false, fmt.Errorf("writing pg_hba.conf from postgresql.pg_hba: %w", err)
	}
	return true, nil
}

// SyncHBA brings pg_hba.conf of a running PostgreSQL in line with the pg_hba list in effect
// (when pgbastion starts and finds PostgreSQL running, its list may have changed meanwhile),
// checked by PostgreSQL as a reload's is (see applyHBA). A list PostgreSQL refuses is not
// written, now nor before a later start, so that it cannot stop PostgreSQL from starting.
func (i *Instance) SyncHBA(ctx context.Context) error {
	_, err := i.applyHBA(ctx, "postgresql.pg_hba", func() {})
	return err
}

// ReloadHBA makes lines this node's own postgresql.pg_hba (a reload of pgbastion's
// configuration) and says what became of them; see applyHBA. An empty list hands pg_hba.conf
// back to the cluster-wide list, or, without one, leaves it as it is, to the operator.
func (i *Instance) ReloadHBA(ctx context.Context, lines []string) (string, error) {
	if errs := validateHBA(lines); len(errs) != 0 {
		return "", errors.Join(errs...)
	}
	lines = slices.Clone(lines)
	return i.applyHBA(ctx, "postgresql.pg_hba", func() { i.hba = lines })
}

// ApplyClusterHBA makes lines the cluster-wide pg_hba list on this node (an empty list: none)
// and says what became of them; local is true when the node's own postgresql.pg_hba takes
// precedence, and the file does not change.
func (i *Instance) ApplyClusterHBA(ctx context.Context, lines []string) (outcome string, local bool, err error) {
	for k, l := range lines {
		if err := fsm.CheckHBALine(l); err != nil {
			return "", false, hbaRefused{fmt.Errorf("pg_hba[%d]: %w", k, err)}
		}
	}
	lines = slices.Clone(lines)
	i.hbaMu.Lock()
	local = len(i.hba) > 0
	i.hbaMu.Unlock()
	outcome, err = i.applyHBA(ctx, "the cluster-wide pg_hba", func() { i.clusterHBA = lines })
	if local && err == nil {
		outcome = "this node's own postgresql.pg_hba takes precedence; pg_hba.conf is unchanged"
	}
	return outcome, local, err
}

// applyHBA changes a source of the pg_hba list, named name in errors (set runs under hbaMu), and brings pg_hba.conf in
// line with the list then in effect. With PostgreSQL running, pg_hba.conf is rewritten,
// PostgreSQL's own parser checks the new file (pg_hba_file_rules) and PostgreSQL loads it. A
// line PostgreSQL refuses puts the previous file and source back and is returned as an error
// that names it: loaded at a reload, such a file is skipped with a line in PostgreSQL's log,
// but at the next start it would stop PostgreSQL from starting. With PostgreSQL down, the
// list is written before its next start. When no list is in effect, pg_hba.conf is left as it
// is.
func (i *Instance) applyHBA(ctx context.Context, name string, set func()) (string, error) {
	i.hbaFileMu.Lock()
	defer i.hbaFileMu.Unlock()
	i.hbaMu.Lock()
	prevLocal, prevCluster := i.hba, i.clusterHBA
	set()
	lines := i.effectiveHBA()
	i.hbaMu.Unlock()
	undo := func() {
		i.hbaMu.Lock()
		i.hba, i.clusterHBA = prevLocal, prevCluster
		i.hbaMu.Unlock()
	}
	if len(lines) == 0 {
		return "no pg_hba list is in effect: pg_hba.conf is left as it is", nil
	}
	if !i.PostmasterAlive() || !i.HasData() {
		return "PostgreSQL is not running: pg_hba.conf is written before it starts", nil
	}
	path := filepath.Join(i.cfg.DataDir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		undo()
		return "", fmt.Errorf("reading pg_hba.conf: %w", err)
	}
	if bytes.Equal(old, hbaContent(lines)) {
		return "pg_hba.conf already has these lines", nil
	}
	conn, err := i.Connect(ctx)
	if err != nil {
		undo()
		return "", fmt.Errorf("PostgreSQL runs but cannot be reached to check the new pg_hba.conf, so it was not changed: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := i.writeHBALocked(lines); err != nil {
		undo()
		return "", err
	}
	restore := func(cause error) error {
		undo()
		if err := i.writeOwned(path, old); err != nil {
			return fmt.Errorf("%w; putting the previous pg_hba.conf back failed too, so fix %s before PostgreSQL restarts: %v", cause, path, err)
		}
		return fmt.Errorf("%w; the previous pg_hba.conf stays in effect", cause)
	}
	rows, err := conn.Exec(ctx, "SELECT line_number, error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number").ReadAll()
	if err != nil {
		return "", restore(fmt.Errorf("PostgreSQL could not check the new pg_hba.conf: %w", err))
	}
	if refused := describeHBAErrors(rows, name, len(lines)); refused != "" {
		i.hbaMu.Lock()
		i.refusedHBA = slices.Clone(lines)
		i.hbaMu.Unlock()
		return "", hbaRefused{restore(fmt.Errorf("PostgreSQL refuses %s", refused))}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_reload_conf()").ReadAll(); err != nil {
		return "", restore(fmt.Errorf("PostgreSQL could not be asked to load the new pg_hba.conf: %w", err))
	}
	i.log.Info("pg_hba.conf rewritten and reloaded", "lines", len(lines))
	return "pg_hba.conf rewritten and loaded by PostgreSQL", nil
}

// describeHBAErrors turns pg_hba_file_rules' errors into one message naming each refused entry
// of postgresql.pg_hba; "" when there are none.
func describeHBAErrors(results []*pgconn.Result, name string, n int) string {
	var parts []string
	for _, r := range results {
		if r.Err != nil {
			return r.Err.Error()
		}
		for _, row := range r.Rows {
			if len(row) != 2 {
				continue
			}
			line, _ := strconv.Atoi(string(row[0]))
			where := fmt.Sprintf("pg_hba.conf line %d", line)
			if k := line - hbaFirstLine; k >= 0 && k < n {
				where = fmt.Sprintf("%s[%d]", name, k)
			}
			parts = append(parts, where+": "+string(row[1]))
		}
	}
	return strings.Join(parts, "; ")
}

// hbaRefused is an error of lines PostgreSQL (or the check before it) refuses: trying them
// again will not help (ha.ErrHBARefused).
type hbaRefused struct{ error }

func (e hbaRefused) Unwrap() error        { return e.error }
func (e hbaRefused) Is(target error) bool { return target == ha.ErrHBARefused }

// ApplyClusterHBA implements ha.HBA.
func (c *Controller) ApplyClusterHBA(ctx context.Context, lines []string) (string, bool, error) {
	return c.inst.ApplyClusterHBA(ctx, lines)
}
