package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// nodesView is the part of GET /nodes the CLI prints.
type nodesView struct {
	Primary   string `json:"primary"`
	Paused    bool   `json:"paused"`
	Scheduled *struct {
		Leader    string    `json:"leader"`
		Candidate string    `json:"candidate"`
		At        time.Time `json:"at"`
	} `json:"scheduled_switchover"`
	RaftLeader string `json:"raft_leader"`
	Nodes      []struct {
		Name   string `json:"name"`
		PGHost string `json:"pg_host"`
		PGPort int    `json:"pg_port"`
		Status struct {
			Role      string `json:"role"`
			State     string `json:"state"`
			Healthy   bool   `json:"healthy"`
			Timeline  uint32 `json:"timeline"`
			LagBytes  uint64 `json:"lag_bytes"`
			Following string `json:"following"`
			Reason    string `json:"reason"`
		} `json:"status"`
		StatusAge      *float64 `json:"status_age_seconds"`
		PendingRestart []string `json:"pending_restart"`
	} `json:"nodes"`
}

// staleAfter: a status older than this is flagged in ctl list (agents report every
// health.interval, a second by default).
const staleAfter = 10.0

const ctlUsage = `Usage: pgbastion ctl [--api URL] [--token TOKEN] COMMAND
  list                                   show the nodes, their roles and lag
  topology                               the same as a tree: each replica under the member it streams from
  health [--check liveness|readiness|health|primary|replica]
                                         exit 0 when this node passes the check (container HEALTHCHECK)
  events [--severity S] [--follow]       what happened: failovers, nodes down and back... (ctl events for details)
  history                                every change of primary (timeline, LSN, failover or switchover, why)
  pools [--loops]                        this node's proxy: server connections and waiting clients per pool
  connections [--waiting]                this node's proxy: every client and server connection (SHOW CLIENTS/SERVERS)
  switchover [--leader N] --candidate N  move the primary to N without losing data
             [--scheduled TIME] | --cancel   book it for TIME (RFC 3339, e.g. 2026-11-28T03:00:00Z), or drop the booking
  failover --candidate N [--force]       promote N (force: even if it may lose data)
  pause | resume                         stop / restart automatic failover
  reload [--cluster]                     re-read this node's configuration file, as SIGHUP does
                                         (--cluster: every member re-reads its own, patronictl reload)
  proxy pause [--wait 30s] [DB] | proxy resume [DB]
                                         standalone proxy: hold new transactions (of DB) for PostgreSQL maintenance
  proxy reconnect [DB]                   this node's proxy: replace server connections (idle now, busy once free)
  proxy kill DB | proxy kill-client ID   this node's proxy: close a database's clients and servers, or one
                                         client (ID from ctl connections); running queries are cancelled
  add NODE RAFT_ADDRESS                  add a node to the Raft group: start it first, not listed in its own
                                         raft.peers; it then registers itself and clones its data
  remove NODE                            remove a stopped member for good (its replication slot is dropped)
  restart NODE... | restart --pending    restart replicas' PostgreSQL one at a time (ctl restart for details)
  reinit --yes NODE...                   re-clone replicas from the primary (ctl reinit for details)
  config show | set NAME=VALUE... | reset NAME...
                                         the cluster-wide PostgreSQL configuration (ctl config for details)
The token defaults to $PGBASTION_API_TOKEN, the API to $PGBASTION_API or http://127.0.0.1:8080.
`

