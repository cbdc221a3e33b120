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

// ReloadIdent makes lines postgresql.pg_ident (a reload of pgbastion's configuration) and says
// what became of them, as ReloadHBA does for pg_hba (applyList, checked with
// pg_ident_file_mappings). An empty list leaves pg_ident.conf as it is.
func (i *Instance) ReloadIdent(ctx context.Context, lines []string) (string, error) {
	if errs := validateIdent(lines); len(errs) != 0 {
		return "", errors.Join(errs...)
	}
	lines = slices.Clone(lines)
	return i.applyList(ctx, identConf, &i.ident, "postgresql.pg_ident", func() { i.ident.local = lines })
}
