package pool

import "github.com/pgbastion/pgbastion/pgwire"

// Expect names the server response that closes an outstanding request.
type Expect uint8

const (
	ExpectParse    Expect = iota + 1 // ParseComplete
	ExpectBind                       // BindComplete
	ExpectDescribe                   // RowDescription or NoData (after an optional ParameterDescription)
	ExpectExecute                    // CommandComplete, EmptyQueryResponse or PortalSuspended
	ExpectClose                      // CloseComplete
	ExpectSync                       // ReadyForQuery
	ExpectQuery                      // ReadyForQuery (a simple Query, injected or the client's)
	ExpectFunction                   // ReadyForQuery (FunctionCall)
)

// Action says what to do with the server's responses to one request.
type Action uint8

const (
	// Forward sends the responses to the client.
	Forward Action = iota
	// Swallow drops the responses: the request was injected by the proxy (a Parse the server
	// lacked, a Close for an evicted statement, a SET that syncs session settings). Errors are
	// still reported to the caller, which decides whether the client must see them.
	Swallow
	// Fake means the server never saw the request: when it reaches the head of the queue the
	// proxy synthesizes the response (ParseComplete or CloseComplete) itself.
	Fake
)

// Entry is one outstanding request.
type Entry struct {
	Expect Expect
	Action Action
	// Stmt is the prepared statement a Parse, Bind or Describe entry refers to, if any.
	Stmt *Stmt
	// Reply is what a Fake entry answers with (ParseComplete, CloseComplete, an error, or a
	// CommandComplete to which ReadyForQuery is added for a Query).
	Reply []byte
	// Set is the session setting a client's simple-query SET changes, applied to the client's
	// and the server's settings once the statement has completed outside a transaction block.
	Set *Setting
}

// Setting is a session setting changed by SQL (SET name ... or RESET name).
type Setting struct {
	Name string
	// SQL is the SET statement to replay on another server; empty for RESET and set_config.
	SQL string
	// Config marks set_config(Name, Value, false): it completes as "SELECT 1" instead of SET,
	// and Value is replayed like a reported setting's (SyncSQL's set_config).
	Config bool
	Value  string
}

// Verdict is the tracker's answer for one server message.
type Verdict uint8

const (
	VerdictForward Verdict = iota
	VerdictSwallow
	// VerdictProtocol means the server sent a message that no outstanding request explains;
	// the server connection can no longer be trusted and must be closed.
	VerdictProtocol
)

// Tracker follows the requests a client has sent to one server connection and the responses
// that answer them. It implements the release rule of transaction pooling: the server may go
// back to the pool only when Idle reports true — ReadyForQuery said 'I' and nothing is
// outstanding. It also tells the engine which responses to forward, which to swallow (answers to
// requests the proxy injected) and where to synthesize answers to requests it absorbed.
//
// A Tracker belongs to one server connection and is used only by the goroutine that owns it.
type Tracker struct {
	q          []Entry
	head, size int

	// TxStatus is the status of the last ReadyForQuery ('I', 'T' or 'E').
	TxStatus byte
	// unsynced is true when extended-protocol messages were sent after the last Sync, so a
	// ReadyForQuery is still owed once the client syncs.
	unsynced bool
	// skipping is true after an error in extended mode until the client's next Sync: the server
	// discards everything it receives meanwhile, so those requests expect no response.
	skipping bool
	// CopyIn and CopyOut report the COPY sub-protocol state.
	CopyIn, CopyOut bool

	// Dropped receives every entry removed without a response: requests the server skipped after
	// an error. The engine uses it to forget statements that never reached the server.
	Dropped func(Entry)
}

// NewTracker returns an idle tracker. Its ring's length is a power of two (it starts at 8 and
// doubles), so positions wrap with a mask instead of a division.
func NewTracker() *Tracker { return &Tracker{TxStatus: pgwire.TxIdle, q: make([]Entry, 8)} }

// Idle reports whether the server has answered everything and is outside a transaction, so it
// may be released to another client.
func (t *Tracker) Idle() bool {
	return t.size == 0 && t.TxStatus == pgwire.TxIdle && !t.unsynced && !t.CopyIn && !t.CopyOut
}

// Outstanding returns the number of requests still waiting for a response.
func (t *Tracker) Outstanding() int { return t.size }

// Reset forgets everything (the server connection is being closed or was reset).
func (t *Tracker) Reset() {
	t.head, t.size = 0, 0
	t.TxStatus = pgwire.TxIdle
	t.unsynced, t.skipping, t.CopyIn, t.CopyOut = false, false, false, false
}

