package pool

import (
	"strings"
	"testing"
)

// script drives a Tracker with a compact notation, one step per token:
//
//	>P >B >D >E >C >S >Q >F >H  the client sends Parse, Bind, Describe, Execute, Close, Sync, Query, FunctionCall, Flush
//	>p                        the proxy absorbs a Parse (Fake ParseComplete); >c absorbs a Close
//	>i                        the proxy injects a Parse (Swallow)
//	<x                        the server sends message type x; ZI/ZT/ZE is ReadyForQuery with status
//	!                         the client ends COPY (CopyDone)
//
// and returns what the client receives: forwarded server messages and synthesized ones (lower
// case f1/f3 for synthesized ParseComplete/CloseComplete), plus "idle" whenever the tracker says
// the server may be released after a server message.
func script(t *testing.T, steps string) string {
	t.Helper()
	tr := NewTracker()
	var out []string
	fakes := func() {
		for {
			e, ok := tr.NextFake()
			if !ok {
				return
			}
			if e.Expect == ExpectParse {
				out = append(out, "f1")
			} else {
				out = append(out, "f3")
			}
		}
	}
	for _, tok := range strings.Fields(steps) {
		switch tok[0] {
		case '>':
			var e Entry
			switch tok[1] {
			case 'P':
				e = Entry{Expect: ExpectParse}
			case 'B':
				e = Entry{Expect: ExpectBind}
			case 'D':
				e = Entry{Expect: ExpectDescribe}
			case 'E':
				e = Entry{Expect: ExpectExecute}
			case 'C':
				e = Entry{Expect: ExpectClose}
			case 'S':
				e = Entry{Expect: ExpectSync}
			case 'Q':
				e = Entry{Expect: ExpectQuery}
			case 'F':
				e = Entry{Expect: ExpectFunction}
			case 'p':
				e = Entry{Expect: ExpectParse, Action: Fake}
			case 'c':
				e = Entry{Expect: ExpectClose, Action: Fake}
			case 'i':
				e = Entry{Expect: ExpectParse, Action: Swallow}
			case 'H':
				continue // Flush expects no response
			default:
				t.Fatalf("bad token %q", tok)
			}
			tr.Sent(e)
			fakes()
		case '!':
			tr.ClientCopyEnd()
		case '<':
			typ := tok[1]
			v, _, _ := tr.Received(typ)
			if typ == 'Z' {
				tr.ReadyForQuery(tok[2])
			}
			switch v {
			case VerdictForward:
				out = append(out, tok[1:2])
			case VerdictProtocol:
				out = append(out, "PROTOCOL")
				continue
			}
			fakes()
			if tr.Idle() {
				out = append(out, "idle")
			}
		default:
			t.Fatalf("bad token %q", tok)
		}
	}
	return strings.Join(out, " ")
}

