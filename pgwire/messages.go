package pgwire

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// ErrMalformed is returned by the body decoders for a body that does not follow the protocol.
var ErrMalformed = errors.New("pgwire: malformed message body")

// Parse is a decoded Parse body. Slices alias the body.
type Parse struct {
	Name  []byte
	Query []byte
	// ParamTypes holds the raw parameter type OIDs (4 bytes each), NumParams of them.
	ParamTypes []byte
	NumParams  int
}

// DecodeParse decodes a Parse message body.
func DecodeParse(body []byte) (Parse, error) {
	var p Parse
	var ok bool
	if p.Name, body, ok = cutCString(body); !ok {
		return p, ErrMalformed
	}
	if p.Query, body, ok = cutCString(body); !ok {
		return p, ErrMalformed
	}
	if len(body) < 2 {
		return p, ErrMalformed
	}
	p.NumParams = int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) != 4*p.NumParams {
		return p, ErrMalformed
	}
	p.ParamTypes = body
	return p, nil
}

// AppendParse appends a Parse message.
func AppendParse(dst []byte, name, query, paramTypes []byte, numParams int) []byte {
	start := len(dst)
	dst = append(dst, MsgParse, 0, 0, 0, 0)
	dst = appendCString(dst, name)
	dst = appendCString(dst, query)
	dst = binary.BigEndian.AppendUint16(dst, uint16(numParams))
	dst = append(dst, paramTypes...)
	return finish(dst, start)
}

// BindNames locates the portal and statement names at the start of a Bind body. The body may be
// incomplete: BindNames needs only the two names. rest is the offset of the first byte after
// the statement name's terminator. ok is false when the names are not all present yet.
func BindNames(body []byte) (portal, stmt []byte, rest int, ok bool) {
	var r []byte
	if portal, r, ok = cutCString(body); !ok {
		return nil, nil, 0, false
	}
	if stmt, r, ok = cutCString(r); !ok {
		return nil, nil, 0, false
	}
	return portal, stmt, len(body) - len(r), true
}

// ValidateBind checks a complete Bind body for structural soundness (counts and lengths), so a
// malformed message is rejected by the proxy rather than forwarded.
func ValidateBind(body []byte) error {
	_, _, off, ok := BindNames(body)
	if !ok {
		return ErrMalformed
	}
	b := body[off:]
	nfmt, b, ok := cutUint16(b)
	if !ok || len(b) < 2*nfmt {
		return ErrMalformed
	}
	b = b[2*nfmt:]
	nparams, b, ok := cutUint16(b)
	if !ok {
		return ErrMalformed
	}
	for i := 0; i < nparams; i++ {
		if len(b) < 4 {
			return ErrMalformed
		}
		n := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if n < -1 {
			return ErrMalformed
		}
		if n > 0 {
			if int(n) > len(b) {
				return ErrMalformed
			}
			b = b[n:]
		}
	}
	nres, b, ok := cutUint16(b)
	if !ok || len(b) != 2*nres {
		return ErrMalformed
	}
	return nil
}

func cutUint16(b []byte) (int, []byte, bool) {
	if len(b) < 2 {
		return 0, b, false
	}
	return int(binary.BigEndian.Uint16(b)), b[2:], true
}

// DecodeTarget decodes the body of a Describe or Close message: 'S' (statement) or 'P'
// (portal) and a name.
func DecodeTarget(body []byte) (kind byte, name []byte, err error) {
	if len(body) < 2 {
		return 0, nil, ErrMalformed
	}
	kind = body[0]
	if kind != 'S' && kind != 'P' {
		return 0, nil, ErrMalformed
	}
	name, rest, ok := cutCString(body[1:])
	if !ok || len(rest) != 0 {
		return 0, nil, ErrMalformed
	}
	return kind, name, nil
}

// AppendTarget appends a Describe or Close message (typ is MsgDescribe or MsgClose).
func AppendTarget(dst []byte, typ, kind byte, name []byte) []byte {
	start := len(dst)
	dst = append(dst, typ, 0, 0, 0, 0, kind)
	dst = appendCString(dst, name)
	return finish(dst, start)
}

// DecodeExecute decodes an Execute body: the portal name and the row limit.
func DecodeExecute(body []byte) (portal []byte, maxRows int32, err error) {
	portal, rest, ok := cutCString(body)
	if !ok || len(rest) != 4 {
		return nil, 0, ErrMalformed
	}
	return portal, int32(binary.BigEndian.Uint32(rest)), nil
}

