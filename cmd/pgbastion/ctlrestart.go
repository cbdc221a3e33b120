package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

const ctlRestartUsage = `Usage: pgbastion ctl [--api URL] [--token TOKEN] restart NODE... | restart --pending
  restart NODE...      restart the PostgreSQL of these replicas, one after the other
  restart --pending    restart every replica whose PostgreSQL waits for a restart to take a
                       cluster-wide setting (ctl config show, PENDING RESTART), one at a time
The primary is never restarted: switch over first (ctl switchover), then restart it as a replica.
`

func (c *ctlClient) restart(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("restart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlRestartUsage) }
	pending := fs.Bool("pending", false, "restart the replicas that wait for a restart")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nodes := fs.Args()
	if *pending {
		if len(nodes) > 0 {
			return fmt.Errorf("restart: give node names or --pending, not both")
		}
		cfg, err := c.getConfig()
		if err != nil {
			return err
		}
		var nv nodesView
		if err := c.call(http.MethodGet, "/nodes", nil, &nv); err != nil {
			return err
		}
		for _, n := range cfg.Nodes {
			if len(n.PendingRestart) == 0 {
				continue
			}
			if n.Name == nv.Primary {
				fmt.Fprintf(c.out, "%s is the primary and waits for a restart (%s): run ctl switchover, then ctl restart %s\n",
					n.Name, strings.Join(n.PendingRestart, ","), n.Name)
				continue
			}
			nodes = append(nodes, n.Name)
		}
		if len(nodes) == 0 {
			fmt.Fprintln(c.out, "no replica waits for a restart")
			return nil
		}
	}
	if len(nodes) == 0 {
		fs.Usage()
		return fmt.Errorf("restart: name the nodes to restart, or --pending")
	}
	for _, n := range nodes {
		fmt.Fprintf(c.out, "restarting %s ... ", n)
		start := time.Now()
		if err := c.request("/restart", n, "pgbastion ctl restart", 2*time.Minute, nil); err != nil {
			fmt.Fprintln(c.out, "failed")
			return err
		}
		if err := c.awaitReplica(n, 2*time.Minute); err != nil {
			fmt.Fprintln(c.out, "restarted, but not back")
			return err
		}
		fmt.Fprintf(c.out, "running again as a replica (%.1fs)\n", time.Since(start).Seconds())
	}
	return nil
}

const ctlReinitUsage = `Usage: pgbastion ctl [--api URL] [--token TOKEN] reinit --yes [--wait DURATION] NODE...
  Replace each replica's data directory with a fresh clone of the primary (pg_basebackup) and
  start it as a standby again, one node after the other: for a replica that cannot follow the
  primary any more (diverged timeline, failed pg_rewind, damaged files). Its data directory is
  removed; --yes confirms that. --wait bounds the wait for each node (default 1h).
The primary is never reinitialised: switch over first.
`

// reinit is Patroni's reinit.
func (c *ctlClient) reinit(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("reinit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlReinitUsage) }
	yes := fs.Bool("yes", false, "confirm that the nodes' data directories are removed")
	wait := fs.Duration("wait", time.Hour, "how long to wait for each node")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("reinit: name the nodes to reinitialise")
	}
	if !*yes {
		return fmt.Errorf("reinit removes the data directory of %s and clones the primary again; add --yes to go ahead", strings.Join(fs.Args(), ", "))
	}
	for _, n := range fs.Args() {
		fmt.Fprintf(c.out, "reinitialising %s from the primary ... ", n)
		start := time.Now()
		if err := c.request("/reinitialize", n, "pgbastion ctl reinit", *wait, c.cloneProgress(n)); err != nil {
			fmt.Fprintln(c.out, "failed")
			return err
		}
		if err := c.awaitReplica(n, 2*time.Minute); err != nil {
			fmt.Fprintln(c.out, "cloned, but not streaming")
			return err
		}
		fmt.Fprintf(c.out, "running again as a replica (%.1fs)\n", time.Since(start).Seconds())
	}
	return nil
}

// request posts a restart or reinit request for node and waits up to timeout for the agent's
// answer: the API answers 202 with the request's ID when it takes longer than its own wait.
// progress, when set, is called between polls.
func (c *ctlClient) request(path, node, reason string, timeout time.Duration, progress func()) error {
	var res struct {
		ID      uint64 `json:"id"`
		Restart *struct {
			ID uint64 `json:"id"`
		} `json:"restart"`
	}
	if err := c.call(http.MethodPost, path, map[string]string{"node": node, "reason": reason}, &res); err != nil {
		return err
	}
	if res.Restart != nil {
		return nil // it ended, successfully (a failure is an error status)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var rs struct {
			Restarts []struct {
				ID      uint64 `json:"id"`
				Status  string `json:"status"`
				Message string `json:"message"`
			} `json:"restarts"`
		}
		if err := c.call(http.MethodGet, "/restarts", nil, &rs); err == nil {
			for _, r := range rs.Restarts {
				switch {
				case r.ID != res.ID:
				case r.Status == "done":
					return nil
				case r.Status == "failed":
					return fmt.Errorf("%s of %s: %s", strings.TrimPrefix(path, "/"), node, r.Message)
				}
			}
		}
		if progress != nil {
			progress()
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("request %d for %s has not ended within %s; follow it with GET /restarts or ctl list", res.ID, node, timeout)
}

// cloneProgressEvery is how often ctl reinit prints how far a long clone has come (a
// variable for tests).
var cloneProgressEvery = 30 * time.Second

// cloneProgress returns a progress callback for request that prints, every
// cloneProgressEvery, how far node's clone has come as its agent reports it ("12 GiB copied
// of about 40 GiB (30 %) in 4m0s").
func (c *ctlClient) cloneProgress(node string) func() {
	shown := time.Now()
	return func() {
		if time.Since(shown) < cloneProgressEvery {
			return
		}
		shown = time.Now()
		var nv nodesView
		if c.call(http.MethodGet, "/nodes", nil, &nv) != nil {
			return
		}
		for _, n := range nv.Nodes {
			if _, p, ok := strings.Cut(n.Status.Reason, "cloning from "); n.Name == node && ok {
				if _, p, ok = strings.Cut(p, ", "); ok {
					fmt.Fprintf(c.out, "\n  %s ... ", p)
				}
			}
		}
	}
}

// awaitReplica waits until node reports itself a healthy running replica.
func (c *ctlClient) awaitReplica(node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		var nv nodesView
		if err := c.call(http.MethodGet, "/nodes", nil, &nv); err == nil {
			for _, n := range nv.Nodes {
				if n.Name == node {
					if n.Status.State == "RUNNING_REPLICA" && n.Status.Healthy {
						return nil
					}
					last = strings.TrimSpace(n.Status.State + " " + n.Status.Reason)
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s is not a running replica again within %s (last: %s); see ctl list", node, timeout, last)
}
