package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

type restartBody struct {
	// Node to restart; this node when empty (Patroni's POST /restart on a member).
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// restartConditions are Patroni's conditions on POST /restart: the restart happens only when
// they hold, else the answer is 503 "restart conditions are not satisfied" (so a script can
// send the same request to every member).
type restartConditions struct {
	restartBody
	// RestartPending: only if the node has parameters waiting for a restart.
	RestartPending bool `json:"restart_pending"`
	// Role: only if the node has this role (primary or master, replica or standby, any).
	Role string `json:"role"`
	// Patroni's other conditions, refused with what to do instead.
	PostgresVersion *string         `json:"postgres_version"`
	Schedule        *string         `json:"schedule"`
	Timeout         json.RawMessage `json:"timeout"`
}

// restart is POST /restart: the named node's agent restarts its PostgreSQL (replicas only; the
// primary is refused with what to do instead). It answers when the restart ended, or 202
// after api.operation_wait.
func (s *Server) restart(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var b restartConditions
	if !decode(ctx, &b) {
		return
	}
	switch {
	case b.Schedule != nil:
		writeError(ctx, fasthttp.StatusBadRequest, "restart: PGBastion does not schedule restarts; send the request at the time (a cron job or systemd timer running pgbastion ctl restart), or schedule a switchover (POST /switchover {\"scheduled_at\": …}) for the primary")
		return
	case len(b.Timeout) > 0:
		writeError(ctx, fasthttp.StatusBadRequest, "restart: timeout is not supported; a replica's restart is waited for until it streams again, and the API answers 202 after api.operation_wait (follow it with GET /restarts)")
		return
	case b.PostgresVersion != nil:
		writeError(ctx, fasthttp.StatusBadRequest, "restart: postgres_version is not supported; restart the nodes you upgraded by name")
		return
	}
	node := b.Node
	if node == "" {
		node = s.src.Cluster.Name()
	}
	st := s.src.Cluster.State()
	m, ok := st.Members[node]
	if !ok && (b.RestartPending || b.Role != "") {
		writeError(ctx, fasthttp.StatusNotFound, "restart: "+node+" is not a member")
		return
	}
	if b.Role != "" {
		want, known := map[string]fsm.Role{"primary": fsm.RolePrimary, "master": fsm.RolePrimary, "leader": fsm.RolePrimary,
			"replica": fsm.RoleReplica, "standby": fsm.RoleReplica, "any": ""}[strings.ToLower(b.Role)]
		if !known {
			writeError(ctx, fasthttp.StatusBadRequest, "restart: role must be primary, replica or any, not "+strconv.Quote(b.Role))
			return
		}
		if want != "" && m.Status.Role != want {
			writeError(ctx, fasthttp.StatusServiceUnavailable, fmt.Sprintf("restart conditions are not satisfied: %s is a %s, not a %s", node, roleWord(m.Status.Role), roleWord(want)))
			return
		}
	}
	if b.RestartPending && len(pendingRestart(st, node)) == 0 {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "restart conditions are not satisfied: "+node+" has no parameter waiting for a restart")
		return
	}
	s.restartOrReinit(ctx, "restart", s.src.Cluster.RequestRestart, b.restartBody)
}

// pendingRestart lists the parameters node's PostgreSQL takes only at its next restart, as it
// last reported them.
func pendingRestart(st *fsm.State, node string) []string {
	if st.PGConfig == nil {
		return nil
	}
	return st.PGConfig.Nodes[node].PendingRestart
}

func roleWord(r fsm.Role) string {
	if r == "" {
		return "node of unknown role"
	}
	return string(r)
}

// reinit is POST /reinitialize (Patroni's name): the named replica's agent replaces its data
// directory with a fresh clone of the primary and starts it as a standby. Refused on the
// primary and while there is none. Answers like POST /restart; a large database takes long:
// follow a 202 with GET /restarts.
func (s *Server) reinit(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	var b restartBody
	if !decode(ctx, &b) {
		return
	}
	s.restartOrReinit(ctx, "reinitialisation", s.src.Cluster.RequestReinit, b)
}

func (s *Server) restartOrReinit(ctx *fasthttp.RequestCtx, what string, request func(context.Context, string, string) (uint64, error), b restartBody) {
	if b.Node == "" {
		b.Node = s.src.Cluster.Name()
	}
	if b.Reason == "" {
		b.Reason = "requested through the API"
	}
	sub := s.src.Cluster.Subscribe()
	defer sub.Close()
	id, err := request(ctx, b.Node, b.Reason)
	if err != nil {
		writeFSMError(ctx, what, err)
		return
	}
	wctx, cancel := context.WithTimeout(context.Background(), s.cfg.OperationWait)
	defer cancel()
	for {
		if r, ok := s.src.Cluster.State().Restart(id); ok && r.Status != fsm.RestartPending {
			if r.Status == fsm.RestartFailed {
				writeJSON(ctx, fasthttp.StatusConflict, map[string]any{"restart": r, "error": fmt.Sprintf("%s of %s: %s", what, r.Node, r.Message)})
				return
			}
			writeJSON(ctx, fasthttp.StatusOK, map[string]any{"restart": r})
			return
		}
		select {
		case <-sub.C:
		case <-wctx.Done():
			writeJSON(ctx, fasthttp.StatusAccepted, map[string]any{"id": id, "message": what + " still running; follow it with GET /restarts"})
			return
		}
	}
}

// restarts is GET /restarts: pending and recent restart requests, oldest first.
func (s *Server) restarts(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	rs := s.src.Cluster.State().Restarts
	if rs == nil {
		rs = []fsm.RestartRequest{}
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"restarts": rs})
}