// Field codes of ErrorResponse and NoticeResponse.
const (
	FieldSeverity       byte = 'S'
	FieldSeverityNonLoc byte = 'V'
	FieldCode           byte = 'C'
	FieldMessage        byte = 'M'
	FieldDetail         byte = 'D'
	FieldHint           byte = 'H'
)

// ErrorFields is a decoded ErrorResponse or NoticeResponse. Slices alias the body.
type ErrorFields struct {
	Severity, Code, Message, Detail, Hint []byte
}

// DecodeErrorFields decodes the fields of an ErrorResponse or NoticeResponse body. A response
// without a SQLSTATE is legal input; Code is then nil.
func DecodeErrorFields(body []byte) (ErrorFields, error) {
	var e ErrorFields
	for {
		if len(body) == 0 {
			return e, ErrMalformed
		}
		f := body[0]
		if f == 0 {
			if len(body) != 1 {
				return e, ErrMalformed
			}
			return e, nil
		}
		v, rest, ok := cutCString(body[1:])
		if !ok {
			return e, ErrMalformed
		}
		body = rest
		switch f {
		case FieldSeverityNonLoc:
			e.Severity = v
		case FieldSeverity:
			if e.Severity == nil {
				e.Severity = v
			}
		case FieldCode:
			e.Code = v
		case FieldMessage:
			e.Message = v
		case FieldDetail:
			e.Detail = v
		case FieldHint:
			e.Hint = v
		}
	}
}

// ErrorCode returns just the SQLSTATE of an ErrorResponse body, or nil.
func ErrorCode(body []byte) []byte {
	e, err := DecodeErrorFields(body)
	if err != nil {
		return nil
	}
	return e.Code
}

// AppendError appends an ErrorResponse (typ MsgErrorResponse) or NoticeResponse
// (MsgNoticeResponse) with severity, SQLSTATE, message and an optional hint.
func AppendError(dst []byte, typ byte, severity, code, message, hint string) []byte {
	start := len(dst)
	dst = append(dst, typ, 0, 0, 0, 0)
	dst = append(dst, FieldSeverity)
	dst = appendCStringS(dst, severity)
	dst = append(dst, FieldSeverityNonLoc)
	dst = appendCStringS(dst, severity)
	dst = append(dst, FieldCode)
	dst = appendCStringS(dst, code)
	dst = append(dst, FieldMessage)
	dst = appendCStringS(dst, message)
	if hint != "" {
		dst = append(dst, FieldHint)
		dst = appendCStringS(dst, hint)
	}
	dst = append(dst, 0)
	return finish(dst, start)
}

// DecodeParameterStatus decodes a ParameterStatus body.
func DecodeParameterStatus(body []byte) (name, value []byte, err error) {
	name, rest, ok := cutCString(body)
	if !ok {
		return nil, nil, ErrMalformed
	}
	value, rest, ok = cutCString(rest)
	if !ok || len(rest) != 0 {
		return nil, nil, ErrMalformed
	}
	return name, value, nil
}

// AppendParameterStatus appends a ParameterStatus message.
func AppendParameterStatus(dst []byte, name, value string) []byte {
	start := len(dst)
	dst = append(dst, MsgParameterStatus, 0, 0, 0, 0)
	dst = appendCStringS(dst, name)
	dst = appendCStringS(dst, value)
	return finish(dst, start)
}

// DecodeCommandComplete returns the command tag of a CommandComplete body.
func DecodeCommandComplete(body []byte) ([]byte, error) {
	tag, rest, ok := cutCString(body)
	if !ok || len(rest) != 0 {
		return nil, ErrMalformed
	}
	return tag, nil
}

// AppendCommandComplete appends a CommandComplete message.
func AppendCommandComplete(dst []byte, tag string) []byte {
	start := len(dst)
	dst = append(dst, MsgCommandComplete, 0, 0, 0, 0)
	dst = appendCStringS(dst, tag)
	return finish(dst, start)
}

// Transaction status of ReadyForQuery.
const (
	TxIdle   byte = 'I'
	TxActive byte = 'T'
	TxFailed byte = 'E'
)

// DecodeReadyForQuery returns the transaction status of a ReadyForQuery body.
func DecodeReadyForQuery(body []byte) (byte, error) {
	if len(body) != 1 || (body[0] != TxIdle && body[0] != TxActive && body[0] != TxFailed) {
		return 0, ErrMalformed
	}
	return body[0], nil
}

// AppendReadyForQuery appends a ReadyForQuery message.
func AppendReadyForQuery(dst []byte, status byte) []byte {
	return append(dst, MsgReadyForQuery, 0, 0, 0, 5, status)
}

