// Package drivers proves client compatibility of the proxy in transaction mode (issue 3, items
// 1 and 2) with the real drivers people use: pgx v5, psycopg 3 (including pipeline mode),
// asyncpg, node-postgres, pgjdbc, psql and pgbench.
//
// Each test starts a real PostgreSQL (test/pgtest) and the proxy in-process with a deliberately
// small pool (2 server connections) in transaction mode, then drives it with 20 concurrent
// clients so that prepared statements and session settings must migrate between servers. The
// non-Go drivers are programs next to this file, run as subprocesses with the connection
// parameters in the environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and
// DRIVER_DSN); each prints one JSON summary line that the test checks, so a driver that did
// nothing cannot pass.
//
// The state-leak tests (leak_test.go) make one client leave state behind — an open
// transaction, a SET, a named or SQL-level prepared statement, a temporary table, an advisory
// lock — and prove that other clients, which must share the same two server connections, never
// see it.
//
// The tests run in parallel with each other (each has its own PostgreSQL and proxy) and take
// a few seconds to a few tens of seconds each; PGBASTION_DRIVERS_DIRECT=1 points the clients at
// PostgreSQL itself, to tell a bug in a driver program from a bug in the proxy.
//
// Tools that are missing (python3 modules, node/npm, javac, psql, pgbench) skip the test with a
// reason, and fail it when CI=true. node-postgres is installed with `npm ci` from the committed
// lockfile into node/node_modules (git-ignored) the first time it is needed.
//
// This package holds tests only.
package drivers
