package fsm

import (
	"time"
)

// Restarts of a node's PostgreSQL requested by an operator (POST /restart), executed by that
// node's agent. They live apart from directives, in ignorable commands: a node of an older
// version skips them without its directive IDs drifting from the others'.
//
// A reinitialisation (POST /reinit, Patroni's reinit) is a restart request with Reinit set:
// the agent replaces the data directory with a fresh clone of the primary. It has its own
// command type so that a node of an older version, which knows RequestRestart but not this,
// skips it rather than restarting without the clone (or halting on an unknown field).
const (
	TypeRequestRestart CommandType = IgnorableFlag | 22
	TypeFinishRestart  CommandType = IgnorableFlag | 23
	TypeRequestReinit  CommandType = IgnorableFlag | 24
)

const maxRestarts = 32 // finished requests kept

// RestartStatus is the state of a restart request.
type RestartStatus string

// Restart statuses: pending → done | failed.
const (
	RestartPending RestartStatus = "pending"
	RestartDone    RestartStatus = "done"
	RestartFailed  RestartStatus = "failed"
)

// RestartRequest asks Node's agent to restart its PostgreSQL.
type RestartRequest struct {
	ID     uint64 `json:"id"`
	Node   string `json:"node"`
	Reason string `json:"reason,omitempty"`
	// Reinit: replace the data directory with a new clone of the primary, not just restart.
	Reinit      bool          `json:"reinit,omitempty"`
	Status      RestartStatus `json:"status"`
	Message     string        `json:"message,omitempty"`
	RequestedAt time.Time     `json:"requested_at"`
	Index       uint64        `json:"index"`
	FinishedAt  time.Time     `json:"finished_at"`
	// Trace ties the request to the API request that made it (its log entry's extensions).
	Trace *TraceRef `json:"trace,omitempty"`
}

// RequestRestart asks for a restart of Node's PostgreSQL.
type RequestRestart struct {
	Node   string `json:"node"`
	Reason string `json:"reason,omitempty"`
}

// RequestReinit asks for a reinitialisation of Node: its data directory is replaced by a
// clone of the primary. The request's end is reported with FinishRestart.
type RequestReinit struct {
	Node   string `json:"node"`
	Reason string `json:"reason,omitempty"`
}

// FinishRestart is the agent's report that restart ID ended.
type FinishRestart struct {
	ID      uint64 `json:"id"`
	Node    string `json:"node"`
	Success bool   `json:"success"`
	Message string `json:"message,omitempty"`
}

func (RequestRestart) CommandType() CommandType { return TypeRequestRestart }
func (RequestReinit) CommandType() CommandType  { return TypeRequestReinit }
func (RequestReinit) CommandVersion() uint8     { return 1 }
func (FinishRestart) CommandType() CommandType  { return TypeFinishRestart }
func (RequestRestart) CommandVersion() uint8    { return 1 }
func (FinishRestart) CommandVersion() uint8     { return 1 }

// PendingRestart returns the pending restart request for node, if any.
func (s *State) PendingRestart(node string) (RestartRequest, bool) {
	for _, r := range s.Restarts {
		if r.Node == node && r.Status == RestartPending {
			return r, true
		}
	}
	return RestartRequest{}, false
}

// Restart returns restart request id, if it is still retained.
func (s *State) Restart(id uint64) (RestartRequest, bool) {
	for _, r := range s.Restarts {
		if r.ID == id {
			return r, true
		}
	}
	return RestartRequest{}, false
}

func (s *State) requestRestart(c RequestRestart, reinit bool, m Meta) Result {
	if _, ok := s.Members[c.Node]; !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Node)
	}
	if r, ok := s.PendingRestart(c.Node); ok {
		what := "restart"
		if r.Reinit {
			what = "reinitialisation"
		}
		return fail(CodeConflict, "a %s of %s (request %d) is already pending", what, c.Node, r.ID)
	}
	var id uint64 = 1
	if n := len(s.Restarts); n > 0 {
		id = s.Restarts[n-1].ID + 1
	}
	r := RestartRequest{ID: id, Node: c.Node, Reason: c.Reason, Reinit: reinit, Status: RestartPending, RequestedAt: m.At, Index: m.Index}
	if m.Trace != nil {
		t := *m.Trace
		r.Trace = &t
	}
	s.Restarts = append(s.Restarts, r)
	// Keep every pending request and the newest finished ones.
	for len(s.Restarts) > maxRestarts {
		i := 0
		for i < len(s.Restarts) && s.Restarts[i].Status == RestartPending {
			i++
		}
		if i == len(s.Restarts) {
			break
		}
		s.Restarts = append(s.Restarts[:i:i], s.Restarts[i+1:]...)
	}
	return Result{ID: id}
}

func (s *State) finishRestart(c FinishRestart, m Meta) Result {
	for i, r := range s.Restarts {
		if r.ID != c.ID {
			continue
		}
		if r.Node != c.Node {
			return fail(CodeInvalid, "restart %d is for %s, not %s", c.ID, r.Node, c.Node)
		}
		if r.Status != RestartPending {
			return fail(CodeConflict, "restart %d is already %s", c.ID, r.Status)
		}
		r.Status, r.Message, r.FinishedAt = RestartFailed, c.Message, m.At
		if c.Success {
			r.Status = RestartDone
		}
		s.Restarts[i] = r // clone copied the slice
		return Result{}
	}
	return fail(CodeNotFound, "restart %d not found", c.ID)
}
