package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

const proxyUsage = "usage: pgbastion ctl proxy pause [--wait 30s] [DB] | resume [DB] | reconnect [DB] | kill DB | kill-client ID"

// proxy runs ctl proxy's subcommands.
func (c *ctlClient) proxy(args []string, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(proxyUsage)
	}
	switch args[0] {
	case "pause", "resume":
		return c.proxyPause(args, stderr)
	case "reconnect", "kill":
		if (args[0] == "kill" && len(args) != 2) || len(args) > 2 {
			return errors.New(proxyUsage)
		}
		body := map[string]string{}
		if len(args) == 2 {
			body["database"] = args[1]
		}
		return c.callMessage(http.MethodPost, "/proxy/"+args[0], body)
	case "kill-client":
		if len(args) != 2 {
			return errors.New(proxyUsage)
		}
		return c.callMessage(http.MethodDelete, "/proxy/connections/"+url.PathEscape(args[1]), nil)
	}
	return errors.New(proxyUsage)
}

// callMessage sends a request and prints the message the API answers with.
func (c *ctlClient) callMessage(method, path string, body any) error {
	var res struct {
		Message string `json:"message"`
	}
	if err := c.call(method, path, body, &res); err != nil {
		return err
	}
	fmt.Fprintln(c.out, res.Message)
	return nil
}

// proxyPause pauses or resumes a standalone proxy (POST /proxy/pause, /proxy/resume).
func (c *ctlClient) proxyPause(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("proxy "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for transactions in flight to finish (the pause stays in force after it)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return errors.New(proxyUsage)
	}
	db := fs.Arg(0)
	body := map[string]any{}
	if db != "" {
		body["database"] = db
	}
	if args[0] == "pause" {
		body["wait_seconds"] = wait.Seconds()
	}
	var res struct {
		Drained  bool   `json:"drained"`
		InFlight int    `json:"in_flight"`
		Message  string `json:"message"`
	}
	if err := c.call(http.MethodPost, "/proxy/"+args[0], body, &res); err != nil {
		return err
	}
	switch {
	case args[0] == "resume" && db != "":
		fmt.Fprintf(c.out, "database %s resumed: its waiting clients continue\n", db)
	case args[0] == "resume":
		fmt.Fprintln(c.out, "resumed: waiting clients continue")
	case !res.Drained: // 202: the wait ran out
		fmt.Fprintln(c.out, res.Message)
		return fmt.Errorf("not drained: %d transactions in flight (the pause is in force)", res.InFlight)
	default:
		fmt.Fprintln(c.out, res.Message)
	}
	return nil
}
