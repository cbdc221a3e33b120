package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"
)

const ctlEventsUsage = `Usage: pgbastion ctl [--api URL] events [--severity info|warning|critical] [--type TYPE] [--limit N]
  What happened to the cluster since the node you ask started: new primaries, failovers and
  switchovers, nodes going down and coming back, maintenance mode, configuration changes,
  restarts. The same events the webhooks receive; the newest last (default: the last 50).
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
	if len(v.Events) == 0 {
		fmt.Fprintln(c.out, "no events (since this node started)")
		return nil
	}
	w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tSEVERITY\tTYPE\tWHAT")
	for _, e := range v.Events {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05 MST"), e.Severity, e.Type, e.Message)
	}
	return w.Flush()
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
		} `json:"history"`
	}
	if err := c.call(http.MethodGet, "/history", nil, &v); err != nil {
		return err
	}
	if len(v.History) == 0 {
		fmt.Fprintln(c.out, "no primary was named yet")
		return nil
	}
	w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tTL\tLSN\tPRIMARY\tREPLACED\tBY\tREASON")
	for _, h := range v.History {
		tl, lsn, kind, old := "-", "-", "-", "-"
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.At.Local().Format("2006-01-02 15:04:05 MST"), tl, lsn, h.NewPrimary, old, kind, h.Reason)
	}
	return w.Flush()
}
