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

import msgspec

from foreman.models import Task
from foreman.store.db import Db
from foreman.store.tasks import COLUMNS, get_task, shard, task_from

# Backoff of a failed attempt: min(2000 * 2^(attempt-1), 300000) ms, +-20 % jitter
# (docs/queue-protocol.md), so that many tasks failing together do not come back together.
BACKOFF_MS = """
(least(2000 * power(2, greatest({attempt}, 1) - 1), 300000) * (0.8 + random() * 0.4))::bigint
"""

# Like tasks.COUNT_TERMINAL, summed per run: one statement may end many tasks of one run, and an
# INSERT ... ON CONFLICT cannot touch the same (run, shard) row twice.
COUNT_TERMINAL_MANY = """
INSERT INTO run_counter (run_id, shard, org_id, completed_tasks, failed_tasks, cancelled_tasks)
SELECT run_id, {shard}, org_id,
       count(*) FILTER (WHERE status = 'completed'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'cancelled')
  FROM {source}
 WHERE status IN ('completed', 'failed', 'cancelled')
 GROUP BY run_id, org_id
ON CONFLICT (run_id, shard) DO UPDATE
   SET completed_tasks = run_counter.completed_tasks + EXCLUDED.completed_tasks,
       failed_tasks    = run_counter.failed_tasks + EXCLUDED.failed_tasks,
       cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
"""

# One notification per 100 ended tasks (a payload holds at most 8000 bytes). As an uncorrelated
# subquery in the select list it runs once, when the statement returns a row.
NOTIFY_DONE = """
(SELECT count(pg_notify('foreman_task_done', g.ids))
   FROM (SELECT string_agg(d.id::text, ',') AS ids
           FROM (SELECT id, (row_number() OVER () - 1) / 100 AS n
                   FROM {source}
                  WHERE status IN ('completed', 'failed', 'cancelled')) d
          GROUP BY d.n) g)
"""

_LEASE_EXPIRED = """
jsonb_build_object(
    'message', CASE WHEN {retry}
                    THEN format('Lease expired on attempt %s; retrying', attempt)
                    ELSE format('Lease expired after %s attempt(s): attempts exhausted', attempt)
               END,
    'type', 'LeaseExpired')
"""

# Claims and heartbeats commit without waiting for the WAL flush (synchronous_commit off for
# their own transaction only, set inside the statement: no extra round trip). One lost in a
# PostgreSQL crash only puts its task back as it was, which at-least-once delivery covers (the
# worker's result is then refused by its lease), and any later durable commit flushes it anyway.
# It takes the fsync wait (≈0.3 ms here) off the pickup path.
_ASYNC_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit"

# Ready tasks in claim order (BullMQ order: priority 0 first, then 1 = highest), locked without
# waiting for rows another claimer holds. The CTE is MATERIALIZED so LIMIT applies exactly once.
_CLAIM_TASKS = f"""
WITH c AS MATERIALIZED (
    SELECT id
      FROM task
     WHERE org_id = $1
       AND status IN ('queued', 'retrying')
       AND run_after <= $2
       AND ($3::text[] IS NULL OR type = ANY($3::text[]))
     ORDER BY priority, run_after, id
     LIMIT $4
       FOR UPDATE SKIP LOCKED
), t AS (
    UPDATE task
       SET status = 'running',
           attempt = attempt + 1,
           started_at = coalesce(started_at, $2),
           lease_token = gen_random_uuid(),
           lease_expires_at = $2 + $5::bigint,
           worker_id = $6,
           updated_at = $2
     WHERE org_id = $1 AND id IN (SELECT id FROM c)
    RETURNING *
)
SELECT {COLUMNS}, t.lease_token
  FROM t, {_ASYNC_COMMIT}
 ORDER BY t.priority, t.run_after, t.id
"""

# What claiming by id does to a row ($3 now, $4 lease ms, $5 worker id), and which rows it may
# take; shared by the single and the batch claim so the two cannot drift apart.
_CLAIM_BY_ID_SET = f"""       SET status = 'running',
           attempt = attempt + 1,
           retry_count = retry_count + (status = 'running')::int,
           error_data = CASE WHEN status = 'running'
                             THEN {_LEASE_EXPIRED.format(retry="true")}
                             ELSE error_data END,
           queued_at = coalesce(queued_at, $3),
           started_at = coalesce(started_at, $3),
           lease_token = gen_random_uuid(),
           lease_expires_at = $3 + $4::bigint,
           worker_id = $5,
           updated_at = $3"""
