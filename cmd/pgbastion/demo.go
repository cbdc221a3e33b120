package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgbastion/pgbastion/ha/pgctl"
)

// demoPorts gives the ports of demo node i (0-based) from the base port.
type demoPorts struct{ rw, ro, pg, api, raft int }

func portsFor(base, i int) demoPorts {
	b := base + 10*i
	return demoPorts{rw: b, ro: b + 1, pg: b + 2, api: b + 3, raft: b + 4}
}

const demoNodes = 3

func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "working directory (default: a new directory under /tmp, removed on exit)")
	base := fs.Int("base-port", 15400, "first port; node N uses base+10(N-1) .. base+10(N-1)+4 (proxy rw, proxy ro, PostgreSQL, API, Raft)")
	keep := fs.Bool("keep", false, "keep the working directory on exit")
	syncMode := fs.String("synchronous-mode", "off", "failover.synchronous_mode: off, on (FIRST 1: one synchronous standby) or quorum (ANY 1 of the replicas)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *syncMode {
	case "off", "on", "quorum":
	default:
		return fmt.Errorf("--synchronous-mode %q: use off, on or quorum", *syncMode)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	self, err := os.Executable()
	if err != nil {
		return err
	}
	if _, err := pgctl.FindBinDir(); err != nil {
		return err
	}
	created := false
	if *dir == "" {
		d, err := os.MkdirTemp("", "pgbastion-demo-")
		if err != nil {
			return err
		}
		*dir, created = d, true
	} else if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	// PostgreSQL may run as another OS user (when we are root): let it traverse.
	if err := os.Chmod(abs, 0o755); err != nil {
		return err
	}
	password, token := randomSecret(), randomSecret()

	var procs []*demoProc
	exitc := make(chan error, demoNodes)
	cleanup := func() {
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			p.waitOrKill(15 * time.Second)
		}
		// The daemons leave PostgreSQL running (a restarted daemon adopts it): stop it here.
		for i := 0; i < demoNodes; i++ {
			stopDemoPostgres(filepath.Join(abs, fmt.Sprintf("node%d", i+1), "pgdata"), *base+10*i+2)
		}
		if created && !*keep {
			_ = os.RemoveAll(abs)
		}
	}
	defer cleanup()

	for i := 0; i < demoNodes; i++ {
		nodeDir := filepath.Join(abs, fmt.Sprintf("node%d", i+1))
		if err := os.MkdirAll(nodeDir, 0o755); err != nil {
			return err
		}
		conf := filepath.Join(nodeDir, "pgbastion.yaml")
		if err := os.WriteFile(conf, []byte(demoConfig(i, *base, nodeDir, password, token, *syncMode)), 0o600); err != nil {
			return err
		}
		logf, err := os.Create(filepath.Join(nodeDir, "pgbastion.log"))
		if err != nil {
			return err
		}
		cmd := exec.Command(self, "run", "-c", conf)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		dp := &demoProc{cmd: cmd, done: make(chan struct{})}
		go func() {
			err := cmd.Wait()
			close(dp.done)
			exitc <- fmt.Errorf("node %s: %v", filepath.Base(nodeDir), err)
		}()
		procs = append(procs, dp)
	}
	// All three start together (a Raft group of three needs two to elect a leader); node1
	// initialises PostgreSQL, the others wait for it and clone it with pg_basebackup.
	fmt.Fprintf(stdout, "starting 3 nodes in %s (synchronous_mode %s): node1 runs initdb, node2 and node3 clone it ...\n", abs, *syncMode)
	if err := waitCluster(ctx, portsFor(*base, 0).api, 1, 0, exitc); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "node1 is the primary; waiting for the replicas to stream ...")
	if err := waitCluster(ctx, portsFor(*base, 0).api, 1, demoNodes-1, exitc); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nPGBastion demo cluster is running (Ctrl-C stops it%s).\n\n", map[bool]string{true: " and removes " + abs, false: ""}[created && !*keep])
	fmt.Fprintf(stdout, "  %-6s %-22s %-22s %-22s %s\n", "node", "proxy read-write", "proxy read-only", "API", "PostgreSQL")
	for i := 0; i < demoNodes; i++ {
		p := portsFor(*base, i)
		fmt.Fprintf(stdout, "  %-6s 127.0.0.1:%-12d 127.0.0.1:%-12d http://127.0.0.1:%-5d 127.0.0.1:%d\n", fmt.Sprintf("node%d", i+1), p.rw, p.ro, p.api, p.pg)
	}
	p := portsFor(*base, 0)
	fmt.Fprintf(stdout, `
Connect through any node's proxy (the read-write port always reaches the primary):
  psql "host=127.0.0.1 port=%d user=postgres dbname=postgres password=%s"

Look at the cluster and move the primary:
  %s ctl --api http://127.0.0.1:%d list
  %s ctl --api http://127.0.0.1:%d --token %s switchover --candidate node2
  %s ctl --api http://127.0.0.1:%d events      (what happened, newest last)
  curl -s http://127.0.0.1:%d/nodes
  http://127.0.0.1:%d/ui/ in a browser (token %s for the actions)

Change a PostgreSQL setting on every node:
  %s ctl --api http://127.0.0.1:%d --token %s config set work_mem=64MB

The proxy's pools (PgBouncer's SHOW POOLS also works, on database pgbouncer):
  %s ctl --api http://127.0.0.1:%d pools
  psql "host=127.0.0.1 port=%d user=postgres dbname=pgbouncer" -c 'SHOW POOLS'

Logs and data: %s
`, p.rw, password, self, p.api, self, p.api, token, self, p.api, p.api, p.api, token, self, p.api, token, self, p.api, p.rw, abs)
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "\nstopping ...")
		return nil
	case err := <-exitc:
		return fmt.Errorf("a node exited: %v (see its pgbastion.log in %s)", err, abs)
	}
}

