-- psql through the proxy in transaction mode, run by many psql processes at once
-- (psql_test.go). Variables: client (a number). The output (psql -q: no command tags) is
-- compared line by line with client.expected; lines that start with "pid|" report the server
-- backend each check ran on.
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
SET pgb.client = :'client';
SET TimeZone = 'Etc/GMT-5';
SET DateStyle = 'German';
-- Settings follow the client from transaction to transaction, whichever server runs it.
SELECT 'pid|' || pg_backend_pid(), current_setting('pgb.client'), current_setting('TimeZone'), current_setting('DateStyle'), current_setting('application_name');
SELECT 'pid|' || pg_backend_pid(), current_setting('pgb.client'), current_setting('TimeZone'), current_setting('DateStyle'), current_setting('application_name');
SELECT 'pid|' || pg_backend_pid(), current_setting('pgb.client'), current_setting('TimeZone'), current_setting('DateStyle'), current_setting('application_name');
SELECT 'pid|' || pg_backend_pid(), current_setting('pgb.client'), current_setting('TimeZone'), current_setting('DateStyle'), current_setting('application_name');
SELECT 'pid|' || pg_backend_pid(), current_setting('pgb.client'), current_setting('TimeZone'), current_setting('DateStyle'), current_setting('application_name');
SELECT 'pid|' || pg_backend_pid(), current_setting('pgb.client'), current_setting('TimeZone'), current_setting('DateStyle'), current_setting('application_name');
SELECT date '2024-02-29';
-- A transaction over several round trips.
BEGIN;
INSERT INTO psql_t VALUES (:client, 1);
SELECT count(*) FROM psql_t WHERE client = :client;
COMMIT;
-- Several statements in one Query message.
BEGIN; INSERT INTO psql_t VALUES (:client, 2); INSERT INTO psql_t VALUES (:client, 3); COMMIT;
SELECT count(*) FROM psql_t WHERE client = :client;
-- COPY FROM STDIN (the data follows in this file) and COPY TO STDOUT.
-- (psql_t.client defaults to the session's pgb.client.)
COPY psql_t (n) FROM STDIN;
10
11
12
\.
COPY (SELECT n FROM psql_t WHERE client = :client ORDER BY n) TO STDOUT;
-- \gset and a variable used in the next statement.
SELECT count(*) AS rows FROM psql_t WHERE client = :client \gset
SELECT :rows * 10;
-- A rolled-back transaction and a failed one; the session goes on.
BEGIN;
INSERT INTO psql_t VALUES (:client, 100);
ROLLBACK;
\set ON_ERROR_STOP 0
BEGIN;
INSERT INTO psql_t VALUES (:client, 101);
SELECT 1 / 0;
SELECT 'not run';
ROLLBACK;
\set ON_ERROR_STOP 1
SELECT count(*) FROM psql_t WHERE client = :client AND n >= 100;
-- SQL-level PREPARE/EXECUTE in one transaction.
BEGIN;
PREPARE q (int) AS SELECT $1 * 2;
EXECUTE q(21);
DEALLOCATE q;
COMMIT;
SELECT 'pid|' || pg_backend_pid(), current_setting('pgb.client'), current_setting('TimeZone'), current_setting('DateStyle');
