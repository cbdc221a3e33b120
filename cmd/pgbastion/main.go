// Command pgbastion is PGBastion's daemon and CLI: one binary per database host replacing
// Patroni, etcd, HAProxy, PgBouncer and Keepalived. This package is the only place that wires
// the proxy (engine), the HA core (ha), the VIP (netlink) and the API (admin) together.
package main

import "os"

func main() { os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr)) }
