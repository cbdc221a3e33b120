package fsm

import "errors"

// ErrorCode classifies a rejected command. Codes are stable strings because they cross the
// network when a follower forwards a command to the leader.
type ErrorCode string

// Error codes. The API maps them to HTTP status codes (Patroni's: 400, 404, 409, 412).
const (
	CodeInvalid      ErrorCode = "invalid"      // malformed request (400)
	CodeNotFound     ErrorCode = "not_found"    // unknown member or directive (404)
	CodeConflict     ErrorCode = "conflict"     // another operation is in progress, or already acknowledged (409)
	CodePrecondition ErrorCode = "precondition" // the cluster is not in a state that allows it (412)
	CodeStaleEpoch   ErrorCode = "stale_epoch"  // issued by an older leadership epoch
	CodeNotPrimary   ErrorCode = "not_primary"  // the named node is not the primary
	CodeHalted       ErrorCode = "halted"       // the state machine stopped on an undecodable command
	CodeInternal     ErrorCode = "internal"     // anything else
)

// Error is a command rejected by the state machine. It is returned as a value from Apply,
// never panicked, and it survives forwarding: compare with errors.Is against the sentinels
// below, which match on Code only.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	return t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrInvalid      = &Error{Code: CodeInvalid, Message: "invalid command"}
	ErrNotFound     = &Error{Code: CodeNotFound, Message: "not found"}
	ErrConflict     = &Error{Code: CodeConflict, Message: "conflict"}
	ErrPrecondition = &Error{Code: CodePrecondition, Message: "precondition failed"}
	ErrStaleEpoch   = &Error{Code: CodeStaleEpoch, Message: "stale epoch"}
	ErrNotPrimary   = &Error{Code: CodeNotPrimary, Message: "not the primary"}
	ErrHalted       = &Error{Code: CodeHalted, Message: "state machine halted"}
)

func newErr(code ErrorCode, msg string) *Error { return &Error{Code: code, Message: msg} }
