"""Tasks: insert, read, update and list; run counters change in the same statement as the task."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from foreman.models import TERMINAL_STATUSES, Task
from foreman.store.db import Db
from foreman.store.queries import SORT_ORDERS, Page, Where

# Matches the positional fields of models.Task; the lease token is only shown to its claimer.
COLUMNS = """
    t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
    t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
    t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
    t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END, t.lease_expires_at, t.idempotency_key, t.worker_id
"""

COUNTER_SHARDS = 16

# Adds the task's terminal status to one random shard of its run's counters.
COUNT_TERMINAL = """
INSERT INTO run_counter (run_id, shard, org_id, completed_tasks, failed_tasks, cancelled_tasks)
SELECT run_id, {shard}, org_id,
       (status = 'completed')::int, (status = 'failed')::int, (status = 'cancelled')::int
  FROM {source}
 WHERE status IN ('completed', 'failed', 'cancelled') {condition}
ON CONFLICT (run_id, shard) DO UPDATE
   SET completed_tasks = run_counter.completed_tasks + EXCLUDED.completed_tasks,
       failed_tasks    = run_counter.failed_tasks + EXCLUDED.failed_tasks,
       cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
"""

# One statement: check run and parent, insert (idempotently), count the task on a shard of its
# run, and wake waiting claimers when it is ready now. Autocommit: no BEGIN/COMMIT round trips.
_INSERT_TASK = f"""
WITH r AS (
    SELECT id FROM run WHERE org_id = $1 AND id = $2
), p AS (
    SELECT id FROM task WHERE org_id = $1 AND id = $3 AND run_id = $2
), t AS (
    INSERT INTO task (id, run_id, parent_task_id, org_id, type, status, input_data, metadata,
                      max_retries, priority, run_after, idempotency_key, created_at, updated_at,
                      queued_at)
    SELECT $4, r.id, $3, $1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13,
           CASE WHEN $6 = 'queued' THEN $13::bigint END
      FROM r
     WHERE $3::uuid IS NULL OR EXISTS (SELECT 1 FROM p)
    ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), c AS (
    INSERT INTO run_counter (run_id, shard, org_id, total_tasks)
    SELECT run_id, $14, org_id, 1 FROM t
    ON CONFLICT (run_id, shard) DO UPDATE SET total_tasks = run_counter.total_tasks + 1
)
SELECT EXISTS (SELECT 1 FROM r), EXISTS (SELECT 1 FROM p),
       CASE WHEN t.status = 'queued' AND t.run_after <= $13
            THEN pg_notify('foreman_task_ready', $1) END,
       {COLUMNS}
  FROM (SELECT 1) AS one LEFT JOIN t ON true
"""

_GET_TASK = f"SELECT {COLUMNS} FROM task t WHERE t.org_id = $1 AND t.id = $2"
_GET_TASK_BY_KEY = f"SELECT {COLUMNS} FROM task t WHERE t.org_id = $1 AND t.idempotency_key = $2"

_SORT_COLUMNS = {
    "created_at": "created_at",
    "started_at": "started_at",
    "completed_at": "completed_at",
}


def shard() -> int:
    """A random counter shard: spreads one busy run's counter updates over several rows."""
    return random.randrange(COUNTER_SHARDS)  # noqa: S311 - not for security


def task_from(record: Any, skip: int = 0) -> Task:
    """Build a Task from a record holding COLUMNS after skip leading columns."""
    return Task(*tuple(record)[skip:]) if skip else Task(*record)


