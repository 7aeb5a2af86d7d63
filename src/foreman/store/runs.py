"""Runs: insert, read, update and list, with their task counters summed from run_counter."""

from __future__ import annotations

from typing import Any

from foreman.models import TERMINAL_STATUSES, Run
from foreman.store.db import Db
from foreman.store.queries import SORT_ORDERS, Page, Where

# The counters of a run are the sum over its shards (see the migration).
_COLUMNS = """
    r.id, r.org_id, r.status, r.input_data, r.metadata,
    coalesce(c.total_tasks, 0), coalesce(c.completed_tasks, 0),
    coalesce(c.failed_tasks, 0), coalesce(c.cancelled_tasks, 0),
    r.created_at, r.updated_at, r.output_data, r.error_data,
    r.started_at, r.completed_at, r.duration_ms
"""

_COUNTERS = """
LEFT JOIN LATERAL (
    SELECT sum(total_tasks)::bigint     AS total_tasks,
           sum(completed_tasks)::bigint AS completed_tasks,
           sum(failed_tasks)::bigint    AS failed_tasks,
           sum(cancelled_tasks)::bigint AS cancelled_tasks
      FROM run_counter
     WHERE run_id = r.id
) c ON true
"""

_INSERT_RUN = """
INSERT INTO run (id, org_id, input_data, metadata, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $5)
RETURNING id, org_id, status, input_data, metadata, 0, 0, 0, 0,
          created_at, updated_at, output_data, error_data, started_at, completed_at, duration_ms
"""

_GET_RUN = f"SELECT {_COLUMNS} FROM run r {_COUNTERS} WHERE r.org_id = $1 AND r.id = $2"

_SORT_COLUMNS = {
    "created_at": "created_at",
    "started_at": "started_at",
    "completed_at": "completed_at",
}


def _run(record: Any) -> Run:
    return Run(*record)


async def insert_run(
    conn: Db, *, run_id: str, org_id: str, input_data: Any, metadata: Any, now: int
) -> Run:
    """Insert a pending run."""
    return _run(await conn.fetchrow(_INSERT_RUN, run_id, org_id, input_data, metadata, now))


async def get_run(conn: Db, *, org_id: str, run_id: str) -> Run | None:
    """The run with its counters, or None."""
    record = await conn.fetchrow(_GET_RUN, org_id, run_id)
    return None if record is None else _run(record)


async def update_run(
    conn: Db, *, org_id: str, run_id: str, changes: dict[str, Any], now: int
) -> Run | None:
    """Apply changes (status, output_data, error_data, metadata); None if there is no such run."""
    where = Where([], [org_id, run_id, now])
    sets = ["updated_at = $3"]
    for column in ("output_data", "error_data", "metadata"):
        if column in changes:
            where.args.append(changes[column])
            sets.append(f"{column} = ${len(where.args)}")
    status = changes.get("status")
    if status is not None:
        where.args.append(status)
        p = f"${len(where.args)}"
        sets.append(f"status = {p}")
        if status == "running":
            sets.append("started_at = coalesce(started_at, $3)")
        if status in TERMINAL_STATUSES:
            # A repeated terminal status keeps the first completion time.
            sets.append(
                f"completed_at = CASE WHEN status = {p} THEN coalesce(completed_at, $3) ELSE $3 END"
            )
            sets.append(
                f"duration_ms = CASE WHEN status = {p} THEN coalesce(duration_ms, $3 - coalesce(started_at, created_at))"
                " ELSE $3 - coalesce(started_at, created_at) END"
            )
    sql = f"""
WITH r AS (
    UPDATE run SET {", ".join(sets)}
     WHERE org_id = $1 AND id = $2
    RETURNING *
)
SELECT {_COLUMNS} FROM r {_COUNTERS}
"""
    record = await conn.fetchrow(sql, *where.args)
    return None if record is None else _run(record)


async def list_runs(
    conn: Db,
    *,
    org_id: str,
    status: str | None,
    sort_by: str,
    sort_order: str,
    limit: int,
    offset: int,
) -> Page[Run]:
    """A page of the organisation's runs, ties broken by id, with the total matching count."""
    where = Where(["org_id = $1"], [org_id])
    if status is not None:
        where.add("status = {}", status)
    column = _SORT_COLUMNS[sort_by]
    order = SORT_ORDERS[sort_order]
    lim, off = f"${len(where.args) + 1}", f"${len(where.args) + 2}"
    sql = f"""
SELECT t.total, p.*
  FROM (SELECT count(*) AS total FROM run WHERE {where.sql()}) t
  LEFT JOIN LATERAL (
      SELECT {_COLUMNS}
        FROM (SELECT * FROM run WHERE {where.sql()}
               ORDER BY {column} {order}, id {order} LIMIT {lim} OFFSET {off}) r
        {_COUNTERS}
       ORDER BY r.{column} {order}, r.id {order}
  ) p ON true
"""
    records = await conn.fetch(sql, *where.args, limit, offset)
    total = records[0][0] if records else 0
    items = [Run(*tuple(rec)[1:]) for rec in records if rec[1] is not None]
    return Page(items=items, total=total)
