package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/test/daemon"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// TestCLIAgainstLiveCluster drives the operator's commands against a running cluster through
// the built binary: `ctl list`, `raft backup`, `ctl pause`, `raft restore` (the pause taken
// after the backup is undone by restoring it), `ctl config` (the cluster-wide PostgreSQL
// configuration) and `ctl switchover`.
func TestCLIAgainstLiveCluster(t *testing.T) {
	// Replicas are created by a replica method of our own (a script that runs pg_basebackup
	// itself, as a restore from a backup tool would fill the directory), basebackup after it.
	methods := newReplicaMethod(t)
	hooks := newHookWatch(t)
	c := Start(t, Options{PostgreSQLExtra: methods.config() + hooks.callbacks()})
	old := c.WaitHealthy(2, 2*time.Minute)
	if got := methods.runs(); len(got) != 2 {
		t.Fatalf("the replica method ran for %q, want both replicas", got)
	}
	bin := daemon.Binary(t)
	api := "http://" + c.Node("node1").API
	// pgbastion ctl [flags] COMMAND …; pgbastion raft VERB [flags] …
	run := func(args ...string) string {
		t.Helper()
		flags := []string{"--api", api, "--token", c.Token}
		switch args[0] {
		case "ctl":
			args = append(append([]string{"ctl"}, flags...), args[1:]...)
		case "raft":
			args = append(append([]string{"raft", args[1]}, flags...), args[2:]...)
		}
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbastion %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// fails runs a command that must fail and returns its output.
	fails := func(args ...string) string {
		t.Helper()
		args = append([]string{"ctl", "--api", api, "--token", c.Token}, args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil {
			t.Fatalf("pgbastion %s succeeded:\n%s", strings.Join(args, " "), out)
		}
		return string(out)
	}
	paused := func() bool {
		resp, err := http.Get(api + "/nodes")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var v struct {
			Paused bool `json:"paused"`
		}
		if json.NewDecoder(resp.Body).Decode(&v) != nil {
			return false
		}
		return v.Paused
	}

	list := run("ctl", "list")
	for _, n := range c.Nodes {
		if !strings.Contains(list, n.Name) {
			t.Fatalf("ctl list does not show %s:\n%s", n.Name, list)
		}
	}
	if !strings.Contains(list, "primary") || strings.Count(list, "RUNNING_REPLICA") != 2 {
		t.Fatalf("ctl list: want one primary and two running replicas:\n%s", list)
	}

	// Cluster-wide reload (patronictl reload): every member reads its own file again. Each
	// file gets a bigger pool (applied at once) and node3's a typo (refused there, nothing
	// changed): ctl prints a line per member and fails for node3.
	for _, n := range c.Nodes {
		b, err := os.ReadFile(n.D.ConfigPath())
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Replace(string(b), "default_pool_size: 10", "default_pool_size: 12", 1)
		text = strings.Replace(text, `wal_keep_size: "512MB"`, `wal_keep_size: "512MB", maintenance_work_mem: "70MB"`, 1)
		if n.Name == "node3" {
			text += "proxy_typo: {}\n"
		}
		if err := os.WriteFile(n.D.ConfigPath(), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := fails("reload", "--cluster")
	for _, want := range []string{"node1  2", "node2  2", "node3  0", `unknown key "proxy_typo"`, "2 members reloaded their configuration file; 1 refused theirs"} {
		if !strings.Contains(out, want) {
			t.Fatalf("ctl reload --cluster does not say %q:\n%s", want, out)
		}
	}
	// postgresql.parameters went to PostgreSQL where the file was taken, not on node3.
	for _, n := range c.Nodes {
		want := "70MB"
		if n.Name == "node3" {
			want = "64MB"
		}
		if v := show(t, n, "maintenance_work_mem"); v != want {
			t.Fatalf("%s runs with maintenance_work_mem %s after the cluster-wide reload, want %s", n.Name, v, want)
		}
	}

	backup := filepath.Join(t.TempDir(), "state.bak")
	run("raft", "backup", "-o", backup)
	run("ctl", "pause")
	waitTrue(t, 30*time.Second, paused, "the cluster reports automatic failover paused")
	if !strings.Contains(run("ctl", "list"), "paused") {
		t.Fatal("ctl list does not say that failover is paused")
	}
	run("raft", "restore", backup)
	waitTrue(t, 30*time.Second, func() bool { return !paused() }, "the restored state (taken before the pause) is in effect")
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != old {
		t.Fatalf("after restore the primary is %s, want %s", p.Name, old.Name)
	}

	// Cluster-wide configuration: set waits until every node's PostgreSQL runs with it.
	out = run("ctl", "config", "set", "work_mem=12MB", "shared_buffers=24MB")
	if !strings.Contains(out, "version 1 accepted") || strings.Count(out, "true") != 3 {
		t.Fatalf("ctl config set:\n%s", out)
	}
	for _, n := range c.Nodes {
		if v := show(t, n, "work_mem"); v != "12MB" {
			t.Fatalf("%s runs with work_mem %s, want 12MB", n.Name, v)
		}
		// shared_buffers takes a restart: every node says so.
		if v := show(t, n, "shared_buffers"); v == "24MB" {
			t.Fatalf("%s runs with shared_buffers 24MB without a restart", n.Name)
		}
	}
	// Every node ran its on_reload callback for the new configuration.
	var reloads []string
	for _, n := range c.Nodes {
		role := "replica"
		if n == old {
			role = "primary"
		}
		reloads = append(reloads, n.Name+" on_reload "+role+" pgbastion")
	}
	hooks.waitCalls(t, reloads...)
	if out := run("ctl", "config", "show"); strings.Count(out, "shared_buffers") != 4 {
		t.Fatalf("ctl config show: want shared_buffers listed and pending a restart on 3 nodes:\n%s", out)
	}
	// What PostgreSQL refuses is refused before anything changes, in its words.
	if out := fails("config", "set", "work_mem=lots"); !strings.Contains(out, `invalid value for parameter \"work_mem\"`) &&
		!strings.Contains(out, `invalid value for parameter "work_mem"`) {
		t.Fatalf("a bad value: %s", out)
	}
	if out := fails("config", "set", "port=6000"); !strings.Contains(out, "postgresql.port") {
		t.Fatalf("a protected parameter: %s", out)
	}
	if out := fails("config", "set", "wrok_mem=1MB"); !strings.Contains(out, "no such parameter") {
		t.Fatalf("a misspelt parameter: %s", out)
	}
	// A standby cannot start with fewer connections than its primary: lowering is refused.
	if out := fails("config", "set", "max_connections=150"); !strings.Contains(out, "cannot start with less than its primary") {
		t.Fatalf("lowering max_connections: %s", out)
	}
	if out := fails("config", "set", "pg_stat_statements.max=5000"); !strings.Contains(out, "load the extension") {
		t.Fatalf("an extension's parameter before the extension is loaded: %s", out)
	}
	if out := run("ctl", "config", "show"); !strings.Contains(out, "version 1") || strings.Contains(out, "lots") {
		t.Fatalf("a refused change reached the configuration:\n%s", out)
	}

	// Cluster-wide pg_hba (patronictl edit-config's postgresql.pg_hba): one list for every
	// node, checked and loaded by each PostgreSQL. The list keeps the cluster working (its
	// replication and logins over 127.0.0.1) and turns one user away.
	hbaFile := filepath.Join(t.TempDir(), "pg_hba.lines")
	writeHBA := func(lines ...string) {
		if err := os.WriteFile(hbaFile, []byte("# cluster access\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	turnedAway := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, n := range c.Nodes {
			conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=nobody_here password=x dbname=postgres sslmode=disable", n.PGPort))
			var pe *pgconn.PgError
			if err == nil {
				conn.Close(ctx)
			}
			if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Message, "pg_hba.conf rejects connection") {
				t.Fatalf("%s: %s: nobody_here logging in: %v, want 28000 from a reject line", when, n.Name, err)
			}
		}
	}
	writeHBA("host all nobody_here 127.0.0.1/32 reject", "host all all 127.0.0.1/32 scram-sha-256", "host replication all 127.0.0.1/32 scram-sha-256")
	if out := run("ctl", "config", "hba", "set", hbaFile); !strings.Contains(out, "version 1 accepted") || strings.Count(out, "loaded by PostgreSQL") != 3 {
		t.Fatalf("ctl config hba set:\n%s", out)
	}
	turnedAway("after ctl config hba set")
	// A line PostgreSQL's parser refuses: every node says so and keeps its file.
	writeHBA("host all all 127.0.0.1/33 scram-sha-256")
	if out := fails("config", "hba", "set", hbaFile); !strings.Contains(out, "the cluster-wide pg_hba[0]: invalid") || !strings.Contains(out, "refused the pg_hba list on node1, node2, node3") {
		t.Fatalf("a line PostgreSQL refuses:\n%s", out)
	}
	turnedAway("after a refused list")
	if out := run("ctl", "config", "hba", "remove"); !strings.Contains(out, "version 3 accepted") || strings.Count(out, "left as it is") != 3 {
		t.Fatalf("ctl config hba remove:\n%s", out)
	}
	turnedAway("after the list was removed (the files stay)")

	var cand *Node
	for _, n := range c.Nodes {
		if n != old {
			cand = n
			break
		}
	}
	run("ctl", "switchover", "--candidate", cand.Name)
	if p, _ := c.WaitOneWritablePrimary(2 * time.Minute); p != cand {
		t.Fatalf("after ctl switchover the primary is %s, want %s", p.Name, cand.Name)
	}
	// The old primary was restarted as a standby: it kept the cluster-wide settings through
	// the rewrite of its recovery configuration, and the restart applied shared_buffers.
	c.WaitRejoined(t, old, 2*time.Minute)
	waitTrue(t, 30*time.Second, func() bool { return show(t, old, "shared_buffers") == "24MB" }, old.Name+" runs with shared_buffers 24MB after its restart")
	if v := show(t, old, "work_mem"); v != "12MB" {
		t.Fatalf("%s lost work_mem when it became a standby: %s", old.Name, v)
	}

	// A new shared_buffers waits for a restart everywhere; restart --pending restarts the
	// replicas one at a time and tells what to do about the primary instead of restarting it.
	var third *Node
	for _, n := range c.Nodes {
		if n != old && n != cand {
			third = n
		}
	}
	out = run("ctl", "config", "set", "shared_buffers=32MB")
	if strings.Count(out, "shared_buffers") != 4 {
		t.Fatalf("ctl config set shared_buffers: want every node pending a restart:\n%s", out)
	}
	out = run("ctl", "restart", "--pending")
	if !strings.Contains(out, "restarting "+third.Name) || !strings.Contains(out, "restarting "+old.Name) ||
		strings.Count(out, "running again as a replica") != 2 ||
		!strings.Contains(out, cand.Name+" is the primary") || strings.Contains(out, "restarting "+cand.Name) {
		t.Fatalf("ctl restart --pending:\n%s", out)
	}
	for _, n := range []*Node{old, third} {
		if v := show(t, n, "shared_buffers"); v != "32MB" {
			t.Fatalf("%s after its restart: shared_buffers %s", n.Name, v)
		}
	}
	if v := show(t, cand, "shared_buffers"); v == "32MB" {
		t.Fatalf("the primary %s was restarted", cand.Name)
	}
	if out := fails("restart", cand.Name); !strings.Contains(out, "switch over first") {
		t.Fatalf("restart of the primary: %s", out)
	}
	if p, _ := c.WaitOneWritablePrimary(time.Minute); p != cand {
		t.Fatalf("a refused restart moved the primary to %s", p.Name)
	}

	// reset removes a parameter everywhere.
	run("ctl", "config", "reset", "work_mem")
	for _, n := range c.Nodes {
		if v := show(t, n, "work_mem"); v != "4MB" {
			t.Fatalf("%s runs with work_mem %s after the reset, want the default 4MB", n.Name, v)
		}
	}

	// reinit replaces a replica's data directory with a new clone of the primary: a file
	// left in the old one is gone, the replica streams again, and it runs with the cluster's
	// settings. It needs --yes, and the primary is refused.
	if out := fails("reinit", third.Name); !strings.Contains(out, "add --yes") {
		t.Fatalf("reinit without --yes: %s", out)
	}
	if out := fails("reinit", "--yes", cand.Name); !strings.Contains(out, "switch over first") {
		t.Fatalf("reinit of the primary: %s", out)
	}
	marker := filepath.Join(third.Dir, "pgdata", "left-behind")
	if err := os.WriteFile(marker, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = run("ctl", "reinit", "--yes", third.Name)
	if !strings.Contains(out, "reinitialising "+third.Name+" from the primary ... running again as a replica") {
		t.Fatalf("ctl reinit:\n%s", out)
	}
	t.Logf("ctl reinit: %s", strings.TrimSpace(out))
	if got := methods.runs(); len(got) != 3 || got[2] != filepath.Join(third.Dir, "pgdata") {
		t.Fatalf("reinit did not use the replica method: %q", got)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("%s's data directory was not replaced (%s is still there)", third.Name, marker)
	}
	if v := show(t, third, "shared_buffers"); v != "32MB" {
		t.Fatalf("%s after reinit: shared_buffers %s, want the cluster's 32MB", third.Name, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pc, err := c.Connect(ctx, cand.RW)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	if _, err := pc.Exec(ctx, "CREATE TABLE after_reinit AS SELECT 42 AS v"); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, 30*time.Second, func() bool {
		conn, err := third.pg().Connect(ctx)
		if err != nil {
			return false
		}
		defer conn.Close(context.Background())
		res := conn.ExecParams(ctx, "SELECT v FROM after_reinit", nil, nil, nil, nil).Read()
		return res.Err == nil && len(res.Rows) == 1 && string(res.Rows[0][0]) == "42"
	}, third.Name+" replays what the primary writes after its reinit")
}

// show returns a setting of the node's PostgreSQL as a new session sees it.
func show(t testing.TB, n *Node, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := n.pg().Connect(ctx)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, "SELECT current_setting($1)", [][]byte{[]byte(name)}, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatalf("%s: SHOW %s: %v", n.Name, name, res.Err)
	}
	return string(res.Rows[0][0])
}

// waitTrue polls cond until it holds or fails the test after timeout.
func waitTrue(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// replicaMethod is a postgresql.replica_methods command for the tests: it records the data
// directory it fills and runs pg_basebackup with the --datadir and --connstring it is given.
type replicaMethod struct {
	script, record string
}

func newReplicaMethod(t *testing.T) *replicaMethod {
	basebackup := pgtest.Program(t, "pg_basebackup")
	dir, err := os.MkdirTemp("", "pgbastion-method-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &replicaMethod{script: filepath.Join(dir, "clone"), record: filepath.Join(dir, "runs")}
	if err := os.WriteFile(m.record, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(m.record, 0o666)
	src := `#!/bin/sh
for a in "$@"; do
  case "$a" in --datadir=*) d="${a#--datadir=}";; --connstring=*) c="${a#--connstring=}";; esac
done
echo "$d" >> '` + m.record + `'
exec '` + basebackup + `' -D "$d" -d "$c" -X stream -c fast
`
	if err := os.WriteFile(m.script, []byte(src), 0o755); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *replicaMethod) config() string {
	return "replica_methods: [{name: script, command: " + m.script + "}, {name: basebackup}]\n"
}

func (m *replicaMethod) runs() []string {
	b, _ := os.ReadFile(m.record)
	return strings.Fields(string(b))
}
