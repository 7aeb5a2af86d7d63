"""Loading a scale database: N tasks and N run-data rows with COPY, in a database of its own.

The shape stays the same at every size: 1,000 tasks and 1,000 run-data rows per run, so a larger
table means more runs, and a query about one run should cost the same at 100k rows as at 1M.
Secondary indexes are dropped during the COPY and rebuilt afterwards (much faster than
maintaining them row by row), from the very definitions the migrations created.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import uuid_utils

from foreman.bench.defaults import BENCH_ORG
from foreman.bench.services import BenchDatabase, database_exists, fresh_bench_database

logger = logging.getLogger(__name__)

ROWS_PER_RUN = 1000
CHUNK_ROWS = 50_000
KEY_GROUPS = ("metrics", "output", "state", "log")
KEYS_PER_GROUP = 25  # 100 keys per run, 10 values each
TAG_COUNT = 20

# Status mix of a busy installation: mostly finished work, some queued and running.
STATUS_CYCLE = (
    ("completed",) * 12 + ("failed",) + ("queued",) * 3 + ("running",) * 2 + ("pending",) * 2
)

TASK_COLUMNS = (
    "id", "run_id", "org_id", "type", "status", "input_data", "output_data", "max_retries",
    "attempt", "created_at", "updated_at", "queued_at", "started_at", "completed_at", "duration_ms",
)  # fmt: skip
RUN_DATA_COLUMNS = (
    "id", "run_id", "task_id", "org_id", "key", "value", "tags", "created_at", "updated_at",
)  # fmt: skip

_META = "bench_scale_meta"
_SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
  FROM pg_index i
  JOIN pg_class t ON t.oid = i.indrelid
 WHERE t.relname = ANY($1::text[])
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""


def scale_database_name(rows: int) -> str:
    """The database that holds a scale set of this size."""
    return f"foreman_bench_scale_{rows}"


@dataclass(frozen=True, slots=True)
class ScaleDatabase:
    """A loaded scale database and how it came to be."""

    url: str
    name: str
    rows: int
    reused: bool
    load_s: float


async def prepare(server: BenchDatabase, rows: int, *, reuse: bool) -> ScaleDatabase:
    """A database with `rows` tasks and `rows` run-data rows: reused if asked and complete."""
    name = scale_database_name(rows)
    url = server.url(name)
    if reuse and await database_exists(server.admin_url, name) and await _is_complete(url, rows):
        logger.info("reusing scale database %s (%s rows)", name, rows)
        return ScaleDatabase(url, name, rows, reused=True, load_s=0.0)
    began = time.perf_counter()
    await fresh_bench_database(server, name)
    conn = await asyncpg.connect(url)
    try:
        await _load(conn, rows)
    finally:
        await conn.close()
    load_s = time.perf_counter() - began
    logger.info("loaded %s tasks and %s run-data rows into %s in %.0fs", rows, rows, name, load_s)
    return ScaleDatabase(url, name, rows, reused=False, load_s=load_s)


async def _is_complete(url: str, rows: int) -> bool:
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _META)
        return bool(exists) and await conn.fetchval(f"SELECT max(rows) FROM {_META}") == rows
    finally:
        await conn.close()


async def _load(conn: asyncpg.Connection, rows: int) -> None:
    await conn.execute("SET maintenance_work_mem = '256MB'")
    await _skip_foreign_key_triggers(conn)
    indexes = await conn.fetch(_SECONDARY_INDEXES, ["task", "run_data"])
    for index in indexes:
        await conn.execute(f"DROP INDEX {index['name']}")
    runs = rows // ROWS_PER_RUN
    base_ms = int(time.time() * 1000) - rows  # one millisecond per row, ending now
    run_ids = [str(uuid_utils.uuid7()) for _ in range(runs)]
    await conn.copy_records_to_table(
        "run",
        records=[(r, BENCH_ORG, "completed", '{"n": 1}', base_ms, base_ms) for r in run_ids],
        columns=("id", "org_id", "status", "input_data", "created_at", "updated_at"),
    )
    # Each run's first task is known up front: its run data points at it.
    first_tasks = [str(uuid_utils.uuid7()) for _ in run_ids]
    await _copy_chunks(conn, "task", TASK_COLUMNS, _tasks(run_ids, first_tasks, base_ms))
    await _copy_chunks(conn, "run_data", RUN_DATA_COLUMNS, _run_data(run_ids, first_tasks, base_ms))
    for index in indexes:
        await conn.execute(index["definition"])
    await conn.execute("VACUUM ANALYZE")  # visibility map for index-only counts, fresh statistics
    await conn.execute(f"CREATE TABLE {_META} (rows bigint NOT NULL, loaded_at bigint NOT NULL)")
    await conn.execute(f"INSERT INTO {_META} VALUES ($1, $2)", rows, int(time.time() * 1000))


async def _skip_foreign_key_triggers(conn: asyncpg.Connection) -> None:
    # The generated rows are consistent by construction; replica mode skips the per-row FK checks
    # (superuser only: without it the load is just slower).
    try:
        await conn.execute("SET session_replication_role = replica")
    except asyncpg.PostgresError:
        logger.info("not a superuser: loading with foreign-key checks")


async def _copy_chunks(
    conn: asyncpg.Connection,
    table: str,
    columns: tuple[str, ...],
    records: Iterator[tuple[object, ...]],
) -> None:
    chunk: list[tuple[object, ...]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == CHUNK_ROWS:
            await conn.copy_records_to_table(table, records=chunk, columns=columns)
            chunk = []
    if chunk:
        await conn.copy_records_to_table(table, records=chunk, columns=columns)


def _tasks(
    run_ids: list[str], first_tasks: list[str], base_ms: int
) -> Iterator[tuple[object, ...]]:
    """ROWS_PER_RUN task rows per run, in the status mix of STATUS_CYCLE."""
    output = json.dumps({"ok": True, "result": "x" * 64})
    row = 0
    for run_index, run_id in enumerate(run_ids):
        for i in range(ROWS_PER_RUN):
            status = STATUS_CYCLE[row % len(STATUS_CYCLE)]
            created = base_ms + row
            started = created + 5 if status not in ("pending", "queued") else None
            done = created + 25 if status in ("completed", "failed") else None
            task_id = first_tasks[run_index] if i == 0 else str(uuid_utils.uuid7())
            yield (
                task_id, run_id, BENCH_ORG, f"type-{row % 10}", status, f'{{"i": {row}}}',
                output if status == "completed" else None, 3, 1 if started else 0, created,
                done or started or created, created if status != "pending" else None, started,
                done, None if done is None else done - created,
            )  # fmt: skip
            row += 1


def _run_data(
    run_ids: list[str], first_tasks: list[str], base_ms: int
) -> Iterator[tuple[object, ...]]:
    """ROWS_PER_RUN run-data rows per run: 100 keys in 4 prefixes, 10 values each, 2 tags."""
    keys = [f"{group}/item-{n}" for group in KEY_GROUPS for n in range(KEYS_PER_GROUP)]
    row = 0
    for run_index, run_id in enumerate(run_ids):
        for i in range(ROWS_PER_RUN):
            created = base_ms + row
            tags = [f"t{row % TAG_COUNT}", f"stage-{i % 5}"]
            yield (
                str(uuid_utils.uuid7()), run_id, first_tasks[run_index], BENCH_ORG,
                keys[i % len(keys)], f'{{"v": {row}}}', tags, created, created,
            )  # fmt: skip
            row += 1
