package fsm

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func allCommands() []Command {
	lsn := LSN(0x1_0000_0100)
	cand := "n2"
	msg := "waiting"
	lose := uint64(42)
	return []Command{
		LeaderEstablished{Leader: "n1"},
		RegisterMember{Name: "n1", RaftAddress: "10.0.0.1:8300", APIAddress: "10.0.0.1:8080", ProxyRWAddress: ":5432",
			ProxyROAddress: ":5433", PGHost: "10.0.0.1", PGPort: 5434, Tags: Tags{FailoverPriority: 1, NoSync: true}},
		RemoveMember{Name: "n3"},
		SetTags{Name: "n1", Tags: Tags{NoFailover: true}},
		ReportStatus{Node: "n1", Status: NodeStatus{Role: RoleReplica, State: StateRunningReplica, Healthy: true,
			Timeline: 3, ReceivedLSN: lsn, ReplayedLSN: lsn - 8, Following: "n2", Reason: "ok", SystemID: "7300000000000000001",
			SyncStandbyNames: `FIRST 1 ("n2")`, SyncSince: lsn}},
		RenewLease{Node: "n1", Routing: "n2"},
		IssueDirective{Type: DirectiveDemote, Target: "n1", Params: DirectiveParams{Upstream: "n2", OperationID: 7, Reason: "r"}},
		AckDirective{ID: 9, Node: "n1", Success: true, Message: "done", Result: DirectiveResult{LSN: lsn, Timeline: 4}},
		ExpireDirective{ID: 9, Message: "timed out"},
		StartOperation{Kind: OpFailover, Reason: "primary silent", OldPrimary: "n1"},
		UpdateOperation{ID: 3, Phase: PhasePromoting, Candidate: &cand, FinalLSN: &lsn, MayLoseBytes: &lose, MayLose: &msg, Exclude: "n3", Message: &msg},
		FinishOperation{ID: 3, Success: true, Message: "ok"},
		SetPrimary{Node: "n2", OperationID: 3, Reason: "failover", Timeline: 4, LSN: lsn, SystemID: "7300000000000000001"},
		SetWritePause{OperationID: 3, Active: true, Reason: "switchover"},
		RequestSwitchover{Leader: "n1", Candidate: "n2"},
		RequestFailover{Candidate: "n2", Force: true},
		SetPause{Paused: true},
		SetSyncStandbys{Nodes: []string{"n2", "n3"}},
		SetSyncState{Primary: "n1", Standbys: []string{"n2", "n3"}, Count: 1,
			Wanted: &SyncTarget{Primary: "n1", Standbys: []string{"n2"}, Count: 1, Value: `FIRST 1 ("n2")`}},
		UpdatePGConfig{Set: map[string]string{"work_mem": "64MB", "pg_stat_statements.max": "10000"}, Reset: []string{"shared_buffers"}, IfVersion: 2},
		ReportPGConfig{Node: "n1", Version: 3, PendingRestart: []string{"shared_buffers"}, Error: `invalid value for parameter "work_mem"`},
		RequestRestart{Node: "n2", Reason: "pending restart"},
		FinishRestart{ID: 4, Node: "n2", Success: false, Message: "n2 is the primary"},
		RequestReinit{Node: "n3", Reason: "diverged"},
		ScheduleSwitchover{Leader: "n1", Candidate: "n2", At: time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)},
		CancelScheduledSwitchover{Reason: "cancelled by an operator"},
		SetPGHBA{Lines: []string{"hostssl all all 10.0.0.0/8 scram-sha-256"}, IfVersion: 1},
		ReportPGHBA{Node: "n2", Version: 2, Local: true, Outcome: "loaded by PostgreSQL", Error: "invalid CIDR mask"},
		RequestReload{},
		ReportReload{ID: 40, Node: "n2", Applied: 1, RestartRequired: []string{"api.listen"}},
	}
}

