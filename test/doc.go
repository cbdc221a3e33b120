// Package test holds PGBastion's integration and end-to-end tests: real PostgreSQL servers started
// in temporary directories, real clients (psql, pgbench, pgx, psycopg, asyncpg, node-postgres,
// pgjdbc), and, for the end-to-end tier, one network namespace per node.
//
// Tests that need something the machine lacks skip with the reason, except when CI=true, where
// every such skip is a failure.
package test
