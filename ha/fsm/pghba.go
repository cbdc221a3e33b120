package fsm

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// The cluster-wide pg_hba.conf (Patroni's postgresql.pg_hba in its dynamic configuration):
// one list of pg_hba.conf lines for every node. Each node's agent writes it after PGBastion's
// own socket lines, has PostgreSQL check and load it, and reports back; a node whose own
// pgbastion.yaml sets postgresql.pg_hba keeps that list and says so.
//
// Both commands are ignorable and the list travels in the snapshot's extras, so a node of an
// older version neither stops on it nor applies it.
const (
	TypeSetPGHBA    CommandType = IgnorableFlag | 30
	TypeReportPGHBA CommandType = IgnorableFlag | 31
)

// Limits on the cluster-wide pg_hba list.
const (
	MaxHBALines   = 500
	MaxHBALineLen = 1024
)

// HBAKinds are the first words a pg_hba.conf line may have, with the fewest fields a line of
// that kind has.
var HBAKinds = map[string]int{
	"local": 4, "host": 5, "hostssl": 5, "hostnossl": 5, "hostgssenc": 5, "hostnogssenc": 5,
	"include": 2, "include_if_exists": 2, "include_dir": 2,
}

// CheckHBALine returns why l cannot be a line of pg_hba.conf, or nil: one line, of a kind
// PostgreSQL knows and with its fields. PostgreSQL's own parser checks the rest when a node
// loads the file.
func CheckHBALine(l string) error {
	f := strings.Fields(l)
	switch {
	case len(l) > MaxHBALineLen:
		return fmt.Errorf("is %d bytes; at most %d", len(l), MaxHBALineLen)
	case strings.ContainsAny(l, "\r\n\x00"):
		return fmt.Errorf("one line per entry, without line breaks")
	case len(f) == 0 || strings.HasPrefix(f[0], "#"):
		return fmt.Errorf("is empty or a comment; list pg_hba.conf lines such as \"hostssl all all 10.0.0.0/8 scram-sha-256\"")
	case HBAKinds[f[0]] == 0:
		return fmt.Errorf("%q is not a pg_hba.conf line kind (local, host, hostssl, hostnossl, hostgssenc, hostnogssenc, include…)", f[0])
	case len(f) < HBAKinds[f[0]]:
		return fmt.Errorf("%q has too few fields (a %s line needs at least %d)", l, f[0], HBAKinds[f[0]])
	}
	return nil
}

// CheckHBALines checks a whole list (CheckHBALine for each line, and MaxHBALines); name is
// how errors call it: "NAME[k]: …".
func CheckHBALines(name string, lines []string) error {
	if len(lines) > MaxHBALines {
		return fmt.Errorf("%d %s lines; at most %d", len(lines), name, MaxHBALines)
	}
	for k, l := range lines {
		if err := CheckHBALine(l); err != nil {
			return fmt.Errorf("%s[%d]: %w", name, k, err)
		}
	}
	return nil
}

// PGHBA is the cluster-wide pg_hba list.
type PGHBA struct {
	// Version counts changes, starting at 1; a node's report names the version it applied.
	Version uint64 `json:"version"`
	// Lines are the pg_hba.conf lines; empty when the list was removed (each node's
	// pg_hba.conf then stays as it is).
	Lines        []string  `json:"lines"`
	UpdatedAt    time.Time `json:"updated_at"`
	UpdatedIndex uint64    `json:"updated_index"`
	// Nodes holds each node's last report of applying the list.
	Nodes map[string]PGHBAStatus `json:"nodes,omitempty"`
}

// PGHBAStatus is one node's report of applying the cluster-wide pg_hba list.
type PGHBAStatus struct {
	Version uint64 `json:"version"`
	// Local is true when the node's own postgresql.pg_hba takes precedence over the list.
	Local bool `json:"local,omitempty"`
	// Outcome says what became of the list on the node ("loaded by PostgreSQL", "written
	// before PostgreSQL starts"…); Error what PostgreSQL refused, "" when nothing.
	Outcome    string    `json:"outcome,omitempty"`
	Error      string    `json:"error,omitempty"`
	ReportedAt time.Time `json:"reported_at"`
}

