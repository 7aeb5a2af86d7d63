"""Retention under load: pruning a million tasks while the API serves (issue 16, item 3).

    python benchmarks/prune_load.py                      # 1,000 runs x 1,000 tasks
    python benchmarks/prune_load.py --runs 100 --window 10   # a quick look

On a database of its own (``foreman_prune_bench`` on --admin-url, default the local PostgreSQL):
it writes --runs ended runs of --tasks tasks each (a run data row per 10 tasks) that ended 60 days
ago, plus one live run of the load's organisation, then starts `foreman server` and runs the same
load twice: --window seconds alone, then while `prune_all` (what `foreman prune` runs) deletes
every ended run in batches of --batch rows. The load: --clients connections alternating
`GET /tasks/:id` of a live task and `POST /runs`. It prints the latencies of both windows, the
pruning rate, and the sizes of the tables (heap and indexes) before, right after the pruning and
after each of --vacuums VACUUMs, with their dead rows; then it writes the same data again, to show
whether the freed space is reused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import asyncpg

from foreman import ids
from foreman.bench import services
from foreman.bench.defaults import BENCH_API_KEY, BENCH_ORG
from foreman.bench.stats import percentile
from foreman.prune_cli import prune_all

DATABASE = "foreman_prune_bench"
TABLES = ("run", "run_counter", "task", "run_data")
DAY_MS = 86_400_000

_SEED_RUNS = """
INSERT INTO run (id, org_id, status, input_data, created_at, updated_at, completed_at)
SELECT gen_random_uuid(), 'old-' || (g % 7), 'completed', '{"seeded": true}', $2, $2, $2
  FROM generate_series(1, $1) AS g
"""
_SEED_COUNTERS = """
INSERT INTO run_counter (run_id, shard, org_id, total_tasks, completed_tasks)
SELECT r.id, s, r.org_id, $1 / 16, $1 / 16
  FROM run r, generate_series(0, 15) AS s
 WHERE r.org_id LIKE 'old-%'
"""
_SEED_TASKS = """
INSERT INTO task (id, run_id, org_id, type, status, input_data, output_data, created_at,
                  updated_at, started_at, completed_at, duration_ms, attempt)
SELECT gen_random_uuid(), r.id, r.org_id, 'resize', 'completed', '{"url": "s3://b/k.png"}',
       '{"thumb": "s3://b/k-t.png"}', $2, $2, $2, $2, 1, 1
  FROM run r, generate_series(1, $1) AS g
 WHERE r.org_id LIKE 'old-%'
"""
_SEED_DATA = """
INSERT INTO run_data (id, run_id, task_id, org_id, key, value, created_at, updated_at)
SELECT gen_random_uuid(), t.run_id, t.id, t.org_id, 'progress', '100', $1, $1
  FROM task t
 WHERE t.org_id LIKE 'old-%' AND get_byte(uuid_send(t.id), 15) < 26
"""
_SIZES = """
SELECT relname, pg_total_relation_size(relid) AS bytes, pg_relation_size(relid) AS heap_bytes,
       pg_indexes_size(relid) AS index_bytes, n_live_tup, n_dead_tup, autovacuum_count,
       vacuum_count
  FROM pg_stat_user_tables
 WHERE relname = ANY($1::text[])
