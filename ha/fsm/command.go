package fsm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// CommandType is the first byte of every Raft log entry PGBastion writes.
//
// Never renumber a type: the number is stored in the log. A type whose byte has IgnorableFlag
// set may be skipped by a node that does not know it (for additive, advisory commands during a
// rolling upgrade); any other unknown type or version stops the state machine (see FSM.Apply).
type CommandType uint8

// IgnorableFlag marks a command type that older nodes may skip.
const IgnorableFlag CommandType = 0x80

// Command types.
const (
	TypeLeaderEstablished CommandType = 1
	TypeRegisterMember    CommandType = 2
	TypeRemoveMember      CommandType = 3
	TypeSetTags           CommandType = 4
	TypeReportStatus      CommandType = 5
	TypeRenewLease        CommandType = 6
	TypeIssueDirective    CommandType = 7
	TypeAckDirective      CommandType = 8
	TypeExpireDirective   CommandType = 9
	TypeStartOperation    CommandType = 10
	TypeUpdateOperation   CommandType = 11
	TypeFinishOperation   CommandType = 12
	TypeSetPrimary        CommandType = 13
	TypeSetWritePause     CommandType = 14
	TypeRequestSwitchover CommandType = 15
	TypeRequestFailover   CommandType = 16
	TypeSetPause          CommandType = 17
	TypeSetSyncStandbys   CommandType = 18
	TypeSetSyncState      CommandType = 19
)

// Envelope layout: type (1 byte), version (1 byte), time (8 bytes, Unix nanoseconds, big
// endian), then the JSON body.
const (
	headerLen = 10
	// MaxCommandSize bounds an encoded command; larger entries are refused before decoding.
	MaxCommandSize = 1 << 20
)

// Command is a typed, versioned state-machine command.
type Command interface {
	// CommandType is the command's type byte.
	CommandType() CommandType
	// CommandVersion is the body schema version this binary writes.
	CommandVersion() uint8
}

// LeaderEstablished is the first command of every new Raft leader: it begins a new epoch and
// supersedes directives from older epochs.
type LeaderEstablished struct {
	Leader string `json:"leader"`
}

// RegisterMember adds a node or updates its addresses and tags.
type RegisterMember struct {
	Name           string `json:"name"`
	RaftAddress    string `json:"raft_address"`
	APIAddress     string `json:"api_address,omitempty"`
	ProxyRWAddress string `json:"proxy_rw_address,omitempty"`
	ProxyROAddress string `json:"proxy_ro_address,omitempty"`
	PGHost         string `json:"pg_host,omitempty"`
	PGPort         int    `json:"pg_port,omitempty"`
	Tags           Tags   `json:"tags"`
}

// RemoveMember removes a node from the state (not from Raft; package ha does both).
type RemoveMember struct {
	Name string `json:"name"`
}

// SetTags replaces a node's tags.
type SetTags struct {
	Name string `json:"name"`
	Tags Tags   `json:"tags"`
}

// ReportStatus is an agent's periodic report of its PostgreSQL.
type ReportStatus struct {
	Node   string     `json:"node"`
	Status NodeStatus `json:"status"`
}

// RenewLease renews the sender's write-routing lease. Routing is the primary the sender routes
// writes to at the moment it sends ("" for none). The result names the current primary.
type RenewLease struct {
	Node    string `json:"node"`
	Routing string `json:"routing,omitempty"`
}

// IssueDirective publishes a directive. The FSM assigns its ID and epoch.
type IssueDirective struct {
	Type   DirectiveType   `json:"type"`
	Target string          `json:"target"`
	Params DirectiveParams `json:"params"`
}

// AckDirective is a target's one acknowledgement of a directive.
type AckDirective struct {
	ID      uint64          `json:"id"`
	Node    string          `json:"node"`
	Success bool            `json:"success"`
	Message string          `json:"message,omitempty"`
	Result  DirectiveResult `json:"result"`
}

// ExpireDirective ends a pending directive that took too long.
type ExpireDirective struct {
	ID      uint64 `json:"id"`
	Message string `json:"message"`
}

// StartOperation begins an automatic failover. It deposes OldPrimary, which must be the current
// primary; when there is none, OldPrimary names the last one (to fence it), or "".
type StartOperation struct {
	Kind       OperationKind `json:"kind"`
	Reason     string        `json:"reason"`
	OldPrimary string        `json:"old_primary,omitempty"`
}

