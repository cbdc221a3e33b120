// Package pgtest runs real PostgreSQL servers for integration tests.
//
// It owns: finding the PostgreSQL binaries (PG_BINDIR, else the newest
// /usr/lib/postgresql/<major>/bin); the skip rules shared by every test tier (Skip, Require: a
// missing prerequisite skips the test with the reason, except with CI=true, where it fails it);
// starting a primary in a fresh directory on a free 127.0.0.1 port; adding streaming replicas
// with pg_basebackup; and the instance controls a failover test needs (Kill, Stop, Start,
// Restart, Promote, Rewind, Follow). Certs writes throwaway TLS material for proxy and Raft mTLS
// tests.
//
// # Process model
//
// The postmaster is run directly as a child process of the test ("postgres -D ..."), not with
// "pg_ctl start": the harness then learns of its death at once from wait(2) and can never mistake a
// zombie for a live server (on the test machines init reaps orphans about two seconds late).
// Backends that outlive a SIGKILLed postmaster are found by a /proc scan for processes whose
// working directory is the data directory (PostgreSQL children call setsid, so process groups do
// not hold them); Start and Rewind wait for them and cleanup kills them. The postmaster runs in
// its own process group (a ^C to the terminal reaches the test, not the server) with a Linux
// parent-death signal (SIGQUIT, PostgreSQL's immediate shutdown), so it stops even when the test
// binary dies without running its cleanups. Health is judged by connecting with pgx, never by
// PID.
//
// PostgreSQL refuses to run as root. When the test process is root, every PostgreSQL program
// (initdb, postgres, pg_ctl, pg_basebackup, pg_rewind) runs as the OS user "postgres" (override
// with PGTEST_OSUSER) and each instance lives in its own directory under the system temp dir,
// owned by that user; otherwise everything runs as the current user.
//
// # Lifecycle
//
// Every instance is stopped (immediate shutdown, then SIGKILL of any leftover process in its
// group) and its directory removed in t.Cleanup, also when the test fails; a failed test gets the
// tail of each server log in its output. Set PGTEST_KEEP=1 to keep the directories.
//
// Methods that take a testing.TB call t.Fatal and must run on the test's goroutine; the
// error-returning variants (Connect, TryExec) are safe from any goroutine.
//
// pgtest must never be imported by non-test code.
package pgtest
