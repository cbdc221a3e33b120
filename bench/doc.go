// Package bench measures PGBastion against direct PostgreSQL, HAProxy and PgBouncer on the same
// machine: throughput, CPU microseconds per transaction of the proxy process, latency
// percentiles, memory per idle client, and failover/switchover times. It prints numbers; it does
// not pass or fail.
package bench