// AppendEmpty appends a message with an empty body (ParseComplete, CloseComplete, Sync, ...).
func AppendEmpty(dst []byte, typ byte) []byte {
	return append(dst, typ, 0, 0, 0, 4)
}

// DecodeBackendKeyData decodes a BackendKeyData body (4-byte pid, 4..256-byte key).
func DecodeBackendKeyData(body []byte) (pid uint32, key []byte, err error) {
	if len(body) < 8 || len(body) > 4+maxCancelKeyLen {
		return 0, nil, ErrMalformed
	}
	return binary.BigEndian.Uint32(body), body[4:], nil
}

// AppendBackendKeyData appends a BackendKeyData message.
func AppendBackendKeyData(dst []byte, pid uint32, key []byte) []byte {
	start := len(dst)
	dst = append(dst, MsgBackendKeyData, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	dst = append(dst, key...)
	return finish(dst, start)
}

// Authentication request codes.
const (
	AuthOK                = 0
	AuthCleartextPassword = 3
	AuthMD5Password       = 5
	AuthSASL              = 10
	AuthSASLContinue      = 11
	AuthSASLFinal         = 12
)

// AppendAuth appends an Authentication message with the given code and payload.
func AppendAuth(dst []byte, code uint32, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, MsgAuthentication, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, code)
	dst = append(dst, payload...)
	return finish(dst, start)
}

// AppendAuthSASL appends AuthenticationSASL listing the mechanisms.
func AppendAuthSASL(dst []byte, mechanisms ...string) []byte {
	start := len(dst)
	dst = append(dst, MsgAuthentication, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, AuthSASL)
	for _, m := range mechanisms {
		dst = appendCStringS(dst, m)
	}
	dst = append(dst, 0)
	return finish(dst, start)
}

// DecodePassword returns the password of a PasswordMessage body.
func DecodePassword(body []byte) ([]byte, error) {
	pw, rest, ok := cutCString(body)
	if !ok || len(rest) != 0 {
		return nil, ErrMalformed
	}
	return pw, nil
}

// DecodeSASLInitialResponse decodes a SASLInitialResponse body. data is nil when the client sent
// length -1.
func DecodeSASLInitialResponse(body []byte) (mechanism, data []byte, err error) {
	mechanism, rest, ok := cutCString(body)
	if !ok || len(rest) < 4 {
		return nil, nil, ErrMalformed
	}
	n := int32(binary.BigEndian.Uint32(rest))
	rest = rest[4:]
	if n == -1 {
		if len(rest) != 0 {
			return nil, nil, ErrMalformed
		}
		return mechanism, nil, nil
	}
	if n < 0 || int(n) != len(rest) {
		return nil, nil, ErrMalformed
	}
	return mechanism, rest, nil
}

// AppendNegotiateProtocolVersion appends NegotiateProtocolVersion naming the newest minor
// version supported and the protocol options that were not recognised.
func AppendNegotiateProtocolVersion(dst []byte, minor int, unknown [][]byte) []byte {
	start := len(dst)
	dst = append(dst, MsgNegotiateProtocol, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(3<<16|minor))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(unknown)))
	for _, o := range unknown {
		dst = appendCString(dst, o)
	}
	return finish(dst, start)
}

// AppendQuery appends a simple Query message.
func AppendQuery(dst []byte, sql string) []byte {
	start := len(dst)
	dst = append(dst, MsgQuery, 0, 0, 0, 0)
	dst = appendCStringS(dst, sql)
	return finish(dst, start)
}

// AppendBindRenamed appends the start of a Bind message whose statement name is replaced:
// header (for the whole renamed message), portal, new statement name. The caller then appends
// or streams the remainder of the original body, restLen bytes, that followed the old name.
func AppendBindRenamed(dst []byte, portal, stmt []byte, restLen int) []byte {
	bodyLen := len(portal) + 1 + len(stmt) + 1 + restLen
	dst = append(dst, MsgBind, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(bodyLen+4))
	dst = appendCString(dst, portal)
	return appendCString(dst, stmt)
}

// IsCString reports whether b holds no NUL byte, so it can be sent as a protocol string.
func IsCString(b []byte) bool { return bytes.IndexByte(b, 0) < 0 }

func appendCString(dst, s []byte) []byte {
	dst = append(dst, s...)
	return append(dst, 0)
}

func appendCStringS(dst []byte, s string) []byte {
	dst = append(dst, s...)
	return append(dst, 0)
}

// finish back-patches the length of the message that starts at dst[start].
func finish(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}
