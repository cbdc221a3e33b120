package admin

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/pgbastion/pgbastion/ha/notify"
)

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
	minSev := notify.SevInfo
	if v := string(args.Peek("severity")); v != "" {
		if !notify.ValidSeverity(v) {
			writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("severity %q is not info, warning or critical", v))
			return
		}
		minSev = notify.Severity(v)
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
		if e.Severity.AtLeast(minSev) && (len(types) == 0 || slices.Contains(types, string(e.Type))) {
			out = append(out, e)
		}
	}
	if limit >= 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"events": out})
}
