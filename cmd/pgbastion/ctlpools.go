package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgbastion/pgbastion/admin"
)

// pools prints the proxy's pools on the node the API belongs to: PgBouncer's SHOW POOLS.
func (c *ctlClient) pools(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("pools", flag.ContinueOnError)
	fs.SetOutput(stderr)
	loops := fs.Bool("loops", false, "also show each event loop's servers and waiting clients")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var st admin.ProxyStatus
	if err := c.call(http.MethodGet, "/proxy", nil, &st); err != nil {
		return err
	}
	route := st.WritesTo
	if route == "" {
		route = "nowhere (no primary: writes wait or fail)"
	}
	fmt.Fprintf(c.out, "%d client connections; writes go to %s\n", st.Clients, route)
	if st.Paused {
		fmt.Fprintf(c.out, "PAUSED (pgbastion ctl proxy resume ends it): %d clients wait, %d transactions still in flight\n", st.ClientsHeld, st.InFlight)
	} else if len(st.PausedDatabases) > 0 {
		fmt.Fprintf(c.out, "PAUSED databases %s (pgbastion ctl proxy resume DB ends it): %d clients wait\n", strings.Join(st.PausedDatabases, ", "), st.ClientsHeld)
	} else if st.ClientsHeld > 0 {
		fmt.Fprintf(c.out, "%d clients wait for a primary\n", st.ClientsHeld)
	}
	if len(st.Pools) == 0 {
		fmt.Fprintln(c.out, "no pool yet: pools open with the first client of each database and user")
		return nil
	}
	w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "BACKEND\tDATABASE\tUSER\tCLIENTS\tACTIVE\tIDLE\tSIZE\tWAITING\tMAX WAIT\tNOTE")
	for _, p := range st.Pools {
		size := fmt.Sprint(p.Size)
		if p.Reserve > 0 {
			size += fmt.Sprintf("+%d", p.Reserve)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\t%s\n", p.Backend, p.Database, p.User, p.Clients, p.ServersActive,
			p.ServersIdle, size, p.ClientsWaiting, fmtWait(p.MaxWaitSeconds), poolNote(p))
		if *loops {
			for i, l := range p.Loops {
				fmt.Fprintf(w, "  loop %d\t\t\t\t%d\t%d\t\t%d\t%s\t\n", i, l.Servers-l.ServersIdle, l.ServersIdle,
					l.ClientsWaiting, fmtWait(l.MaxWaitSeconds))
			}
		}
	}
	return w.Flush()
}

// poolNote says what an operator should notice about a pool.
func poolNote(p admin.PoolStatus) string {
	var notes []string
	if p.Paused {
		notes = append(notes, "paused: new transactions wait")
	}
	if p.ClientsWaiting > 0 && p.ServersIdle == 0 && p.ServersActive+p.ServersHeldForCancel+p.ServersLoggingIn >= p.Size {
		notes = append(notes, "full: clients wait for a server")
	}
	if p.ServersLoggingIn > 0 {
		notes = append(notes, fmt.Sprintf("%d logging in", p.ServersLoggingIn))
	}
	if p.ServersHeldForCancel > 0 {
		notes = append(notes, fmt.Sprintf("%d held until a cancel lands", p.ServersHeldForCancel))
	}
	return strings.Join(notes, "; ")
}

func fmtWait(sec float64) string {
	if sec <= 0 {
		return "-"
	}
	d := time.Duration(sec * float64(time.Second))
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Millisecond).String()
}