func TestCommandRoundTrip(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	seen := map[CommandType]bool{}
	for _, cmd := range allCommands() {
		b, err := Encode(cmd, at)
		if err != nil {
			t.Fatalf("encode %T: %v", cmd, err)
		}
		if CommandType(b[0]) != cmd.CommandType() || b[1] != cmd.CommandVersion() {
			t.Fatalf("%T: header %x", cmd, b[:2])
		}
		got, gotAt, err := Decode(b)
		if err != nil {
			t.Fatalf("decode %T: %v", cmd, err)
		}
		if !reflect.DeepEqual(got, cmd) {
			t.Fatalf("round trip %T:\n got %#v\nwant %#v", cmd, got, cmd)
		}
		if !gotAt.Equal(at) {
			t.Fatalf("%T: time %v, want %v", cmd, gotAt, at)
		}
		seen[cmd.CommandType()] = true
	}
	// Every type newCommand knows is covered above.
	for ty := CommandType(1); ty != 0; ty++ {
		if c, _ := newCommand(ty); c != nil && !seen[ty] {
			t.Errorf("command type %d (%T) missing from allCommands", ty, c)
		}
	}
}

func TestStampReplacesOnlyTheTime(t *testing.T) {
	b, _ := Encode(SetPause{Paused: true}, time.Time{})
	at := time.Unix(1700000000, 5).UTC()
	s, err := Stamp(b, at)
	if err != nil {
		t.Fatal(err)
	}
	cmd, gotAt, err := Decode(s)
	if err != nil || !gotAt.Equal(at) || cmd != (SetPause{Paused: true}) {
		t.Fatalf("stamped decode: %v %v %v", cmd, gotAt, err)
	}
	if _, at0, _ := Decode(b); !at0.IsZero() {
		t.Fatalf("Stamp modified its input")
	}
}

func TestDecodeRejects(t *testing.T) {
	good, _ := Encode(SetPause{Paused: true}, time.Time{})
	mutate := func(f func(b []byte) []byte) []byte {
		b := append([]byte(nil), good...)
		return f(b)
	}
	cases := map[string]struct {
		b    []byte
		want string
	}{
		"short":           {good[:5], "shorter than its header"},
		"unknown type":    {mutate(func(b []byte) []byte { b[0] = 99; return b }), "unknown type 99"},
		"future version":  {mutate(func(b []byte) []byte { b[1] = 2; return b }), "unsupported version 2"},
		"version zero":    {mutate(func(b []byte) []byte { b[1] = 0; return b }), "unsupported version 0"},
		"unknown field":   {append(good[:headerLen:headerLen], `{"paused":true,"extra":1}`...), "unknown field"},
		"trailing data":   {append(mutate(func(b []byte) []byte { return b }), ` {}`...), "trailing data"},
		"not json":        {append(good[:headerLen:headerLen], `paused`...), "invalid character"},
		"wrong body type": {append(good[:headerLen:headerLen], `{"paused":"yes"}`...), "cannot unmarshal"},
		"oversized":       {make([]byte, MaxCommandSize+1), "exceeds"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := Decode(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode error = %v, want it to mention %q", err, tc.want)
			}
			if errors.Is(err, ErrIgnorable) {
				t.Fatalf("must not be ignorable: %v", err)
			}
		})
	}
}

func TestDecodeIgnorableUnknownType(t *testing.T) {
	b := make([]byte, headerLen)
	b[0] = byte(IgnorableFlag | 5)
	b[1] = 1
	if _, _, err := Decode(b); !errors.Is(err, ErrIgnorable) {
		t.Fatalf("Decode = %v, want ErrIgnorable", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range allCommands() {
		b, _ := Encode(c, time.Unix(1, 0))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, at, err := Decode(b)
		if err != nil {
			return
		}
		re, err := Encode(cmd, at)
		if err != nil {
			t.Fatalf("re-encode %T: %v", cmd, err)
		}
		cmd2, _, err := Decode(re)
		if err != nil || !reflect.DeepEqual(cmd, cmd2) {
			t.Fatalf("unstable round trip: %#v vs %#v (%v)", cmd, cmd2, err)
		}
	})
}

func TestLSN(t *testing.T) {
	l, err := ParseLSN("16/B374D848")
	if err != nil || l != 0x16_B374D848 || l.String() != "16/B374D848" {
		t.Fatalf("ParseLSN: %v %v %s", l, err, l)
	}
	for _, bad := range []string{"", "1", "/1", "1/", "G/0", "123456789/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
	if LSN(10).Sub(4) != 6 || LSN(4).Sub(10) != 0 {
		t.Fatal("Sub")
	}
}
