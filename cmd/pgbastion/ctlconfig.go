package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

const ctlConfigUsage = `Usage: pgbastion ctl [--api URL] [--token TOKEN] config COMMAND
  show                              the cluster-wide PostgreSQL parameters and, per node, whether its PostgreSQL runs with them
  set [--no-wait] NAME=VALUE ...    add or change parameters on every node (ALTER SYSTEM and a reload)
  reset [--no-wait] NAME ...        remove parameters from the cluster-wide configuration
  hba                               the cluster-wide pg_hba list and, per node, what became of it
  hba set [--no-wait] FILE          make FILE's lines (pg_hba.conf lines; "-" reads stdin; blank
                                    lines and # comments skipped) the cluster-wide pg_hba list
  hba remove [--no-wait]            drop the cluster-wide pg_hba list (pg_hba.conf files stay as they are)
set, reset and hba set/remove wait up to 30s for every node to apply the change and print the
outcome; a value or line PostgreSQL refuses, or a node that refused it, makes the command fail.
A node whose own pgbastion.yaml sets postgresql.pg_hba keeps that list (LOCAL in hba's table).
`

// pgConfigView is GET /cluster/postgresql as the CLI reads it.
type pgConfigView struct {
	Version    uint64            `json:"version"`
	Parameters map[string]string `json:"parameters"`
	AllApplied bool              `json:"all_applied"`
	Nodes      []struct {
		Name           string   `json:"name"`
		AppliedVersion uint64   `json:"applied_version"`
		Applied        bool     `json:"applied"`
		PendingRestart []string `json:"pending_restart"`
		Error          string   `json:"error"`
	} `json:"nodes"`
}

func (c *ctlClient) config(args []string, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, ctlConfigUsage)
		return fmt.Errorf("missing config command")
	}
	if args[0] == "hba" {
		return c.configHBA(args[1:], stderr)
	}
	fs := flag.NewFlagSet("config "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlConfigUsage) }
	noWait := fs.Bool("no-wait", false, "do not wait for the nodes to apply the change")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "show":
		v, err := c.getConfig()
		if err != nil {
			return err
		}
		c.printConfig(v)
		return nil
	case "set", "reset":
		if fs.NArg() == 0 {
			fs.Usage()
			return fmt.Errorf("config %s: name at least one parameter", args[0])
		}
		params := map[string]*string{}
		for _, a := range fs.Args() {
			if args[0] == "reset" {
				params[a] = nil
				continue
			}
			name, value, ok := strings.Cut(a, "=")
			if !ok || name == "" {
				return fmt.Errorf("config set: %q is not NAME=VALUE", a)
			}
			params[strings.TrimSpace(name)] = &value
		}
		var resp struct {
			Version uint64 `json:"version"`
		}
		if err := c.call(http.MethodPatch, "/cluster/postgresql", map[string]any{"parameters": params}, &resp); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "configuration version %d accepted\n", resp.Version)
		if *noWait {
			return nil
		}
		return c.awaitConfig(resp.Version, 30*time.Second)
	}
	fs.Usage()
	return fmt.Errorf("unknown config command %q", args[0])
}

func (c *ctlClient) getConfig() (pgConfigView, error) {
	var v pgConfigView
	err := c.call(http.MethodGet, "/cluster/postgresql", nil, &v)
	return v, err
}

// nodeReport is one node's report of applying a version of something cluster-wide.
type nodeReport struct {
	name    string
	version uint64
	err     string
}