_CLAIMABLE_BY_ID = """       AND (status IN ('pending', 'queued', 'retrying')
            OR (status = 'running' AND lease_expires_at < $3 AND attempt <= max_retries))"""

# By id (a BullMQ job named it): any not-yet-terminal task that nobody holds. A running task whose
# lease expired is taken over like the sweeper would: the lost attempt counts as a retry, and
# only while attempts remain (the sweeper fails it otherwise).
_CLAIM_TASK = f"""
WITH t AS (
    UPDATE task
{_CLAIM_BY_ID_SET}
     WHERE org_id = $1 AND id = $2
{_CLAIMABLE_BY_ID}
    RETURNING *
)
SELECT {COLUMNS}, t.lease_token FROM t, {_ASYNC_COMMIT}
"""

# Many ids at once (jobs a bullmq worker received together): _CLAIM_TASK's rules per id, one
# statement. The snapshot `s` sees the rows as they were before it, which explains a refusal.
_CLAIM_TASK_IDS = f"""
WITH i AS (
    SELECT * FROM unnest($2::uuid[]) WITH ORDINALITY AS i(task_id, ord)
), t AS (
    UPDATE task
{_CLAIM_BY_ID_SET}
     WHERE org_id = $1 AND id = ANY($2::uuid[])
{_CLAIMABLE_BY_ID}
    RETURNING *
), s AS (
    SELECT id, status FROM task WHERE org_id = $1 AND id = ANY($2::uuid[])
)
SELECT i.task_id::text, s.status, {COLUMNS}, t.lease_token
  FROM i
  LEFT JOIN t ON t.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id,
       {_ASYNC_COMMIT}
 ORDER BY i.ord
"""

# The rows as they were before the statement, to explain a refusal. `id = ANY(array)` makes
# PostgreSQL look each id up in the primary key; a join against the unnest() rows may instead
# scan every task of the organisation.
_SNAPSHOT = """
s AS (
    SELECT id, status, lease_token FROM task WHERE org_id = $1 AND id = ANY($2::uuid[])
)"""

_HEARTBEAT = f"""
WITH i AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS i(task_id, token, ord)
), h AS (
    UPDATE task
       SET lease_expires_at = $4::bigint + $5::bigint
      FROM i
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.id = i.task_id
       AND task.status = 'running' AND task.lease_token = i.token
    RETURNING task.id, task.lease_expires_at
), {_SNAPSHOT}
SELECT i.task_id, h.id IS NOT NULL, coalesce(s.status = 'cancelled', false),
       h.lease_expires_at, s.id IS NOT NULL
  FROM i
  LEFT JOIN h ON h.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id
 ORDER BY i.ord
"""

_NEXT_STATUS = """
CASE WHEN i.outcome = 'completed' THEN 'completed'
     WHEN i.retryable AND task.attempt <= task.max_retries THEN 'retrying'
     ELSE 'failed' END
"""

# complete and fail, single or batch. maxRetries 0 = one attempt: attempt 1 <= 0 is false.
# The lease token stays on the row, so a repeat of the same call is recognised (and changes
# nothing) while a newer attempt's claim replaces it.
_FINISH_TASKS = f"""
WITH i AS (
    SELECT *
      FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::jsonb[], $6::jsonb[], $7::bool[])
           WITH ORDINALITY AS i(task_id, token, outcome, output_data, error_data, retryable, ord)
), t AS (
    UPDATE task
       SET status = {_NEXT_STATUS},
           output_data = CASE WHEN i.outcome = 'completed' THEN i.output_data
                              ELSE task.output_data END,
           error_data = CASE WHEN i.outcome = 'failed' THEN i.error_data ELSE task.error_data END,
           retry_count = task.retry_count + ({_NEXT_STATUS} = 'retrying')::int,
           run_after = CASE WHEN {_NEXT_STATUS} = 'retrying'
                            THEN $8::bigint + {BACKOFF_MS.format(attempt="task.attempt")}
                            ELSE task.run_after END,
           completed_at = CASE WHEN {_NEXT_STATUS} = 'retrying' THEN NULL ELSE $8::bigint END,
           duration_ms = CASE WHEN {_NEXT_STATUS} = 'retrying' THEN NULL
                              ELSE $8::bigint - coalesce(task.started_at, task.created_at) END,
           lease_expires_at = NULL,
           updated_at = $8
      FROM i
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.id = i.task_id
       AND task.status = 'running' AND task.lease_token = i.token
    RETURNING task.*
), c AS ({COUNT_TERMINAL_MANY.format(shard="$9::smallint", source="t")}), {_SNAPSHOT}
SELECT i.task_id, t.id IS NOT NULL, coalesce(t.status, s.status),
       s.id IS NOT NULL, coalesce(s.lease_token = i.token, false), {NOTIFY_DONE.format(source="t")},
       {COLUMNS}
  FROM i
  LEFT JOIN t ON t.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id
 ORDER BY i.ord
"""