func cmdCtl(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage) }
	api := fs.String("api", envOr("PGBASTION_API", "http://127.0.0.1:8080"), "API base URL")
	token := fs.String("token", os.Getenv("PGBASTION_API_TOKEN"), "API token (api.token): for mutations and the connection list")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("missing command")
	}
	c := &ctlClient{base: strings.TrimRight(*api, "/"), token: *token, out: stdout}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "list":
		return c.list()
	case "topology":
		return c.topology()
	case "health":
		return c.health(rest, stderr)
	case "switchover", "failover":
		sf := flag.NewFlagSet(cmd, flag.ContinueOnError)
		sf.SetOutput(stderr)
		leader := sf.String("leader", "", "current primary (switchover; optional)")
		cand := sf.String("candidate", "", "node to promote")
		force := sf.Bool("force", false, "failover even if data may be lost")
		var scheduled *string
		var cancel *bool
		if cmd == "switchover" {
			scheduled = sf.String("scheduled", "", "book the switchover for this time (RFC 3339 with its zone, e.g. 2026-11-28T03:00:00Z) instead of running it now")
			cancel = sf.Bool("cancel", false, "cancel the scheduled switchover")
		}
		if err := sf.Parse(rest); err != nil {
			return err
		}
		if cancel != nil && *cancel {
			return c.do(http.MethodDelete, "/switchover", nil)
		}
		body := map[string]any{"candidate": *cand}
		if cmd == "switchover" {
			body["leader"] = *leader
			if *scheduled != "" {
				body["scheduled_at"] = *scheduled
			}
		} else {
			body["force"] = *force
		}
		return c.post("/"+cmd, body)
	case "pause", "resume":
		return c.post("/"+cmd, nil)
	case "reload":
		switch {
		case len(rest) == 0:
			return c.reload()
		case len(rest) == 1 && (rest[0] == "--cluster" || rest[0] == "-cluster"):
			return c.clusterReload()
		}
		return fmt.Errorf("usage: pgbastion ctl reload [--cluster]")
	case "proxy":
		return c.proxy(rest, stderr)
	case "config":
		return c.config(rest, stderr)
	case "restart":
		return c.restart(rest, stderr)
	case "reinit":
		return c.reinit(rest, stderr)
	case "events":
		return c.events(rest, stderr)
	case "history":
		return c.history()
	case "pools":
		return c.pools(rest, stderr)
	case "connections", "conns":
		return c.connections(rest, stderr)
	case "add":
		if len(rest) != 2 {
			return fmt.Errorf("usage: pgbastion ctl add NODE RAFT_ADDRESS (the new node's raft.advertise, e.g. 10.0.0.4:8300)")
		}
		return c.callMessage(http.MethodPost, "/members", map[string]string{"name": rest[0], "raft_address": rest[1]})
	case "remove":
		if len(rest) != 1 {
			return fmt.Errorf("usage: pgbastion ctl remove NODE")
		}
		return c.do(http.MethodDelete, "/members/"+url.PathEscape(rest[0]), nil)
	}
	fs.Usage()
	return fmt.Errorf("unknown ctl command %q", cmd)
}

type ctlClient struct {
	base, token string
	out         io.Writer
}

// nodes reads GET /nodes.
func (c *ctlClient) nodes() (*nodesView, error) {
	resp, err := http.Get(c.base + "/nodes")
	if err != nil {
		return nil, fmt.Errorf("cannot reach the API at %s: %w (is pgbastion running? use --api)", c.base, err)
	}
	defer resp.Body.Close()
	var v nodesView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	return &v, nil
}

