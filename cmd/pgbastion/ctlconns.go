package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/pgbastion/pgbastion/admin"
)

// connections prints the proxy's connections on the node the API belongs to: PgBouncer's
// SHOW CLIENTS and SHOW SERVERS. Waiting clients come first, longest wait first, then
// clients holding a server; a client's SERVER PID is the pg_stat_activity.pid of the server
// it holds.
func (c *ctlClient) connections(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("connections", flag.ContinueOnError)
	fs.SetOutput(stderr)
	waiting := fs.Bool("waiting", false, "only clients waiting for a server, and no servers")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var body struct {
		Connections []admin.ConnStatus `json:"connections"`
	}
	if err := c.call(http.MethodGet, "/proxy/connections", nil, &body); err != nil {
		return err
	}
	var clients, servers []admin.ConnStatus
	nClients, nWaiting := 0, 0
	for _, cs := range body.Connections {
		if cs.Kind != "server" {
			nClients++
		}
		switch {
		case cs.Kind == "server":
			servers = append(servers, cs)
		case cs.State == "waiting":
			nWaiting++
			clients = append(clients, cs)
		case !*waiting:
			clients = append(clients, cs)
		}
	}
	rank := func(cs admin.ConnStatus) int {
		switch {
		case cs.State == "waiting":
			return 0
		case cs.Link != "":
			return 1
		}
		return 2
	}
	sort.SliceStable(clients, func(i, j int) bool {
		if ri, rj := rank(clients[i]), rank(clients[j]); ri != rj {
			return ri < rj
		}
		return clients[i].WaitSeconds > clients[j].WaitSeconds
	})
	now := time.Now()
	age := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return fmtAge(now.Sub(t)) + " ago"
	}
	fmt.Fprintf(c.out, "%d client connections, %d waiting for a server; %d server connections\n",
		nClients, nWaiting, len(servers))
	if len(clients) > 0 {
		w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "CLIENT\tUSER\tDATABASE\tSTATE\tWAIT\tSERVER PID\tAPPLICATION\tCONNECTED\tLAST REQUEST\tTLS\tID")
		for _, cs := range clients {
			pid := "-"
			if cs.BackendPID != 0 {
				pid = fmt.Sprint(cs.BackendPID)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cs.Addr, cs.User, cs.Database, cs.State,
				fmtWait(cs.WaitSeconds), pid, orDash(cs.ApplicationName), age(cs.ConnectedAt), age(cs.LastRequestAt), orDash(cs.TLS), cs.ID)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if len(servers) > 0 && !*waiting {
		fmt.Fprintln(c.out)
		w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "SERVER\tDATABASE\tUSER\tSTATE\tPID\tCLIENT\tPREPARED\tCONNECTED\tLAST USED")
		byID := make(map[string]admin.ConnStatus, len(body.Connections))
		for _, cs := range body.Connections {
			byID[cs.ID] = cs
		}
		for _, cs := range servers {
			client := "-"
			if cl, ok := byID[cs.Link]; ok && cs.Link != "" {
				client = cl.Addr
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", cs.Addr, cs.Database, cs.User, cs.State, cs.BackendPID,
				client, cs.PreparedStatements, age(cs.ConnectedAt), age(cs.LastRequestAt))
		}
		return w.Flush()
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// fmtAge rounds a duration for a table: seconds under an hour, minutes above.
func fmtAge(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}