@dataclass(frozen=True, slots=True)
class NewTask:
    """What a caller supplies to create a task."""

    run_id: str
    task_type: str
    input_data: Any
    parent_task_id: str | None = None
    metadata: Any = None
    max_retries: int = 3
    priority: int = 0
    delay_ms: int = 0
    idempotency_key: str | None = None
    enqueue: bool = False


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The task, and whether it was created now (False: an idempotent repeat)."""

    task: Task | None
    created: bool
    run_found: bool
    parent_found: bool


async def insert_task(
    conn: Db, *, org_id: str, task_id: str, new: NewTask, now: int
) -> InsertResult:
    """Create a task (pending, or queued when new.enqueue) and count it on its run."""
    status = "queued" if new.enqueue else "pending"
    record = await conn.fetchrow(
        _INSERT_TASK,
        org_id,
        new.run_id,
        new.parent_task_id,
        task_id,
        new.task_type,
        status,
        new.input_data,
        new.metadata,
        new.max_retries,
        new.priority,
        now + new.delay_ms,
        new.idempotency_key,
        now,
        shard(),
    )
    assert record is not None
    run_found, parent_found = record[0], record[1]
    if record[3] is not None:
        return InsertResult(task_from(record, 3), True, run_found, parent_found)
    existing = None
    if new.idempotency_key is not None and run_found:
        existing = await get_task_by_key(conn, org_id=org_id, key=new.idempotency_key)
    return InsertResult(existing, False, run_found, parent_found)


async def get_task(conn: Db, *, org_id: str, task_id: str) -> Task | None:
    """The task, or None."""
    record = await conn.fetchrow(_GET_TASK, org_id, task_id)
    return None if record is None else task_from(record)


async def get_task_by_key(conn: Db, *, org_id: str, key: str) -> Task | None:
    """The task created with this idempotency key, or None."""
    record = await conn.fetchrow(_GET_TASK_BY_KEY, org_id, key)
    return None if record is None else task_from(record)


def _update_sql(changes: dict[str, Any], status: str | None) -> tuple[str, list[str]]:
    """SET clauses for a PATCH; parameters start at $5 ($1 org, $2 id, $3 now, $4 status)."""
    names: list[str] = []
    sets = ["updated_at = $3", "status = coalesce($4, status)"]
    for column in ("output_data", "error_data", "metadata", "queue_job_id"):
        if column in changes:
            names.append(column)
            sets.append(f"{column} = ${4 + len(names)}")
    if status == "queued":
        sets.append("queued_at = coalesce(queued_at, $3)")
    elif status == "running":
        sets.append("started_at = coalesce(started_at, $3)")
    elif status == "retrying":
        sets.append("retry_count = retry_count + 1")
    elif status in TERMINAL_STATUSES:
        sets += [
            "completed_at = $3",
            "duration_ms = $3 - coalesce(started_at, created_at)",
            "lease_token = NULL",
            "lease_expires_at = NULL",
        ]
    return ", ".join(sets), names


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The task after a PATCH, or the reason it was not changed."""

    task: Task | None
    found: bool
    conflict: bool


async def update_task(
    conn: Db, *, org_id: str, task_id: str, changes: dict[str, Any], now: int
) -> UpdateResult:
    """Apply a PATCH. A terminal task only accepts the same status again (a no-op) or no status.

    The row lock of the UPDATE serialises concurrent PATCHes of one task, and its WHERE clause
    re-checks the status after the wait, so a task enters a terminal status (and is counted on
    its run) exactly once.
    """
    status = changes.get("status")
    sets, names = _update_sql(changes, status)
    sql = f"""
WITH t AS (
    UPDATE task SET {sets}
     WHERE org_id = $1 AND id = $2
       AND ($4::text IS NULL OR status NOT IN ('completed', 'failed', 'cancelled'))
    RETURNING *
), c AS ({COUNT_TERMINAL.format(shard=shard(), source="t", condition="AND $4::text IS NOT NULL")})
SELECT {COLUMNS} FROM t
"""
    record = await conn.fetchrow(sql, org_id, task_id, now, status, *(changes[n] for n in names))
    if record is not None:
        return UpdateResult(task_from(record), True, False)
    current = await get_task(conn, org_id=org_id, task_id=task_id)
    if current is None:
        return UpdateResult(None, False, False)
    # Only a terminal task with a status in the PATCH gets here.
    return UpdateResult(current, True, current.status != status)


async def list_tasks(
    conn: Db,
    *,
    org_id: str,
    filters: dict[str, str | None],
    sort_by: str,
    sort_order: str,
    limit: int,
    offset: int,
) -> Page[Task]:
    """A page of tasks matching filters (run_id, status, type, parent_task_id), ties by id."""
    where = Where(["t.org_id = $1"], [org_id])
    for column in ("run_id", "status", "type", "parent_task_id"):
        value = filters.get(column)
        if value is not None:
            where.add(f"t.{column} = {{}}", value)
    column = _SORT_COLUMNS[sort_by]
    order = SORT_ORDERS[sort_order]
    lim, off = f"${len(where.args) + 1}", f"${len(where.args) + 2}"
    sql = f"""
SELECT n.total, p.*
  FROM (SELECT count(*) AS total FROM task t WHERE {where.sql()}) n
  LEFT JOIN LATERAL (
      SELECT {COLUMNS} FROM task t WHERE {where.sql()}
       ORDER BY t.{column} {order}, t.id {order} LIMIT {lim} OFFSET {off}
  ) p ON true
"""
    records = await conn.fetch(sql, *where.args, limit, offset)
    total = records[0][0] if records else 0
    items = [task_from(rec, 1) for rec in records if rec[1] is not None]
    return Page(items=items, total=total)
