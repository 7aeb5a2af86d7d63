"""Cancellation of a task or a whole run (store/sql/cancel.sql: the statements and why)."""

from __future__ import annotations

from dataclasses import dataclass

from foreman.models import Run, Task
from foreman.store import dependencies, queries
from foreman.store import runs as runs_store
from foreman.store.db import Db
from foreman.store.shards import two_shards
from foreman.store.tasks import get_task

_SQL = queries.load_statements("cancel")
_CANCEL_TASK = _SQL["cancel_task"]
_CANCEL_RUN = _SQL["cancel_run"]


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The task after a cancel; changed = this call cancelled it (or marked it, if running)."""

    task: Task | None
    changed: bool


async def cancel_task(
    conn: Db, *, org_id: str, task_id: str, now: int, released: list[str] | None = None
) -> Cancelled:
    """Cancel a task that has not ended: at once, or at its worker's next beat when running.

    Its blocked children are cancelled or released in the same statement; the released ones are
    added to ``released`` (to publish on bullmq)."""
    record = await conn.fetchrow(_CANCEL_TASK, org_id, task_id, now, *two_shards())
    if record is not None:
        freed = list(record["released_ids"] or [])
        freed += await dependencies.after_step(conn, org_id=org_id, record=record, now=now)
        if released is not None:
            released += freed
        return Cancelled(queries.model_from(Task, record), True)
    return Cancelled(await get_task(conn, org_id=org_id, task_id=task_id), False)


@dataclass(frozen=True, slots=True)
class RunCancelled:
    """The run after a cancel; changed = this call cancelled it (a run that ended completed or
    failed is not changed); the types of the tasks it ended at once, one entry per task."""

    run: Run | None
    changed: bool
    types_ended: list[str]


async def cancel_run(conn: Db, *, org_id: str, run_id: str, now: int) -> RunCancelled:
    """Cancel a run and its tasks (running ones at their worker's next beat)."""
    record = await conn.fetchrow(_CANCEL_RUN, org_id, run_id, now, *two_shards())
    assert record is not None
    run = await runs_store.get_run(conn, org_id=org_id, run_id=run_id)
    return RunCancelled(run, bool(record["cancelled"]), list(record["types_ended"] or []))
