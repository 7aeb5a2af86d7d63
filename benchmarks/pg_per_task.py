"""PostgreSQL's work per task on the hot path, through the store functions of the `src` on
PYTHONPATH (issues 13 and 17; benchmarks/README.md, session 8).

Each run migrates a fresh database with `foreman migrate` of that tree (two trees compare their
own schemas), then measures the CPU of the PostgreSQL backends that ran the statements
(`/proc/<pid>/schedstat`: this machine only, as root or as the postgres user) and, when
pg_stat_statements is loaded, each statement's calls, rows, mean time, WAL records and buffers
of this database only (read through the database named by --stats-db, which needs the extension).

    drain:     TASKS queued tasks (batches of 500, `POST /tasks/batch`'s statement), VACUUM
               (ANALYZE), then WORKERS loops of claim_tasks(CLAIM) + finish_tasks(all claimed)
    e2e:       the same loops while one more inserts the TASKS in batches of 500 (the statistics
               are those of an empty table, as in `foreman bench`'s end-to-end window)
    lifecycle: N legacy lifecycles on one connection (insert_task, PATCH running, PATCH
               completed with ~500 B of output), the backend's CPU per step

    FOREMAN_DATABASE_URL=postgresql://postgres@/postgres?host=/var/run/postgresql \\
        PYTHONPATH=/tmp/tree/src python benchmarks/pg_per_task.py drain [--tasks 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import asyncpg
import msgspec

from foreman.bench import services
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import tasks as tasks_store

DATABASE = "foreman_pg_per_task"
ORG = "org_pg_per_task"
OUTPUT = msgspec.Raw(msgspec.json.encode({"result": "x" * 480}))


def cpu_ns(pid: int) -> int:
    """CPU time the process has run, in nanoseconds."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as stat:
        return int(stat.read().split()[0])


def now_ms() -> int:
    return int(time.time() * 1000)


async def statements(stats: asyncpg.Connection | None, dbid: int, min_calls: int) -> None:
    if stats is None:
        return
    rows = await stats.fetch(
        """SELECT calls, rows, total_exec_time, wal_records,
                  shared_blks_hit + shared_blks_read AS blocks,
                  left(regexp_replace(query, '\\s+', ' ', 'g'), 50) AS query
             FROM pg_stat_statements
            WHERE dbid = $1 AND calls >= $2 ORDER BY total_exec_time DESC LIMIT 6""",
        dbid,
        min_calls,
    )
    for r in rows:
        per = max(r["rows"], 1)
        print(
            f"  {r['calls']:6} calls x {r['rows'] / r['calls']:6.1f} rows"
            f"  mean {r['total_exec_time'] / r['calls']:7.3f} ms"
            f"  per row: {r['total_exec_time'] * 1000 / per:7.1f} µs"
            f"  WAL {r['wal_records'] / per:5.2f}  buffers {r['blocks'] / per:5.1f}  {r['query']}"
        )


async def main(args: argparse.Namespace) -> None:
    server = os.environ["FOREMAN_DATABASE_URL"]
    admin = services.with_database(server, "postgres")
    url = services.with_database(server, DATABASE)
    await services.recreate_database(admin, DATABASE)
    stats: asyncpg.Connection | None = None
    try:
        await services.migrate(url)
        owner = await asyncpg.connect(url)
        dbid = await owner.fetchval("SELECT oid FROM pg_database WHERE datname = $1", DATABASE)
        try:
            stats = await asyncpg.connect(services.with_database(server, args.stats_db))
            await stats.fetchval("SELECT count(*) FROM pg_stat_statements")
        except (asyncpg.PostgresError, OSError):
            stats = None
        pool = await db.create_pool(
            url, min_size=args.workers + 2, max_size=args.workers + 2,
            command_timeout_s=60, connect_timeout_s=5,
        )  # fmt: skip
        try:
            run = str(uuid.uuid4())
            await owner.execute(
                "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
                " VALUES ($1, $2, '{}', $3, $3)",
                run, ORG, now_ms(),
            )  # fmt: skip
            if args.mode == "lifecycle":
                await lifecycle(args, pool, owner, stats, dbid)
            else:
                await queue(args, pool, owner, stats, dbid, run)
        finally:
            await pool.close()
            await owner.close()
    finally:
        if stats is not None:
            await stats.close()
        await services.drop_database(admin, DATABASE)


async def insert(pool: Any, run: str, count: int) -> None:
    news = [
        tasks_store.NewTask(
            run_id=run, task_type="noop", input_data=msgspec.Raw(b'{"i": %d}' % i), enqueue=True
        )
        for i in range(count)
    ]
    async with db.org_connection(pool, ORG) as conn:
        result = await tasks_store.insert_plain_tasks(
            conn, org_id=ORG, task_ids=[str(uuid.uuid4()) for _ in news], news=news, now=now_ms()
        )
    assert result.failed_index is None