// Sent records a request the client (or the proxy) sent to the server. It returns false when the
// request expects no response because the server is skipping to the next Sync after an error.
func (t *Tracker) Sent(e Entry) bool {
	switch e.Expect {
	case ExpectSync:
		if t.CopyIn {
			// PostgreSQL ignores Sync while in copy-in mode.
			return false
		}
		t.unsynced = false
		if t.skipping {
			t.skipping = false
		}
	default:
		// After an extended-protocol error PostgreSQL discards every message, simple Query
		// included, until the next Sync.
		if e.Expect != ExpectQuery && e.Expect != ExpectFunction {
			t.unsynced = true
		}
		if t.skipping {
			t.dropNow(e)
			return false
		}
	}
	t.push(e)
	return true
}

// ClientCopyEnd records the client's CopyDone or CopyFail.
func (t *Tracker) ClientCopyEnd() { t.CopyIn = false }

func (t *Tracker) dropNow(e Entry) {
	if t.Dropped != nil && e.Action != Fake {
		t.Dropped(e)
	}
}

func (t *Tracker) push(e Entry) {
	if t.size == len(t.q) {
		nq := make([]Entry, 2*len(t.q))
		for i := 0; i < t.size; i++ {
			nq[i] = t.q[(t.head+i)&(len(t.q)-1)]
		}
		t.q, t.head = nq, 0
	}
	t.q[(t.head+t.size)&(len(t.q)-1)] = e
	t.size++
}

// Head returns the oldest outstanding request.
func (t *Tracker) Head() (Entry, bool) {
	if t.size == 0 {
		return Entry{}, false
	}
	return t.q[t.head], true
}

func (t *Tracker) pop() Entry {
	e := t.q[t.head]
	t.q[t.head] = Entry{}
	t.head = (t.head + 1) & (len(t.q) - 1)
	t.size--
	return e
}

// NextFake pops and returns the head entry when it is a Fake one, so the engine can synthesize
// its response. Call it after every Sent and Received until it reports false.
func (t *Tracker) NextFake() (Entry, bool) {
	if t.size == 0 || t.q[t.head].Action != Fake {
		return Entry{}, false
	}
	return t.pop(), true
}

// Received processes one server message type and says whether to forward it. For messages that
// close a request it also returns that request (ok=true). For ReadyForQuery the caller must set
// status through ReadyForQuery instead.
func (t *Tracker) Received(typ byte) (v Verdict, closed Entry, ok bool) {
	head, has := t.Head()
	act := func(e Entry) Verdict {
		if e.Action == Swallow {
			return VerdictSwallow
		}
		return VerdictForward
	}
	switch typ {
	case pgwire.MsgParameterStatus, pgwire.MsgNoticeResponse, pgwire.MsgNotification:
		// Asynchronous messages: they never change linkage.
		if has {
			return act(head), Entry{}, false
		}
		return VerdictForward, Entry{}, false
	case pgwire.MsgParseComplete:
		return t.expectPop(ExpectParse)
	case pgwire.MsgBindComplete:
		return t.expectPop(ExpectBind)
	case pgwire.MsgCloseComplete:
		return t.expectPop(ExpectClose)
	case pgwire.MsgParameterDescription:
		if !has || head.Expect != ExpectDescribe {
			return VerdictProtocol, Entry{}, false
		}
		return act(head), Entry{}, false
	case pgwire.MsgNoData:
		return t.expectPop(ExpectDescribe)
	case pgwire.MsgRowDescription:
		if has && head.Expect == ExpectDescribe {
			return t.expectPop(ExpectDescribe)
		}
		if has && (head.Expect == ExpectQuery || head.Expect == ExpectExecute) {
			return act(head), Entry{}, false
		}
		return VerdictProtocol, Entry{}, false
	case pgwire.MsgDataRow, pgwire.MsgCopyData, pgwire.MsgCopyDone:
		if typ == pgwire.MsgCopyDone {
			t.CopyOut = false
		}
		if !has {
			return VerdictProtocol, Entry{}, false
		}
		return act(head), Entry{}, false
	case pgwire.MsgCommandComplete, pgwire.MsgEmptyQueryResponse, pgwire.MsgPortalSuspended:
		t.CopyIn, t.CopyOut = false, false
		if has && head.Expect == ExpectExecute {
			return t.expectPop(ExpectExecute)
		}
		if has && head.Expect == ExpectQuery {
			return act(head), Entry{}, false
		}
		return VerdictProtocol, Entry{}, false
	case pgwire.MsgCopyInResponse, pgwire.MsgCopyBothResponse:
		if !has || (head.Expect != ExpectQuery && head.Expect != ExpectExecute) {
			return VerdictProtocol, Entry{}, false
		}
		t.CopyIn = true
		if head.Expect == ExpectExecute {
			// Extended protocol: the client owes a Sync after CopyDone.
			t.unsynced = true
		}
		if typ == pgwire.MsgCopyBothResponse {
			t.CopyOut = true
		}
		t.dropIgnoredSyncs()
		return act(head), Entry{}, false
	case pgwire.MsgCopyOutResponse:
		if !has || (head.Expect != ExpectQuery && head.Expect != ExpectExecute) {
			return VerdictProtocol, Entry{}, false
		}
		t.CopyOut = true
		return act(head), Entry{}, false
	case pgwire.MsgFunctionCallResponse:
		if !has || head.Expect != ExpectFunction {
			return VerdictProtocol, Entry{}, false
		}
		return act(head), Entry{}, false
	case pgwire.MsgErrorResponse:
		return t.onError()
	case pgwire.MsgReadyForQuery:
		if !has || (head.Expect != ExpectSync && head.Expect != ExpectQuery && head.Expect != ExpectFunction) {
			return VerdictProtocol, Entry{}, false
		}
		e := t.pop()
		return act(e), e, true
	}
	return VerdictProtocol, Entry{}, false
}