// topology prints the members as a tree (patronictl topology): the primary, under it the
// replicas streaming from it, under those the ones cascading from them; members that stream
// from nobody known (stopped, fenced, re-cloning) are listed last, flat.
func (c *ctlClient) topology() error {
	v, err := c.nodes()
	if err != nil {
		return err
	}
	children := map[string][]int{}
	placed := map[string]bool{}
	for i, n := range v.Nodes {
		if n.Name != v.Primary && n.Status.Role == "replica" && n.Status.Following != "" {
			children[n.Status.Following] = append(children[n.Status.Following], i)
		}
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tSTATE\tLAG (bytes)\tPOSTGRESQL")
	var walk func(i int, prefix string)
	walk = func(i int, prefix string) {
		n := v.Nodes[i]
		placed[n.Name] = true
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%d\t%s:%d\n", prefix, n.Name, n.Status.Role, n.Status.State, n.Status.LagBytes, n.PGHost, n.PGPort)
		for _, child := range children[n.Name] {
			if !placed[v.Nodes[child].Name] {
				walk(child, strings.Repeat(" ", len([]rune(prefix)))+"+ ")
			}
		}
	}
	for i, n := range v.Nodes {
		if n.Name == v.Primary {
			walk(i, "")
		}
	}
	for i, n := range v.Nodes {
		if !placed[n.Name] {
			walk(i, "? ")
		}
	}
	return tw.Flush()
}

func (c *ctlClient) list() error {
	v, err := c.nodes()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tSTATE\tHEALTHY\tTIMELINE\tLAG (bytes)\tPOSTGRESQL\tNOTE")
	for _, n := range v.Nodes {
		note := n.Status.Reason
		if n.Name == v.Primary {
			note = strings.TrimSpace("primary " + note)
		}
		if n.Name == v.RaftLeader {
			note = strings.TrimSpace(note + " raft-leader")
		}
		if f := n.Status.Following; n.Status.Role == "replica" && f != "" && v.Primary != "" && f != v.Primary {
			note = strings.TrimSpace(note + " streams from " + f)
		}
		if len(n.PendingRestart) > 0 {
			// Patroni's "Pending restart": what ctl restart (or a switchover, for the primary)
			// would apply.
			note = strings.TrimSpace(note + " pending restart (" + strings.Join(n.PendingRestart, ", ") + ")")
		}
		if n.StatusAge != nil && *n.StatusAge >= staleAfter {
			// The status is the past: the agent or its link is down.
			note = strings.TrimSpace(fmt.Sprintf("%s (no report for %.0fs)", note, *n.StatusAge))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%d\t%d\t%s:%d\t%s\n", n.Name, n.Status.Role, n.Status.State, n.Status.Healthy,
			n.Status.Timeline, n.Status.LagBytes, n.PGHost, n.PGPort, note)
	}
	if v.Paused {
		fmt.Fprintln(tw, "(automatic failover is paused)")
	}
	if sch := v.Scheduled; sch != nil {
		to := sch.Candidate
		if to == "" {
			to = "the best replica then"
		}
		fmt.Fprintf(tw, "(switchover from %s to %s scheduled at %s, in %s; ctl switchover --cancel drops it)\n",
			sch.Leader, to, sch.At.UTC().Format(time.RFC3339), fmtAge(time.Until(sch.At).Round(time.Second)))
	}
	return tw.Flush()
}

func (c *ctlClient) post(path string, body any) error { return c.do(http.MethodPost, path, body) }

// do sends a request and prints the API's answer as it is.
func (c *ctlClient) do(method, path string, body any) error {
	status, data, err := c.send(method, path, body)
	if err != nil {
		return err
	}
	fmt.Fprint(c.out, string(data))
	if status >= 300 {
		return fmt.Errorf("%s: %d %s", path, status, http.StatusText(status))
	}
	return nil
}

// send sends a JSON request with the token and returns the answer's status and body. Long
// waits are the API's (a switchover, a restart), so the timeout is generous.
func (c *ctlClient) send(method, path string, body any) (int, []byte, error) {
	var buf bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&buf).Encode(body); err != nil {
			return 0, nil, err
		}
	}
	req, err := http.NewRequest(method, c.base+path, &buf)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	client := &http.Client{Timeout: 5 * time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("cannot reach the API at %s: %w (is pgbastion running? use --api)", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

const raftUsage = `Usage:
  pgbastion raft backup  [--api URL] [--token T] -o FILE   save the replicated state (taken on the Raft leader)
  pgbastion raft restore [--api URL] [--token T] FILE      replace the cluster's replicated state (disaster recovery)
`

func cmdRaft(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, raftUsage)
		return fmt.Errorf("missing raft command")
	}
	fs := flag.NewFlagSet("raft "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, raftUsage) }
	api := fs.String("api", envOr("PGBASTION_API", "http://127.0.0.1:8080"), "API base URL")
	token := fs.String("token", os.Getenv("PGBASTION_API_TOKEN"), "API token")
	out := fs.String("o", "", "backup file to write")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	base := strings.TrimRight(*api, "/")
	client := &http.Client{Timeout: 2 * time.Minute}
	switch args[0] {
	case "backup":
		if *out == "" {
			return fmt.Errorf("raft backup: -o FILE is required")
		}
		req, _ := http.NewRequest(http.MethodGet, base+"/raft/backup", nil)
		req.Header.Set("Authorization", "Bearer "+*token)
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("cannot reach the API at %s: %w", base, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("backup: %s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		if err := os.WriteFile(*out, body, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%d bytes, log index %s, sha256 %s)\n", *out, len(body),
			resp.Header.Get("X-PGBastion-Backup-Index"), resp.Header.Get("X-PGBastion-Backup-SHA256"))
		return nil
	case "restore":
		if fs.NArg() != 1 {
			return fmt.Errorf("raft restore: give the backup file")
		}
		data, err := os.ReadFile(fs.Arg(0))
		if err != nil {
			return err
		}
		c := &ctlClient{base: base, token: *token, out: stdout}
		req, _ := http.NewRequest(http.MethodPost, base+"/raft/restore", bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("cannot reach the API at %s: %w", base, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Fprint(stdout, string(body))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("restore: %s", resp.Status)
		}
		return nil
	}
	fs.Usage()
	return fmt.Errorf("unknown raft command %q", args[0])
}