# Back to the queue, as if the attempt had not started (graceful shutdown of a worker).
_RELEASE_TASKS = f"""
WITH i AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS i(task_id, token, ord)
), t AS (
    UPDATE task
       SET status = 'queued',
           attempt = greatest(task.attempt - 1, 0),
           queued_at = coalesce(task.queued_at, $4),
           lease_token = NULL,
           lease_expires_at = NULL,
           worker_id = NULL,
           updated_at = $4
      FROM i
     WHERE task.org_id = $1 AND task.id = ANY($2::uuid[]) AND task.id = i.task_id
       AND task.status = 'running' AND task.lease_token = i.token
    RETURNING task.*
), {_SNAPSHOT}
SELECT i.task_id, t.id IS NOT NULL, coalesce(t.status, s.status), s.id IS NOT NULL,
       (SELECT count(pg_notify('foreman_task_ready', $1)) FROM (SELECT 1 FROM t LIMIT 1) one),
       {COLUMNS}
  FROM i
  LEFT JOIN t ON t.id = i.task_id
  LEFT JOIN s ON s.id = i.task_id
 ORDER BY i.ord
"""

_EXHAUSTED = "attempt > max_retries"

# The sweeper, across organisations (its connection is the table owner, which RLS does not
# restrict because RLS is not FORCEd). SKIP LOCKED: a worker finishing the task right now wins.
_EXPIRE_LEASES = f"""
WITH x AS MATERIALIZED (
    SELECT id
      FROM task
     WHERE status = 'running' AND lease_expires_at < $1
     ORDER BY lease_expires_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), t AS (
    UPDATE task
       SET status = CASE WHEN {_EXHAUSTED} THEN 'failed' ELSE 'retrying' END,
           retry_count = retry_count + (NOT {_EXHAUSTED})::int,
           run_after = CASE WHEN {_EXHAUSTED} THEN run_after
                            ELSE $1 + {BACKOFF_MS.format(attempt="attempt")} END,
           error_data = {_LEASE_EXPIRED.format(retry=f"NOT {_EXHAUSTED}")},
           completed_at = CASE WHEN {_EXHAUSTED} THEN $1 END,
           duration_ms = CASE WHEN {_EXHAUSTED} THEN $1 - coalesce(started_at, created_at) END,
           lease_token = NULL,
           lease_expires_at = NULL,
           updated_at = $1
     WHERE id IN (SELECT id FROM x) AND status = 'running'
    RETURNING *
), c AS ({COUNT_TERMINAL_MANY.format(shard="$3::smallint", source="t")})
SELECT {NOTIFY_DONE.format(source="t")}, {COLUMNS} FROM t
"""

# Ready tasks of every organisation, in the order of task_ready_idx, from a cursor on.
_READY_TASKS = f"""
SELECT t.run_after, {COLUMNS}
  FROM task t
 WHERE t.status IN ('queued', 'retrying')
   AND (t.org_id, t.priority, t.run_after, t.id) > ($2, $3, $4, $5::uuid)
   AND t.run_after <= $1 AND t.updated_at <= $1
 ORDER BY t.org_id, t.priority, t.run_after, t.id
 LIMIT $6
"""


def jsonb_items(values: Sequence[Any]) -> list[msgspec.Raw | None]:
    """JSON values as elements of a jsonb[] parameter.

    Encoded here: asyncpg would take a JSON array for a nested dimension of the SQL array.
    """
    return [None if v is None else msgspec.Raw(msgspec.json.encode(v)) for v in values]


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
        _CLAIM_TASKS,
        org_id,
        now,
        None if types is None else list(types),
        limit,
        lease_ms,
        worker_id,
    )
    return [task_from(r) for r in records]


