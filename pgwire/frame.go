package pgwire

import (
	"encoding/binary"
	"fmt"
)

// HeaderLen is the size of a regular message header: one type byte and a big-endian int32 length
// that counts itself but not the type byte.
const HeaderLen = 5

// Frontend message types (client to server).
const (
	MsgBind         byte = 'B'
	MsgClose        byte = 'C'
	MsgCopyData     byte = 'd'
	MsgCopyDone     byte = 'c'
	MsgCopyFail     byte = 'f'
	MsgDescribe     byte = 'D'
	MsgExecute      byte = 'E'
	MsgFlush        byte = 'H'
	MsgFunctionCall byte = 'F'
	MsgParse        byte = 'P'
	MsgPassword     byte = 'p' // also SASLInitialResponse, SASLResponse, GSSResponse
	MsgQuery        byte = 'Q'
	MsgSync         byte = 'S'
	MsgTerminate    byte = 'X'
)

// Backend message types (server to client).
const (
	MsgAuthentication       byte = 'R'
	MsgBackendKeyData       byte = 'K'
	MsgBindComplete         byte = '2'
	MsgCloseComplete        byte = '3'
	MsgCommandComplete      byte = 'C'
	MsgCopyInResponse       byte = 'G'
	MsgCopyOutResponse      byte = 'H'
	MsgCopyBothResponse     byte = 'W'
	MsgDataRow              byte = 'D'
	MsgEmptyQueryResponse   byte = 'I'
	MsgErrorResponse        byte = 'E'
	MsgFunctionCallResponse byte = 'V'
	MsgNegotiateProtocol    byte = 'v'
	MsgNoData               byte = 'n'
	MsgNoticeResponse       byte = 'N'
	MsgNotification         byte = 'A'
	MsgParameterDescription byte = 't'
	MsgParameterStatus      byte = 'S'
	MsgParseComplete        byte = '1'
	MsgPortalSuspended      byte = 's'
	MsgReadyForQuery        byte = 'Z'
	MsgRowDescription       byte = 'T'
)

// MaxMessageLen is the protocol's hard ceiling for one message's length word (PostgreSQL's
// PQ_LARGE_MESSAGE_LIMIT is 1 GiB - 1).
const MaxMessageLen = 1<<30 - 1

// smallMessageLen mirrors PostgreSQL's PQ_SMALL_MESSAGE_LIMIT for messages whose body is a few
// names and integers.
const smallMessageLen = 10000

// Limits holds the largest body length accepted for each message type. A zero entry means the
// type is not valid in that direction. Limits are checked on the header alone, before any body
// byte is buffered or allocated.
type Limits struct {
	max [256]uint32
}

// MaxBody reports the largest body accepted for typ, or 0 when typ is not a valid message type.
func (l *Limits) MaxBody(typ byte) int { return int(l.max[typ]) }

// Set changes the limit for one type.
func (l *Limits) Set(typ byte, n int) {
	if n < 0 {
		n = 0
	}
	// The length word counts itself: a body may be at most MaxMessageLen-4 bytes.
	if n > MaxMessageLen-4 {
		n = MaxMessageLen - 4
	}
	l.max[typ] = uint32(n)
}

// FrontendLimits returns the limits for messages a client sends after startup. large bounds the
// messages that carry SQL text or data (Query, Parse, Bind, FunctionCall, CopyData).
func FrontendLimits(large int) *Limits {
	l := &Limits{}
	for _, t := range []byte{MsgQuery, MsgParse, MsgBind, MsgFunctionCall, MsgCopyData} {
		l.Set(t, large)
	}
	for _, t := range []byte{MsgClose, MsgDescribe, MsgExecute, MsgCopyFail} {
		l.Set(t, smallMessageLen)
	}
	// PostgreSQL caps SASL and GSS tokens at 65535 bytes (PG_MAX_AUTH_TOKEN_LENGTH).
	l.Set(MsgPassword, 65535+1024)
	for _, t := range []byte{MsgSync, MsgFlush, MsgCopyDone, MsgTerminate} {
		l.max[t] = 0xFFFFFFFF // marker for "exactly empty", see CheckHeader
	}
	return l
}

// BackendLimits returns the limits for messages a server sends. Servers are trusted more than
// clients, but every length is still bounded.
func BackendLimits() *Limits {
	l := &Limits{}
	for _, t := range []byte{MsgDataRow, MsgCopyData, MsgRowDescription, MsgErrorResponse,
		MsgNoticeResponse, MsgNotification, MsgFunctionCallResponse, MsgCopyInResponse,
		MsgCopyOutResponse, MsgCopyBothResponse, MsgParameterDescription, MsgCommandComplete,
		MsgAuthentication, MsgParameterStatus, MsgNegotiateProtocol} {
		l.Set(t, MaxMessageLen)
	}
	l.Set(MsgBackendKeyData, 4+256)
	l.Set(MsgReadyForQuery, 1)
	for _, t := range []byte{MsgBindComplete, MsgCloseComplete, MsgEmptyQueryResponse,
		MsgNoData, MsgParseComplete, MsgPortalSuspended, MsgCopyDone} {
		l.max[t] = 0xFFFFFFFF
	}
	return l
}

// HeaderError describes a message header that cannot be accepted. It carries the SQLSTATE to
// report to the peer before the connection is closed.
type HeaderError struct {
	Type    byte
	Length  int64
	Code    string
	Message string
}

func (e *HeaderError) Error() string { return e.Message }

// CheckHeader decodes and validates a 5-byte header. It returns the body length.
func (l *Limits) CheckHeader(h []byte) (typ byte, bodyLen int, err error) {
	typ = h[0]
	n := int64(int32(binary.BigEndian.Uint32(h[1:5])))
	if n < 4 {
		return typ, 0, &HeaderError{Type: typ, Length: n, Code: ProtocolViolation,
			Message: fmt.Sprintf("invalid message length %d for message type %q", n, typ)}
	}
	body := n - 4
	max := l.max[typ]
	switch {
	case max == 0:
		return typ, 0, &HeaderError{Type: typ, Length: n, Code: ProtocolViolation,
			Message: fmt.Sprintf("invalid message type %q", typ)}
	case max == 0xFFFFFFFF:
		if body != 0 {
			return typ, 0, &HeaderError{Type: typ, Length: n, Code: ProtocolViolation,
				Message: fmt.Sprintf("invalid message length %d for message type %q", n, typ)}
		}
	case body > int64(max):
		return typ, 0, &HeaderError{Type: typ, Length: n, Code: ProgramLimitExceeded,
			Message: fmt.Sprintf("message of type %q is %d bytes, larger than the limit of %d", typ, body, max)}
	}
	return typ, int(body), nil
}

// Scan reports the first message in buf. It returns the message type, the body length, and
// whether the whole message (header and body) is present in buf. When fewer than HeaderLen bytes
// are present it returns complete=false and bodyLen=-1.
func (l *Limits) Scan(buf []byte) (typ byte, bodyLen int, complete bool, err error) {
	if len(buf) < HeaderLen {
		return 0, -1, false, nil
	}
	typ, bodyLen, err = l.CheckHeader(buf[:HeaderLen])
	if err != nil {
		return typ, 0, false, err
	}
	return typ, bodyLen, len(buf)-HeaderLen >= bodyLen, nil
}

// PutHeader writes a header for a body of bodyLen bytes into dst[0:5].
func PutHeader(dst []byte, typ byte, bodyLen int) {
	dst[0] = typ
	binary.BigEndian.PutUint32(dst[1:5], uint32(bodyLen+4))
}
