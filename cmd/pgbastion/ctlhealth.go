package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

const ctlHealthUsage = `Usage: pgbastion ctl [--api URL] health [--check CHECK] [--timeout 5s]
Asks this node's API one of its health checks and exits 0 only when it answers 200: for a
container's HEALTHCHECK, a Kubernetes exec probe or a script. CHECK is one of
  liveness   the daemon serves requests (default; a node cut off from its peers or with
             PostgreSQL down is alive: restarting it would not help)
  readiness  this node's PostgreSQL serves reads (primary, or a replica that is not lagging)
  health     this node's PostgreSQL is up and healthy, whatever its role
  primary    this node is the writable primary
  replica    this node is a healthy replica
The line printed says why a check failed.
`

// healthChecks are the API paths ctl health may ask (the role checks of the REST API).
var healthChecks = []string{"liveness", "readiness", "health", "primary", "replica", "read-only", "sync", "async"}

func (c *ctlClient) health(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlHealthUsage) }
	check := fs.String("check", "liveness", "the check to ask")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long (the check fails)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("health takes no arguments (got %q); name the check with --check", fs.Arg(0))
	}
	if !slices.Contains(healthChecks, *check) {
		return fmt.Errorf("unknown check %q: want one of %s", *check, strings.Join(healthChecks, ", "))
	}
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Get(c.base + "/" + *check)
	if err != nil {
		return fmt.Errorf("%s: cannot reach the API at %s: %w (is pgbastion running? use --api)", *check, c.base, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	line := fmt.Sprintf("%s: %d %s", *check, resp.StatusCode, http.StatusText(resp.StatusCode))
	if why := healthSummary(data); why != "" {
		line += " (" + why + ")"
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", line)
	}
	fmt.Fprintln(c.out, line)
	return nil
}

// healthSummary picks from a check's JSON answer what says the node's condition: its role and
// state, and the reason or error when there is one.
func healthSummary(data []byte) string {
	var body map[string]any
	if json.Unmarshal(data, &body) != nil {
		return ""
	}
	var parts []string
	for _, k := range []string{"role", "state", "status", "reason", "error"} {
		if v, ok := body[k].(string); ok && v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	return strings.Join(parts, ", ")
}
