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
)

// hbaHeader starts every pg_hba.conf PGBastion writes: its agent's SQL, pg_ctl and the
// replica tools run over the Unix socket, which only the OS users allowed into the socket
// directory reach.
const hbaHeader = "# written by PGBastion\n" +
	"local all all trust\n" +
	"local replication all trust\n"

// hbaKinds are the first words pg_hba.conf accepts (PostgreSQL 15).
var hbaKinds = map[string]int{ // the fewest fields a line of that kind has
	"local": 4, "host": 5, "hostssl": 5, "hostnossl": 5, "hostgssenc": 5, "hostnogssenc": 5,
	"include": 2, "include_if_exists": 2, "include_dir": 2,
}

// validateHBA checks postgresql.pg_hba: one pg_hba.conf line per entry, of a kind PostgreSQL
// knows and with its fields. PostgreSQL checks the rest when it loads the file: a line it
// refuses keeps the previous file in effect at a reload and fails a start; its log says which.
func validateHBA(lines []string) []error {
	var errs []error
	for n, l := range lines {
		f := strings.Fields(l)
		switch {
		case strings.ContainsAny(l, "\r\n"):
			errs = append(errs, fmt.Errorf("postgresql.pg_hba[%d]: one line per entry, without line breaks", n))
		case len(f) == 0 || strings.HasPrefix(f[0], "#"):
			errs = append(errs, fmt.Errorf("postgresql.pg_hba[%d] is empty or a comment; list pg_hba.conf lines such as \"hostssl all all 10.0.0.0/8 scram-sha-256\"", n))
		case hbaKinds[f[0]] == 0:
			errs = append(errs, fmt.Errorf("postgresql.pg_hba[%d]: %q is not a pg_hba.conf line kind (local, host, hostssl, hostnossl, hostgssenc, hostnogssenc, include…)", n, f[0]))
		case len(f) < hbaKinds[f[0]]:
			errs = append(errs, fmt.Errorf("postgresql.pg_hba[%d]: %q has too few fields (a %s line needs at least %d)", n, l, f[0], hbaKinds[f[0]]))
		}
	}
	return errs
}

// hbaLines returns postgresql.pg_hba as in effect: as configured at start, then as reloaded.
func (i *Instance) hbaLines() []string {
	i.hbaMu.Lock()
	defer i.hbaMu.Unlock()
	return i.hba
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

// SyncHBA brings pg_hba.conf of a running PostgreSQL in line with postgresql.pg_hba (after a
// restart of pgbastion with a changed list) and has PostgreSQL load it.
func (i *Instance) SyncHBA(ctx context.Context) error {
	changed, err := i.writeHBA()
	if err != nil || !changed {
		return err
	}
	conn, err := i.Connect(ctx)
	if err != nil {
		return fmt.Errorf("pg_hba.conf rewritten from postgresql.pg_hba, but PostgreSQL could not be asked to load it: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_reload_conf()").ReadAll(); err != nil {
		return fmt.Errorf("pg_hba.conf rewritten from postgresql.pg_hba, but reloading PostgreSQL failed: %w", err)
	}
	i.log.Info("pg_hba.conf rewritten from postgresql.pg_hba and reloaded")
	return nil
}

// ReloadHBA makes lines the postgresql.pg_hba in effect (a reload of pgbastion's
// configuration) and says what became of them. With PostgreSQL running, pg_hba.conf is
// rewritten, PostgreSQL's own parser checks the new file (pg_hba_file_rules) and PostgreSQL
// loads it. A line PostgreSQL refuses puts the previous file and list back and is returned as
// an error that names it: loaded at a reload, such a file is skipped with a line in
// PostgreSQL's log, but at the next start it would stop PostgreSQL from starting. With
// PostgreSQL down, the list is written before its next start. An empty list leaves
// pg_hba.conf as it is, to the operator.
func (i *Instance) ReloadHBA(ctx context.Context, lines []string) (string, error) {
	if errs := validateHBA(lines); len(errs) != 0 {
		return "", errors.Join(errs...)
	}
	i.hbaFileMu.Lock()
	defer i.hbaFileMu.Unlock()
	lines = slices.Clone(lines)
	setLines := func(l []string) {
		i.hbaMu.Lock()
		i.hba = l
		i.hbaMu.Unlock()
	}
	if len(lines) == 0 {
		setLines(nil)
		return "postgresql.pg_hba unset: pg_hba.conf is left as it is", nil
	}
	if !i.PostmasterAlive() || !i.HasData() {
		setLines(lines)
		return "PostgreSQL is not running: pg_hba.conf is written before it starts", nil
	}
	path := filepath.Join(i.cfg.DataDir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading pg_hba.conf: %w", err)
	}
	if bytes.Equal(old, hbaContent(lines)) {
		setLines(lines)
		return "pg_hba.conf already has these lines", nil
	}
	conn, err := i.Connect(ctx)
	if err != nil {
		return "", fmt.Errorf("PostgreSQL runs but cannot be reached to check the new pg_hba.conf, so it was not changed: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := i.writeHBALocked(lines); err != nil {
		return "", err
	}
	restore := func(cause error) error {
		if err := i.writeOwned(path, old); err != nil {
			return fmt.Errorf("%w; putting the previous pg_hba.conf back failed too, so fix %s before PostgreSQL restarts: %v", cause, path, err)
		}
		return fmt.Errorf("%w; the previous pg_hba.conf stays in effect", cause)
	}
	rows, err := conn.Exec(ctx, "SELECT line_number, error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number").ReadAll()
	if err != nil {
		return "", restore(fmt.Errorf("PostgreSQL could not check the new pg_hba.conf: %w", err))
	}
	if refused := describeHBAErrors(rows, len(lines)); refused != "" {
		return "", restore(fmt.Errorf("PostgreSQL refuses %s", refused))
	}
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_reload_conf()").ReadAll(); err != nil {
		return "", restore(fmt.Errorf("PostgreSQL could not be asked to load the new pg_hba.conf: %w", err))
	}
	setLines(lines)
	i.log.Info("pg_hba.conf rewritten from postgresql.pg_hba and reloaded", "lines", len(lines))
	return "pg_hba.conf rewritten and loaded by PostgreSQL", nil
}

// describeHBAErrors turns pg_hba_file_rules' errors into one message naming each refused entry
// of postgresql.pg_hba; "" when there are none.
func describeHBAErrors(results []*pgconn.Result, n int) string {
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
				where = fmt.Sprintf("postgresql.pg_hba[%d]", k)
			}
			parts = append(parts, where+": "+string(row[1]))
		}
	}
	return strings.Join(parts, "; ")
}