func TestTrackerScripts(t *testing.T) {
	cases := []struct{ name, steps, want string }{
		{"simple query", ">Q <T <D <C <ZI", "T D C Z idle"},
		{"transaction stays attached", ">Q <C <ZT >Q <C <ZT >Q <C <ZI", "C Z C Z C Z idle"},
		{"failed transaction stays attached", ">Q <E <ZE >Q <C <ZI", "E Z C Z idle"},
		{"extended", ">P >B >D >E >S <1 <2 <T <D <C <ZI", "1 2 T D C Z idle"},
		{"pipeline releases only at last sync", ">P >B >E >S >B >E >S <1 <2 <C <ZI <2 <C <ZI", "1 2 C Z 2 C Z idle"},
		{"flush keeps attached without sync", ">P >D >H <1 <t <T", "1 t T"},
		{"sync after flush releases", ">P >H <1 >S <ZI", "1 Z idle"},
		{"error skips to sync", ">P >B >E >S <E <ZI", "E Z idle"},
		{"error with delayed sync", ">P >B <E >E >S <ZI", "E Z idle"},
		{"absorbed parse answered in order", ">p >B >E >S <2 <C <ZI", "f1 2 C Z idle"},
		{"absorbed parse after a real one", ">P >p >B >S <1 <2 <ZI", "1 f1 2 Z idle"},
		{"absorbed close alone", ">c >S <ZI", "f3 Z idle"},
		{"fake dropped when skipping", ">B >p >S <E <ZI", "E Z idle"},
		{"injected parse swallowed", ">i >B >E >S <1 <2 <C <ZI", "2 C Z idle"},
		{"injected parse failure reaches client", ">i >B >E >S <E <ZI", "E Z idle"},
		{"copy in simple", ">Q <G ! <C <ZI", "G C Z idle"},
		{"copy in extended ignores early sync", ">P >B >E >S <1 <2 <G ! <C >S <ZI", "1 2 G C Z idle"},
		{"copy in extended not released before final sync", ">P >B >E >S <1 <2 <G ! <C", "1 2 G C"},
		{"copy out", ">Q <H <d <d <c <C <ZI", "H d d c C Z idle"},
		{"copy error in simple mode", ">Q <G <E <ZI", "G E Z idle"},
		{"notice and parameter status do not release", ">Q <N <S <C <ZI", "N S C Z idle"},
		{"unexpected message is a protocol error", "<2", "PROTOCOL"},
		{"function call", ">F <V <ZI", "V Z idle"},
		{"empty query", ">Q <I <ZI", "I Z idle"},
		{"portal suspended", ">B >E >S <2 <s <ZT >E >S <C <ZI", "2 s Z C Z idle"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := script(t, c.steps); got != c.want {
				t.Fatalf("%s\n got: %s\nwant: %s", c.steps, got, c.want)
			}
		})
	}
}

func TestTrackerReportsSkippedStatements(t *testing.T) {
	tr := NewTracker()
	var dropped []Entry
	tr.Dropped = func(e Entry) { dropped = append(dropped, e) }
	a, b := &Stmt{ID: 1}, &Stmt{ID: 2}
	tr.Sent(Entry{Expect: ExpectParse, Stmt: a})
	tr.Sent(Entry{Expect: ExpectParse, Stmt: b})
	tr.Sent(Entry{Expect: ExpectSync})
	_, failed, ok := tr.Received('E')
	if !ok || failed.Stmt != a {
		t.Fatalf("failed entry %+v ok=%v", failed, ok)
	}
	if len(dropped) != 1 || dropped[0].Stmt != b {
		t.Fatalf("dropped %+v", dropped)
	}
	// A Parse sent after the error and before the Sync is skipped by the server too.
	tr2 := NewTracker()
	dropped = nil
	tr2.Dropped = func(e Entry) { dropped = append(dropped, e) }
	tr2.Sent(Entry{Expect: ExpectBind})
	tr2.Received('E')
	if tr2.Sent(Entry{Expect: ExpectParse, Stmt: b}) {
		t.Fatal("parse after error expects a response")
	}
	if len(dropped) != 1 || dropped[0].Stmt != b {
		t.Fatalf("dropped after error %+v", dropped)
	}
}

func TestTrackerQueueGrows(t *testing.T) {
	tr := NewTracker()
	for i := 0; i < 1000; i++ {
		tr.Sent(Entry{Expect: ExpectBind})
		tr.Sent(Entry{Expect: ExpectExecute})
	}
	tr.Sent(Entry{Expect: ExpectSync})
	for i := 0; i < 1000; i++ {
		if v, _, _ := tr.Received('2'); v != VerdictForward {
			t.Fatal(i)
		}
		if v, _, _ := tr.Received('C'); v != VerdictForward {
			t.Fatal(i)
		}
	}
	tr.Received('Z')
	tr.ReadyForQuery('I')
	if !tr.Idle() {
		t.Fatal("not idle")
	}
}

func BenchmarkTrackerSimpleQuery(b *testing.B) {
	tr := NewTracker()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		tr.Sent(Entry{Expect: ExpectQuery})
		tr.Received('T')
		tr.Received('D')
		tr.Received('C')
		tr.Received('Z')
		tr.ReadyForQuery('I')
		if !tr.Idle() {
			b.Fatal("not idle")
		}
	}
}
