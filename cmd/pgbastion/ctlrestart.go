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
		if err := c.call(http.MethodPost, "/restart", map[string]string{"node": n, "reason": "pgbastion ctl restart"}, nil); err != nil {
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
