"""Runs: insert, read, update and list, with their task counters summed from run_counter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foreman.models import TERMINAL_STATUSES, Run
from foreman.store import queries
from foreman.store.db import Db

_SQL = queries.load_statements("runs")  # store/sql/runs.sql
_INSERT_RUN = _SQL["insert_run"]
_GET_RUN = _SQL["get_run"]
_COMPLETE_RUNS = _SQL["complete_runs"]
_COMPLETE_DUE_RUNS = _SQL["complete_due_runs"]

_SORT_COLUMNS = {
    "created_at": "created_at",
    "started_at": "started_at",
    "completed_at": "completed_at",
}


async def insert_run(
    conn: Db,
    *,
    run_id: str,
    org_id: str,
    input_data: Any,
    metadata: Any,
    now: int,
    auto_complete: bool = False,
) -> Run:
    """Insert a pending run."""
    record = await conn.fetchrow(
        _INSERT_RUN, run_id, org_id, input_data, metadata, now, auto_complete
    )
    return queries.model_from(Run, record)


async def complete_runs(conn: Db, *, org_id: str | None, run_ids: Sequence[str], now: int) -> int:
    """Complete the auto-complete runs among run_ids whose tasks are all terminal (a fresh
    look: the statements that ended their tasks could not see each other); how many."""
    return len(await conn.fetch(_COMPLETE_RUNS, org_id, list(run_ids), now))


async def complete_due_runs(conn: Db, *, now: int, limit: int) -> int:
    """The sweeper's catch-all: complete_runs over the oldest open auto-complete runs."""
    return len(await conn.fetch(_COMPLETE_DUE_RUNS, now, limit))


async def get_run(conn: Db, *, org_id: str, run_id: str) -> Run | None:
    """The run with its counters, or None."""
    return await queries.fetch_model(conn, Run, _GET_RUN, org_id, run_id)


async def update_run(
    conn: Db, *, org_id: str, run_id: str, changes: dict[str, Any], now: int
) -> Run | None:
    """Apply changes (status, output_data, error_data, metadata); None if there is no such run."""
    params = queries.Where(
        [], [org_id, run_id, now]
    )  # only its parameter list: no WHERE clause here
    sets = ["updated_at = $3"]
    for column in ("output_data", "error_data", "metadata"):
        if column in changes:
            sets.append(f"{column} = {params.param(changes[column])}")
    status = changes.get("status")
    if status is not None:
        p = params.param(status)
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
    record = await conn.fetchrow(_update_run_sql(", ".join(sets)), *params.args)
    return None if record is None else queries.model_from(Run, record)


def _update_run_sql(sets: str) -> str:
    """The run PATCH statement, from fixed fragments: the SET clauses of update_run."""
    return f"""
WITH r AS (
    UPDATE run SET {sets}
     WHERE org_id = $1 AND id = $2
    RETURNING *
)
SELECT r.*, c.*
  FROM r
 CROSS JOIN LATERAL run_task_counts(r.id) c
"""  # noqa: S608 - fixed fragments only (see the docstring); every value is a parameter


async def list_runs(
    conn: Db, *, org_id: str, status: str | None, paging: queries.Paging
) -> queries.Page[Run]:
    """A page of the organisation's runs, ties broken by id, with the total matching count."""
    where = queries.Where(["org_id = $1"], [org_id])
    if status is not None:
        where.add("status = {}", status)
    return await queries.fetch_sorted_page(
        conn, Run, "run", where, paging, columns=_SORT_COLUMNS, each="run_task_counts(r.id)"
    )