// SetPGHBA replaces the cluster-wide pg_hba list; an empty Lines removes it. IfVersion, when
// not 0, makes the change conditional on the current version.
type SetPGHBA struct {
	Lines     []string `json:"lines"`
	IfVersion uint64   `json:"if_version,omitempty"`
}

// ReportPGHBA is a node's report of applying list Version.
type ReportPGHBA struct {
	Node    string `json:"node"`
	Version uint64 `json:"version"`
	Local   bool   `json:"local,omitempty"`
	Outcome string `json:"outcome,omitempty"`
	Error   string `json:"error,omitempty"`
}

func (SetPGHBA) CommandType() CommandType    { return TypeSetPGHBA }
func (ReportPGHBA) CommandType() CommandType { return TypeReportPGHBA }
func (SetPGHBA) CommandVersion() uint8       { return 1 }
func (ReportPGHBA) CommandVersion() uint8    { return 1 }

func (s *State) setPGHBA(c SetPGHBA, m Meta) Result {
	var version uint64
	if s.PGHBA != nil {
		version = s.PGHBA.Version
	}
	if c.IfVersion != 0 && c.IfVersion != version {
		return fail(CodeConflict, "the cluster-wide pg_hba is at version %d, not %d: it changed meanwhile; read it again", version, c.IfVersion)
	}
	if err := CheckHBALines("pg_hba", c.Lines); err != nil {
		return fail(CodeInvalid, "%v", err)
	}
	lines := make([]string, 0, len(c.Lines))
	for _, l := range c.Lines {
		lines = append(lines, strings.TrimSpace(l))
	}
	if version == 0 && len(lines) == 0 {
		return fail(CodeInvalid, "there is no cluster-wide pg_hba to remove")
	}
	n := &PGHBA{Version: version + 1, Lines: lines, UpdatedAt: m.At, UpdatedIndex: m.Index}
	if s.PGHBA != nil {
		n.Nodes = s.PGHBA.Nodes // reports are replaced, never modified in place
	}
	s.PGHBA = n
	return Result{ID: n.Version}
}

func (s *State) reportPGHBA(c ReportPGHBA, m Meta) Result {
	if _, ok := s.Members[c.Node]; !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Node)
	}
	if s.PGHBA == nil || c.Version == 0 || c.Version > s.PGHBA.Version {
		return fail(CodeInvalid, "cluster-wide pg_hba version %d does not exist", c.Version)
	}
	n := *s.PGHBA
	n.Nodes = maps.Clone(n.Nodes)
	if n.Nodes == nil {
		n.Nodes = map[string]PGHBAStatus{}
	}
	n.Nodes[c.Node] = PGHBAStatus{Version: c.Version, Local: c.Local, Outcome: clip(c.Outcome, 256), Error: clip(c.Error, maxPGConfigErrorLen), ReportedAt: m.At}
	s.PGHBA = &n
	return Result{}
}

// forgetPGHBANode drops a removed member's report.
func (s *State) forgetPGHBANode(name string) {
	if h := s.PGHBA; h != nil {
		if _, ok := h.Nodes[name]; ok {
			n := *h
			n.Nodes = maps.Clone(h.Nodes)
			delete(n.Nodes, name)
			s.PGHBA = &n
		}
	}
}

// validPGHBA reports whether a list read from a snapshot's extras is one this binary would
// have accepted.
func validPGHBA(h *PGHBA) bool {
	if h == nil || len(h.Lines) > MaxHBALines || len(h.Nodes) > maxMembersInExtras {
		return false
	}
	return !slices.ContainsFunc(h.Lines, func(l string) bool { return CheckHBALine(l) != nil })
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