async def backends(pool: Any, owner: asyncpg.Connection, count: int) -> list[int]:
    async def hold() -> None:
        async with db.org_connection(pool, ORG) as conn:
            await conn.fetchval("SELECT 1")
            await asyncio.sleep(0.2)

    await asyncio.gather(*(hold() for _ in range(count)))
    return [
        r["pid"]
        for r in await owner.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            DATABASE,
        )
    ]


async def queue(
    args: argparse.Namespace,
    pool: Any,
    owner: asyncpg.Connection,
    stats: asyncpg.Connection | None,
    dbid: int,
    run: str,
) -> None:
    if args.mode == "drain":
        for _ in range(args.tasks // 500):
            await insert(pool, run, 500)
        await owner.execute("VACUUM (ANALYZE)")
    pids = await backends(pool, owner, args.workers + 2)
    if stats is not None:
        await stats.execute("SELECT pg_stat_statements_reset(0, $1, 0)", dbid)
    done = 0
    to_insert = args.tasks if args.mode == "e2e" else 0

    async def inserter() -> None:
        nonlocal to_insert
        while to_insert > 0:
            await insert(pool, run, 500)
            to_insert -= 500

    async def worker(number: int) -> None:
        nonlocal done
        while done < args.tasks:
            async with db.org_connection(pool, ORG) as conn:
                tasks = await queue_store.claim_tasks(
                    conn, org_id=ORG, worker_id=f"w{number}", types=None, limit=args.claim,
                    lease_ms=60_000, now=now_ms(),
                )  # fmt: skip
            if not tasks:
                await asyncio.sleep(0.005)
                continue
            outcomes = [queue_store.Outcome(t.id, t.lease_token, "completed") for t in tasks]
            async with db.org_connection(pool, ORG) as conn:
                ended = await queue_store.finish_tasks(
                    conn, org_id=ORG, outcomes=outcomes, now=now_ms()
                )
            assert all(e.ok for e in ended)
            done += len(ended)

    before = {pid: cpu_ns(pid) for pid in pids}
    started = time.perf_counter()
    await asyncio.gather(inserter(), *(worker(n) for n in range(args.workers)))
    elapsed = time.perf_counter() - started
    used = sum(cpu_ns(pid) - before[pid] for pid in pids)
    print(
        f"{args.mode}: {done:,} tasks, {done / elapsed:,.0f} tasks/s,"
        f" PostgreSQL backends {used / 1000 / done:.1f} µs CPU per task"
    )
    await statements(stats, dbid, 10)


async def lifecycle(
    args: argparse.Namespace,
    pool: Any,
    owner: asyncpg.Connection,
    stats: asyncpg.Connection | None,
    dbid: int,
) -> None:
    runs = [str(uuid.uuid4()) for _ in range(200)]
    await owner.executemany(
        "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
        " VALUES ($1, $2, '{}', $3, $3)",
        [(r, ORG, now_ms()) for r in runs],
    )
    totals = [0, 0, 0]
    async with db.org_connection(pool, ORG) as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")

        async def one(i: int) -> tuple[int, int, int]:
            task_id = str(uuid.uuid4())
            new = tasks_store.NewTask(
                run_id=runs[i % 200], task_type="bench", input_data=msgspec.Raw(b'{"i": %d}' % i)
            )
            c0 = cpu_ns(pid)
            await tasks_store.insert_task(conn, org_id=ORG, task_id=task_id, new=new, now=now_ms())
            c1 = cpu_ns(pid)
            running = await tasks_store.update_task(
                conn, org_id=ORG, task_id=task_id, changes={"status": "running"}, now=now_ms()
            )
            c2 = cpu_ns(pid)
            completed = await tasks_store.update_task(
                conn, org_id=ORG, task_id=task_id,
                changes={"status": "completed", "output_data": OUTPUT}, now=now_ms(),
            )  # fmt: skip
            c3 = cpu_ns(pid)
            assert running.task is not None
            assert completed.task is not None
            return c1 - c0, c2 - c1, c3 - c2

        for i in range(300):  # warm-up: the statements prepared, their generic plans made
            await one(i)
        await owner.execute("VACUUM (ANALYZE)")
        if stats is not None:
            await stats.execute("SELECT pg_stat_statements_reset(0, $1, 0)", dbid)
        for i in range(args.n):
            for step, used in enumerate(await one(i)):
                totals[step] += used
    per = [t / 1000 / args.n for t in totals]
    print(
        f"lifecycle: {args.n:,} on one connection, backend CPU per step (µs): insert"
        f" {per[0]:.1f}, PATCH running {per[1]:.1f}, PATCH completed {per[2]:.1f},"
        f" total {sum(per):.1f}"
    )
    await statements(stats, dbid, args.n // 2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("drain", "e2e", "lifecycle"))
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--claim", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=2000, help="lifecycles")
    parser.add_argument("--stats-db", default="postgres", help="a database with the extension")
    asyncio.run(main(parser.parse_args()))
