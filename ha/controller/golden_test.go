package controller

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// The golden scripts in testdata/*.txt drive Step the way the leader's shell does: commands
// set up state and time, "step" runs the controller and applies its commands until it has
// nothing more to do, and each command's output is compared with the text after "----".
// Run with -update to rewrite the expected output after an intended change, then review the
// diff like code.
var update = flag.Bool("update", false, "rewrite the expected output of the golden scripts")

func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden scripts: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) { runScript(t, file) })
	}
}

type block struct {
	input  string // the command line
	output string // expected output (without trailing newline)
	before string // comments and blank lines preceding the command, kept verbatim
}

func parseScript(t *testing.T, path string) []block {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []block
	var pending strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			pending.WriteString(line + "\n")
			continue
		}
		b := block{input: line, before: pending.String()}
		pending.Reset()
		if !sc.Scan() || sc.Text() != "----" {
			t.Fatalf("%s: command %q must be followed by ----", path, line)
		}
		var out []string
		for sc.Scan() && sc.Text() != "" {
			out = append(out, sc.Text())
		}
		b.output = strings.Join(out, "\n")
		blocks = append(blocks, b)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return blocks
}

func runScript(t *testing.T, path string) {
	blocks := parseScript(t, path)
	h := newHarness()
	var rewritten strings.Builder
	for _, b := range blocks {
		got, err := h.run(b.input)
		if err != nil {
			got = "error: " + err.Error()
		}
		got = strings.TrimRight(got, "\n")
		if got == "" {
			got = "ok"
		}
		if !*update && got != b.output {
			t.Errorf("%s: %q:\n--- got\n%s\n--- want\n%s", path, b.input, got, b.output)
		}
		rewritten.WriteString(b.before)
		fmt.Fprintf(&rewritten, "%s\n----\n%s\n\n", b.input, got)
	}
	if *update {
		if err := os.WriteFile(path, []byte(strings.TrimRight(rewritten.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// harness plays the Raft leader: it stamps commands with its clock and applies them.
type harness struct {
	s           *fsm.State
	t0, now     time.Time
	leaderSince time.Time
	idx         uint64
	cfg         Config
}

func newHarness() *harness {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return &harness{
		s: fsm.NewState(), t0: t0, now: t0, leaderSince: t0,
		cfg: Config{
			FencingEnabled: true, LeaseTimeout: 2 * time.Second, PrimaryTimeout: 3 * time.Second, MaxLagOnFailover: 1 << 20,
			DirectiveTimeout: 60 * time.Second, SwitchoverTimeout: 60 * time.Second,
			DrainTimeout: 5 * time.Second, SynchronousMode: "off",
		},
	}
}

func (h *harness) rel(t time.Time) string { return "t=" + t.Sub(h.t0).String() }

func (h *harness) apply(cmd fsm.Command) fsm.Result {
	h.idx++
	next, res := h.s.Apply(cmd, fsm.Meta{Index: h.idx, At: h.now})
	h.s = next
	return res
}

func (h *harness) mustApply(cmd fsm.Command) (string, error) {
	if res := h.apply(cmd); res.Err != nil {
		return "rejected: " + res.Err.Error(), nil
	}
	return "", nil
}

func kv(args []string) (map[string]string, []string) {
	m := map[string]string{}
	var pos []string
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			m[k] = v
		} else {
			pos = append(pos, a)
		}
	}
	return m, pos
}

func lsnArg(s string) (fsm.LSN, error) {
	if strings.Contains(s, "/") {
		return fsm.ParseLSN(s)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return fsm.LSN(n), err
}

func (h *harness) run(line string) (string, error) {
	fields := strings.Fields(line)
	cmd, args := fields[0], fields[1:]
	opts, pos := kv(args)
	arg := func(i int) string {
		if i < len(pos) {
			return pos[i]
		}
		return ""
	}
	switch cmd {
	case "config":
		for k, v := range opts {
			var err error
			switch k {
			case "fencing":
				h.cfg.FencingEnabled = v == "on"
			case "lease_timeout":
				h.cfg.LeaseTimeout, err = time.ParseDuration(v)
			case "primary_timeout":
				h.cfg.PrimaryTimeout, err = time.ParseDuration(v)
			case "directive_timeout":
				h.cfg.DirectiveTimeout, err = time.ParseDuration(v)
			case "switchover_timeout":
				h.cfg.SwitchoverTimeout, err = time.ParseDuration(v)
			case "drain_timeout":
				h.cfg.DrainTimeout, err = time.ParseDuration(v)
			case "max_lag":
				h.cfg.MaxLagOnFailover, err = strconv.ParseUint(v, 10, 64)
			case "sync":
				h.cfg.SynchronousMode = v
			case "sync_count":
				h.cfg.SyncNodeCount, err = strconv.Atoi(v)
			case "strict":
				h.cfg.SyncStrict = v == "on"
			default:
				return "", fmt.Errorf("unknown config key %q", k)
			}
			if err != nil {
				return "", err
			}
		}
		return "", nil
	case "tick":
		d, err := time.ParseDuration(arg(0))
		if err != nil {
			return "", err
		}
		h.now = h.now.Add(d)
		return h.rel(h.now), nil
	case "leader":
		res := h.apply(fsm.LeaderEstablished{Leader: arg(0)})
		h.leaderSince = h.now
		return fmt.Sprintf("epoch %d led by %s since %s", res.ID, arg(0), h.rel(h.now)), nil
	case "member":
		prio := 1
		if p, ok := opts["priority"]; ok {
			prio, _ = strconv.Atoi(p)
		}
		tags := fsm.Tags{FailoverPriority: prio, ReplicateFrom: opts["replicatefrom"]}
		for _, p := range pos[1:] {
			switch p {
			case "nofailover":
				tags.NoFailover = true
			case "nosync":
				tags.NoSync = true
			}
		}
		return h.mustApply(fsm.RegisterMember{Name: arg(0), RaftAddress: arg(0) + ":8300", PGHost: arg(0), PGPort: 5432, Tags: tags})
	case "report":
		return h.report(arg(0), arg(1), opts)
	case "rereport":
		// The named agents report again what they reported last (their periodic report, or
		// the prompt one an agent sends when a failover begins).
		for _, n := range pos {
			m, ok := h.s.Members[n]
			if !ok {
				return "", fmt.Errorf("no member %q", n)
			}
			if out, err := h.mustApply(fsm.ReportStatus{Node: n, Status: m.Status}); out != "" || err != nil {
				return out, err
			}
		}
		return "", nil
	case "renew":
		for _, n := range pos {
			res := h.apply(fsm.RenewLease{Node: n, Routing: opts["routing"]})
			if res.Err != nil {
				return "rejected: " + res.Err.Error(), nil
			}
		}
		return "", nil
	case "renew-all":
		// Every member except those listed as "except=a,b" renews, routing writes to the
		// primary its (up-to-date) state names: what a connected node does.
		skip := map[string]bool{}
		for _, n := range strings.Split(opts["except"], ",") {
			skip[n] = true
		}
		for _, n := range h.s.MemberNames() {
			if skip[n] {
				continue
			}
			h.apply(fsm.RenewLease{Node: n, Routing: h.s.Primary})
		}
		return "", nil
	case "ack":
		return h.ack(fsm.DirectiveType(strings.ToUpper(arg(0))), arg(1), arg(2), opts)
	case "primary":
		return h.mustApply(fsm.SetPrimary{Node: arg(0), Reason: "setup"})
	case "switchover":
		res := h.apply(fsm.RequestSwitchover{Leader: arg(0), Candidate: arg(1)})
		if res.Err != nil {
			return "rejected: " + res.Err.Error(), nil
		}
		return fmt.Sprintf("operation %d", res.ID), nil
	case "failover":
		req := fsm.RequestFailover{}
		for _, p := range pos {
			if p == "force" {
				req.Force = true
			} else {
				req.Candidate = p
			}
		}
		res := h.apply(req)
		if res.Err != nil {
			return "rejected: " + res.Err.Error(), nil
		}
		return fmt.Sprintf("operation %d", res.ID), nil
	case "schedule": // schedule LEADER CANDIDATE AT (AT: a duration from t=0; "-" for no candidate)
		at, err := time.ParseDuration(arg(2))
		if err != nil {
			return "", err
		}
		cand := arg(1)
		if cand == "-" {
			cand = ""
		}
		res := h.apply(fsm.ScheduleSwitchover{Leader: arg(0), Candidate: cand, At: h.t0.Add(at)})
		if res.Err != nil {
			return "rejected: " + res.Err.Error(), nil
		}
		return "scheduled", nil
	case "cancel-schedule":
		res := h.apply(fsm.CancelScheduledSwitchover{Reason: "cancelled by an operator"})
		if res.Err != nil {
			return "rejected: " + res.Err.Error(), nil
		}
		return "cancelled", nil
	case "restart": // restart NODE: an operator's restart request, pending until restart-done
		if len(pos) != 1 {
			return "", fmt.Errorf("restart NODE")
		}
		res := h.apply(fsm.RequestRestart{Node: pos[0], Reason: "operator"})
		if res.Err != nil {
			return "rejected: " + res.Err.Error(), nil
		}
		return fmt.Sprintf("restart requested => #%d", res.ID), nil
	case "restart-done": // restart-done NODE ID ok|fail
		if len(pos) != 3 {
			return "", fmt.Errorf("restart-done NODE ID ok|fail")
		}
		id, err := strconv.ParseUint(pos[1], 10, 64)
		if err != nil {
			return "", err
		}
		return h.mustApply(fsm.FinishRestart{ID: id, Node: pos[0], Success: pos[2] == "ok", Message: pos[2]})
	case "pause":
		return h.mustApply(fsm.SetPause{Paused: true})
	case "resume":
		return h.mustApply(fsm.SetPause{Paused: false})
	case "sync":
		return h.mustApply(fsm.SetSyncStandbys{Nodes: pos})
	case "step":
		return h.step(), nil
	case "state":
		return h.summary(), nil
	}
	return "", fmt.Errorf("unknown command %q", cmd)
}

func (h *harness) report(node, kind string, opts map[string]string) (string, error) {
	var st fsm.NodeStatus
	lsn, err := lsnArg(orDefault(opts["lsn"], "0"))
	if err != nil {
		return "", err
	}
	switch kind {
	case "primary":
		st = fsm.NodeStatus{Role: fsm.RolePrimary, State: fsm.StateRunningPrimary, Healthy: true, FlushLSN: lsn, Timeline: 1}
		// sync=wanted: synchronous_standby_names as the controller wants it; sync=star: "*".
		switch opts["sync"] {
		case "wanted":
			if h.s.SyncWanted == nil {
				return "", fmt.Errorf("nothing wanted")
			}
			st.SyncStandbyNames = h.s.SyncWanted.Value
		case "star":
			st.SyncStandbyNames = "*"
		}
		if st.SyncSince, err = lsnArg(orDefault(opts["since"], "0")); err != nil {
			return "", err
		}
		// streaming=n2,n3 (or streaming= for none): the standbys streaming from it. Default:
		// the members whose last report says they follow it.
		if v, ok := opts["streaming"]; ok {
			if v != "" {
				st.Streaming = strings.Split(v, ",")
			}
		} else {
			for _, name := range h.s.MemberNames() {
				if m := h.s.Members[name]; m.Status.Role == fsm.RoleReplica && m.Status.Following == node {
					st.Streaming = append(st.Streaming, name)
				}
			}
		}
	case "replica":
		st = fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StateRunningReplica, Healthy: true, ReceivedLSN: lsn, ReplayedLSN: lsn,
			Following: opts["following"], Timeline: 1}
		if r, ok := opts["replayed"]; ok {
			if st.ReplayedLSN, err = lsnArg(r); err != nil {
				return "", err
			}
		}
	case "down":
		st = fsm.NodeStatus{Role: fsm.Role(opts["role"]), State: fsm.StateStopped, Reason: opts["reason"]}
	case "fenced":
		st = fsm.NodeStatus{State: fsm.StateFenced, Reason: opts["reason"]}
	case "promoting":
		// A replica executing PROMOTE: the agent reports its busy state, not healthy.
		st = fsm.NodeStatus{Role: fsm.RoleReplica, State: fsm.StatePromoting, ReceivedLSN: lsn, ReplayedLSN: lsn, Timeline: 1}
	default:
		return "", fmt.Errorf("unknown report kind %q", kind)
	}
	st.SystemID = opts["sysid"]
	if n, ok := opts["inflight"]; ok {
		st.InflightWrites, _ = strconv.Atoi(n)
	}
	return h.mustApply(fsm.ReportStatus{Node: node, Status: st})
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (h *harness) ack(t fsm.DirectiveType, target, outcome string, opts map[string]string) (string, error) {
	for _, d := range h.s.PendingDirectives(target) {
		if d.Type != t {
			continue
		}
		lsn, err := lsnArg(orDefault(opts["lsn"], "0"))
		if err != nil {
			return "", err
		}
		tl, _ := strconv.Atoi(orDefault(opts["timeline"], "0"))
		res := h.apply(fsm.AckDirective{ID: d.ID, Node: target, Success: outcome == "ok", Message: opts["msg"],
			Result: fsm.DirectiveResult{LSN: lsn, Timeline: uint32(tl)}})
		if res.Err != nil {
			return "rejected: " + res.Err.Error(), nil
		}
		return fmt.Sprintf("acked %s %d", t, d.ID), nil
	}
	return "", fmt.Errorf("no pending %s for %s", t, target)
}

// step runs the controller until it has nothing more to apply, as the leader's shell does.
func (h *harness) step() string {
	var out []string
	for round := 0; round < 20; round++ {
		d := Step(h.s, Observations{Now: h.now, LeaderSince: h.leaderSince}, h.cfg)
		for _, c := range d.Commands {
			line := fsm.Describe(c)
			if res := h.apply(c); res.Err != nil {
				line += "  REJECTED: " + res.Err.Error()
			} else if res.ID != 0 {
				line += fmt.Sprintf(" => #%d", res.ID)
			}
			out = append(out, line)
		}
		if len(d.Commands) == 0 {
			if d.Waiting != "" {
				out = append(out, "waiting: "+d.Waiting)
			}
			if !d.WakeAt.IsZero() {
				out = append(out, "wake at "+h.rel(d.WakeAt))
			}
			if len(out) == 0 {
				out = append(out, "no action")
			}
			return strings.Join(out, "\n")
		}
	}
	out = append(out, "did not settle in 20 rounds")
	return strings.Join(out, "\n")
}

func (h *harness) summary() string {
	s := h.s
	var out []string
	prim := s.Primary
	if prim == "" {
		prim = "(none)"
	}
	out = append(out, fmt.Sprintf("primary %s, epoch %d, paused %v, writes paused %v", prim, s.Epoch, s.Paused, s.WritesPaused()))
	if op := s.Operation; op != nil {
		out = append(out, fmt.Sprintf("operation %d %s %s old=%q candidate=%q: %s", op.ID, op.Kind, op.Phase, op.OldPrimary, op.Candidate, op.Message))
	}
	for _, o := range s.Operations {
		out = append(out, fmt.Sprintf("finished %d %s %s new=%q: %s", o.ID, o.Kind, o.Phase, o.NewPrimary, o.Message))
	}
	for _, d := range s.Directives {
		line := fmt.Sprintf("directive %d %s %s epoch %d %s", d.ID, d.Type, d.Target, d.Epoch, d.Status)
		if d.Message != "" {
			line += ": " + d.Message
		}
		out = append(out, line)
	}
	if len(s.SyncStandbys) > 0 || s.SyncWanted != nil {
		line := fmt.Sprintf("sync record of %s: %v count %d", orDefault(s.SyncPrimary, "-"), s.SyncStandbys, s.SyncCount)
		if w := s.SyncWanted; w != nil {
			line += fmt.Sprintf("; wanted %q", w.Value)
		}
		out = append(out, line)
	}
	for _, e := range s.History {
		out = append(out, fmt.Sprintf("history %s: %s -> %s (%s)", h.rel(e.At), orDefault(e.OldPrimary, "-"), e.NewPrimary, e.Reason))
	}
	if sch := s.ScheduledSwitchover; sch != nil {
		out = append(out, fmt.Sprintf("switchover scheduled at %s: %s -> %q", h.rel(sch.At), sch.Leader, sch.Candidate))
	}
	if sch := s.LastScheduledSwitchover; sch != nil {
		out = append(out, fmt.Sprintf("last scheduled switchover (%s, ended %s): %s", h.rel(sch.At), h.rel(sch.EndedAt), sch.Outcome))
	}
	return strings.Join(out, "\n")
}