async def claim_task(
    conn: Db, *, org_id: str, task_id: str, worker_id: str, lease_ms: int, now: int
) -> ClaimOne:
    """Lease one task by id; ``current`` explains a refusal (terminal, or held by a lease)."""
    record = await conn.fetchrow(_CLAIM_TASK, org_id, task_id, now, lease_ms, worker_id)
    if record is not None:
        return ClaimOne(task_from(record), True, None)
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
    records = await conn.fetch(_CLAIM_TASK_IDS, org_id, firsts.items, now, lease_ms, worker_id)
    claimed = [Claimed(r[0], task_from(r, 2) if r[2] is not None else None, r[1]) for r in records]
    # A repeated id: its first occurrence holds the lease (the task is running now, or is as the
    # first answer says).
    return firsts.expand(
        claimed, lambda c: Claimed(c.task_id, None, "running" if c.task else c.status, True)
    )


async def heartbeat(
    conn: Db, *, org_id: str, leases: Sequence[Lease], lease_ms: int, now: int
) -> list[LeaseState]:
    """Extend every lease still held; report lost and cancelled ones (in input order)."""
    firsts = first_occurrences([lease.task_id for lease in leases])
    records = await conn.fetch(
        _HEARTBEAT,
        org_id,
        firsts.items,
        [leases[i].lease_token for i in firsts.indexes],
        now,
        lease_ms,
    )
    states = [LeaseState(*r) for r in records]
    return firsts.expand(
        states, lambda s: LeaseState(s.task_id, False, s.cancelled, None, s.found, True)
    )


async def finish_tasks(
    conn: Db, *, org_id: str, outcomes: Sequence[Outcome], now: int
) -> list[Ended]:
    """Complete or fail attempts under their lease tokens, in one statement (input order)."""
    firsts = first_occurrences([o.task_id for o in outcomes])
    if len(firsts.indexes) < len(outcomes):
        outcomes = [outcomes[i] for i in firsts.indexes]
    records = await conn.fetch(
        _FINISH_TASKS,
        org_id,
        [o.task_id for o in outcomes],
        [o.lease_token for o in outcomes],
        [o.status for o in outcomes],
        jsonb_items([o.output_data for o in outcomes]),
        jsonb_items([o.error_data for o in outcomes]),
        [o.retryable for o in outcomes],
        now,
        shard(),
    )
    ended = []
    for outcome, r in zip(outcomes, records, strict=True):
        ok, status, found, same_token = r[1], r[2], r[3], r[4]
        # A repeat of a call that already ended this attempt (the answer was lost, say).
        repeat = not ok and same_token and _ended_as(outcome.status, status)
        task = task_from(r, 6) if ok else None
        ended.append(Ended(r[0], ok or repeat, status, found, repeat, task))
    return firsts.expand(ended, _duplicate_of)


def _ended_as(outcome: str, status: str | None) -> bool:
    if outcome == "completed":
        return status == "completed"
    return status in ("retrying", "failed")


async def release_tasks(conn: Db, *, org_id: str, leases: Sequence[Lease], now: int) -> list[Ended]:
    """Put held tasks back in the queue, undoing the claim's attempt count (input order)."""
    firsts = first_occurrences([lease.task_id for lease in leases])
    records = await conn.fetch(
        _RELEASE_TASKS,
        org_id,
        firsts.items,
        [leases[i].lease_token for i in firsts.indexes],
        now,
    )
    ended = [
        Ended(r[0], r[1], r[2], r[3], False, task_from(r, 5) if r[1] else None) for r in records
    ]
    return firsts.expand(ended, _duplicate_of)


def _duplicate_of(first: Ended) -> Ended:
    # Not applied; the task's status is what the first occurrence left.
    return Ended(first.task_id, False, first.status, first.found, False, None, True)


async def expire_leases(conn: Db, *, now: int, limit: int) -> list[Task]:
    """Expired leases of every organisation: retrying with a backoff, or failed when exhausted."""
    records = await conn.fetch(_EXPIRE_LEASES, now, limit, shard())
    return [task_from(r, 1) for r in records]


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
        _READY_TASKS,
        ready_before,
        cursor.org_id,
        cursor.priority,
        cursor.run_after,
        cursor.task_id,
        limit,
    )
    # The raw run_after comes first: COLUMNS hides it unless it lies after created_at.
    tasks = [task_from(r, 1) for r in records]
    if len(tasks) < limit:
        return tasks, ReadyCursor()
    last = tasks[-1]
    return tasks, ReadyCursor(last.org_id, last.priority, records[-1][0], last.id)
