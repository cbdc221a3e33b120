"""psycopg 3 through the proxy in transaction mode: DRIVER_CLIENTS concurrent connections.

Normal queries (simple and extended protocol), server-side prepared statements (prepare=True
and prepare_threshold, with more statements than prepared_max so psycopg DEALLOCATEs), pipeline mode with many statements and an error inside the pipeline,
COPY in and out, transactions, and session settings that must follow each client.

Prints one JSON summary line; exits non-zero with the reason on any failure.
"""

import json
import logging
import os
import sys
import threading
import traceback

import psycopg
from psycopg import errors

DSN = os.environ["DRIVER_DSN"]
CLIENTS = int(os.environ.get("DRIVER_CLIENTS", "20"))
ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "8"))

# psycopg logs "error ignored terminating pipeline" when leaving the aborted pipeline on purpose.
logging.getLogger("psycopg").setLevel(logging.ERROR)


class Check:
    def __init__(self):
        self.n = 0

    def eq(self, what, got, want):
        if got != want:
            raise AssertionError(f"{what}: got {got!r}, want {want!r}")
        self.n += 1


def client(i, out):
    chk = Check()
    pids = set()
    tz = f"Etc/GMT-{i % 12}"
    with psycopg.connect(DSN, application_name=f"psy{i}", autocommit=True) as conn:
        conn.prepare_threshold = 2
        # Fewer than the statements below: psycopg evicts with DEALLOCATE, sent with the
        # extended protocol (inside and outside pipelines).
        conn.prepared_max = 5
        conn.execute(f"SET TimeZone = '{tz}'")
        conn.execute(f"SET pgb.client = 'c{i}'")
        for r in range(ROUNDS):
            # Settings follow the client (simple protocol: no parameters).
            row = conn.execute(
                "SELECT current_setting('application_name'), current_setting('TimeZone'),"
                " current_setting('pgb.client'), pg_backend_pid()"
            ).fetchone()
            pids.add(row[3])
            chk.eq("settings", row[:3], (f"psy{i}", tz, f"c{i}"))

            # Extended protocol with parameters; the same statements prepared on the server
            # (prepare=True, and prepare_threshold=2 for the implicit ones).
            for k in range(6):
                got = conn.execute(
                    f"SELECT %s::int * {k + 1}, %s::text || '-{k}'", (r + i, "x")
                ).fetchone()
                chk.eq("params", got, ((r + i) * (k + 1), f"x-{k}"))
                got = conn.execute(
                    f"SELECT %s::bigint + {k}, %s::text", (i, f"p{k}"), prepare=True
                ).fetchone()
                chk.eq("prepared", got, (i + k, f"p{k}"))
            row = conn.execute(
                "SELECT pg_backend_pid(), current_setting('pgb.client')", prepare=True
            ).fetchone()
            pids.add(row[0])
            chk.eq("prepared settings", row[1], f"c{i}")

            # Pipeline mode: many statements, results read mid-pipeline (Flush), then Sync.
            with conn.pipeline():
                curs = []
                for n in range(10):
                    cur = conn.cursor()
                    cur.execute(
                        "INSERT INTO psy_pipe (client, round, n) VALUES (%s, %s, %s) RETURNING n",
                        (i, r, n),
                    )
                    curs.append(cur)
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO psy_pipe (client, round, n) VALUES (%s, %s, %s)",
                        [(i, r, n) for n in range(10, 20)],
                    )
                cnt = conn.cursor()
                cnt.execute(
                    "SELECT count(*) FROM psy_pipe WHERE client = %s AND round = %s", (i, r),
                    prepare=True,
                )
                chk.eq("pipeline RETURNING", [c.fetchone()[0] for c in curs], list(range(10)))
                chk.eq("pipeline count", cnt.fetchone()[0], 20)

            # An error inside a pipeline: the statements before it ran, it raises its own
            # error, the ones after it are aborted; then the connection recovers.
            try:
                with conn.pipeline() as p:
                    conn.execute("INSERT INTO psy_pipe (client, round, n) VALUES (%s, %s, -1)", (i, r))
                    p.sync()
                    conn.execute("INSERT INTO psy_pipe (client, round, n) VALUES (%s, %s, -2)", (i, r))
                    conn.execute("SELECT 1 / %s::int", (0,))
                    conn.execute("INSERT INTO psy_pipe (client, round, n) VALUES (%s, %s, -3)", (i, r))
                    conn.execute("SELECT 1", prepare=True)
                raise AssertionError("pipeline with a division by zero did not fail")
            except errors.DivisionByZero:
                chk.n += 1
            got = conn.execute(
                "SELECT array_agg(n ORDER BY n) FROM psy_pipe WHERE client = %s AND round = %s AND n < 0",
                (i, r),
            ).fetchone()[0]
            chk.eq("rows kept by the failed pipeline", got, [-1])
            # After the error, a pipeline works again, prepared statements included.
            with conn.pipeline():
                a = conn.execute("SELECT %s::int + 1", (r,), prepare=True)
                b = conn.execute("SELECT current_setting('pgb.client')")
                chk.eq("pipeline after error", (a.fetchone()[0], b.fetchone()[0]), (r + 1, f"c{i}"))

            # COPY in and out.
            with conn.cursor() as cur:
                with cur.copy("COPY psy_copy (client, n, label) FROM STDIN") as cp:
                    for n in range(50):
                        cp.write_row((i, r * 50 + n, f"row\t{i}/{n}"))
                chk.eq("copy in", cur.rowcount, 50)
                got = []
                with cur.copy(
                    f"COPY (SELECT n, label FROM psy_copy WHERE client = {i} AND n >= {r * 50} ORDER BY n) TO STDOUT"
                ) as cp:
                    cp.set_types(["int4", "text"])
                    got = list(cp.rows())
                chk.eq("copy out", got, [(r * 50 + n, f"row\t{i}/{n}") for n in range(50)])

            # Transactions: committed, rolled back by an exception, failed then rolled back.
            with conn.transaction():
                conn.execute("INSERT INTO psy_tx VALUES (%s, %s, true)", (i, r))
                chk.eq("in tx", conn.execute("SELECT txid_current_if_assigned() IS NOT NULL").fetchone()[0], True)
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO psy_tx VALUES (%s, %s, false)", (i, r))
                    raise KeyError("roll back")
            except KeyError:
                pass
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO psy_tx VALUES (%s, %s, false)", (i, r))
                    conn.execute("SELECT 1 / %s::int", (0,))
            except errors.DivisionByZero:
                chk.n += 1
            chk.eq(
                "tx rows",
                conn.execute("SELECT count(*) FROM psy_tx WHERE client = %s AND n = %s", (i, r)).fetchone()[0],
                1,
            )

        # A connection that is not in autocommit: psycopg's own BEGIN, commit and rollback.
    with psycopg.connect(DSN, application_name=f"psy{i}") as conn:
        conn.execute("INSERT INTO psy_tx VALUES (%s, %s, true)", (i, 1000))
        conn.commit()
        conn.execute("INSERT INTO psy_tx VALUES (%s, %s, false)", (i, 1001))
        conn.rollback()
        chk.eq(
            "non-autocommit",
            conn.execute("SELECT count(*) FROM psy_tx WHERE client = %s AND n >= 1000", (i,)).fetchone()[0],
            1,
        )
        conn.rollback()
    out[i] = (pids, chk.n)


def main():
    out = {}
    errs = []

    def run(i):
        try:
            client(i, out)
        except Exception:
            errs.append(f"client {i}: {traceback.format_exc()}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errs:
        for e in errs:
            print(e, file=sys.stderr)
        sys.exit(1)
    pids = set()
    for p, _ in out.values():
        pids |= p
    print(json.dumps({
        "driver": "psycopg " + psycopg.__version__,
        "clients": len(out),
        "pids": sorted(pids),
        "migrated": sum(1 for p, _ in out.values() if len(p) > 1),
        "checks": sum(n for _, n in out.values()),
    }))


if __name__ == "__main__":
    main()
