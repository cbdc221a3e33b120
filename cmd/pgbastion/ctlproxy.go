package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

// proxyPause pauses or resumes a standalone proxy (POST /proxy/pause, /proxy/resume).
func (c *ctlClient) proxyPause(args []string, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "pause" && args[0] != "resume") {
		return fmt.Errorf("usage: pgbastion ctl proxy pause [--wait 30s] | pgbastion ctl proxy resume")
	}
	fs := flag.NewFlagSet("proxy "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for transactions in flight to finish (the pause stays in force after it)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var body any
	if args[0] == "pause" {
		body = map[string]float64{"wait_seconds": wait.Seconds()}
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
