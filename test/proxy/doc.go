// Package proxy holds the proxy's end-to-end acceptance scenarios (issue 2, "done when"): the
// real pgbastion binary (test/daemon) in front of a real primary and streaming replica
// (test/pgtest), driven by real clients — psql under a pseudo-terminal, pgbench in its three
// query modes, pgx — through both the read-write and the read-only listener.
//
// The package has no non-test code. Run it with
//
//	go test -tags hashicorpmetrics -race ./test/proxy/
//
// PGBASTION_PGBENCH_SECONDS shortens the pgbench runs (default and CI: 30 s). Every scenario
// skips when PostgreSQL or its client programs are missing, and fails instead when CI=true.
package proxy
