"""Scale figures: latency of the API's read queries on a loaded database, and their plans.

Each query is the SQL the server sends for a request (same text, same parameters, as of the
migrations this bench loads), on a connection set up as the server's: role foreman_app under
row-level security, bound to the bench organisation, one query at a time: what one request pays
in PostgreSQL (the round trip only: the server's Python around the query is not timed). EXPLAIN
of the same SQL shows which indexes it uses. The SQL is the bench's own copy, since the bench
reaches Foreman only through its HTTP API, its SDK and plain SQL;
tests/integration/test_bench_scale.py checks that it reads the rows the API answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from foreman.bench.defaults import BENCH_ORG
from foreman.bench.stats import summarize

logger = logging.getLogger(__name__)

WARMUP_CALLS = 30
PAGE = 20  # GET /api/v1/tasks?runId=&status=&limit=20
RUN_DATA_PAGE = 100  # GET /api/v1/runs/:id/data, default limit

# Defined by the migrations: requests run as this role, under RLS policies on this setting.
_SET_ROLE = "SET ROLE foreman_app"
_SET_ORG = "SELECT set_config('app.current_org_id', $1, false)"

# What the API reads for a task and for a run-data row: the width of each row fetched.
_TASK_COLUMNS = """
    t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
    t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
    t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
    t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END,
    t.lease_expires_at, t.idempotency_key, t.worker_id"""
_RUN_DATA_COLUMNS = """
    d.id, d.run_id, d.task_id, d.org_id, d.key, d.value, d.tags, d.metadata,
    d.created_at, d.updated_at"""

_GET_TASK = f"SELECT {_TASK_COLUMNS} FROM task t WHERE t.org_id = $1 AND t.id = $2"

# A page of a run's tasks in one status, newest first, and how many there are.
_LIST_TASKS = f"""
SELECT n.total, p.*
  FROM (SELECT count(*) AS total FROM task t WHERE t.org_id = $1 AND t.run_id = $2 AND t.status = $3) n
  LEFT JOIN LATERAL (
      SELECT {_TASK_COLUMNS} FROM task t WHERE t.org_id = $1 AND t.run_id = $2 AND t.status = $3
       ORDER BY t.created_at DESC, t.id DESC LIMIT $4 OFFSET $5
  ) p ON true
"""


def _latest_run_data(condition: str, page_at: int) -> str:
    """The latest row per key of a run among rows matching condition, a page, and the count."""
    return f"""
WITH m AS (SELECT DISTINCT ON (d.key) * FROM run_data d WHERE d.org_id = $1 AND d.run_id = $2{condition}
            ORDER BY d.key, d.created_at DESC, d.id DESC)
SELECT n.total, p.*
  FROM (SELECT count(*) AS total FROM m) n
  LEFT JOIN LATERAL (
      SELECT {_RUN_DATA_COLUMNS} FROM m d
       ORDER BY d.created_at DESC, d.id DESC LIMIT ${page_at} OFFSET ${page_at + 1}
  ) p ON true
"""


_LATEST_RUN_DATA = _latest_run_data("", 3)
_LATEST_RUN_DATA_BY_TAGS = _latest_run_data(" AND d.tags && $3::text[]", 4)
_LATEST_RUN_DATA_BY_PREFIXES = _latest_run_data(" AND (d.key LIKE ANY($3::text[]))", 4)


@dataclass(frozen=True, slots=True)
class Query:
    """One measured statement; args(i) are its parameters for the i-th call."""

    sql: str
    args: Callable[[int], tuple[object, ...]]


@dataclass(slots=True)
class Samples:
    """Ids to query: random runs and tasks of the loaded set."""

    run_ids: list[str]
    task_ids: list[str]


def queries(samples: Samples) -> dict[str, Query]:
    """The measured queries by figure name; i picks the run or task."""

    def run(i: int) -> str:
        return samples.run_ids[i % len(samples.run_ids)]

    def task(i: int) -> str:
        return samples.task_ids[i % len(samples.task_ids)]

    def run_data(sql: str, *condition: object) -> Query:
        return Query(sql, lambda i: (BENCH_ORG, run(i), *condition, RUN_DATA_PAGE, 0))

    return {
        "list_tasks": Query(_LIST_TASKS, lambda i: (BENCH_ORG, run(i), "completed", PAGE, 0)),
        "get_task": Query(_GET_TASK, lambda i: (BENCH_ORG, task(i))),
        "run_data_latest": run_data(_LATEST_RUN_DATA),
        "run_data_tags": run_data(_LATEST_RUN_DATA_BY_TAGS, ["t3"]),
        "run_data_prefix": run_data(_LATEST_RUN_DATA_BY_PREFIXES, ["metrics/%"]),
    }


async def connect_as_app(url: str, org_id: str = BENCH_ORG) -> asyncpg.Connection:
    """A connection as the server's request connections are: role, organisation and codecs."""
    conn = await asyncpg.connect(url, timeout=10.0, command_timeout=60.0)
    # As the server's: uuid as text, jsonb passed through undecoded.
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + value,
        decoder=lambda data: data[1:],
        schema="pg_catalog",
        format="binary",
    )
    await conn.execute(_SET_ROLE)
    await conn.execute(_SET_ORG, org_id)
    return conn


@dataclass(slots=True)
class QueryFigure:
    """Latency of one query, the scans of its plan, and the buffers one execution touches."""

    p50_ms: float | None = None
    p99_ms: float | None = None
    buffers: int | None = None  # shared blocks hit + read: the cost, free of timing noise
    scans: list[str] = field(default_factory=list)
    seq_scans: list[str] = field(default_factory=list)


async def load_samples(conn: asyncpg.Connection, *, count: int = 1000) -> Samples:
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


async def explain(
    conn: asyncpg.Connection, sql: str, args: tuple[object, ...]
) -> tuple[list[str], int]:
    """The scans PostgreSQL uses for sql with these arguments, and the shared buffers it touched."""
    document = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    plan = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
    return plan_scans(plan), int(
        plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    )


@dataclass(slots=True)
class _Target:
    """One loaded database under measurement."""

    conn: asyncpg.Connection
    queries: dict[str, Query]
    latencies: dict[str, list[float]] = field(default_factory=dict)


async def _time_calls(target: _Target, name: str, calls: int) -> None:
    query = target.queries[name]
    latencies = target.latencies.setdefault(name, [])
    for _ in range(calls):
        i = random.randrange(1_000_000)  # noqa: S311 - not for security
        began = time.perf_counter()
        await target.conn.fetch(query.sql, *query.args(i))
        latencies.append(time.perf_counter() - began)


async def _figure(target: _Target, name: str) -> QueryFigure:
    query = target.queries[name]
    scans, buffers = await explain(target.conn, query.sql, query.args(0))
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
            conn = await connect_as_app(url)
            stack.push_async_callback(conn.close)
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
