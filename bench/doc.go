// Package bench measures PGBastion against direct PostgreSQL, HAProxy and PgBouncer on the same
// machine: throughput, latency percentiles, CPU microseconds per transaction of the proxy
// process (and of PostgreSQL and pgbench), and memory per idle client. It prints numbers; it
// does not pass or fail.
//
// Run owns one benchmark: it initialises a PostgreSQL cluster in a temporary directory (as the
// postgres OS user when run as root), loads pgbench's tables, starts every proxy as a child
// process on a free port (PGBastion from a fresh build of ./cmd/pgbastion, PgBouncer and HAProxy
// from the system's packages, each with a configuration written into the work directory), then
// runs each scenario's pgbench workload against every target, interleaved over rounds with the
// target order rotated, and reports medians and ratios as text and markdown. Every child is
// stopped and the directory removed when Run returns; children die with the harness.
//
// The command is bench/cmd/pgbench-compare (`make bench`). The figures are only as good as the
// machine is quiet: each run also records the CPU share taken by processes outside the
// benchmark. Failover and switchover timings are not measured here yet.
package bench
