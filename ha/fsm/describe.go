package fsm

import (
	"fmt"
	"strings"
)

// Describe renders a command in one line for logs and golden test output.
func Describe(c Command) string {
	switch c := c.(type) {
	case StartOperation:
		return fmt.Sprintf("start %s (old primary %q): %s", c.Kind, c.OldPrimary, c.Reason)
	case IssueDirective:
		s := fmt.Sprintf("issue %s to %s", c.Type, c.Target)
		if c.Params.Upstream != "" {
			s += " following " + c.Params.Upstream
		}
		if c.Params.OperationID != 0 {
			s += fmt.Sprintf(" (op %d)", c.Params.OperationID)
		} else if c.Params.Reason != "" {
			s += ": " + c.Params.Reason
		}
		return s
	case UpdateOperation:
		var parts []string
		if c.Phase != "" {
			parts = append(parts, "phase="+string(c.Phase))
		}
		if c.Candidate != nil {
			parts = append(parts, fmt.Sprintf("candidate=%q", *c.Candidate))
		}
		if c.FinalLSN != nil {
			parts = append(parts, "final_lsn="+c.FinalLSN.String())
		}
		if c.MayLoseBytes != nil {
			parts = append(parts, fmt.Sprintf("may_lose=%d", *c.MayLoseBytes))
		}
		if c.MayLose != nil {
			parts = append(parts, fmt.Sprintf("may_lose_what=%q", *c.MayLose))
		}
		if c.Exclude != "" {
			parts = append(parts, "exclude="+c.Exclude)
		}
		if c.Message != nil {
			parts = append(parts, fmt.Sprintf("message=%q", *c.Message))
		}
		return fmt.Sprintf("update op %d: %s", c.ID, strings.Join(parts, " "))
	case FinishOperation:
		res := "failed"
		if c.Success {
			res = "succeeded"
		}
		return fmt.Sprintf("finish op %d %s: %s", c.ID, res, c.Message)
	case SetPrimary:
		if c.Node == "" {
			return "depose the primary"
		}
		return fmt.Sprintf("set primary %s (timeline %d, lsn %s): %s", c.Node, c.Timeline, c.LSN, c.Reason)
	case SetWritePause:
		if c.Active {
			return fmt.Sprintf("pause writes (op %d)", c.OperationID)
		}
		return "resume writes"
	case SetSyncState:
		s := fmt.Sprintf("record sync state of %s: standbys %v count %d", c.Primary, c.Standbys, c.Count)
		if c.Wanted != nil {
			s += fmt.Sprintf("; want synchronous_standby_names = %q", c.Wanted.Value)
		}
		return s
	case ExpireDirective:
		return fmt.Sprintf("expire directive %d: %s", c.ID, c.Message)
	case RequestSwitchover:
		return fmt.Sprintf("request switchover from %s to %q", c.Leader, c.Candidate)
	case CancelScheduledSwitchover:
		return "cancel the scheduled switchover: " + c.Reason
	}
	return fmt.Sprintf("%T %+v", c, c)
}
