package pgwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestScanRejectsBadLengthsBeforeBuffering(t *testing.T) {
	fl := FrontendLimits(1 << 20)
	cases := []struct {
		name string
		hdr  []byte
		code string
	}{
		{"1 GiB query", []byte{'Q', 0x40, 0, 0, 0}, ProgramLimitExceeded},
		{"negative length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, ProtocolViolation},
		{"length below 4", []byte{'Q', 0, 0, 0, 3}, ProtocolViolation},
		{"unknown type", []byte{'z', 0, 0, 0, 4}, ProtocolViolation},
		{"sync with body", []byte{'S', 0, 0, 0, 5}, ProtocolViolation},
		{"huge describe", []byte{'D', 0, 1, 0, 0}, ProgramLimitExceeded},
		{"backend-only type from client", []byte{'Z', 0, 0, 0, 5}, ProtocolViolation},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, complete, err := fl.Scan(c.hdr)
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("Scan(%x) = complete %v, err %v; want HeaderError", c.hdr, complete, err)
			}
			if he.Code != c.code {
				t.Fatalf("code %s, want %s", he.Code, c.code)
			}
		})
	}
}

func TestScanCompleteness(t *testing.T) {
	fl := FrontendLimits(1 << 20)
	msg := AppendQuery(nil, "select 1")
	for i := 0; i < len(msg); i++ {
		typ, n, complete, err := fl.Scan(msg[:i])
		if err != nil || complete {
			t.Fatalf("prefix %d: complete=%v err=%v", i, complete, err)
		}
		if i >= HeaderLen && (typ != 'Q' || n != len(msg)-HeaderLen) {
			t.Fatalf("prefix %d: typ %q len %d", i, typ, n)
		}
	}
	if _, _, complete, err := fl.Scan(msg); !complete || err != nil {
		t.Fatalf("full message: complete=%v err=%v", complete, err)
	}
}

func TestParseStartup(t *testing.T) {
	pkt := AppendStartupMessage(nil, "user", "alice", "database", "app", "_pq_.compression", "on", "application_name", "x")
	s, err := ParseStartup(pkt)
	if err != nil {
		t.Fatal(err)
	}
	if s.Kind != KindStartup || s.MinorVersion != 0 {
		t.Fatalf("kind %v minor %d", s.Kind, s.MinorVersion)
	}
	if string(s.Param("user")) != "alice" || string(s.Param("database")) != "app" || string(s.Param("application_name")) != "x" {
		t.Fatalf("params %q", s.Params)
	}
	if len(s.UnknownOptions) != 1 || string(s.UnknownOptions[0]) != "_pq_.compression" {
		t.Fatalf("unknown options %q", s.UnknownOptions)
	}

	// protocol 3.2
	binary.BigEndian.PutUint32(pkt[4:], ProtocolVersion32)
	if s, err = ParseStartup(pkt); err != nil || s.MinorVersion != 2 {
		t.Fatalf("3.2: %v %v", s.MinorVersion, err)
	}
	// protocol 2.0 is refused with a SQLSTATE
	binary.BigEndian.PutUint32(pkt[4:], 2<<16)
	var he *HeaderError
	if _, err = ParseStartup(pkt); !errors.As(err, &he) || he.Code != FeatureNotSupported {
		t.Fatalf("2.0: %v", err)
	}

	ssl := AppendSSLRequest(nil)
	if s, err = ParseStartup(ssl); err != nil || s.Kind != KindSSLRequest {
		t.Fatalf("ssl: %v %v", s.Kind, err)
	}
	c := AppendCancelRequest(nil, 42, []byte{1, 2, 3, 4})
	if s, err = ParseStartup(c); err != nil || s.Kind != KindCancel || s.CancelPID != 42 || !bytes.Equal(s.CancelKey, []byte{1, 2, 3, 4}) {
		t.Fatalf("cancel: %+v %v", s, err)
	}
}

