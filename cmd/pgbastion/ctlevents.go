package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgbastion/pgbastion/ha/notify"
)

const ctlEventsUsage = `Usage: pgbastion ctl [--api URL] events [--severity info|warning|critical] [--type TYPE] [--limit N] [--follow]
  What happened to the cluster since the node you ask started: new primaries, failovers and
  switchovers, nodes going down and coming back, maintenance mode, configuration changes,
  restarts. The same events the webhooks receive; the newest last (default: the last 50).
  --follow then prints new events as they happen, until Ctrl-C.
`

type eventView struct {
	At       time.Time `json:"at"`
	Severity string    `json:"severity"`
	Type     string    `json:"type"`
	Message  string    `json:"message"`
}

func (c *ctlClient) events(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlEventsUsage) }
	severity := fs.String("severity", "", "only this severity and worse")
	typ := fs.String("type", "", "only this event type")
	limit := fs.Int("limit", 50, "the newest N (0: all the node kept)")
	follow := fs.Bool("follow", false, "then print new events as they happen")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("events: unexpected argument %q", fs.Arg(0))
	}
	q := url.Values{}
	if *severity != "" {
		q.Set("severity", *severity)
	}
	if *typ != "" {
		q.Set("type", *typ)
	}
	if *limit > 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	path := "/cluster/events"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var v struct {
		Events []eventView `json:"events"`
	}
	if err := c.call(http.MethodGet, path, nil, &v); err != nil {
		return err
	}
	if len(v.Events) == 0 && !*follow {
		fmt.Fprintln(c.out, "no events (since this node started, and none in the cluster's logs)")
		return nil
	}
	if *follow {
		// Fixed columns: rows come one at a time.
		fmt.Fprintf(c.out, "%-23s  %-8s  %-18s  %s\n", "TIME", "SEVERITY", "TYPE", "WHAT")
		for _, e := range v.Events {
			printEvent(c.out, e)
		}
		return c.followEvents(*severity, *typ)
	}
	w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tSEVERITY\tTYPE\tWHAT")
	for _, e := range v.Events {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05 MST"), e.Severity, e.Type, e.Message)
	}
	return w.Flush()
}

func printEvent(out io.Writer, e eventView) {
	fmt.Fprintf(out, "%-23s  %-8s  %-18s  %s\n", e.At.Local().Format("2006-01-02 15:04:05 MST"), e.Severity, e.Type, e.Message)
}

// followEvents prints the cluster events GET /events streams until the stream ends.
func (c *ctlClient) followEvents(severity, typ string) error {
	resp, err := http.Get(c.base + "/events")
	if err != nil {
		return fmt.Errorf("cannot reach the API at %s: %w (is pgbastion running? use --api)", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /events: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20) // state events carry the whole cluster state
	isEvent := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "event: cluster_event":
			isEvent = true
		case line == "":
			isEvent = false
		case isEvent && strings.HasPrefix(line, "data: "):
			var e eventView
			if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e) != nil {
				continue
			}
			if !notify.Severity(e.Severity).AtLeast(notify.Severity(severity)) || (typ != "" && e.Type != typ) {
				continue
			}
			printEvent(c.out, e)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("the event stream broke: %w", err)
	}
	return fmt.Errorf("the event stream ended (the node's pgbastion stopped?)")
}

// history is Patroni's `patronictl history`: every change of primary the cluster recorded.
func (c *ctlClient) history() error {
	var v struct {
		History []struct {
			At         time.Time `json:"at"`
			NewPrimary string    `json:"new_primary"`
			OldPrimary string    `json:"old_primary"`
			Kind       string    `json:"kind"`
			Timeline   uint32    `json:"timeline"`
			LSN        uint64    `json:"lsn"`
			Reason     string    `json:"reason"`
			Operation  uint64    `json:"operation_id"`
		} `json:"history"`
		// Operations give each change of primary the API request that asked for it.
		Operations []struct {
			ID    uint64 `json:"id"`
			Trace *struct {
				RequestID string `json:"request_id"`
			} `json:"trace"`
		} `json:"operations"`
	}
	if err := c.call(http.MethodGet, "/history", nil, &v); err != nil {
		return err
	}
	if len(v.History) == 0 {
		fmt.Fprintln(c.out, "no primary was named yet")
		return nil
	}
	requests := map[uint64]string{}
	for _, o := range v.Operations {
		if o.Trace != nil && o.Trace.RequestID != "" {
			requests[o.ID] = o.Trace.RequestID
		}
	}
	w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tTL\tLSN\tPRIMARY\tREPLACED\tBY\tREQUEST\tREASON")
	for _, h := range v.History {
		tl, lsn, kind, old, req := "-", "-", "-", "-", "-"
		if id, ok := requests[h.Operation]; ok && h.Operation != 0 {
			req = id
		}
		if h.Timeline != 0 {
			tl = strconv.FormatUint(uint64(h.Timeline), 10)
		}
		if h.LSN != 0 {
			lsn = fmt.Sprintf("%X/%X", h.LSN>>32, uint32(h.LSN))
		}
		if h.Kind != "" {
			kind = h.Kind
		}
		if h.OldPrimary != "" {
			old = h.OldPrimary
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.At.Local().Format("2006-01-02 15:04:05 MST"), tl, lsn, h.NewPrimary, old, kind, req, h.Reason)
	}
	return w.Flush()
}
