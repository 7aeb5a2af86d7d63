"""Tasks: insert, read, update and list; run counters change in the same statement as the task."""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from typing import Any

import msgspec

from foreman import errors
from foreman.models import TERMINAL_STATUSES, Attempt, Task
from foreman.store import dependencies, queries
from foreman.store import runs as runs_store
from foreman.store.db import Db, run_again_on_deadlock
from foreman.store.shards import shard, two_shards

_SQL = queries.load_statements("tasks")  # store/sql/tasks.sql: the statements and why they are so

# The columns of a task in the PATCH statement (as the view task_answer, migration 0010): named
# as the fields of models.Task; run_after only when it lies after created_at, never the lease token.
_TASK_COLUMNS = """t.id, t.run_id, t.org_id, t.type, t.status, t.input_data, t.metadata, t.retry_count,
       t.max_retries, t.priority, t.attempt, t.created_at, t.updated_at, t.parent_task_id,
       t.output_data, t.error_data, t.queued_at, t.started_at, t.completed_at, t.duration_ms,
       t.queue_job_id, CASE WHEN t.run_after > t.created_at THEN t.run_after END AS run_after,
       t.lease_expires_at, t.idempotency_key, t.worker_id"""
_SORT_COLUMNS = {
    "created_at": "created_at",
    "started_at": "started_at",
    "completed_at": "completed_at",
}


