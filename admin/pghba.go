package admin

import (
	"slices"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// pgHBAView is GET /cluster/postgresql/pg_hba: the cluster-wide pg_hba list and, per member,
// what became of it.
type pgHBAView struct {
	Version    uint64      `json:"version"`
	Lines      []string    `json:"lines"`
	UpdatedAt  *time.Time  `json:"updated_at,omitempty"`
	Nodes      []pgHBANode `json:"nodes"`
	AllApplied bool        `json:"all_applied"`
}

type pgHBANode struct {
	Name           string `json:"name"`
	AppliedVersion uint64 `json:"applied_version"`
	// Applied: the node has the current version in effect, or keeps its own list by design.
	Applied bool   `json:"applied"`
	Local   bool   `json:"local,omitempty"`
	Outcome string `json:"outcome,omitempty"`
	Error   string `json:"error,omitempty"`
}

func pgHBAOf(st *fsm.State) pgHBAView {
	v := pgHBAView{Lines: []string{}, AllApplied: true}
	h := st.PGHBA
	if h != nil {
		v.Version, v.Lines, v.UpdatedAt = h.Version, slices.Clone(h.Lines), &h.UpdatedAt
	}
	for _, name := range st.MemberNames() {
		n := pgHBANode{Name: name, Applied: true}
		if h != nil {
			r := h.Nodes[name]
			n.AppliedVersion, n.Local, n.Outcome, n.Error = r.Version, r.Local, r.Outcome, r.Error
			n.Applied = r.Version == h.Version && r.Error == ""
		}
		if !n.Applied {
			v.AllApplied = false
		}
		v.Nodes = append(v.Nodes, n)
	}
	return v
}

// getPGHBA is GET /cluster/postgresql/pg_hba.
func (s *Server) getPGHBA(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, pgHBAOf(s.src.Cluster.State()))
}

// pgHBAPut is the body of PUT /cluster/postgresql/pg_hba.
type pgHBAPut struct {
	Lines []string `json:"lines"`
	// IfVersion makes the change conditional on the list's current version.
	IfVersion uint64 `json:"if_version,omitempty"`
}

// putPGHBA is PUT /cluster/postgresql/pg_hba: {"lines": ["hostssl all all 10.0.0.0/8 scram-sha-256"]}.
func (s *Server) putPGHBA(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var p pgHBAPut
	if !decode(ctx, &p) {
		return
	}
	if len(p.Lines) == 0 {
		writeError(ctx, fasthttp.StatusBadRequest, `PUT /cluster/postgresql/pg_hba: the body needs {"lines": ["hostssl all all 10.0.0.0/8 scram-sha-256", ...]}; DELETE removes the list`)
		return
	}
	s.changePGHBA(ctx, p.Lines, p.IfVersion)
}

// deletePGHBA is DELETE /cluster/postgresql/pg_hba: no cluster-wide list any more; every
// node's pg_hba.conf stays as it is (or follows the node's own postgresql.pg_hba).
func (s *Server) deletePGHBA(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	s.changePGHBA(ctx, nil, 0)
}

func (s *Server) changePGHBA(ctx *fasthttp.RequestCtx, lines []string, ifVersion uint64) {
	version, ok := s.applyPGHBA(ctx, lines, ifVersion)
	if !ok {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"version": version,
		"message": "accepted; every node writes pg_hba.conf, has PostgreSQL check and load it, and reports back (GET /cluster/postgresql/pg_hba)",
		"pg_hba":  pgHBAOf(s.src.Cluster.State())})
}

// applyPGHBA checks and commits a new cluster-wide pg_hba list; it answers the request itself
// when it refuses (ok false).
func (s *Server) applyPGHBA(ctx *fasthttp.RequestCtx, lines []string, ifVersion uint64) (uint64, bool) {
	// Checked here too, as the state machine will: a leader of an older version skips the
	// command without checking it.
	if err := fsm.CheckHBALines("pg_hba", lines); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "cluster-wide pg_hba: "+err.Error())
		return 0, false
	}
	version, err := s.src.Cluster.SetPGHBA(ctx, lines, ifVersion)
	if err != nil {
		writeFSMError(ctx, "cluster-wide pg_hba", err)
		return 0, false
	}
	return version, true
}
