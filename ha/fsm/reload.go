package fsm

import (
	"maps"
	"time"
)

// Cluster-wide reloads (patronictl reload): an operator asks every member to read its own
// configuration file again (POST /reload {"cluster": true}); each node does it, as on SIGHUP,
// and reports what it applied. Both commands are ignorable: a node of an older version skips
// them and never reports. The request lives in the snapshot's extras, not in the state an
// older binary decodes strictly (see snapshotExtras).
const (
	TypeRequestReload CommandType = IgnorableFlag | 28
	TypeReportReload  CommandType = IgnorableFlag | 29
)

// ReloadRequest is the last cluster-wide reload asked for; a new one replaces it.
type ReloadRequest struct {
	// ID is the log index of the request.
	ID          uint64                  `json:"id"`
	RequestedAt time.Time               `json:"requested_at"`
	Results     map[string]ReloadResult `json:"results,omitempty"`
}

// ReloadResult is what one node's reload did.
type ReloadResult struct {
	Applied         int       `json:"applied"`
	RestartRequired []string  `json:"restart_required,omitempty"`
	Error           string    `json:"error,omitempty"`
	At              time.Time `json:"at"`
}

// RequestReload asks every member to reload its configuration file.
type RequestReload struct{}

// ReportReload is Node's result for reload request ID.
type ReportReload struct {
	ID              uint64   `json:"id"`
	Node            string   `json:"node"`
	Applied         int      `json:"applied"`
	RestartRequired []string `json:"restart_required,omitempty"`
	Error           string   `json:"error,omitempty"`
}

func (RequestReload) CommandType() CommandType { return TypeRequestReload }
func (ReportReload) CommandType() CommandType  { return TypeReportReload }
func (RequestReload) CommandVersion() uint8    { return 1 }
func (ReportReload) CommandVersion() uint8     { return 1 }

// maxReloadNames bounds a report's list of settings (a file has far fewer).
const maxReloadNames = 256

func (s *State) requestReload(m Meta) Result {
	s.Reload = &ReloadRequest{ID: m.Index, RequestedAt: m.At}
	return Result{ID: m.Index}
}

func (s *State) reportReload(c ReportReload, m Meta) Result {
	r := s.Reload
	switch {
	case r == nil || r.ID != c.ID:
		return fail(CodeConflict, "reload %d is not the current cluster-wide reload", c.ID)
	case len(c.RestartRequired) > maxReloadNames || len(c.Error) > 4096:
		return fail(CodeInvalid, "reload report of %s is too large", c.Node)
	}
	if _, ok := s.Members[c.Node]; !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Node)
	}
	if _, ok := r.Results[c.Node]; ok {
		return fail(CodeConflict, "%s reported reload %d already", c.Node, c.ID)
	}
	n := *r
	n.Results = maps.Clone(r.Results)
	if n.Results == nil {
		n.Results = map[string]ReloadResult{}
	}
	n.Results[c.Node] = ReloadResult{Applied: c.Applied, RestartRequired: c.RestartRequired, Error: c.Error, At: m.At}
	s.Reload = &n
	return Result{ID: c.ID}
}
