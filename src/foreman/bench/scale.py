"""Scale figures: latency of the real store queries on a loaded database, and their plans.

Each query is the store function the API runs (same SQL, same parameters), on a connection of
the server's role under row-level security, one at a time: what one request pays in PostgreSQL.
EXPLAIN of the very SQL the store sent proves which indexes it uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from foreman.bench.defaults import BENCH_ORG
from foreman.bench.stats import summarize
from foreman.store import db
from foreman.store import run_data as run_data_store
from foreman.store import tasks as tasks_store

logger = logging.getLogger(__name__)

WARMUP_CALLS = 30

Query = Callable[[db.Db, int], Awaitable[object]]


class RecordingConnection:
    """Passes queries through to a connection and keeps the last SQL and arguments sent."""

    def __init__(self, conn: db.Connection) -> None:
        self._conn = conn
        self.sql = ""
        self.args: tuple[Any, ...] = ()

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.sql, self.args = sql, args
        return await self._conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.sql, self.args = sql, args
        return await self._conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.sql, self.args = sql, args
        return await self._conn.fetchval(sql, *args)


@dataclass(slots=True)
class Samples:
    """Ids to query: random runs and tasks of the loaded set."""

    run_ids: list[str]
    task_ids: list[str]


def queries(samples: Samples) -> dict[str, Query]:
    """The measured queries by figure name; i picks the run or task."""

    def run(i: int) -> str:
        return samples.run_ids[i % len(samples.run_ids)]

    async def list_tasks(conn: db.Db, i: int) -> object:
        filters: dict[str, str | None] = {"run_id": run(i), "status": "completed"}
        return await tasks_store.list_tasks(
            conn, org_id=BENCH_ORG, filters=filters, sort_by="created_at", sort_order="desc",
            limit=20, offset=0,
        )  # fmt: skip

    async def get_task(conn: db.Db, i: int) -> object:
        task_id = samples.task_ids[i % len(samples.task_ids)]
        return await tasks_store.get_task(conn, org_id=BENCH_ORG, task_id=task_id)

    def run_data(q: run_data_store.RunDataQuery) -> Query:
        async def query(conn: db.Db, i: int) -> object:
            return await run_data_store.query_run_data(conn, org_id=BENCH_ORG, run_id=run(i), q=q)

        return query

    return {
        "list_tasks": list_tasks,
        "get_task": get_task,
        "run_data_latest": run_data(run_data_store.RunDataQuery()),
        "run_data_tags": run_data(run_data_store.RunDataQuery(tags=("t3",))),
        "run_data_prefix": run_data(run_data_store.RunDataQuery(key_prefixes=("metrics/",))),
    }


@dataclass(slots=True)
class QueryFigure:
    """Latency of one query, the scans of its plan, and the buffers one execution touches."""

    p50_ms: float | None = None
    p99_ms: float | None = None
    buffers: int | None = None  # shared blocks hit + read: the cost, free of timing noise
    scans: list[str] = field(default_factory=list)
    seq_scans: list[str] = field(default_factory=list)


async def load_samples(conn: db.Db, *, count: int = 1000) -> Samples:
    """Random runs and tasks of the loaded set (TABLESAMPLE: no full scan of a large table)."""
    run_ids = [r[0] for r in await conn.fetch("SELECT id FROM run ORDER BY random() LIMIT 200")]
    task_ids = [
        r[0]
        for r in await conn.fetch(
            "SELECT id FROM task TABLESAMPLE SYSTEM (2) ORDER BY random() LIMIT $1", count
        )
    ]
    if not run_ids or not task_ids:
        raise RuntimeError("the scale database is empty")
    return Samples(run_ids, task_ids)


def plan_scans(plan: dict[str, Any]) -> list[str]:
    """Every scan node of a JSON plan as "Node Type on relation using index"."""
    found: list[str] = []
    node_type = plan.get("Node Type", "")
    if "Scan" in node_type and node_type not in ("CTE Scan", "Subquery Scan", "Function Scan"):
        text = node_type
        if "Relation Name" in plan:
            text += f" on {plan['Relation Name']}"
        if "Index Name" in plan:
            text += f" using {plan['Index Name']}"
        found.append(text)
    for child in plan.get("Plans", []):
        found.extend(plan_scans(child))
    return found


async def explain(conn: db.Connection, sql: str, args: tuple[Any, ...]) -> tuple[list[str], int]:
    """The scans PostgreSQL uses for sql with these arguments, and the shared buffers it touched."""
    document = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    plan = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
    return plan_scans(plan), int(
        plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    )


@dataclass(slots=True)
class _Target:
    """One loaded database under measurement."""

    conn: db.Connection
    queries: dict[str, Query]
    latencies: dict[str, list[float]] = field(default_factory=dict)
    recorder: RecordingConnection | None = None


async def _time_calls(target: _Target, name: str, calls: int) -> None:
    query = target.queries[name]
    latencies = target.latencies.setdefault(name, [])
    for _ in range(calls):
        i = random.randrange(1_000_000)  # noqa: S311 - not for security
        began = time.perf_counter()
        await query(target.conn, i)
        latencies.append(time.perf_counter() - began)


async def _figure(target: _Target, name: str) -> QueryFigure:
    recorder = RecordingConnection(target.conn)
    await target.queries[name](recorder, 0)  # type: ignore[arg-type]
    scans, buffers = await explain(target.conn, recorder.sql, recorder.args)
    latencies = target.latencies[name]
    summary = summarize(latencies, errors=0, duration_s=sum(latencies) or 1e-9)
    return QueryFigure(
        p50_ms=summary.p50_ms,
        p99_ms=summary.p99_ms,
        buffers=buffers,
        scans=scans,
        seq_scans=[scan for scan in scans if scan.startswith("Seq Scan")],
    )


async def measure_scale(
    urls: dict[str, str], *, samples: int, rounds: int = 5
) -> dict[str, dict[str, QueryFigure]]:
    """Every scale query on each database (by label), in alternating rounds.

    Alternating small and large sets round by round spreads the noise of a shared machine over
    both, so a difference between them is the table size, not the neighbours' load.
    """
    async with contextlib.AsyncExitStack() as stack:
        targets: dict[str, _Target] = {}
        for label, url in urls.items():
            pool = await db.create_pool(
                url, min_size=1, max_size=1, command_timeout_s=60.0, connect_timeout_s=10.0
            )
            stack.push_async_callback(pool.close)
            conn = await stack.enter_async_context(db.org_connection(pool, BENCH_ORG))
            targets[label] = _Target(conn, queries(await load_samples(conn)))
        names = list(queries(Samples(["-"], ["-"])))
        for name in names:
            for target in targets.values():
                await _time_calls(target, name, WARMUP_CALLS)
                target.latencies[name] = []
            for _ in range(rounds):
                for target in targets.values():
                    await _time_calls(target, name, max(1, samples // rounds))
        return {
            label: {name: await _figure(target, name) for name in names}
            for label, target in targets.items()
        }
