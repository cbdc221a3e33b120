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

// authList is where the list of an authConf file comes from: the node's own (postgresql.pg_hba
// or pg_ident, as configured at start, then as reloaded), the cluster-wide one (pg_hba only),
// and the last list PostgreSQL refused, which is never written.
type authList struct {
	local, cluster, refused []string
}

// effective is the list in effect: the node's own when it has one, else the cluster's.
func (l authList) effective() []string {
	if len(l.local) > 0 {
		return l.local
	}
	return l.cluster
}

// hbaLines returns the pg_hba list in effect.
func (i *Instance) hbaLines() []string {
	i.hbaMu.Lock()
	defer i.hbaMu.Unlock()
	return i.hba.effective()
}

// authConf is one of the files PostgreSQL reads when a client connects that PGBastion may
// write from a list of lines: pg_hba.conf and pg_ident.conf.
type authConf struct {
	file   string // in the data directory
	list   string // what the list is called: pg_hba, pg_ident
	header string // the lines before the list's
	// check lists the lines of the file on disk that PostgreSQL refuses: (line_number, error).
	check string
}

var (
	hbaConf = authConf{file: "pg_hba.conf", list: "pg_hba", header: hbaHeader + "# postgresql.pg_hba (changes here are overwritten)\n",
		check: "SELECT line_number, error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number"}
	identConf = authConf{file: "pg_ident.conf", list: "pg_ident", header: "# written by PGBastion\n# postgresql.pg_ident (changes here are overwritten)\n",
		check: "SELECT line_number, error FROM pg_catalog.pg_ident_file_mappings WHERE error IS NOT NULL ORDER BY line_number"}
)

