"""Task dependencies: edges, release and cancellation of children (store/sql/dependencies.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foreman import errors
from foreman.models import Pagination, Task, TaskList
from foreman.store import queries
from foreman.store import runs as runs_store
from foreman.store.db import Db
from foreman.store.shards import shard

_SQL = queries.load_statements("dependencies")

MAX_PARENTS = 10_000


async def lock_parents(conn: Db, *, org_id: str, edges: Sequence[tuple[str, str]]) -> None:
    """Lock the existing parents (and bump their child_epoch), in id order: the first statement of
    the transaction that adds children, before the children's insert locks its run's counter rows
    (a finish batch takes its tasks, then those rows: the same order, no deadlock)."""
    children = [child for child, _ in edges]
    parents = [parent for _, parent in edges]
    await conn.execute(_SQL["lock_parents"], org_id, children, parents)


async def add_dependencies(
    conn: Db,
    *,
    org_id: str,
    edges: Sequence[tuple[str, str]],
    now: int,
    batch: Sequence[str] | None = None,
) -> list[str]:
    """Add (child, parent) edges of children inserted blocked in this transaction, after
    lock_parents.

    Raises NotFoundError for a parent that is not a task of the child's run (the caller's
    transaction rolls back), naming the batch item (batch: the batch's task ids in item order)
    rather than the child, whose id is rolled back with it. Answers the ids of children released
    at once (every parent ended).
    """
    children = [child for child, _ in edges]
    parents = [parent for _, parent in edges]
    record = await conn.fetchrow(_SQL["add_dependencies"], org_id, children, parents, now, shard())
    assert record is not None
    if record["bad_child"] is not None:
        field = "dependsOn"
        if batch is not None:
            field = f"tasks[{batch.index(str(record['bad_child']))}].dependsOn"
        raise errors.NotFoundError(
            f"Task not found: {record['bad_parent']} ({field} names tasks of the item's own run)",
            field=field,
        )
    released = list(record["released_ids"] or [])
    cascade = list(record["cascade_ids"] or [])
    if cascade:
        released += await end_dependents(conn, org_id=org_id, parent_ids=cascade, now=now)
    return released


async def end_dependents(
    conn: Db, *, org_id: str | None, parent_ids: Sequence[str], now: int
) -> list[str]:
    """Release or cancel the blocked children of ended parents, transitively down the graph, in
    one statement (end_dependents(), migration 0021); the ids of the children released to the
    queue (to publish on bullmq). For parents whose own statement did not take the step (children
    cancelled as they were added, the sweeper's repair); org_id None: any (the sweeper)."""
    record = await conn.fetchrow(_SQL["end_dependents"], list(parent_ids), now, shard())
    assert record is not None
    return list(record["released_ids"] or []) + await after_step(
        conn, org_id=org_id, record=record, now=now
    )


async def after_step(conn: Db, *, org_id: str | None, record: Any, now: int) -> list[str]:
    """The follow-ups, after its commit, of a statement that ended tasks (its `recheck_children`,
    and its `runs_ended` and `runs_cancelled` to complete: what concurrent statements could not
    see of each other); the ids of the children this released (to publish on bullmq)."""
    released: list[str] = []
    if record["recheck_children"]:
        released = await release_children(conn, child_ids=record["recheck_children"], now=now)
    runs = [*(record["runs_ended"] or []), *(record["runs_cancelled"] or [])]
    if runs:  # the open auto-complete runs of the ended tasks; any run of a cancelled child
        await runs_store.complete_runs(conn, org_id=org_id, run_ids=runs, now=now)
    return released


async def release_children(conn: Db, *, child_ids: Sequence[str], now: int) -> list[str]:
    """Release the blocked children among child_ids that no open edge is left to, with a fresh
    snapshot (the last parents of a child ended in concurrent statements); the released ids."""
    record = await conn.fetchrow(_SQL["release_children"], list(child_ids), now)
    assert record is not None
    return list(record["released_ids"] or [])


async def repair(conn: Db, *, now: int, limit: int) -> list[str]:
    """The sweeper's belt and braces, across organisations (its connection owns the tables):
    blocked children whose parents have all ended (store/sql/dependencies.sql
    stranded_parents) are released or cancelled; the ids released to the queue."""
    parents: list[str] = []
    children: list[str] = []
    for r in await conn.fetch(_SQL["stranded_parents"], limit):
        if r["parent_id"] is not None:
            parents.append(r["parent_id"])
        else:
            children.append(r["child_id"])
    released: list[str] = []
    if parents:
        released += await end_dependents(conn, org_id=None, parent_ids=parents, now=now)
    if children:
        released += await release_children(conn, child_ids=children, now=now)
    return released


async def list_parents(
    conn: Db, *, org_id: str, task_id: str, limit: int, offset: int
) -> TaskList | None:
    """A page of the task's parents with their status and output; None: no such task."""
    records = await conn.fetch(_SQL["list_parents"], org_id, task_id, limit, offset)
    if not records or not records[0]["found"]:
        return None
    rows = [r for r in records if r["id"] is not None]
    return TaskList(
        data=queries.models_from(Task, rows),
        pagination=Pagination(total=records[0]["total"], limit=limit, offset=offset),
    )


async def get_tasks(conn: Db, *, org_id: str | None, task_ids: Sequence[str]) -> list[Task]:
    """Tasks by id (any order); org_id None: of any organisation (the sweeper)."""
    if not task_ids:
        return []
    return queries.models_from(Task, await conn.fetch(_SQL["get_tasks"], org_id, list(task_ids)))
