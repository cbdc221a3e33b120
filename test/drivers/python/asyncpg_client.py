"""asyncpg through the proxy in transaction mode: DRIVER_CLIENTS concurrent connections.

Prepared statements (explicit and from asyncpg's statement cache, which prepares with
Parse/Describe and reads the description before it binds), executemany, copy_records_to_table
and copy_from_query, transactions with savepoints, errors and recovery, session settings that
must follow each client, and an asyncpg connection pool (whose reset query runs on release).

Prints one JSON summary line; exits non-zero with the reason on any failure.
"""

import asyncio
import datetime
import decimal
import json
import os
import sys
import traceback
import uuid

import asyncpg

DSN = os.environ["DRIVER_DSN"]
CLIENTS = int(os.environ.get("DRIVER_CLIENTS", "20"))
ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "8"))


class Check:
    def __init__(self):
        self.n = 0

    def eq(self, what, got, want):
        if got != want:
            raise AssertionError(f"{what}: got {got!r}, want {want!r}")
        self.n += 1


async def client(i):
    chk = Check()
    pids = set()
    conn = await asyncpg.connect(DSN, server_settings={"application_name": f"apg{i}"})
    try:
        await conn.execute(f"SET pgb.client = 'c{i}'")
        await conn.execute("SET TimeZone = 'Etc/GMT-%d'" % (i % 12))
        for r in range(ROUNDS):
            # Settings follow the client (a cached prepared statement).
            row = await conn.fetchrow(
                "SELECT current_setting('application_name') AS app, current_setting('pgb.client') AS c,"
                " current_setting('TimeZone') AS tz, pg_backend_pid() AS pid"
            )
            pids.add(row["pid"])
            chk.eq("settings", (row["app"], row["c"], row["tz"]), (f"apg{i}", f"c{i}", f"Etc/GMT-{i % 12}"))

            # Statement cache: several statements, each used with changing arguments.
            for k in range(6):
                v = await conn.fetchval(f"SELECT $1::int * {k + 1}", r + i)
                chk.eq("cached statement", v, (r + i) * (k + 1))

            # Explicit prepared statements, used again after the client moved servers.
            stmt = await conn.prepare("SELECT $1::int + $2::int AS s, $3::text AS t")
            for k in range(3):
                row = await stmt.fetchrow(k, r, f"t{k}")
                chk.eq("prepared", (row["s"], row["t"]), (k + r, f"t{k}"))
            chk.eq("prepared types", [a.name for a in stmt.get_parameters()], ["int4", "int4", "text"])
            await conn.execute("SELECT 1")  # a simple query in between: the server may change
            chk.eq("prepared again", await stmt.fetchval(40, 2, "x"), 42)

            # A few types through the binary protocol.
            row = await conn.fetchrow(
                "SELECT $1::numeric AS n, $2::timestamptz AS ts, $3::uuid AS u, $4::jsonb AS j,"
                " $5::int[] AS a, $6::bytea AS b",
                decimal.Decimal("12.345"), datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                uuid.UUID(int=i), '{"k": %d}' % i, [1, 2, i], b"\x00\x01",
            )
            chk.eq("types", (row["n"], row["ts"].timestamp(), row["u"].int, json.loads(row["j"]), row["a"], row["b"]),
                   (decimal.Decimal("12.345"), 1704164645.0, i, {"k": i}, [1, 2, i], b"\x00\x01"))

            # executemany is atomic: all rows or none.
            await conn.executemany("INSERT INTO apg_many VALUES ($1, $2, $3)", [(i, r, n) for n in range(20)])
            try:
                await conn.executemany("INSERT INTO apg_many VALUES ($1, $2, 10 / $3)",
                                       [(i, -1 - r, n) for n in (5, 2, 0, 1)])
                raise AssertionError("executemany with a division by zero succeeded")
            except asyncpg.exceptions.DivisionByZeroError:
                chk.n += 1
            chk.eq("executemany rows", await conn.fetchval(
                "SELECT count(*) FROM apg_many WHERE client = $1 AND round IN ($2, $3)", i, r, -1 - r), 20)

            # COPY: records in, a query out.
            res = await conn.copy_records_to_table(
                "apg_copy", records=[(i, r * 50 + n, f"row {n}") for n in range(50)], columns=["client", "n", "label"])
            chk.eq("copy in", res, "COPY 50")
            rows = await conn.fetch("SELECT n FROM apg_copy WHERE client = $1 AND n >= $2 ORDER BY n", i, r * 50)
            chk.eq("copied rows", [x["n"] for x in rows], [r * 50 + n for n in range(50)])

            # Transactions: commit, savepoint rollback, failed transaction rolled back.
            async with conn.transaction():
                await conn.execute("INSERT INTO apg_tx VALUES ($1, $2, true)", i, r)
                try:
                    async with conn.transaction():  # savepoint
                        await conn.execute("INSERT INTO apg_tx VALUES ($1, $2, false)", i, r)
                        await conn.execute("SELECT 1 / $1::int", 0)
                except asyncpg.exceptions.DivisionByZeroError:
                    chk.n += 1
                chk.eq("in tx", await conn.fetchval("SELECT txid_current_if_assigned() IS NOT NULL"), True)
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO apg_tx VALUES ($1, $2, false)", i, r)
                    await conn.fetchval("SELECT 1 / $1::int", 0)
            except asyncpg.exceptions.DivisionByZeroError:
                chk.n += 1
            chk.eq("tx rows", await conn.fetchval("SELECT count(*) FROM apg_tx WHERE client = $1 AND n = $2", i, r), 1)

            # An error outside a transaction, then the connection goes on.
            try:
                await conn.fetchval("SELECT no_such_column FROM apg_tx")
                raise AssertionError("bad query succeeded")
            except asyncpg.exceptions.UndefinedColumnError:
                chk.n += 1
    finally:
        await conn.close()
    return pids, chk.n


async def pooled(pool, i):
    """A task on an asyncpg pool: acquire, work, release (asyncpg resets the connection)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO apg_tx VALUES ($1, $2, true)", i, 1000)
            await conn.execute("SET LOCAL pgb.tx = 'x'")
            v = await conn.fetchval("SELECT current_setting('pgb.tx')")
        chk = 1 if v == "x" else 0
        return await conn.fetchval("SELECT pg_backend_pid()"), chk


async def main():
    results = await asyncio.gather(*(client(i) for i in range(CLIENTS)), return_exceptions=True)
    errs = [f"client {i}: {''.join(traceback.format_exception(r))}" for i, r in enumerate(results)
            if isinstance(r, BaseException)]
    if errs:
        print("\n".join(errs), file=sys.stderr)
        sys.exit(1)
    pids = set()
    for p, _ in results:
        pids |= p
    checks = sum(n for _, n in results)
    # Statements and an asyncpg pool of CLIENTS connections doing 3*CLIENTS short tasks.
    pool = await asyncpg.create_pool(DSN, min_size=CLIENTS, max_size=CLIENTS)
    try:
        done = await asyncio.gather(*(pooled(pool, i) for i in range(3 * CLIENTS)))
    finally:
        await pool.close()
    for pid, ok in done:
        pids.add(pid)
        checks += ok
    print(json.dumps({
        "driver": "asyncpg " + asyncpg.__version__,
        "clients": len(results),
        "pids": sorted(pids),
        "migrated": sum(1 for p, _ in results if len(p) > 1),
        "checks": checks,
    }))


if __name__ == "__main__":
    asyncio.run(main())