"""


async def seed(conn: asyncpg.Connection, *, runs: int, tasks: int) -> dict[str, int]:
    """The ended runs to prune; how many rows of each."""
    ended = ids.now_ms() - 60 * DAY_MS
    await conn.execute(_SEED_RUNS, runs, ended)
    await conn.execute(_SEED_COUNTERS, tasks)
    await conn.execute(_SEED_TASKS, tasks, ended)
    await conn.execute(_SEED_DATA, ended)
    await conn.execute("VACUUM (ANALYZE)")
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def sizes(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return {
        r["relname"]: {k: int(v) for k, v in r.items() if k != "relname"}
        for r in await conn.fetch(_SIZES, list(TABLES))
    }


class Load:
    """Clients alternating GET /tasks/:id and POST /runs until stop() (latencies in ms)."""

    def __init__(self, endpoint: str, task_ids: list[str], clients: int) -> None:
        self.endpoint = endpoint
        self.task_ids = task_ids
        self.clients = clients
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        headers = {"x-api-key": BENCH_API_KEY}
        connector = aiohttp.TCPConnector(limit=self.clients)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
            await asyncio.gather(*(self._client(session, n) for n in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession, n: int) -> None:
        i = n
        while not self._stop.is_set():
            i += self.clients
            began = time.perf_counter()
            if i % 2:
                task_id = self.task_ids[i % len(self.task_ids)]
                request = session.get(f"{self.endpoint}/api/v1/tasks/{task_id}")
            else:
                request = session.post(f"{self.endpoint}/api/v1/runs", json={"inputData": i})
            async with request as response:
                await response.read()
                ok = response.status < 300
            self.latencies.append((time.perf_counter() - began) * 1000)
            self.errors += not ok


def _figures(load: Load, seconds: float) -> dict[str, Any]:
    values = sorted(load.latencies)
    return {
        "requests": len(values),
        "errors": load.errors,
        "rps": round(len(values) / seconds),
        "p50_ms": round(percentile(values, 0.50), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
    }


async def window(
    endpoint: str, task_ids: list[str], clients: int, seconds: float
) -> dict[str, Any]:
    load = Load(endpoint, task_ids, clients)
    runner = asyncio.create_task(load.run())
    await asyncio.sleep(seconds)
    load.stop()
    await runner
    return _figures(load, seconds)


async def pruning_window(
    url: str, endpoint: str, task_ids: list[str], *, clients: int, batch: int
) -> dict[str, Any]:
    load = Load(endpoint, task_ids, clients)
    runner = asyncio.create_task(load.run())
    await asyncio.sleep(1)  # the load is under way first
    conn = await asyncpg.connect(url)
    began = time.monotonic()
    try:
        pruned = await prune_all(conn, ended_before=ids.now_ms() - 30 * DAY_MS, limit=batch)
    finally:
        await conn.close()
    prune_s = time.monotonic() - began
    load.stop()
    await runner
    figures = _figures(load, prune_s + 1)
    figures.update(
        prune_s=round(prune_s, 1),
        pruned={"runs": pruned.runs, "tasks": pruned.tasks, "run_data": pruned.run_data},
        rows_per_s=round(pruned.rows / prune_s),
    )
    return figures


async def live_tasks(conn: asyncpg.Connection, count: int) -> list[str]:
    """A running run of the load's organisation with count tasks; their ids."""
    run_id = ids.new_id()
    now = ids.now_ms()
    await conn.execute(
        "INSERT INTO run (id, org_id, status, input_data, created_at, updated_at)"
        " VALUES ($1, $2, 'running', '{}', $3, $3)",
        run_id,
        BENCH_ORG,
        now,
    )
    rows = await conn.fetch(
        "INSERT INTO task (id, run_id, org_id, type, input_data, created_at, updated_at)"
        " SELECT gen_random_uuid(), $1, $2, 'live', '{}', $3, $3 FROM generate_series(1, $4)"
        " RETURNING id::text",
        run_id,
        BENCH_ORG,
        now,
        count,
    )
    return [r[0] for r in rows]


async def main(options: argparse.Namespace) -> dict[str, Any]:
    database = services.BenchDatabase(admin_url=options.admin_url, source="prune")
    url = await services.fresh_bench_database(database, DATABASE)
    conn = await asyncpg.connect(url)
    result: dict[str, Any] = {"options": vars(options)}
    try:
        began = time.monotonic()
        result["seeded"] = await seed(conn, runs=options.runs, tasks=options.tasks)
        result["seed_s"] = round(time.monotonic() - began, 1)
        task_ids = await live_tasks(conn, 1000)
        result["sizes_before"] = await sizes(conn)
        env = {"FOREMAN_DB_POOL_MAX": "10", "FOREMAN_SWEEP_ENABLED": "true"}
        async with services.run_server(url, workers=1, log_level="WARNING", env=env) as server:
            args = (server.endpoint, task_ids)
            result["alone"] = await window(*args, options.clients, options.window)
            result["pruning"] = await pruning_window(
                url, *args, clients=options.clients, batch=options.batch
            )
            result["alone_after"] = await window(*args, options.clients, options.window)
        result["sizes_after_prune"] = await sizes(conn)
        for n in range(options.vacuums):
            began = time.monotonic()
            await conn.execute("VACUUM")
            result[f"vacuum_{n + 1}_s"] = round(time.monotonic() - began, 1)
            result[f"sizes_after_vacuum_{n + 1}"] = await sizes(conn)
        await seed(conn, runs=options.runs, tasks=options.tasks)
        result["sizes_after_reseed"] = await sizes(conn)
    finally:
        await conn.close()
        await services.drop_database(options.admin_url, DATABASE)
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per ended run")
    parser.add_argument("--batch", type=int, default=5000, help="rows per prune transaction")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--window", type=float, default=30.0, help="seconds of load alone")
    parser.add_argument(
        "--vacuums",
        type=int,
        default=2,
        help="VACUUMs before the data is written again (a B-tree page deleted by one VACUUM can"
        " be reused once a later one has seen that no transaction needs it)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse())), indent=2))
