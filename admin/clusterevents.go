package admin

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha/notify"
)

var severityRank = map[string]int{"info": 0, "warning": 1, "critical": 2}

// clusterEvents is GET /cluster/events: what happened to the cluster since this node's
// process started (the newest 500 events, oldest first), as the webhooks receive it.
// ?severity=warning keeps warnings and worse, ?type=primary_changed one type (repeatable),
// ?limit=N the newest N.
func (s *Server) clusterEvents(ctx *fasthttp.RequestCtx) {
	if !s.needCluster(ctx) {
		return
	}
	if s.src.Events == nil {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "this node does not record cluster events")
		return
	}
	args := ctx.QueryArgs()
	minSev := 0
	if v := string(args.Peek("severity")); v != "" {
		r, ok := severityRank[v]
		if !ok {
			writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("severity %q is not info, warning or critical", v))
			return
		}
		minSev = r
	}
	var types []string
	for _, v := range args.PeekMulti("type") {
		t := string(v)
		if !slices.Contains(notify.EventTypes, notify.EventType(t)) {
			writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("type %q is not an event type (%v)", t, notify.EventTypes))
			return
		}
		types = append(types, t)
	}
	limit := -1
	if v := string(args.Peek("limit")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("limit %q is not a count", v))
			return
		}
		limit = n
	}
	out := []notify.Event{}
	for _, e := range s.src.Events() {
		if severityRank[string(e.Severity)] >= minSev && (len(types) == 0 || slices.Contains(types, string(e.Type))) {
			out = append(out, e)
		}
	}
	if limit >= 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"events": out})
}
