package pgwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Startup packet codes. A startup packet has no type byte: a 4-byte length then a 4-byte code.
const (
	ProtocolVersion30   = 3<<16 | 0
	ProtocolVersion32   = 3<<16 | 2
	CodeCancelRequest   = 1234<<16 | 5678
	CodeSSLRequest      = 1234<<16 | 5679
	CodeGSSENCRequest   = 1234<<16 | 5680
	MaxStartupPacketLen = 10000 // PostgreSQL's MAX_STARTUP_PACKET_LENGTH
	minStartupPacketLen = 8
	maxCancelKeyLen     = 256
)

// StartupKind says which member of the startup family a packet is.
type StartupKind uint8

const (
	KindStartup StartupKind = iota + 1
	KindSSLRequest
	KindGSSENCRequest
	KindCancel
)

// Param is one startup parameter. Name and Value alias the packet buffer.
type Param struct {
	Name, Value []byte
}

// Startup is a decoded startup-family packet. Slices alias the packet buffer.
type Startup struct {
	Kind StartupKind
	// MinorVersion is the protocol minor version the client asked for (StartupMessage only).
	MinorVersion int
	// Params are the startup parameters in the order sent, without _pq_. options.
	Params []Param
	// UnknownOptions lists the names of _pq_. protocol options the client asked for; PGBastion
	// supports none and names them in NegotiateProtocolVersion.
	UnknownOptions [][]byte
	// CancelPID and CancelKey identify the session a CancelRequest targets.
	CancelPID uint32
	CancelKey []byte
}

// Param returns the value of the named startup parameter, or nil.
func (s *Startup) Param(name string) []byte {
	for _, p := range s.Params {
		if string(p.Name) == name {
			return p.Value
		}
	}
	return nil
}

// ErrStartupIncomplete is returned by StartupLen when more bytes are needed.
var ErrStartupIncomplete = errors.New("pgwire: startup packet incomplete")

// StartupLen validates the length word of a startup packet at the start of buf and returns the
// whole packet length. It needs at least 4 bytes.
func StartupLen(buf []byte) (int, error) {
	if len(buf) < 4 {
		return 0, ErrStartupIncomplete
	}
	n := int64(int32(binary.BigEndian.Uint32(buf)))
	if n < minStartupPacketLen || n > MaxStartupPacketLen {
		return 0, &HeaderError{Length: n, Code: ProtocolViolation,
			Message: fmt.Sprintf("invalid length of startup packet: %d", n)}
	}
	return int(n), nil
}

// ParseStartup decodes one complete startup-family packet (including its length word).
func ParseStartup(pkt []byte) (Startup, error) {
	var s Startup
	n, err := StartupLen(pkt)
	if err != nil {
		return s, err
	}
	if n != len(pkt) {
		return s, fmt.Errorf("pgwire: startup packet length %d does not match %d bytes", n, len(pkt))
	}
	code := binary.BigEndian.Uint32(pkt[4:8])
	body := pkt[8:]
	switch code {
	case CodeSSLRequest, CodeGSSENCRequest:
		if len(body) != 0 {
			return s, protoErr("invalid length of SSL or GSS encryption request packet")
		}
		if code == CodeSSLRequest {
			s.Kind = KindSSLRequest
		} else {
			s.Kind = KindGSSENCRequest
		}
		return s, nil
	case CodeCancelRequest:
		if len(body) < 4+4 || len(body) > 4+maxCancelKeyLen {
			return s, protoErr("invalid length of cancel request packet")
		}
		s.Kind = KindCancel
		s.CancelPID = binary.BigEndian.Uint32(body[:4])
		s.CancelKey = body[4:]
		return s, nil
	}
	if code>>16 != 3 {
		return s, &HeaderError{Code: FeatureNotSupported, Message: fmt.Sprintf(
			"unsupported frontend protocol %d.%d: server supports 3.0", code>>16, code&0xffff)}
	}
	s.Kind = KindStartup
	s.MinorVersion = int(code & 0xffff)
	for {
		if len(body) == 0 {
			return s, protoErr("startup packet is missing its terminating zero byte")
		}
		if body[0] == 0 {
			if len(body) != 1 {
				return s, protoErr("startup packet has bytes after its terminator")
			}
			break
		}
		name, rest, ok := cutCString(body)
		if !ok {
			return s, protoErr("startup parameter name is not terminated")
		}
		value, rest, ok := cutCString(rest)
		if !ok {
			return s, protoErr("startup parameter value is not terminated")
		}
		body = rest
		if bytes.HasPrefix(name, []byte("_pq_.")) {
			s.UnknownOptions = append(s.UnknownOptions, name)
			continue
		}
		s.Params = append(s.Params, Param{Name: name, Value: value})
	}
	return s, nil
}

func protoErr(msg string) error {
	return &HeaderError{Code: ProtocolViolation, Message: msg}
}

// cutCString splits a NUL-terminated string off the front of b.
func cutCString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, b, false
	}
	return b[:i], b[i+1:], true
}

// AppendStartupMessage appends a protocol 3.0 StartupMessage with the given name/value pairs.
func AppendStartupMessage(dst []byte, params ...string) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 3, 0, 0)
	for i := 0; i+1 < len(params); i += 2 {
		dst = append(dst, params[i]...)
		dst = append(dst, 0)
		dst = append(dst, params[i+1]...)
		dst = append(dst, 0)
	}
	dst = append(dst, 0)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start))
	return dst
}

// AppendCancelRequest appends a CancelRequest packet.
func AppendCancelRequest(dst []byte, pid uint32, key []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(12+len(key)))
	dst = binary.BigEndian.AppendUint32(dst, CodeCancelRequest)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, key...)
}

// AppendSSLRequest appends an SSLRequest packet.
func AppendSSLRequest(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, 8)
	return binary.BigEndian.AppendUint32(dst, CodeSSLRequest)
}
