"""Leases on tasks: claim, heartbeat, complete/fail, release, and the sweeper's statements.

Every statement handles a whole batch in one round trip (arrays + ``unnest``), runs in
autocommit, and changes a task only while it is ``running`` under the caller's lease token (the
fencing token): a stale token changes nothing. A task's first move into a terminal status counts
it on its run in the same statement, and wakes ``wait`` long-polls with
``NOTIFY foreman_task_done`` (payload: comma-separated task ids).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from foreman.models import Task
from foreman.store import dependencies, queries
from foreman.store.db import Db, run_again_on_deadlock
from foreman.store.shards import two_shards
from foreman.store.tasks import get_task

_SQL = queries.load_statements("queue")  # store/sql/queue.sql: the statements and why they are so


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class FirstOccurrences:
    """The distinct task ids of a bulk request, in the order of their first occurrence.

    A bulk statement joins its input rows to the task by id, so an id sent twice would change the
    task once yet answer both rows as applied: only first occurrences go to the statement, and
    every later one is answered as a duplicate that was not applied.
    """

    task_ids: Sequence[str]  # the request's ids
    items: list[str]  # the distinct ones
    indexes: list[int]  # where each of them first occurs

    def expand(self, results: list[R], duplicate: Callable[[R], R]) -> list[R]:
        """One result per request item: a first occurrence's own, a later one duplicate(first's)."""
        if len(self.items) == len(self.task_ids):
            return results
        by_id = dict(zip(self.items, results, strict=True))
        firsts = set(self.indexes)
        return [
            by_id[task_id] if i in firsts else duplicate(by_id[task_id])
            for i, task_id in enumerate(self.task_ids)
        ]


def first_occurrences(task_ids: Sequence[str]) -> FirstOccurrences:
    """The first occurrence of each id (see FirstOccurrences)."""
    first: dict[str, int] = {}
    for index, task_id in enumerate(task_ids):
        first.setdefault(task_id, index)
    return FirstOccurrences(task_ids, list(first), list(first.values()))


@dataclass(frozen=True, slots=True)
class Lease:
    """A held task and the fencing token of its current attempt."""

    task_id: str
    lease_token: str


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease after a heartbeat: ok = still held (and extended)."""

    task_id: str
    ok: bool
    cancelled: bool
    lease_expires_at: int | None
    found: bool
    duplicate: bool = False  # a later occurrence of the task in one request: not applied


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a worker ended an attempt."""

    task_id: str
    lease_token: str
    status: Literal["completed", "failed"]
    output_data: Any = None
    error_data: Any = None
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Ended:
    """The answer for one lease: ok = this call (or an earlier identical one) ended the attempt.

    ``task`` is the task after this call's change; None when it changed nothing.
    """

    task_id: str
    ok: bool
    status: str | None
    found: bool
    repeat: bool
    task: Task | None
    duplicate: bool = False  # a later occurrence of the task in one request: not applied


@dataclass(frozen=True, slots=True)
class ClaimOne:
    """A claim by id: the leased task, or why there is none."""

    task: Task | None
    found: bool
    current: Task | None


async def claim_tasks(
    conn: Db,
    *,
    org_id: str,
    worker_id: str,
    types: Sequence[str] | None,
    limit: int,
    lease_ms: int,
    now: int,
) -> list[Task]:
    """Lease up to limit ready tasks (priority, runAfter, id order); each carries its token."""
    records = await conn.fetch(
        _SQL["claim_tasks"],
        org_id,
        now,
        None if types is None else list(types),
        limit,
        lease_ms,
        worker_id,
    )
    return queries.models_from(Task, records)


async def claim_task(
    conn: Db, *, org_id: str, task_id: str, worker_id: str, lease_ms: int, now: int
) -> ClaimOne:
    """Lease one task by id (claim_task_ids' statement, one id); ``current`` explains a refusal
    (terminal, or held by a lease)."""
    (claimed,) = await claim_task_ids(
        conn, org_id=org_id, task_ids=[task_id], worker_id=worker_id, lease_ms=lease_ms, now=now
    )
    if claimed.task is not None:
        return ClaimOne(claimed.task, True, None)
    current = await get_task(conn, org_id=org_id, task_id=task_id)
    return ClaimOne(None, current is not None, current)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One id of a batch claim: the leased task, or the task's status before the claim."""

    task_id: str
    task: Task | None
    status: str | None  # None: no such task (in this organisation)
    duplicate: bool = False  # a later occurrence of the id in one request: not applied


async def claim_task_ids(
    conn: Db, *, org_id: str, task_ids: Sequence[str], worker_id: str, lease_ms: int, now: int
) -> list[Claimed]:
    """Lease tasks by id in one statement (input order), each under claim_task's rules."""
    firsts = first_occurrences(task_ids)
    records = await conn.fetch(
        _SQL["claim_task_ids"], org_id, firsts.items, now, lease_ms, worker_id
    )
    task = queries.fields_of(Task, records)
    claimed = [
        Claimed(r["claimed_id"], None if r["id"] is None else Task(*task(r)), r["status_before"])
        for r in records
    ]
    # A repeated id: its first occurrence holds the lease (the task is running now, or is as the
    # first answer says).
    return firsts.expand(
        claimed, lambda c: Claimed(c.task_id, None, "running" if c.task else c.status, True)
    )


async def _fetch_leases(
    conn: Db, sql: str, org_id: str, leases: Sequence[Lease], *args: object
) -> tuple[FirstOccurrences, list[Any]]:
    # A statement over ($1 org, $2 task ids, $3 lease tokens, args...), each task once.
    firsts = first_occurrences([lease.task_id for lease in leases])
    # In id order, as finish_tasks (why there), then answered in the request's order again.
    order = sorted(range(len(firsts.items)), key=lambda k: firsts.items[k])
    task_ids = [firsts.items[k] for k in order]
    tokens = [leases[firsts.indexes[k]].lease_token for k in order]
    records = await conn.fetch(sql, org_id, task_ids, tokens, *args)
    in_order = list(records)
    for position, k in enumerate(order):
        in_order[k] = records[position]
    return firsts, in_order


async def heartbeat(
    conn: Db, *, org_id: str, leases: Sequence[Lease], lease_ms: int, now: int
) -> list[LeaseState]:
    """Extend every lease still held; report lost and cancelled ones (in input order)."""
    firsts, records = await _fetch_leases(conn, _SQL["heartbeat"], org_id, leases, now, lease_ms)
    states = [
        LeaseState(r["task_id"], r["ok"], r["cancelled"], r["lease_expires_at"], r["found"])
        for r in records
    ]
    return firsts.expand(
        states, lambda s: LeaseState(s.task_id, False, s.cancelled, None, s.found, True)
    )


async def finish_tasks(
    conn: Db,
    *,
    org_id: str,
    outcomes: Sequence[Outcome],
    now: int,
    released: list[str] | None = None,
) -> list[Ended]:
    """Complete or fail attempts under their lease tokens, in one statement (input order).

    Blocked children whose last parent ended are released in the same statement; their ids are
    added to ``released`` (to publish on bullmq).
    """
    firsts = first_occurrences([o.task_id for o in outcomes])
    if len(firsts.indexes) < len(outcomes):
        outcomes = [outcomes[i] for i in firsts.indexes]
    # In id order: the statement locks its tasks in the order it reads them, and a statement that
    # adds children locks their parents in id order too (store/sql/dependencies.sql lock_parents):
    # the same order everywhere, so neither waits for the other in a cycle (a deadlock). The plan
    # decides how the update reads them (through the primary key, or the organisation's running
    # tasks: queue.sql finish_tasks), and a cycle it makes is broken and run again (below).
    order = sorted(range(len(outcomes)), key=lambda k: outcomes[k].task_id)
    outcomes = [outcomes[k] for k in order]
    args = (
        org_id,
        [o.task_id for o in outcomes],
        [o.lease_token for o in outcomes],
        [o.status for o in outcomes],
        queries.jsonb_items([o.output_data for o in outcomes]),
        queries.jsonb_items([o.error_data for o in outcomes]),
        [o.retryable for o in outcomes],
        now,
    )
    # A cascade down a graph whose branches meet may still wait in a cycle with another's.
    records = await run_again_on_deadlock(
        conn, lambda: conn.fetch(_SQL["finish_tasks"], *args, *two_shards())
    )
    freed = await _after_step(conn, org_id=org_id, records=records, now=now)
    if released is not None:
        released += freed
    task = queries.fields_of(Task, records)
    head = queries.values(records, "ended_id", "ok", "status_now", "found", "same_token")
    ended = []
    for outcome, r in zip(outcomes, records, strict=True):
        task_id, ok, status, found, same_token = head(r)
        # A repeat of a call that already ended this attempt (the answer was lost, say).
        repeat = not ok and same_token and _ended_as(outcome.status, status)
        ended.append(
            Ended(task_id, ok or repeat, status, found, repeat, Task(*task(r)) if ok else None)
        )
    in_order = ended[:]
    for position, k in enumerate(order):
        in_order[k] = ended[position]
    return firsts.expand(in_order, _duplicate_of)


async def _after_step(
    conn: Db, *, org_id: str | None, records: Sequence[Any], now: int
) -> list[str]:
    """The children a statement ending tasks released, and its follow-ups after the commit
    (store/dependencies.py after_step): every row carries the same statement-wide columns."""
    if not records:
        return []
    head = records[0]
    freed = list(head["released_ids"] or [])
    return freed + await dependencies.after_step(conn, org_id=org_id, record=head, now=now)


def _ended_as(outcome: str, status: str | None) -> bool:
    if status == "cancelled":
        return True  # a cancel was asked while the attempt ran: any outcome ended it so
    if outcome == "completed":
        return status == "completed"
    return status in ("retrying", "failed")


async def release_tasks(
    conn: Db,
    *,
    org_id: str,
    leases: Sequence[Lease],
    now: int,
    released: list[str] | None = None,
) -> list[Ended]:
    """Put held tasks back in the queue, undoing the claim's attempt count (input order).

    A task whose cancel was asked while it ran ends cancelled instead (its blocked children
    as finish_tasks says)."""
    firsts, records = await _fetch_leases(
        conn, _SQL["release_tasks"], org_id, leases, now, *two_shards()
    )
    freed = await _after_step(conn, org_id=org_id, records=records, now=now)
    if released is not None:
        released += freed
    task = queries.fields_of(Task, records)
    ended = [
        Ended(
            r["released_id"],
            r["ok"],
            r["status_now"],
            r["found"],
            False,
            Task(*task(r)) if r["ok"] else None,
        )
        for r in records
    ]
    return firsts.expand(ended, _duplicate_of)


def _duplicate_of(first: Ended) -> Ended:
    # Not applied; the task's status is what the first occurrence left.
    return Ended(first.task_id, False, first.status, first.found, False, None, True)


async def expire_leases(
    conn: Db, *, now: int, limit: int, released: list[str] | None = None
) -> list[Task]:
    """Expired leases of every organisation: retrying with a backoff, or failed when exhausted.

    Blocked children released in the same statement are added to ``released`` (to publish)."""
    records = await conn.fetch(_SQL["expire_leases"], now, limit, *two_shards())
    freed = await _after_step(conn, org_id=None, records=records, now=now)
    if released is not None:
        released += freed
    return queries.models_from(Task, records)


@dataclass(frozen=True, slots=True)
class ReadyCursor:
    """Where the sweeper's walk over the ready tasks goes on (in task_ready_idx order)."""

    org_id: str = ""
    priority: int = -1
    run_after: int = -1
    task_id: str = "00000000-0000-0000-0000-000000000000"


async def ready_tasks(
    conn: Db, *, ready_before: int, cursor: ReadyCursor, limit: int
) -> tuple[list[Task], ReadyCursor]:
    """Up to limit tasks ready since ready_before, after cursor; the cursor wraps at the end."""
    records = await conn.fetch(
        _SQL["ready_tasks"],
        ready_before,
        cursor.org_id,
        cursor.priority,
        cursor.run_after,
        cursor.task_id,
        limit,
    )
    tasks = queries.models_from(Task, records)
    if len(tasks) < limit:
        return tasks, ReadyCursor()
    last = tasks[-1]
    # The raw run_after: the task's own hides it unless it lies after created_at.
    return tasks, ReadyCursor(last.org_id, last.priority, records[-1]["cursor_run_after"], last.id)