// UpdateOperation changes fields of the operation in progress. Nil fields are left alone.
// Version 2 added MayLose.
type UpdateOperation struct {
	ID           uint64  `json:"id"`
	Phase        Phase   `json:"phase,omitempty"`
	Candidate    *string `json:"candidate,omitempty"`
	FinalLSN     *LSN    `json:"final_lsn,omitempty"`
	MayLoseBytes *uint64 `json:"may_lose_bytes,omitempty"`
	MayLose      *string `json:"may_lose,omitempty"`
	Exclude      string  `json:"exclude,omitempty"`
	Message      *string `json:"message,omitempty"`
}

// FinishOperation ends the operation in progress and clears its write pause.
type FinishOperation struct {
	ID      uint64 `json:"id"`
	Success bool   `json:"success"`
	Message string `json:"message,omitempty"`
}

// SetPrimary names the primary ("" deposes it). Naming a primary appends a history entry and
// clears the synchronous standby record. SystemID (version 2) is the new primary's database
// system identifier: the first one named is recorded as the cluster's, and a primary with
// another one is refused.
type SetPrimary struct {
	Node        string `json:"node"`
	OperationID uint64 `json:"operation_id,omitempty"`
	Reason      string `json:"reason,omitempty"`
	Timeline    uint32 `json:"timeline,omitempty"`
	LSN         LSN    `json:"lsn,omitempty"`
	SystemID    string `json:"system_id,omitempty"`
}

// SetWritePause sets or clears the switchover write pause.
type SetWritePause struct {
	OperationID uint64 `json:"operation_id"`
	Active      bool   `json:"active"`
	Reason      string `json:"reason,omitempty"`
}

// RequestSwitchover asks for a planned switchover from Leader (the current primary) to
// Candidate ("" lets the controller choose).
type RequestSwitchover struct {
	Leader    string `json:"leader"`
	Candidate string `json:"candidate,omitempty"`
}

// RequestFailover asks for a manual failover to Candidate. With a primary that reports itself
// healthy it becomes a switchover; otherwise the primary is deposed and the candidate promoted
// (after the same FENCE and lease checks as an automatic failover). Force allows a candidate
// beyond maximum_lag_on_failover or, in synchronous modes, outside the recorded synchronous
// standby set; with Force the candidate may be empty (the controller picks the best one).
type RequestFailover struct {
	Candidate string `json:"candidate"`
	Force     bool   `json:"force,omitempty"`
}

// SetPause turns maintenance mode on or off.
type SetPause struct {
	Paused bool `json:"paused"`
}

// SetSyncStandbys records, by hand, that every transaction the current primary acknowledged is
// on every one of Nodes (count = len(Nodes)). The controller uses SetSyncState.
type SetSyncStandbys struct {
	Nodes []string `json:"nodes"`
}

// SetSyncState records the synchronous replication promise about Primary, which must be the
// primary (see State.SyncStandbys), and, when Wanted is not nil, the configuration its agent
// must apply.
type SetSyncState struct {
	Primary  string      `json:"primary"`
	Standbys []string    `json:"standbys,omitempty"`
	Count    int         `json:"count"`
	Wanted   *SyncTarget `json:"wanted,omitempty"`
}

func (LeaderEstablished) CommandType() CommandType { return TypeLeaderEstablished }
func (RegisterMember) CommandType() CommandType    { return TypeRegisterMember }
func (RemoveMember) CommandType() CommandType      { return TypeRemoveMember }
func (SetTags) CommandType() CommandType           { return TypeSetTags }
func (ReportStatus) CommandType() CommandType      { return TypeReportStatus }
func (RenewLease) CommandType() CommandType        { return TypeRenewLease }
func (IssueDirective) CommandType() CommandType    { return TypeIssueDirective }
func (AckDirective) CommandType() CommandType      { return TypeAckDirective }
func (ExpireDirective) CommandType() CommandType   { return TypeExpireDirective }
func (StartOperation) CommandType() CommandType    { return TypeStartOperation }
func (UpdateOperation) CommandType() CommandType   { return TypeUpdateOperation }
func (FinishOperation) CommandType() CommandType   { return TypeFinishOperation }
func (SetPrimary) CommandType() CommandType        { return TypeSetPrimary }
func (SetWritePause) CommandType() CommandType     { return TypeSetWritePause }
func (RequestSwitchover) CommandType() CommandType { return TypeRequestSwitchover }
func (RequestFailover) CommandType() CommandType   { return TypeRequestFailover }
func (SetPause) CommandType() CommandType          { return TypeSetPause }
func (SetSyncStandbys) CommandType() CommandType   { return TypeSetSyncStandbys }
func (SetSyncState) CommandType() CommandType      { return TypeSetSyncState }

