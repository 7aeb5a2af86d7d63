"""Cancelling a task or a run, for POST /tasks/:id/cancel, POST /runs/:id/cancel and the
dashboard's actions: the store's statement, the children it released published after the commit,
the tasks it ended counted in the metrics, and the answer or its 404/409."""

from __future__ import annotations

from typing import Any

from litestar import Request

from foreman import errors, ids
from foreman.models import Run, Task
from foreman.server import deps
from foreman.store import cancel as cancel_store
from foreman.store import db


async def cancel_task(request: Request[Any, Any, Any], org_id: str, task_id: str) -> Task:
    """The task, cancelled at once unless it runs (then at its worker's next heartbeat); one
    already cancelled (or marked) as it is; 409 for one that ended completed or failed."""
    app = deps.state(request)
    released: list[str] = []  # its blocked children that may run now (onParentFailure run)
    async with db.org_connection(app.pool, org_id) as conn:
        result = await cancel_store.cancel_task(
            conn, org_id=org_id, task_id=task_id, now=ids.now_ms(), released=released
        )
        children = await deps.released_tasks(request, conn, org_id, released)
    await app.publish(children)
    task = deps.found(result.task, "Task", task_id)
    if result.changed and task.status == "cancelled" and app.metrics is not None:
        app.metrics.tasks_ended([task])  # ended now (a running one ends at its next beat)
    if not result.changed and task.status in ("completed", "failed"):
        raise errors.ConflictError(
            f"Task {task_id} is {task.status}; it cannot be cancelled", status=task.status
        )
    return task


async def cancel_run(request: Request[Any, Any, Any], org_id: str, run_id: str) -> Run:
    """The run, cancelled with every task of it that has not ended (running ones at their next
    heartbeat); 409 for a run that ended completed or failed."""
    app = deps.state(request)
    async with db.org_connection(app.pool, org_id) as conn:
        result = await cancel_store.cancel_run(conn, org_id=org_id, run_id=run_id, now=ids.now_ms())
    run = deps.found(result.run, "Run", run_id)
    if app.metrics is not None:
        app.metrics.types_cancelled(org_id, result.types_ended)
    if not result.changed:
        raise errors.ConflictError(
            f"Run {run_id} is {run.status}; it cannot be cancelled", status=run.status
        )
    return run