func TestParseStartupRejectsMalformed(t *testing.T) {
	bad := [][]byte{
		{0, 0, 0, 4},                                      // too short
		{0x7f, 0, 0, 0, 0, 3, 0, 0},                       // huge length word
		{0, 0, 0, 9, 0, 3, 0, 0, 'u'},                     // no terminator
		{0, 0, 0, 10, 0, 3, 0, 0, 'u', 0},                 // name without value
		{0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0}, // SSLRequest with a body
		{0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1}, // cancel without key
	}
	for _, b := range bad {
		if _, err := ParseStartup(b); err == nil {
			t.Errorf("ParseStartup(%x) accepted", b)
		}
	}
}

func TestDecodersAgreeWithPgproto3(t *testing.T) {
	parse := &pgproto3.Parse{Name: "s1", Query: "select $1::int", ParameterOIDs: []uint32{23}}
	raw, _ := parse.Encode(nil)
	p, err := DecodeParse(raw[5:])
	if err != nil || string(p.Name) != "s1" || string(p.Query) != parse.Query || p.NumParams != 1 {
		t.Fatalf("DecodeParse: %+v %v", p, err)
	}
	again := AppendParse(nil, p.Name, p.Query, p.ParamTypes, p.NumParams)
	if !bytes.Equal(again, raw) {
		t.Fatalf("AppendParse round trip:\n%x\n%x", again, raw)
	}

	bind := &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1", ParameterFormatCodes: []int16{1},
		Parameters: [][]byte{{0, 0, 0, 7}, nil}, ResultFormatCodes: []int16{0}}
	raw, _ = bind.Encode(nil)
	if err := ValidateBind(raw[5:]); err != nil {
		t.Fatalf("ValidateBind: %v", err)
	}
	portal, stmt, rest, ok := BindNames(raw[5:])
	if !ok || string(portal) != "p" || string(stmt) != "s1" {
		t.Fatalf("BindNames %q %q %v", portal, stmt, ok)
	}
	renamed := AppendBindRenamed(nil, portal, []byte("pgb_0123456789abcdef"), len(raw)-5-rest)
	renamed = append(renamed, raw[5+rest:]...)
	var got pgproto3.Bind
	if err := got.Decode(renamed[5:]); err != nil || got.PreparedStatement != "pgb_0123456789abcdef" || len(got.Parameters) != 2 {
		t.Fatalf("renamed bind: %+v %v", got, err)
	}
	if int(binary.BigEndian.Uint32(renamed[1:]))+1 != len(renamed) {
		t.Fatal("renamed bind length wrong")
	}

	e := AppendError(nil, MsgErrorResponse, SeverityFatal, InvalidPassword, "password authentication failed", "check it")
	var pe pgproto3.ErrorResponse
	if err := pe.Decode(e[5:]); err != nil || pe.Code != InvalidPassword || pe.Severity != "FATAL" || pe.Hint != "check it" {
		t.Fatalf("error response: %+v %v", pe, err)
	}
	f, err := DecodeErrorFields(e[5:])
	if err != nil || string(f.Code) != InvalidPassword || string(f.Message) != "password authentication failed" {
		t.Fatalf("DecodeErrorFields: %+v %v", f, err)
	}
}

func TestValidateBindRejectsNegativeLength(t *testing.T) {
	// The pgproto3/v2 panic input (reference/libraries.md B2): a parameter length below -1.
	body := []byte{0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe, 0, 0}
	if err := ValidateBind(body); err == nil {
		t.Fatal("negative parameter length accepted")
	}
}

func BenchmarkScan(b *testing.B) {
	fl := BackendLimits()
	var buf []byte
	for i := 0; i < 10; i++ {
		buf = append(buf, 'D', 0, 0, 0, 14, 0, 1, 0, 0, 0, 4, 'a', 'b', 'c', 'd')
	}
	buf = AppendReadyForQuery(buf, TxIdle)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		rest := buf
		for len(rest) > 0 {
			_, n, _, err := fl.Scan(rest)
			if err != nil {
				b.Fatal(err)
			}
			rest = rest[HeaderLen+n:]
		}
	}
}