func (LeaderEstablished) CommandVersion() uint8 { return 1 }
func (RegisterMember) CommandVersion() uint8    { return 1 }
func (RemoveMember) CommandVersion() uint8      { return 1 }
func (SetTags) CommandVersion() uint8           { return 1 }
func (ReportStatus) CommandVersion() uint8      { return 2 } // 2: system_id, synchronous_standby_names, sync_since
func (RenewLease) CommandVersion() uint8        { return 1 }
func (IssueDirective) CommandVersion() uint8    { return 1 }
func (AckDirective) CommandVersion() uint8      { return 1 }
func (ExpireDirective) CommandVersion() uint8   { return 1 }
func (StartOperation) CommandVersion() uint8    { return 1 }
func (UpdateOperation) CommandVersion() uint8   { return 2 } // 2: may_lose
func (FinishOperation) CommandVersion() uint8   { return 1 }
func (SetPrimary) CommandVersion() uint8        { return 2 } // 2: system_id
func (SetWritePause) CommandVersion() uint8     { return 1 }
func (RequestSwitchover) CommandVersion() uint8 { return 1 }
func (RequestFailover) CommandVersion() uint8   { return 1 }
func (SetPause) CommandVersion() uint8          { return 1 }
func (SetSyncStandbys) CommandVersion() uint8   { return 1 }
func (SetSyncState) CommandVersion() uint8      { return 1 }

// newCommand returns a pointer to a zero command of type t and the newest body version this
// binary understands, or nil for an unknown type.
func newCommand(t CommandType) (Command, uint8) {
	var c Command
	switch t {
	case TypeLeaderEstablished:
		c = &LeaderEstablished{}
	case TypeRegisterMember:
		c = &RegisterMember{}
	case TypeRemoveMember:
		c = &RemoveMember{}
	case TypeSetTags:
		c = &SetTags{}
	case TypeReportStatus:
		c = &ReportStatus{}
	case TypeRenewLease:
		c = &RenewLease{}
	case TypeIssueDirective:
		c = &IssueDirective{}
	case TypeAckDirective:
		c = &AckDirective{}
	case TypeExpireDirective:
		c = &ExpireDirective{}
	case TypeStartOperation:
		c = &StartOperation{}
	case TypeUpdateOperation:
		c = &UpdateOperation{}
	case TypeFinishOperation:
		c = &FinishOperation{}
	case TypeSetPrimary:
		c = &SetPrimary{}
	case TypeSetWritePause:
		c = &SetWritePause{}
	case TypeRequestSwitchover:
		c = &RequestSwitchover{}
	case TypeRequestFailover:
		c = &RequestFailover{}
	case TypeSetPause:
		c = &SetPause{}
	case TypeSetSyncStandbys:
		c = &SetSyncStandbys{}
	case TypeSetSyncState:
		c = &SetSyncState{}
	case TypeUpdatePGConfig:
		c = &UpdatePGConfig{}
	case TypeReportPGConfig:
		c = &ReportPGConfig{}
	case TypeRequestRestart:
		c = &RequestRestart{}
	case TypeFinishRestart:
		c = &FinishRestart{}
	case TypeRequestReinit:
		c = &RequestReinit{}
	case TypeScheduleSwitchover:
		c = &ScheduleSwitchover{}
	case TypeCancelScheduledSwitchover:
		c = &CancelScheduledSwitchover{}
	case TypeSetPGHBA:
		c = &SetPGHBA{}
	case TypeReportPGHBA:
		c = &ReportPGHBA{}
	case TypeRequestReload:
		c = &RequestReload{}
	case TypeReportReload:
		c = &ReportReload{}
	default:
		return nil, 0
	}
	return c, c.CommandVersion()
}

// Encode returns the log entry for cmd stamped with time at (the zero time encodes as 0).
func Encode(cmd Command, at time.Time) ([]byte, error) {
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", cmd, err)
	}
	b := make([]byte, headerLen, headerLen+len(body))
	b[0] = byte(cmd.CommandType())
	b[1] = cmd.CommandVersion()
	putTime(b[2:headerLen], at)
	b = append(b, body...)
	if len(b) > MaxCommandSize {
		return nil, fmt.Errorf("encode %T: %d bytes exceeds the %d-byte limit", cmd, len(b), MaxCommandSize)
	}
	return b, nil
}

