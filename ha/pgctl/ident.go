package pgctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// validateIdent checks postgresql.pg_ident: one pg_ident.conf line per entry, MAPNAME
// SYSTEM-USERNAME PG-USERNAME (or an include directive). PostgreSQL checks the rest: at a
// reload before the file is loaded (ReloadIdent), at a start by failing it.
func validateIdent(lines []string) []error {
	var errs []error
	for n, l := range lines {
		f := strings.Fields(l)
		switch {
		case strings.ContainsAny(l, "\r\n\x00"):
			errs = append(errs, fmt.Errorf("postgresql.pg_ident[%d]: one line per entry, without line breaks", n))
		case len(f) == 0 || strings.HasPrefix(f[0], "#"):
			errs = append(errs, fmt.Errorf("postgresql.pg_ident[%d] is empty or a comment; list pg_ident.conf lines such as \"ops  alice  app_admin\"", n))
		case (f[0] == "include" || f[0] == "include_if_exists" || f[0] == "include_dir") && len(f) == 2:
		case len(f) != 3:
			errs = append(errs, fmt.Errorf("postgresql.pg_ident[%d]: %q needs three fields: MAPNAME SYSTEM-USERNAME PG-USERNAME", n, l))
		}
	}
	return errs
}

// writeIdent writes pg_ident.conf from postgresql.pg_ident when it is set and the file differs.
func (i *Instance) writeIdent() error {
	i.hbaFileMu.Lock()
	defer i.hbaFileMu.Unlock()
	i.hbaMu.Lock()
	lines, refused := i.ident, i.refusedIdent
	i.hbaMu.Unlock()
	_, err := i.writeConfLocked(identConf, lines, refused)
	return err
}

// ReloadIdent makes lines postgresql.pg_ident (a reload of pgbastion's configuration) and says
// what became of them; see applyIdent. An empty list leaves pg_ident.conf as it is.
func (i *Instance) ReloadIdent(ctx context.Context, lines []string) (string, error) {
	if errs := validateIdent(lines); len(errs) != 0 {
		return "", errors.Join(errs...)
	}
	lines = slices.Clone(lines)
	return i.applyIdent(ctx, func() { i.ident = lines })
}

// applyIdent changes postgresql.pg_ident (set runs under hbaMu) and brings pg_ident.conf in
// line with it, checked by PostgreSQL (pg_ident_file_mappings) as pg_hba.conf is (see
// replaceChecked): lines PostgreSQL refuses put the previous file and list back, and are not
// written before a later start either.
func (i *Instance) applyIdent(ctx context.Context, set func()) (string, error) {
	i.hbaFileMu.Lock()
	defer i.hbaFileMu.Unlock()
	i.hbaMu.Lock()
	prev := i.ident
	set()
	lines := i.ident
	i.hbaMu.Unlock()
	if len(lines) == 0 {
		return "postgresql.pg_ident unset: pg_ident.conf is left as it is", nil
	}
	outcome, refused, err := i.replaceChecked(ctx, identConf, "postgresql.pg_ident", lines)
	if err != nil {
		i.hbaMu.Lock()
		i.ident = prev
		if refused {
			i.refusedIdent = slices.Clone(lines)
		}
		i.hbaMu.Unlock()
	}
	return outcome, err
}