// content is the file that lines ask for.
func (c authConf) content(lines []string) []byte {
	var b strings.Builder
	b.WriteString(c.header)
	for _, l := range lines {
		b.WriteString(strings.TrimSpace(l))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// firstLine is the line of the file that holds the list's first entry.
func (c authConf) firstLine() int { return strings.Count(c.header, "\n") + 1 }

// hbaContent is the pg_hba.conf that lines ask for.
func hbaContent(lines []string) []byte { return hbaConf.content(lines) }

// writeHBA writes pg_hba.conf from the pg_hba list in effect when there is one and the file
// differs; changed says whether it wrote.
func (i *Instance) writeHBA() (changed bool, err error) { return i.writeList(hbaConf, &i.hba) }

// writeIdent writes pg_ident.conf as writeHBA does pg_hba.conf.
func (i *Instance) writeIdent() error {
	_, err := i.writeList(identConf, &i.ident)
	return err
}

// writeList writes c's file from l's list in effect, unless PostgreSQL refused that list.
func (i *Instance) writeList(c authConf, l *authList) (changed bool, err error) {
	i.hbaFileMu.Lock()
	defer i.hbaFileMu.Unlock()
	i.hbaMu.Lock()
	lines, refused := l.effective(), l.refused
	i.hbaMu.Unlock()
	return i.writeConfLocked(c, lines, refused)
}

// writeConfLocked writes c's file from lines when they are set and the file differs; the
// caller holds hbaFileMu. Lines PostgreSQL refused while it ran (refused) are not written:
// they would stop its next start, and the file keeps the lines it has.
func (i *Instance) writeConfLocked(c authConf, lines, refused []string) (changed bool, err error) {
	if len(lines) == 0 || !i.HasData() {
		return false, nil
	}
	if refused != nil && slices.Equal(lines, refused) {
		i.log.Error(c.file + " keeps its previous lines: PostgreSQL refused the list in effect; correct it and reload")
		return false, nil
	}
	path := filepath.Join(i.cfg.DataDir, c.file)
	want := c.content(lines)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, want) {
		return false, nil
	}
	if err := i.writeOwned(path, want); err != nil {
		return false, fmt.Errorf("writing %s: %w", c.file, err)
	}
	return true, nil
}

// SyncHBA brings pg_hba.conf of a running PostgreSQL in line with the pg_hba list in effect
// (when pgbastion starts and finds PostgreSQL running, its list may have changed meanwhile),
// checked by PostgreSQL as a reload's is (see applyHBA). A list PostgreSQL refuses is not
// written, now nor before a later start, so that it cannot stop PostgreSQL from starting.
func (i *Instance) SyncHBA(ctx context.Context) error {
	_, err := i.applyList(ctx, hbaConf, &i.hba, "postgresql.pg_hba", func() {})
	_, ierr := i.applyList(ctx, identConf, &i.ident, "postgresql.pg_ident", func() {})
	return errors.Join(err, ierr)
}

// ReloadHBA makes lines this node's own postgresql.pg_hba (a reload of pgbastion's
// configuration) and says what became of them; see applyList. An empty list hands pg_hba.conf
// back to the cluster-wide list, or, without one, leaves it as it is, to the operator.
func (i *Instance) ReloadHBA(ctx context.Context, lines []string) (string, error) {
	if errs := validateHBA(lines); len(errs) != 0 {
		return "", errors.Join(errs...)
	}
	lines = slices.Clone(lines)
	return i.applyList(ctx, hbaConf, &i.hba, "postgresql.pg_hba", func() { i.hba.local = lines })
}

// ApplyClusterHBA makes lines the cluster-wide pg_hba list on this node (an empty list: none)
// and says what became of them; local is true when the node's own postgresql.pg_hba takes
// precedence, and the file does not change.
func (i *Instance) ApplyClusterHBA(ctx context.Context, lines []string) (outcome string, local bool, err error) {
	if err := fsm.CheckHBALines("pg_hba", lines); err != nil {
		return "", false, hbaRefused{err}
	}
	lines = slices.Clone(lines)
	i.hbaMu.Lock()
	local = len(i.hba.local) > 0
	i.hbaMu.Unlock()
	outcome, err = i.applyList(ctx, hbaConf, &i.hba, "the cluster-wide pg_hba", func() { i.hba.cluster = lines })
	if local && err == nil {
		outcome = "this node's own postgresql.pg_hba takes precedence; pg_hba.conf is unchanged"
	}
	return outcome, local, err
}

// applyList changes a source of l, the list of c's file (set runs under hbaMu; name names it
// in errors), and brings the file in line with the list then in effect. With PostgreSQL
// running, the file is rewritten, PostgreSQL's own parser checks it (c.check) and PostgreSQL
// loads it. A line PostgreSQL refuses puts the previous file and source back and is returned
// as an error that names it: loaded at a reload, such a file is skipped with a line in
// PostgreSQL's log, but at the next start it would stop PostgreSQL from starting, so the list
// is not written before a later start either. With PostgreSQL down, the list is written
// before its next start. When no list is in effect, the file is left as it is.
func (i *Instance) applyList(ctx context.Context, c authConf, l *authList, name string, set func()) (string, error) {
	i.hbaFileMu.Lock()
	defer i.hbaFileMu.Unlock()
	i.hbaMu.Lock()
	prev := *l
	set()
	lines := l.effective()
	i.hbaMu.Unlock()
	if len(lines) == 0 {
		return "no " + c.list + " list is in effect: " + c.file + " is left as it is", nil
	}
	outcome, refused, err := i.replaceChecked(ctx, c, name, lines)
	if err != nil {
		i.hbaMu.Lock()
		*l = prev
		if refused {
			l.refused = slices.Clone(lines)
		}
		i.hbaMu.Unlock()
	}
	return outcome, err
}

// replaceChecked replaces c's file with lines, named name in errors, in a running PostgreSQL:
// PostgreSQL's own parser checks the new file (c.check) before it is loaded, and a line it
// refuses puts the previous file back (refused true, and the error matches ha.ErrHBARefused).
// With PostgreSQL down, nothing is written here: the file is written before it starts. The
// caller holds hbaFileMu.
func (i *Instance) replaceChecked(ctx context.Context, c authConf, name string, lines []string) (outcome string, refused bool, err error) {
	if !i.PostmasterAlive() || !i.HasData() {
		return "PostgreSQL is not running: " + c.file + " is written before it starts", false, nil
	}
	path := filepath.Join(i.cfg.DataDir, c.file)
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("reading %s: %w", c.file, err)
	}
	if bytes.Equal(old, c.content(lines)) {
		return c.file + " already has these lines", false, nil
	}
	conn, err := i.Connect(ctx)
	if err != nil {
		return "", false, fmt.Errorf("PostgreSQL runs but cannot be reached to check the new %s, so it was not changed: %w", c.file, err)
	}
	defer conn.Close(context.Background())
	if _, err := i.writeConfLocked(c, lines, nil); err != nil {
		return "", false, err
	}
	restore := func(cause error) error {
		var werr error
		if old == nil {
			werr = os.Remove(path)
		} else {
			werr = i.writeOwned(path, old)
		}
		if werr != nil {
			return fmt.Errorf("%w; putting the previous %s back failed too, so fix %s before PostgreSQL restarts: %v", cause, c.file, path, werr)
		}
		return fmt.Errorf("%w; the previous %s stays in effect", cause, c.file)
	}
	rows, err := conn.Exec(ctx, c.check).ReadAll()
	if err != nil {
		return "", false, restore(fmt.Errorf("PostgreSQL could not check the new %s: %w", c.file, err))
	}
	if bad := describeConfErrors(rows, c, name, len(lines)); bad != "" {
		return "", true, hbaRefused{restore(fmt.Errorf("PostgreSQL refuses %s", bad))}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_reload_conf()").ReadAll(); err != nil {
		return "", false, restore(fmt.Errorf("PostgreSQL could not be asked to load the new %s: %w", c.file, err))
	}
	i.log.Info(c.file+" rewritten and reloaded", "lines", len(lines))
	return c.file + " rewritten and loaded by PostgreSQL", false, nil
}

// describeConfErrors turns the errors c.check found into one message naming each refused
// entry of the list (name[k]); "" when there are none.
func describeConfErrors(results []*pgconn.Result, c authConf, name string, n int) string {
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
			where := fmt.Sprintf("%s line %d", c.file, line)
			if k := line - c.firstLine(); k >= 0 && k < n {
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