// Stamp returns a copy of the encoded command b with its time replaced by at. The Raft leader
// stamps every command it proposes, so all times in the log come from the leader's clock.
func Stamp(b []byte, at time.Time) ([]byte, error) {
	if len(b) < headerLen {
		return nil, errShort
	}
	c := bytes.Clone(b)
	putTime(c[2:headerLen], at)
	return c, nil
}

// PeekType returns the type byte of an encoded command.
func PeekType(b []byte) (CommandType, error) {
	if len(b) < headerLen {
		return 0, errShort
	}
	return CommandType(b[0]), nil
}

var errShort = errors.New("decode command: shorter than its header")

// ErrIgnorable is returned by Decode for an unknown command whose type has IgnorableFlag set.
var ErrIgnorable = errors.New("unknown ignorable command")

// Decode parses an encoded command. Unknown types or versions, trailing garbage and unknown
// JSON fields are errors: a node must never apply a command it does not fully understand.
func Decode(b []byte) (Command, time.Time, error) {
	if len(b) < headerLen {
		return nil, time.Time{}, errShort
	}
	if len(b) > MaxCommandSize {
		return nil, time.Time{}, fmt.Errorf("decode command: %d bytes exceeds the %d-byte limit", len(b), MaxCommandSize)
	}
	t, v := CommandType(b[0]), b[1]
	at := getTime(b[2:headerLen])
	cmd, newest := newCommand(t)
	if cmd == nil {
		if t&IgnorableFlag != 0 {
			return nil, at, ErrIgnorable
		}
		return nil, at, fmt.Errorf("decode command: unknown type %d", t)
	}
	if v == 0 || v > newest {
		return nil, at, fmt.Errorf("decode command type %d: unsupported version %d (this binary knows up to %d)", t, v, newest)
	}
	dec := json.NewDecoder(bytes.NewReader(b[headerLen:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cmd); err != nil {
		return nil, at, fmt.Errorf("decode command type %d: %w", t, err)
	}
	if dec.More() {
		return nil, at, fmt.Errorf("decode command type %d: trailing data", t)
	}
	// Return the value, not the pointer, so that type switches see one form.
	return deref(cmd), at, nil
}

func deref(c Command) Command {
	switch c := c.(type) {
	case *LeaderEstablished:
		return *c
	case *RegisterMember:
		return *c
	case *RemoveMember:
		return *c
	case *SetTags:
		return *c
	case *ReportStatus:
		return *c
	case *RenewLease:
		return *c
	case *IssueDirective:
		return *c
	case *AckDirective:
		return *c
	case *ExpireDirective:
		return *c
	case *StartOperation:
		return *c
	case *UpdateOperation:
		return *c
	case *FinishOperation:
		return *c
	case *SetPrimary:
		return *c
	case *SetWritePause:
		return *c
	case *RequestSwitchover:
		return *c
	case *RequestFailover:
		return *c
	case *SetPause:
		return *c
	case *SetSyncStandbys:
		return *c
	case *SetSyncState:
		return *c
	case *UpdatePGConfig:
		return *c
	case *ReportPGConfig:
		return *c
	case *RequestRestart:
		return *c
	case *FinishRestart:
		return *c
	case *RequestReinit:
		return *c
	case *SetPGHBA:
		return *c
	case *ReportPGHBA:
		return *c
	case *RequestReload:
		return *c
	case *ReportReload:
		return *c
	case *ScheduleSwitchover:
		return *c
	case *CancelScheduledSwitchover:
		return *c
	}
	return c
}

func putTime(b []byte, at time.Time) {
	var n int64
	if !at.IsZero() {
		n = at.UnixNano()
	}
	binary.BigEndian.PutUint64(b, uint64(n))
}

func getTime(b []byte) time.Time {
	n := int64(binary.BigEndian.Uint64(b))
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// Result is what applying a command returns, through raft's ApplyFuture.Response() on the
// leader and through forwarding on followers.
type Result struct {
	// Err is set when the command was rejected; the state did not change.
	Err *Error `json:"error,omitempty"`
	// ID is the new directive's or operation's ID, or the new cluster-wide configuration
	// version (UpdatePGConfig).
	ID uint64 `json:"id,omitempty"`
	// Primary is the primary when the command was applied (RenewLease).
	Primary string `json:"primary,omitempty"`
	// Index is the log index of the command.
	Index uint64 `json:"index"`
}

// Error returns the rejection as an error, or nil.
func (r Result) Error() error {
	if r.Err == nil {
		return nil
	}
	return r.Err
}
