package pgctl

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// hbaContent is the pg_hba.conf postgresql.pg_hba asks for.
func (i *Instance) hbaContent() []byte {
	var b strings.Builder
	b.WriteString(hbaHeader)
	b.WriteString("# postgresql.pg_hba (changes here are overwritten)\n")
	for _, l := range i.cfg.PgHBA {
		b.WriteString(strings.TrimSpace(l))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// writeHBA writes pg_hba.conf from postgresql.pg_hba when it is set and the file differs;
// changed says whether it wrote.
func (i *Instance) writeHBA() (changed bool, err error) {
	if len(i.cfg.PgHBA) == 0 || !i.HasData() {
		return false, nil
	}
	path := filepath.Join(i.cfg.DataDir, "pg_hba.conf")
	want := i.hbaContent()
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