func demoConfig(i, base int, nodeDir, password, token, syncMode string) string {
	p := portsFor(base, i)
	var peers []string
	for j := 0; j < demoNodes; j++ {
		peers = append(peers, fmt.Sprintf("    - {name: node%d, address: 127.0.0.1:%d}", j+1, portsFor(base, j).raft))
	}
	return fmt.Sprintf(`# PGBastion demo node %[1]d
proxy:
  listen_rw: 127.0.0.1:%[2]d
  listen_ro: 127.0.0.1:%[3]d
  pool: {enabled: true, mode: transaction, default_pool_size: 20}
  server: {user: postgres, password: %[9]s}
  admin_users: [postgres]
api:
  listen: 127.0.0.1:%[4]d
  metrics_listen: ""
  token: %[10]s
raft:
  node_name: node%[1]d
  bind: 127.0.0.1:%[5]d
  advertise: 127.0.0.1:%[5]d
  data_dir: %[6]s/raft
  peers:
%[7]s
postgresql:
  data_dir: %[6]s/pgdata
  host: 127.0.0.1
  port: %[8]d
  superuser: postgres
  password: %[9]s
  replication_user: postgres
  replication_password: %[9]s
  remove_data_directory_on_rewind_failure: true
  bootstrap: %[11]t
failover:
  synchronous_mode: %[12]s
  synchronous_node_count: 1
log: {level: info}
`, i+1, p.rw, p.ro, p.api, p.raft, nodeDir, strings.Join(peers, "\n"), p.pg, password, token, i == 0, syncMode)
}

// waitCluster polls a node's API until the cluster has a healthy primary and at least
// replicas streaming replicas.
func waitCluster(ctx context.Context, apiPort, primaries, replicas int, exitc <-chan error) error {
	deadline := time.Now().Add(3 * time.Minute)
	url := fmt.Sprintf("http://127.0.0.1:%d/nodes", apiPort)
	for {
		if p, r, err := countRoles(url); err == nil && p >= primaries && r >= replicas {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-exitc:
			return fmt.Errorf("a node exited during start-up: %v", err)
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("the demo cluster did not come up within 3 minutes; see the pgbastion.log files")
		}
	}
}

func countRoles(url string) (primaries, replicas int, err error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var v nodesView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, 0, err
	}
	for _, n := range v.Nodes {
		switch {
		case n.Name == v.Primary && n.Status.Healthy && n.Status.Role == "primary":
			primaries++
		case n.Status.Healthy && n.Status.State == "RUNNING_REPLICA":
			replicas++
		}
	}
	return primaries, replicas, nil
}

// demoProc is one node's pgbastion process.
type demoProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *demoProc) waitOrKill(d time.Duration) {
	select {
	case <-p.done:
	case <-time.After(d):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func stopDemoPostgres(dataDir string, port int) {
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err != nil {
		return
	}
	inst, err := pgctl.New(pgctl.Config{DataDir: dataDir, Port: port, Superuser: "postgres"}, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = inst.Stop(ctx, pgctl.Fast)
}

func randomSecret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
