package pgwire

import (
	"bytes"
	"testing"
)

// Each fuzz target feeds arbitrary bytes to one decoder. The property is that the decoder returns
// (possibly an error) without panicking, and that what it returns is consistent with its input.

func FuzzScan(f *testing.F) {
	f.Add([]byte{'Q', 0, 0, 0, 9, 's', 'e', 'l', 0})
	f.Add([]byte{'Q', 0x40, 0, 0, 0})
	f.Add([]byte{'S', 0, 0, 0, 4})
	fl, bl := FrontendLimits(1<<20), BackendLimits()
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, l := range []*Limits{fl, bl} {
			typ, n, complete, err := l.Scan(b)
			if err != nil {
				continue
			}
			if complete && HeaderLen+n > len(b) {
				t.Fatalf("complete but %d+%d > %d", HeaderLen, n, len(b))
			}
			if n > l.MaxBody(typ) && l.MaxBody(typ) != 0 && l.max[typ] != 0xFFFFFFFF {
				t.Fatalf("body %d over limit %d", n, l.MaxBody(typ))
			}
		}
	})
}

func FuzzParseStartup(f *testing.F) {
	f.Add(AppendStartupMessage(nil, "user", "u", "database", "d"))
	f.Add(AppendSSLRequest(nil))
	f.Add(AppendCancelRequest(nil, 7, []byte{1, 2, 3, 4}))
	f.Add([]byte{0, 0, 0, 8, 0, 3, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStartup(b)
		if err != nil {
			return
		}
		if len(b) > MaxStartupPacketLen {
			t.Fatalf("accepted %d-byte startup packet", len(b))
		}
		for _, p := range s.Params {
			if bytes.IndexByte(p.Name, 0) >= 0 || bytes.IndexByte(p.Value, 0) >= 0 {
				t.Fatal("NUL inside a parameter")
			}
		}
	})
}

func FuzzDecodeParse(f *testing.F) {
	f.Add(AppendParse(nil, []byte("s"), []byte("select $1"), []byte{0, 0, 0, 23}, 1)[5:])
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeParse(b)
		if err != nil {
			return
		}
		again := AppendParse(nil, p.Name, p.Query, p.ParamTypes, p.NumParams)
		if !bytes.Equal(again[5:], b) {
			t.Fatalf("round trip differs: %x vs %x", again[5:], b)
		}
	})
}

func FuzzBind(f *testing.F) {
	f.Add([]byte{'p', 0, 's', 0, 0, 0, 0, 1, 0, 0, 0, 1, 'x', 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = ValidateBind(b)
		portal, stmt, rest, ok := BindNames(b)
		if !ok {
			return
		}
		if rest != len(portal)+len(stmt)+2 || rest > len(b) {
			t.Fatalf("rest %d inconsistent", rest)
		}
	})
}

func FuzzDecodeTarget(f *testing.F) {
	f.Add([]byte{'S', 's', '1', 0})
	f.Add([]byte{'P', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = DecodeTarget(b)
		_, _, _ = DecodeExecute(b)
	})
}

func FuzzDecodeErrorFields(f *testing.F) {
	f.Add(AppendError(nil, MsgErrorResponse, "ERROR", "57014", "canceling statement", "")[5:])
	f.Add([]byte{'S', 0})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = DecodeErrorFields(b)
	})
}

func FuzzBackendBodies(f *testing.F) {
	f.Add([]byte("client_encoding\x00UTF8\x00"))
	f.Add([]byte("SELECT 1\x00"))
	f.Add([]byte{'I'})
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = DecodeParameterStatus(b)
		_, _ = DecodeCommandComplete(b)
		_, _ = DecodeReadyForQuery(b)
		_, _, _ = DecodeBackendKeyData(b)
	})
}

func FuzzAuthBodies(f *testing.F) {
	f.Add([]byte("SCRAM-SHA-256\x00\x00\x00\x00\x04n,,n"))
	f.Add([]byte("SCRAM-SHA-256\x00\xff\xff\xff\xff"))
	f.Add([]byte("secret\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		mech, data, err := DecodeSASLInitialResponse(b)
		if err == nil && len(mech)+1+4+len(data) != len(b) {
			t.Fatal("SASLInitialResponse lengths inconsistent")
		}
		_, _ = DecodePassword(b)
	})
}