// awaitReports polls until every node reports version (or a later one), or timeout passes, and
// then prints the last answer. poll returns the nodes' reports and how to print the answer.
// refusedWhat names what a node refused in the error ("part of the configuration").
func awaitReports(version uint64, timeout time.Duration, refusedWhat, tail string, poll func() ([]nodeReport, func(), error)) error {
	deadline := time.Now().Add(timeout)
	for {
		nodes, show, err := poll()
		if err != nil {
			return err
		}
		done, refused := true, []string{}
		for _, n := range nodes {
			if n.version < version {
				done = false
			}
			if n.err != "" && n.version >= version {
				refused = append(refused, n.name)
			}
		}
		if done || time.Now().After(deadline) {
			show()
			switch {
			case len(refused) > 0:
				return fmt.Errorf("PostgreSQL refused %s on %s (see ERROR above)%s", refusedWhat, strings.Join(refused, ", "), tail)
			case !done:
				return fmt.Errorf("not every node applied version %d within %s: a node whose PostgreSQL is down applies it when it is back", version, timeout)
			}
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// awaitConfig waits until every node reports version (or a later one) and prints the outcome.
func (c *ctlClient) awaitConfig(version uint64, timeout time.Duration) error {
	return awaitReports(version, timeout, "part of the configuration", "", func() ([]nodeReport, func(), error) {
		v, err := c.getConfig()
		var nodes []nodeReport
		for _, n := range v.Nodes {
			nodes = append(nodes, nodeReport{name: n.Name, version: n.AppliedVersion, err: n.Error})
		}
		return nodes, func() { c.printConfig(v) }, err
	})
}

func (c *ctlClient) printConfig(v pgConfigView) {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster-wide PostgreSQL configuration, version %d\n", v.Version)
	names := slices.Sorted(maps.Keys(v.Parameters))
	if len(names) == 0 {
		fmt.Fprintln(tw, "  (no parameters)")
	}
	for _, n := range names {
		fmt.Fprintf(tw, "  %s\t= %s\n", n, v.Parameters[n])
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tAPPLIED\tVERSION\tPENDING RESTART\tERROR")
	for _, n := range v.Nodes {
		fmt.Fprintf(tw, "%s\t%v\t%d\t%s\t%s\n", n.Name, n.Applied, n.AppliedVersion, strings.Join(n.PendingRestart, ","), n.Error)
	}
	_ = tw.Flush()
}

// call sends a request and decodes a JSON answer into out; an error status becomes an error
// carrying the API's message.
func (c *ctlClient) call(method, path string, body, out any) error {
	status, data, err := c.send(method, path, body)
	if err != nil {
		return err
	}
	if status >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			if status == http.StatusUnauthorized {
				e.Error += "; pass the node's api.token with --token or $PGBASTION_API_TOKEN"
			}
			return fmt.Errorf("%s %s: %s", method, path, e.Error)
		}
		return fmt.Errorf("%s %s: %d %s: %s", method, path, status, http.StatusText(status), strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// pgHBAView is GET /cluster/postgresql/pg_hba as the CLI reads it.
type pgHBAView struct {
	Version uint64   `json:"version"`
	Lines   []string `json:"lines"`
	Nodes   []struct {
		Name           string `json:"name"`
		AppliedVersion uint64 `json:"applied_version"`
		Applied        bool   `json:"applied"`
		Local          bool   `json:"local"`
		Outcome        string `json:"outcome"`
		Error          string `json:"error"`
	} `json:"nodes"`
}

// configHBA is ctl config hba [set FILE | remove].
func (c *ctlClient) configHBA(args []string, stderr io.Writer) error {
	verb := "show"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		verb, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("config hba "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlConfigUsage) }
	noWait := fs.Bool("no-wait", false, "do not wait for the nodes to apply the change")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var resp struct {
		Version uint64 `json:"version"`
	}
	switch {
	case verb == "show" && fs.NArg() == 0:
		var v pgHBAView
		if err := c.call(http.MethodGet, "/cluster/postgresql/pg_hba", nil, &v); err != nil {
			return err
		}
		c.printHBA(v)
		return nil
	case verb == "set" && fs.NArg() == 1:
		lines, err := readHBAFile(fs.Arg(0), os.Stdin)
		if err != nil {
			return err
		}
		if err := c.call(http.MethodPut, "/cluster/postgresql/pg_hba", map[string]any{"lines": lines}, &resp); err != nil {
			return err
		}
	case verb == "remove" && fs.NArg() == 0:
		if err := c.call(http.MethodDelete, "/cluster/postgresql/pg_hba", nil, &resp); err != nil {
			return err
		}
	default:
		fs.Usage()
		return fmt.Errorf("usage: pgbastion ctl config hba [set FILE | remove] [--no-wait]")
	}
	fmt.Fprintf(c.out, "cluster-wide pg_hba version %d accepted\n", resp.Version)
	if *noWait {
		return nil
	}
	return c.awaitHBA(resp.Version, 30*time.Second)
}

// readHBAFile reads pg_hba.conf lines from name ("-": in), skipping blank lines and comments.
func readHBAFile(name string, in io.Reader) ([]string, error) {
	var data []byte
	var err error
	if name == "-" {
		if in == nil {
			return nil, fmt.Errorf("config hba set -: no standard input")
		}
		data, err = io.ReadAll(io.LimitReader(in, 1<<20))
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, fmt.Errorf("config hba set: %w", err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("config hba set: %s has no pg_hba.conf lines; to drop the cluster-wide list use ctl config hba remove", name)
	}
	return lines, nil
}

// awaitHBA waits until every node reports version (or a later one) and prints the outcome.
func (c *ctlClient) awaitHBA(version uint64, timeout time.Duration) error {
	return awaitReports(version, timeout, "the pg_hba list", "; its previous pg_hba.conf stays in effect there", func() ([]nodeReport, func(), error) {
		var v pgHBAView
		err := c.call(http.MethodGet, "/cluster/postgresql/pg_hba", nil, &v)
		var nodes []nodeReport
		for _, n := range v.Nodes {
			nodes = append(nodes, nodeReport{name: n.Name, version: n.AppliedVersion, err: n.Error})
		}
		return nodes, func() { c.printHBA(v) }, err
	})
}

func (c *ctlClient) printHBA(v pgHBAView) {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster-wide pg_hba, version %d\n", v.Version)
	if len(v.Lines) == 0 {
		fmt.Fprintln(tw, "  (none: each node's pg_hba.conf is its own)")
	}
	for _, l := range v.Lines {
		fmt.Fprintf(tw, "  %s\n", l)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tAPPLIED\tVERSION\tLOCAL\tOUTCOME\tERROR")
	for _, n := range v.Nodes {
		fmt.Fprintf(tw, "%s\t%v\t%d\t%v\t%s\t%s\n", n.Name, n.Applied, n.AppliedVersion, n.Local, n.Outcome, n.Error)
	}
	_ = tw.Flush()
}