class NewTask(msgspec.Struct, frozen=True):
    """What a caller supplies to create a task (a Struct: a batch makes up to 1,000 of them, and
    a frozen dataclass's __init__ costs ten times a Struct's)."""

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
    depends_on: tuple[str, ...] = ()  # parent task ids (refs of a batch already resolved)
    on_parent_failure: str = "cancel"
    traceparent: str | None = None  # W3C, validated (foreman/tracing.py): the enqueue's span

    @property
    def status(self) -> str:
        """The status the task is inserted with."""
        if self.depends_on:
            return "blocked"  # store/dependencies.py releases it
        return "queued" if self.enqueue else "pending"

    @property
    def parent_policy(self) -> str | None:
        """on_parent_failure as stored: only on a task with dependencies."""
        return self.on_parent_failure if self.depends_on else None


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The task, and whether it was created now (False: an idempotent repeat)."""

    task: Task | None
    created: bool
    run_found: bool
    parent_found: bool
    run_open: bool = True  # False: an auto-complete run that has ended takes no task


async def insert_task(
    conn: Db, *, org_id: str, task_id: str, new: NewTask, now: int
) -> InsertResult:
    """Create a task (pending, or queued when new.enqueue) and count it on its run.

    With dependencies it is inserted blocked and its edges are added in the same transaction
    (store/dependencies.py): released at once when every parent has ended.
    """
    if not new.depends_on:
        return await _insert_task(conn, org_id=org_id, task_id=task_id, new=new, now=now)
    edges = [(task_id, parent) for parent in new.depends_on]
    # Under its parents' and run's locks it may deadlock with a statement ending those parents.
    return await run_again_on_deadlock(
        conn, lambda: _insert_task_with_parents(conn, org_id, task_id, new, edges, now)
    )


async def _insert_task_with_parents(
    conn: Db, org_id: str, task_id: str, new: NewTask, edges: list[tuple[str, str]], now: int
) -> InsertResult:
    async with conn.transaction():
        await dependencies.lock_parents(conn, org_id=org_id, edges=edges)
        result = await _insert_task(conn, org_id=org_id, task_id=task_id, new=new, now=now)
        if result.created:
            await dependencies.add_dependencies(conn, org_id=org_id, edges=edges, now=now)
            result = InsertResult(
                await get_task(conn, org_id=org_id, task_id=task_id),
                True,
                result.run_found,
                result.parent_found,
            )
    return result


async def _insert_task(
    conn: Db, *, org_id: str, task_id: str, new: NewTask, now: int
) -> InsertResult:
    record = await conn.fetchrow(
        _SQL["insert_task"],
        org_id,
        new.run_id,
        new.parent_task_id,
        task_id,
        new.task_type,
        new.status,
        new.input_data,
        new.metadata,
        new.max_retries,
        new.priority,
        now + new.delay_ms,
        new.idempotency_key,
        now,
        shard(),
        new.parent_policy,
        new.enqueue,
        new.traceparent,
    )
    assert record is not None
    run_found, parent_found = record["run_found"], record["parent_found"]
    if record["id"] is not None:
        return InsertResult(queries.model_from(Task, record), True, run_found, parent_found)
    if not record["run_open"]:
        return InsertResult(None, False, run_found, parent_found, False)
    existing = None
    if new.idempotency_key is not None and run_found:
        existing = await get_task_by_key(conn, org_id=org_id, key=new.idempotency_key)
        if existing is not None:
            check_replay(existing, new)
    return InsertResult(existing, False, run_found, parent_found)


# What a replay must repeat (docs/queue-protocol.md, "Creating and queueing"): the fields that make
# the task and that nothing changes afterwards. Not compared: metadata (a PATCH may change it),
# delayMs and enqueue (the row keeps neither as sent: runAfter and status move on with the task).
def request_differences(task: Task, new: NewTask) -> list[str]:
    """The request fields (wire names) in which new differs from the request that made task."""
    pairs = {
        "runId": (task.run_id, new.run_id),
        "type": (task.type, new.task_type),
        "inputData": (_json_value(task.input_data), _json_value(new.input_data)),
        "parentTaskId": (task.parent_task_id, new.parent_task_id),
        "maxRetries": (task.max_retries, new.max_retries),
        "priority": (task.priority, new.priority),
    }
    return [name for name, (made, sent) in pairs.items() if not _same_json(made, sent)]


def check_replay(task: Task, new: NewTask, *, index: int | None = None) -> None:
    """Raise ConflictError unless new repeats the request that created task (same key)."""
    differences = request_differences(task, new)
    if not differences:
        return
    where = {} if index is None else {"index": index}
    raise errors.ConflictError(
        f"Idempotency key {new.idempotency_key!r} was used for another request:"
        f" {', '.join(differences)} differ from the task it created",
        taskId=task.id,
        fields=differences,
        **where,
    )


# Numbers as Decimal: exact like jsonb's numeric (floats judged 12345678901234567890.123 and .124
# the same), and 1e400, which jsonb stores, is no float at all (it raised: a 500 on the replay).
_exact_json = msgspec.json.Decoder(float_hook=decimal.Decimal)
_NUMBERS = (int, float, decimal.Decimal)  # float: a value the store's callers passed as Python


def _json_value(value: Any) -> Any:
    # Stored JSON comes back undecoded (store/db.py passes jsonb through as msgspec.Raw).
    return _exact_json.decode(value) if isinstance(value, msgspec.Raw) else value


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality as jsonb's: key order aside, 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_json, a, b))
    if isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS):
        return a == b  # exact across the types (Decimal("0.1") != 0.1)
    return type(a) is type(b) and a == b


@dataclass(frozen=True, slots=True)
class BatchInsertResult:
    """Tasks in input order (None only where a row failed), and the first row that failed."""

    tasks: list[Task | None]
    created: list[bool]
    failed_index: int | None = None
    run_found: bool = True
    parent_found: bool = True
    run_open: bool = True


async def insert_tasks(
    conn: Db, *, org_id: str, task_ids: list[str], news: list[NewTask], now: int
) -> BatchInsertResult:
    """Create tasks in one statement: all of them, or none when a run or parent is missing.

    A key that replays another request (see check_replay) raises ConflictError and creates none:
    with keys, the statement and the replay check share a transaction.
    """
    with_parents = any(n.depends_on for n in news)
    if all(n.idempotency_key is None for n in news) and not with_parents:
        return await _insert_tasks(conn, org_id=org_id, task_ids=task_ids, news=news, now=now)
    return await run_again_on_deadlock(
        conn,
        lambda: _insert_batch_in_transaction(conn, org_id, task_ids, news, now, with_parents),
    )


async def _insert_batch_in_transaction(
    conn: Db, org_id: str, task_ids: list[str], news: list[NewTask], now: int, with_parents: bool
) -> BatchInsertResult:
    async with conn.transaction():
        if with_parents:
            edges = [
                (task_id, parent)
                for task_id, new in zip(task_ids, news, strict=True)
                for parent in new.depends_on
            ]
            await dependencies.lock_parents(conn, org_id=org_id, edges=edges)
        result = await _insert_tasks(conn, org_id=org_id, task_ids=task_ids, news=news, now=now)
        for index, (task, made) in enumerate(zip(result.tasks, result.created, strict=True)):
            if task is not None and not made:
                check_replay(task, news[index], index=index)
        if with_parents and result.failed_index is None:
            result = await _add_batch_dependencies(conn, org_id, task_ids, news, result, now)
    return result


async def _add_batch_dependencies(
    conn: Db,
    org_id: str,
    task_ids: list[str],
    news: list[NewTask],
    result: BatchInsertResult,
    now: int,
) -> BatchInsertResult:
    # Only the tasks created now (an idempotent repeat keeps the edges it was made with).
    edges = [
        (task_id, parent)
        for task_id, new, made in zip(task_ids, news, result.created, strict=True)
        if made
        for parent in new.depends_on
    ]
    if not edges:
        return result
    await dependencies.add_dependencies(conn, org_id=org_id, edges=edges, now=now, batch=task_ids)
    children = sorted({child for child, _ in edges})
    fresh = {t.id: t for t in await dependencies.get_tasks(conn, org_id=org_id, task_ids=children)}
    tasks = [None if t is None else fresh.get(t.id, t) for t in result.tasks]
    return BatchInsertResult(tasks, result.created)


def _traceparents(news: list[NewTask]) -> list[str | None] | None:
    # NULL rather than an array of NULLs when none has one (nothing to encode): unnest pads it.
    if all(n.traceparent is None for n in news):
        return None
    return [n.traceparent for n in news]


async def _insert_tasks(
    conn: Db, *, org_id: str, task_ids: list[str], news: list[NewTask], now: int
) -> BatchInsertResult:
    records = await conn.fetch(
        _SQL["insert_tasks"],
        org_id,
        task_ids,
        [n.run_id for n in news],
        [n.parent_task_id for n in news],
        [n.task_type for n in news],
        [n.status for n in news],
        queries.jsonb_items([n.input_data for n in news]),
        queries.jsonb_items([n.metadata for n in news]),
        [n.max_retries for n in news],
        [n.priority for n in news],
        [now + n.delay_ms for n in news],
        [n.idempotency_key for n in news],
        now,
        shard(),
        [n.parent_policy for n in news],
        [n.enqueue for n in news],
        _traceparents(news),
    )
    for index, record in enumerate(records):
        if not (record["run_ok"] and record["parent_ok"] and record["run_open"]):
            return BatchInsertResult(
                [], [], index, record["run_ok"], record["parent_ok"], record["run_open"]
            )
    values_of = queries.fields_of(Task, records)
    tasks: list[Task | None] = [None if r["id"] is None else Task(*values_of(r)) for r in records]
    for index, task in enumerate(tasks):
        key = news[index].idempotency_key
        if task is None and key is not None:
            # The key's task was committed by a concurrent request after this statement began.
            tasks[index] = await get_task_by_key(conn, org_id=org_id, key=key)
    created = [t is not None and t.id == i for t, i in zip(tasks, task_ids, strict=True)]
    return BatchInsertResult(tasks, created)


def _joined(values: list[int] | list[bool]) -> str:
    """Numbers or booleans as one text for string_to_array (see insert_plain_tasks)."""
    return ",".join(map(str, values))


def _json_array(values: list[Any]) -> msgspec.Raw:
    """JSON values (a request's text as it came, None as null) as one JSON array."""
    return msgspec.Raw(b"[" + b",".join([_json_text(v) for v in values]) + b"]")


def _json_text(value: Any) -> bytes:
    if value is None:
        return b"null"
    return bytes(value) if isinstance(value, msgspec.Raw) else msgspec.json.encode(value)


def is_plain(news: list[NewTask]) -> bool:
    """Whether insert_plain_tasks takes these tasks: no idempotency key, no dependsOn, no trace
    context to keep."""
    return all(
        n.idempotency_key is None and not n.depends_on and n.traceparent is None for n in news
    )


async def insert_plain_tasks(
    conn: Db, *, org_id: str, task_ids: list[str], news: list[NewTask], now: int
) -> BatchInsertResult:
    """insert_tasks for tasks that are all plain (is_plain), answering no task: every one is
    created under its id of task_ids, or none is (failed_index says which failed first)."""
    record = await conn.fetchrow(
        _SQL["insert_plain_tasks"],
        org_id,
        ",".join(task_ids),
        ",".join([n.run_id for n in news]),
        ",".join(["" if n.parent_task_id is None else n.parent_task_id for n in news]),
        msgspec.Raw(msgspec.json.encode([n.task_type for n in news])),
        ",".join([n.status for n in news]),
        _json_array([n.input_data for n in news]),
        _json_array([n.metadata for n in news]),
        _joined([n.max_retries for n in news]),
        _joined([n.priority for n in news]),
        _joined([now + n.delay_ms for n in news]),
        now,
        shard(),
        _joined([n.enqueue for n in news]),
    )
    assert record is not None
    if record["failed_index"] is not None:
        return BatchInsertResult(
            [],
            [],
            record["failed_index"],
            record["run_ok"],
            record["parent_ok"],
            record["run_open"],
        )
    return BatchInsertResult([], [True] * len(news))


async def get_task(conn: Db, *, org_id: str, task_id: str) -> Task | None:
    """The task, or None."""
    return await queries.fetch_model(conn, Task, _SQL["get_task"], org_id, task_id)


async def get_task_by_key(conn: Db, *, org_id: str, key: str) -> Task | None:
    """The task created with this idempotency key, or None."""
    return await queries.fetch_model(conn, Task, _SQL["get_task_by_key"], org_id, key)


async def list_attempts(conn: Db, *, org_id: str, task_id: str) -> list[Attempt] | None:
    """Every attempt of the task, oldest first; None when there is no such task."""
    records = await conn.fetch(_SQL["list_attempts"], org_id, task_id)
    if not records[0]["found"]:
        return None
    return queries.models_from(Attempt, [r for r in records if r["attempt"] is not None])


def _confirms_job(changes: dict[str, Any]) -> bool:
    """Whether a PATCH is a Node foreman-client's `{status: queued, queueJobId}` sent after it added
    the job: a worker may have claimed or finished the task by then. Such a PATCH moves only a
    `pending` task to `queued`; any other task keeps its status (200, never a 409 nor a step back
    that would end the worker's lease) and records the job id."""
    return changes.get("status") == "queued" and changes.get("queue_job_id") is not None


def _update_sql(changes: dict[str, Any], status: str | None) -> tuple[str, list[str]]:
    """SET clauses for a PATCH; parameters start at $5 ($1 org, $2 id, $3 now, $4 status)."""
    names: list[str] = []
    sets = ["updated_at = $3", "status = coalesce($4, status)"]
    for column in ("output_data", "error_data", "metadata", "queue_job_id"):
        if column in changes:
            names.append(column)
            sets.append(f"{column} = ${4 + len(names)}")
    if _confirms_job(changes):
        sets[1] = "status = CASE WHEN status = 'pending' THEN $4 ELSE status END"
        sets.append(
            "queued_at = CASE WHEN status = 'pending' THEN coalesce(queued_at, $3) ELSE queued_at END"
        )
    elif status == "queued":
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


# The attempt history (task_attempt, migration 0012) in the PATCH statement, by the status sent:
# running opens an attempt unless one is open (numbered after the task's earlier ones: the legacy
# path does not count attempts on the task; one look at the task's rows answers both); any other
# status closes the open one.
_OPEN_ATTEMPT = """, n AS (
    INSERT INTO task_attempt (task_id, attempt, org_id, run_id, worker_id, started_at)
    SELECT t.id, a.attempts + 1, t.org_id, t.run_id, t.worker_id, $3
      FROM t,
           LATERAL (SELECT count(*) AS attempts, count(*) FILTER (WHERE outcome = 'running') AS open
                      FROM task_attempt a
                     WHERE a.task_id = t.id AND a.org_id = $1) a
     WHERE a.open = 0
)"""
_CLOSE_ATTEMPT = """, e AS (
    UPDATE task_attempt a
       SET outcome = CASE WHEN t.status IN ('completed', 'cancelled') THEN t.status
                          WHEN t.status IN ('failed', 'retrying') THEN 'failed'
                          ELSE 'released' END,
           ended_at = $3, duration_ms = $3 - a.started_at,
           error_data = CASE WHEN t.status IN ('failed', 'retrying') THEN t.error_data END
      FROM t
     WHERE a.task_id = t.id AND a.org_id = $1 AND a.outcome = 'running'
)"""


def _attempt_sql(status: str | None, *, confirms: bool) -> str:
    if status is None or confirms:
        return ""
    return _OPEN_ATTEMPT if status == "running" else _CLOSE_ATTEMPT


# What a PATCH that ends its task does besides: counts it on its run (`c`), releases or cancels its
# blocked children in this transaction (`dep`: end_dependents(), migration 0021) and looks up its
# run's autoComplete (update_task completes the run after the statement). A PATCH to any other
# status has none of these steps (each would find nothing to do): the lifecycle's PATCH running
# planned and ran them on every call for nothing (issues 13 and 17).
_ENDING_FLAGS = """(SELECT r.auto_complete FROM run r WHERE r.org_id = $1 AND r.id = t.run_id)
           AS run_auto_complete,
       dep.released AS released_ids, dep.recheck AS recheck_children,
       NULL::uuid[] AS runs_ended, dep.cancelled_runs AS runs_cancelled,"""
_NO_FLAGS = """false AS run_auto_complete,
       NULL::uuid[] AS released_ids, NULL::uuid[] AS recheck_children,
       NULL::uuid[] AS runs_ended, NULL::uuid[] AS runs_cancelled,"""
_ENDING_STEPS = """, c AS (
    INSERT INTO run_counter (run_id, shard, org_id, completed_tasks, failed_tasks, cancelled_tasks)
    SELECT run_id, {shard}::smallint, org_id,
           (status = 'completed')::int, (status = 'failed')::int, (status = 'cancelled')::int
      FROM t
     WHERE status IN ('completed', 'failed', 'cancelled') AND {counted}
    ON CONFLICT (run_id, shard) DO UPDATE
       SET completed_tasks = run_counter.completed_tasks + EXCLUDED.completed_tasks,
           failed_tasks    = run_counter.failed_tasks + EXCLUDED.failed_tasks,
           cancelled_tasks = run_counter.cancelled_tasks + EXCLUDED.cancelled_tasks
), dep AS (
    SELECT x.*
      FROM (SELECT id
              FROM t
             WHERE status IN ('completed', 'failed', 'cancelled') AND {counted}
               AND (child_epoch > 0
                    OR EXISTS (SELECT 1 FROM task_dependency d WHERE d.parent_id = t.id))) p,
           end_dependents(ARRAY[p.id], $3, {dep_shard}::smallint) x
)"""


def _update_task_sql(
    sets: str, *, confirms: bool, ends: bool, shard: str, dep_shard: str, attempts: str = ""
) -> str:
    """The PATCH statement, from fixed fragments: SET clauses of _update_sql, the shards' $n;
    ends: the PATCH sets a terminal status (the steps of _ENDING_STEPS, and the flag for
    update_task's next step).

    A terminal task takes no new status (409), except the same one again (a no-op); a job
    confirmation (see _confirms_job) keeps a terminal status: allowed, and never counted. A
    task's first move into a terminal status counts it on one shard of its run's counters, and
    wakes `wait` long-polls; a move to queued wakes claimers.
    """
    if confirms:
        guard, counted = "TRUE", "FALSE"
    else:
        # A blocked task waits for its parents (store/dependencies.py): only a cancel may end it.
        guard = (
            "($4::text IS NULL OR (status NOT IN ('completed', 'failed', 'cancelled')"
            " AND (status <> 'blocked' OR $4::text = 'cancelled')))"
        )
        counted = "$4::text IS NOT NULL"
    flags = _ENDING_FLAGS if ends else _NO_FLAGS
    steps = ""
    if ends:
        steps = _ENDING_STEPS.format(counted=counted, shard=shard, dep_shard=dep_shard)
    joined = "\n  LEFT JOIN dep ON true" if ends else ""
    return f"""
WITH t AS (
    UPDATE task SET {sets}
     WHERE org_id = $1 AND id = $2
       AND {guard}
    RETURNING *
){steps}{attempts}
SELECT CASE WHEN $4::text IN ('completed', 'failed', 'cancelled')
            THEN pg_notify('foreman_task_done', t.id::text)
            WHEN $4::text = 'queued' THEN pg_notify('foreman_task_ready', $1) END AS notified,
       {flags}
       {_TASK_COLUMNS}
  FROM t{joined}
"""  # noqa: S608 - fixed fragments only (see the docstring); every value is a parameter


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The task after a PATCH, or the reason it was not changed."""

    task: Task | None
    found: bool
    conflict: bool


async def update_task(
    conn: Db,
    *,
    org_id: str,
    task_id: str,
    changes: dict[str, Any],
    now: int,
    released: list[str] | None = None,
) -> UpdateResult:
    """Apply a PATCH. A terminal task only accepts the same status again (a no-op) or no status.

    The row lock of the UPDATE serialises concurrent PATCHes of one task, and its WHERE clause
    re-checks the status after the wait, so a task enters a terminal status (and is counted on
    its run) exactly once.
    """
    status = changes.get("status")
    sets, names = _update_sql(changes, status)
    # The shard is a parameter, not SQL text: one prepared statement per shape, not sixteen.
    confirms = _confirms_job(changes)
    ends = status in TERMINAL_STATUSES and not confirms
    sql = _update_task_sql(
        sets,
        confirms=confirms,
        ends=ends,
        shard=f"${5 + len(names)}",
        dep_shard=f"${6 + len(names)}",
        attempts=_attempt_sql(status, confirms=confirms),
    )
    shards = two_shards() if ends else ()  # only the steps of a PATCH that ends its task count
    record = await conn.fetchrow(
        sql, org_id, task_id, now, status, *(changes[n] for n in names), *shards
    )
    if record is not None:
        task = queries.model_from(Task, record)
        freed = list(record["released_ids"] or [])
        # Its children's follow-ups (store/dependencies.py after_step), then its own run.
        freed += await dependencies.after_step(conn, org_id=org_id, record=record, now=now)
        if released is not None:
            released += freed
        if record["run_auto_complete"] and task.status in TERMINAL_STATUSES:
            # The PATCH path completes an auto-complete run afterwards, with a fresh snapshot.
            await runs_store.complete_runs(conn, org_id=org_id, run_ids=[task.run_id], now=now)
        return UpdateResult(task, True, False)
    current = await get_task(conn, org_id=org_id, task_id=task_id)
    if current is None:
        return UpdateResult(None, False, False)
    # Only a terminal or blocked task with a status in the PATCH gets here.
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
) -> queries.Page[Task]:
    """A page of tasks matching filters (run_id, status, type, parent_task_id), ties by id."""
    where = queries.Where(["t.org_id = $1"], [org_id])
    for column in ("run_id", "status", "type", "parent_task_id"):
        value = filters.get(column)
        if value is not None:
            where.add(f"t.{column} = {{}}", value)
    sql = _list_tasks_sql(where, _SORT_COLUMNS[sort_by], queries.SORT_ORDERS[sort_order])
    return await queries.fetch_page(conn, Task, sql, [*where.args, limit, offset])


def _list_tasks_sql(where: queries.Where, column: str, order: str) -> str:
    """A page of tasks and the total, from fixed fragments: where's clauses (their values are
    parameters, then $n limit and offset), a whitelisted sort column and order."""
    limit, offset = where.page()
    return f"""
SELECT n.total, p.*
  FROM (SELECT count(*) AS total FROM task t WHERE {where.sql()}) n
  LEFT JOIN LATERAL (
      SELECT t.*
        FROM task_answer t
       WHERE {where.sql()}
       ORDER BY t.{column} {order}, t.id {order}
       LIMIT {limit} OFFSET {offset}
  ) p ON true
"""  # noqa: S608 - fixed fragments only (see the docstring); every value is a parameter


@dataclass(frozen=True, slots=True)
class RetryResult:
    """The task made ready again, or the status that kept it from a retry (None: not found)."""

    task: Task | None
    status_before: str | None


async def retry_task(conn: Db, *, org_id: str, task_id: str, now: int) -> RetryResult:
    """Queue a failed or cancelled task again with one more attempt allowed (store/sql/tasks.sql)."""
    record = await conn.fetchrow(_SQL["retry_task"], org_id, task_id, now, shard())
    if record is None:
        return RetryResult(None, None)
    task = None if record["id"] is None else queries.model_from(Task, record)
    return RetryResult(task, record["status_before"])
