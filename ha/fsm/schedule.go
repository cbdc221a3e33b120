package fsm

import (
	"fmt"
	"time"
)

// Scheduled switchovers (Patroni's `switchover --scheduled`): an operator books a switchover
// for a maintenance window; the Raft leader's controller requests it when the time comes.
// Both commands are ignorable: a node of an older version skips them, and as the Raft leader
// it would not run a schedule (the switchover itself is an ordinary RequestSwitchover).
const (
	TypeScheduleSwitchover        CommandType = IgnorableFlag | 25
	TypeCancelScheduledSwitchover CommandType = IgnorableFlag | 26
)

// ScheduledSwitchover is a switchover booked for At.
type ScheduledSwitchover struct {
	Leader      string    `json:"leader"`
	Candidate   string    `json:"candidate,omitempty"`
	At          time.Time `json:"at"`
	RequestedAt time.Time `json:"requested_at"`
	Index       uint64    `json:"index"`
	// Outcome says how a schedule ended (set on State.LastScheduledSwitchover): started as an
	// operation, cancelled by an operator, or not started and why.
	Outcome string `json:"outcome,omitempty"`
	// OperationID is the switchover it started, when it did.
	OperationID uint64    `json:"operation_id,omitempty"`
	EndedAt     time.Time `json:"ended_at,omitzero"`
	// Trace ties the booking to the request that made it; the switchover it starts continues
	// that trace.
	Trace *TraceRef `json:"trace,omitempty"`
}

// ScheduleSwitchover books a switchover from Leader (the current primary) to Candidate ("":
// the controller chooses) at At, which must be later than the command's time.
type ScheduleSwitchover struct {
	Leader    string    `json:"leader"`
	Candidate string    `json:"candidate,omitempty"`
	At        time.Time `json:"at"`
}

// CancelScheduledSwitchover drops the booked switchover. Reason says why: an operator
// cancelled it, or (from the controller) it could not start at its time.
type CancelScheduledSwitchover struct {
	Reason string `json:"reason,omitempty"`
}

func (ScheduleSwitchover) CommandType() CommandType        { return TypeScheduleSwitchover }
func (CancelScheduledSwitchover) CommandType() CommandType { return TypeCancelScheduledSwitchover }
func (ScheduleSwitchover) CommandVersion() uint8           { return 1 }
func (CancelScheduledSwitchover) CommandVersion() uint8    { return 1 }

func (s *State) scheduleSwitchover(c ScheduleSwitchover, m Meta) Result {
	if sch := s.ScheduledSwitchover; sch != nil {
		return fail(CodeConflict, "a switchover from %s is already scheduled at %s; cancel it first", sch.Leader, sch.At.UTC().Format(time.RFC3339))
	}
	if c.At.IsZero() || !c.At.After(m.At) {
		return fail(CodeInvalid, "the scheduled time %s is not in the future (the Raft leader's clock says %s)", c.At.UTC().Format(time.RFC3339), m.At.UTC().Format(time.RFC3339))
	}
	if res := s.leaderIsPrimary(c.Leader); res.Err != nil {
		return res
	}
	// The candidate's health is checked at the booked time, not now.
	mem, res := s.candidateMember(c.Leader, c.Candidate)
	if res.Err != nil {
		return res
	}
	if c.Candidate != "" && !mem.Tags.Promotable() {
		return fail(CodePrecondition, "candidate %q cannot be promoted: its tags forbid promotion", c.Candidate)
	}
	s.ScheduledSwitchover = &ScheduledSwitchover{Leader: c.Leader, Candidate: c.Candidate, At: c.At.UTC(),
		RequestedAt: m.At, Index: m.Index}
	if m.Trace != nil {
		t := *m.Trace
		s.ScheduledSwitchover.Trace = &t
	}
	return Result{}
}

func (s *State) cancelScheduledSwitchover(c CancelScheduledSwitchover, m Meta) Result {
	sch := s.ScheduledSwitchover
	if sch == nil {
		return fail(CodeNotFound, "no switchover is scheduled")
	}
	s.endSchedule(c.Reason, 0, m)
	return Result{}
}

// endSchedule moves the booked switchover to LastScheduledSwitchover with its outcome.
func (s *State) endSchedule(outcome string, op uint64, m Meta) {
	ended := *s.ScheduledSwitchover
	ended.Outcome, ended.OperationID, ended.EndedAt = outcome, op, m.At
	s.LastScheduledSwitchover = &ended
	s.ScheduledSwitchover = nil
}

// scheduleBlocks refuses a switchover requested before the booked one's time: the operator
// cancels the booking first. From its time on, a switchover request is the booked one (the
// controller's) or one in its stead, and ends the booking.
func (s *State) scheduleBlocks(m Meta) Result {
	if sch := s.ScheduledSwitchover; sch != nil && m.At.Before(sch.At) {
		return fail(CodeConflict, "a switchover from %s is scheduled at %s; cancel it first (DELETE /switchover, pgbastion ctl switchover --cancel)",
			sch.Leader, sch.At.UTC().Format(time.RFC3339))
	}
	return Result{}
}

// describeSchedule is how a schedule's switchover is described in its operation's reason.
func describeSchedule(sch *ScheduledSwitchover) string {
	return fmt.Sprintf("scheduled switchover (booked for %s)", sch.At.UTC().Format(time.RFC3339))
}
