package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `pgbastion — PostgreSQL high availability, routing and pooling in one binary

Usage:
  pgbastion run [-c FILE]          run the daemon (default config /etc/pgbastion/pgbastion.yaml)
  pgbastion check [-c FILE]        validate a configuration file and exit
  pgbastion demo [--dir D] [--base-port P] [--synchronous-mode off|on|quorum]
                                   start a local three-node demo cluster; Ctrl-C stops and removes it
  pgbastion ctl [--api URL] [--token T] list|switchover|failover|pause|resume|remove
                                   operate a cluster through its API
  pgbastion raft backup -o FILE | raft restore FILE
                                   save or restore the replicated state through the API
  pgbastion version                print the version

Run "pgbastion COMMAND -h" for the options of a command.
`

// Main runs the CLI and returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "run":
		err = cmdRun(rest, stdout, stderr)
	case "check":
		err = cmdCheck(rest, stdout, stderr)
	case "demo":
		err = cmdDemo(rest, stdout, stderr)
	case "ctl":
		err = cmdCtl(rest, stdout, stderr)
	case "raft":
		err = cmdRaft(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "pgbastion", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "pgbastion: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err == flag.ErrHelp {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgbastion %s: %s\n", cmd, strings.TrimSpace(err.Error()))
		return 1
	}
	return 0
}