// ReadyForQuery records the transaction status of a ReadyForQuery that Received accepted.
func (t *Tracker) ReadyForQuery(status byte) {
	t.TxStatus = status
	t.CopyIn, t.CopyOut = false, false
}

func (t *Tracker) expectPop(want Expect) (Verdict, Entry, bool) {
	head, has := t.Head()
	if !has || head.Expect != want {
		return VerdictProtocol, Entry{}, false
	}
	e := t.pop()
	if e.Action == Swallow {
		return VerdictSwallow, e, true
	}
	return VerdictForward, e, true
}

// onError handles an ErrorResponse. Inside a simple Query or FunctionCall the request stays
// until its ReadyForQuery. In extended mode the server discards everything up to the next Sync,
// so those requests are dropped now (or, when the client has not sent that Sync yet, as they
// arrive).
func (t *Tracker) onError() (Verdict, Entry, bool) {
	head, has := t.Head()
	if !has {
		// An error with nothing outstanding: a FATAL shutdown notice, for example.
		return VerdictForward, Entry{}, false
	}
	t.CopyIn, t.CopyOut = false, false
	if head.Expect == ExpectQuery || head.Expect == ExpectFunction || head.Expect == ExpectSync {
		// The request stays until its ReadyForQuery. (At Sync, an error can report a failed
		// implicit COMMIT.)
		if head.Action == Swallow {
			return VerdictSwallow, head, false
		}
		return VerdictForward, head, false
	}
	failed := t.pop()
	if failed.Action == Swallow && failed.Expect != ExpectParse {
		// An injected request that exists only to put the server into its error state (the
		// proxy has already queued the client-facing error).
		t.skipRest()
		return VerdictSwallow, failed, true
	}
	t.skipRest()
	// Even when the failed request was injected (a Parse the server lacked), the client's own
	// Bind or Describe depended on it, so the client must see this error.
	return VerdictForward, failed, true
}

// skipRest drops the requests the server will skip after an extended-protocol error.
func (t *Tracker) skipRest() {
	for t.size > 0 && t.q[t.head].Expect != ExpectSync {
		e := t.pop()
		t.dropNow(e)
	}
	if t.size == 0 {
		t.skipping = true
	}
}

// dropIgnoredSyncs removes Sync entries queued behind the request that started COPY FROM STDIN:
// PostgreSQL reads and ignores Sync while in copy-in mode (libpq sends one right after the
// Execute of a COPY, and another after CopyDone).
func (t *Tracker) dropIgnoredSyncs() {
	if t.size <= 1 {
		return
	}
	kept := 1
	for i := 1; i < t.size; i++ {
		e := t.q[(t.head+i)&(len(t.q)-1)]
		if e.Expect == ExpectSync {
			continue
		}
		t.q[(t.head+kept)&(len(t.q)-1)] = e
		kept++
	}
	for i := kept; i < t.size; i++ {
		t.q[(t.head+i)&(len(t.q)-1)] = Entry{}
	}
	t.size = kept
}
