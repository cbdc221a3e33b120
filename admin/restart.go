package admin

import (
	"context"
	"fmt"

	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

type restartBody struct {
	// Node to restart; this node when empty (Patroni's POST /restart on a member).
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// restart is POST /restart: the named node's agent restarts its PostgreSQL (replicas only; the
// primary is refused with what to do instead). It answers when the restart ended, or 202
// after api.operation_wait.
func (s *Server) restart(ctx *fasthttp.RequestCtx) {
	s.restartOrReinit(ctx, "restart", s.src.Cluster.RequestRestart)
}

// reinit is POST /reinitialize (Patroni's name): the named replica's agent replaces its data
// directory with a fresh clone of the primary and starts it as a standby. Refused on the
// primary and while there is none. Answers like POST /restart; a large database takes long:
// follow a 202 with GET /restarts.
func (s *Server) reinit(ctx *fasthttp.RequestCtx) {
	s.restartOrReinit(ctx, "reinitialisation", s.src.Cluster.RequestReinit)
}

func (s *Server) restartOrReinit(ctx *fasthttp.RequestCtx, what string, request func(context.Context, string, string) (uint64, error)) {
	if !s.needCluster(ctx) {
		return
	}
	var b restartBody
	if !decode(ctx, &b) {
		return
	}
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
