"""What a claim, a heartbeat and a completion write in PostgreSQL, per task (issue 17).

Loads TASKS queued no-op tasks into a fresh database (migrated by `foreman migrate` of the `src`
on PYTHONPATH, so two trees compare their schemas), then ROUNDS times: claim BATCH tasks
(store/sql/queue.sql claim_tasks), heartbeat them, complete them (finish_tasks), each statement
under EXPLAIN (ANALYZE, BUFFERS, WAL). Prints per task the WAL records and bytes and the buffers
each statement touched, and the tables' updates and HOT updates (pg_stat_user_tables). WAL
records and buffer counts do not depend on the machine's load; the times do.

    FOREMAN_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python benchmarks/write_amp.py [--tasks 20000] [--batch 100] [--rounds 40] \\
        [--drop task_org_status_idx --drop task_run_status_idx]

--drop INDEX (repeatable) drops an index after the migration: what the statements would write
without it (the claim reads task_ready_idx; dropped, it scans the table instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import defaultdict
from typing import Any

import asyncpg

from foreman.bench import services
from foreman.store.queries import load_statements

DATABASE = "foreman_write_amp"
ORG = "org_write_amp"
LEASE_MS = 60_000
Q = load_statements("queue")


async def load(conn: asyncpg.Connection, tasks: int) -> None:
    now = int(time.time() * 1000)
    run = uuid.uuid4()
    await conn.execute(
        "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
        " VALUES ($1, $2, '{}', $3, $3)",
        run, ORG, now,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO task (id, run_id, org_id, type, status, input_data, created_at, updated_at,
                             queued_at, run_after)
           SELECT gen_random_uuid(), $1, $2, 'noop', 'queued', '{"i": 1}', $3::bigint + g,
                  $3::bigint + g, $3::bigint, 0
             FROM generate_series(1, $4) g""",
        run, ORG, now, tasks,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO run_counter (run_id, shard, org_id, total_tasks) VALUES ($1, 0, $2, $3)",
        run, ORG, tasks,
    )  # fmt: skip
    await conn.execute("VACUUM (ANALYZE)")
    await conn.execute("SELECT pg_stat_reset()")


async def explain(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, float]:
    """Run sql under EXPLAIN (ANALYZE, BUFFERS, WAL) in a transaction of its own: its totals."""
    async with conn.transaction():
        text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + sql, *args)
    plan = json.loads(text)[0]
    top = plan["Plan"]
    return {
        "wal_records": top.get("WAL Records", 0),
        "wal_bytes": top.get("WAL Bytes", 0),
        "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
        "ms": plan["Execution Time"],
    }


async def measure(conn: asyncpg.Connection, batch: int, rounds: int) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for _ in range(rounds):
        now = int(time.time() * 1000)
        for key, value in (
            await explain(conn, Q["claim_tasks"], ORG, now, None, batch, LEASE_MS, "w")
        ).items():
            totals["claim"][key] += value
        # EXPLAIN answers no rows: the leases are read back (in id order, as the store sends them).
        leases = await conn.fetch(
            "SELECT id, lease_token FROM task WHERE org_id = $1 AND status = 'running' ORDER BY id",
            ORG,
        )
        ids = [r["id"] for r in leases]
        tokens = [r["lease_token"] for r in leases]
        beat = await explain(conn, Q["heartbeat"], ORG, ids, tokens, now + 1000, LEASE_MS)
        done = await explain(
            conn, Q["finish_tasks"], ORG, ids, tokens, ["completed"] * len(ids),
            ['{"ok": 1}'] * len(ids), [None] * len(ids), [False] * len(ids), now + 2000, 1,
        )  # fmt: skip
        for name, figures in (("heartbeat", beat), ("complete", done)):
            for key, value in figures.items():
                totals[name][key] += value
    return {name: {k: v / (rounds * batch) for k, v in t.items()} for name, t in totals.items()}


async def table_counters(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetch(
        """SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
            WHERE relname IN ('task', 'task_attempt', 'run_counter') ORDER BY relname"""
    )


async def main(tasks: int, batch: int, rounds: int, drop: list[str]) -> None:
    admin = services.with_database(os.environ["FOREMAN_DATABASE_URL"], "postgres")
    url = services.with_database(admin, DATABASE)
    await services.recreate_database(admin, DATABASE)
    try:
        await services.migrate(url)
        conn = await asyncpg.connect(url)
        try:
            for index in drop:
                await conn.execute(
                    await conn.fetchval("SELECT format('DROP INDEX %I', $1::text)", index)
                )
            await load(conn, tasks)
            per_task = await measure(conn, batch, rounds)
            counters = await table_counters(conn)
        finally:
            await conn.close()
    finally:
        await services.drop_database(admin, DATABASE)
    dropped = f", without {', '.join(drop)}" if drop else ""
    print(f"{tasks:,} queued tasks, {rounds} rounds of {batch}{dropped}: per task")
    for name, f in per_task.items():
        print(
            f"  {name:<10} WAL records {f['wal_records']:5.2f}  WAL bytes {f['wal_bytes']:6.0f}"
            f"  buffers {f['buffers']:5.1f}  {f['ms'] * 1000:6.1f} µs"
        )
    for r in counters:
        print(f"  {r['relname']:<13} updates {r['n_tup_upd']:6}  HOT {r['n_tup_hot_upd']:6}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--drop", action="append", default=[], metavar="INDEX")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.batch, args.rounds, args.drop))
