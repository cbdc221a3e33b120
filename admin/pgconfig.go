package admin

import (
	"maps"
	"slices"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// pgConfigView is GET /cluster/postgresql: the wanted configuration and, per member, whether
// its PostgreSQL runs with it.
type pgConfigView struct {
	Version      uint64            `json:"version"`
	Parameters   map[string]string `json:"parameters"`
	UpdatedAt    *time.Time        `json:"updated_at,omitempty"`
	Nodes        []pgConfigNode    `json:"nodes"`
	AllApplied   bool              `json:"all_applied"`
	Pending      []string          `json:"pending_restart_nodes,omitempty"`
	NotValidated string            `json:"not_validated,omitempty"`
	// PgHBA is the cluster-wide pg_hba list, when one was ever set.
	PgHBA *pgHBAView `json:"pg_hba,omitempty"`
}

type pgConfigNode struct {
	Name string `json:"name"`
	// AppliedVersion is the version the node's PostgreSQL runs with (0: none reported yet).
	AppliedVersion uint64   `json:"applied_version"`
	Applied        bool     `json:"applied"`
	PendingRestart []string `json:"pending_restart,omitempty"`
	Error          string   `json:"error,omitempty"`
}

// pgConfigPatch is the body of PATCH /cluster/postgresql, Patroni-style: a parameter set to
// null is removed.
type pgConfigPatch struct {
	Parameters map[string]*string `json:"parameters"`
	// IfVersion makes the change conditional on the configuration's current version.
	IfVersion uint64 `json:"if_version,omitempty"`
}

func pgConfigOf(st *fsm.State) pgConfigView {
	v := pgConfigView{Parameters: map[string]string{}, AllApplied: true}
	pc := st.PGConfig
	if pc != nil {
		v.Version, v.Parameters, v.UpdatedAt = pc.Version, maps.Clone(pc.Params), &pc.UpdatedAt
	}
	for _, name := range st.MemberNames() {
		n := pgConfigNode{Name: name}
		if pc != nil {
			r := pc.Nodes[name]
			n.AppliedVersion, n.PendingRestart, n.Error = r.Version, r.PendingRestart, r.Error
			n.Applied = r.Version == pc.Version && r.Error == ""
		} else {
			n.Applied = true
		}
		if !n.Applied {
			v.AllApplied = false
		}
		if len(n.PendingRestart) > 0 {
			v.Pending = append(v.Pending, name)
		}
		v.Nodes = append(v.Nodes, n)
	}
	if st.PGHBA != nil {
		h := pgHBAOf(st)
		v.PgHBA = &h
	}
	return v
}

// getPGConfig is GET /cluster/postgresql.
func (s *Server) getPGConfig(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, pgConfigOf(s.src.Cluster.State()))
}

// patchPGConfig is PATCH /cluster/postgresql: {"parameters": {"work_mem": "64MB", "x": null}}.
func (s *Server) patchPGConfig(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var p pgConfigPatch
	if !decode(ctx, &p) {
		return
	}
	if len(p.Parameters) == 0 {
		writeError(ctx, fasthttp.StatusBadRequest, `PATCH /cluster/postgresql: the body needs {"parameters": {"name": "value", ...}} (null removes a parameter)`)
		return
	}
	set := map[string]string{}
	var reset []string
	for name, v := range p.Parameters {
		if v == nil {
			reset = append(reset, name)
		} else {
			set[name] = *v
		}
	}
	slices.Sort(reset)
	s.changePGConfig(ctx, set, reset, p.IfVersion)
}

// deletePGConfig is DELETE /cluster/postgresql?name=work_mem (name may repeat).
func (s *Server) deletePGConfig(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var reset []string
	for _, b := range ctx.QueryArgs().PeekMulti("name") {
		reset = append(reset, string(b))
	}
	if len(reset) == 0 {
		writeError(ctx, fasthttp.StatusBadRequest, "DELETE /cluster/postgresql: name the parameter to remove: ?name=work_mem")
		return
	}
	slices.Sort(reset)
	s.changePGConfig(ctx, nil, slices.Compact(reset), 0)
}

func (s *Server) changePGConfig(ctx *fasthttp.RequestCtx, set map[string]string, reset []string, ifVersion uint64) {
	version, notValidated, ok := s.applyPGConfig(ctx, set, reset, ifVersion)
	if !ok {
		return
	}
	v := pgConfigOf(s.src.Cluster.State())
	v.NotValidated = notValidated
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"version": version, "message": "accepted; every node applies it with ALTER SYSTEM and a reload, and reports back (GET /cluster/postgresql)", "config": v})
}

// applyPGConfig checks and commits a change of the cluster-wide parameters. It answers the
// request itself when it refuses (ok false); notValidated says why PostgreSQL could not check
// the values first, when it could not.
func (s *Server) applyPGConfig(ctx *fasthttp.RequestCtx, set map[string]string, reset []string, ifVersion uint64) (version uint64, notValidated string, ok bool) {
	// Cheap checks first, so that a typo is reported without asking PostgreSQL.
	for name, v := range set {
		if err := fsm.CheckPGParam(name, v, true); err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "cluster configuration: "+err.Error())
			return 0, "", false
		}
	}
	for _, name := range reset {
		if fsm.StandbyMinimums[name] {
			writeError(ctx, fasthttp.StatusBadRequest, "cluster configuration: "+name+" cannot be reset: the value it falls back to may be lower than "+
				"what the primary runs with, and a standby cannot start with less than its primary. Set the value you want instead")
			return 0, "", false
		}
	}
	if s.src.CheckPGParams != nil && len(set) > 0 {
		checked, err := s.src.CheckPGParams(ctx, set)
		if err != nil {
			writeError(ctx, fasthttp.StatusBadRequest, "cluster configuration: PostgreSQL refuses it, nothing was changed: "+err.Error())
			return 0, "", false
		}
		if !checked {
			for name := range set {
				if fsm.StandbyMinimums[name] {
					writeError(ctx, fasthttp.StatusServiceUnavailable, "cluster configuration: this node's PostgreSQL is not reachable, so it cannot check that "+
						name+" is not lowered below what the cluster runs with (a standby cannot start with less than its primary); send the change to a node whose PostgreSQL is up")
					return 0, "", false
				}
			}
			notValidated = "this node's PostgreSQL is not reachable, so names and values were not checked before the change; each node reports what its PostgreSQL refused"
		}
	}
	version, err := s.src.Cluster.UpdatePGConfig(ctx, set, reset, ifVersion)
	if err != nil {
		writeFSMError(ctx, "cluster configuration", err)
		return 0, "", false
	}
	return version, notValidated, true
}
