"""The queue endpoints of docs/queue-protocol.md: batch create, claim, heartbeat, end, wait.

Leases carry a fencing token: a call with a stale token changes nothing (409, or ``ok: false``
in a batch). Long polls (claim with ``waitMs``, wait) hold no database connection while they
sleep; the process's LISTEN connection (server/notify.py) wakes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, get, post
from litestar.params import FromPath, JSONBody

from foreman import errors, ids, models
from foreman.models import (
    TERMINAL_STATUSES,
    ClaimResult,
    ClaimResultList,
    Heartbeat,
    HeartbeatOne,
    LeaseRefs,
    LeaseStatus,
    LeaseStatusList,
    Task,
    TaskAck,
    TaskAckList,
    TaskBatchCreate,
    TaskClaim,
    TaskClaimIds,
    TaskClaimOne,
    TaskComplete,
    TaskFail,
    TaskItems,
    TaskRef,
    TaskRefs,
    TaskRelease,
    TaskResults,
)
from foreman.server import auth, params
from foreman.server.deps import AppState, error_responses, org_conn, released_tasks, state
from foreman.server.notify import sleep_until
from foreman.server.routes.tasks import new_task, parent_ids, request_traceparent, run_ended
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import tasks as tasks_store

DEFAULT_WAIT_MS = 30_000
# The reason of a later occurrence of a task id in one bulk request: answered, not applied.
DUPLICATE = "duplicate"
_MINIMAL = "return=minimal"


@contextlib.contextmanager
def _watch(
    app: AppState, *, org_id: str | None = None, task_id: str | None = None
) -> Iterator[asyncio.Event]:
    """The event a long poll sleeps on; without a notifier, a plain event (polling only)."""
    notifier = app.notifier
    if notifier is None:
        yield asyncio.Event()
    elif task_id is not None:
        with notifier.watch_done(task_id) as event:
            yield event
    else:
        assert org_id is not None
        with notifier.watch_ready(org_id) as event:
            yield event


# ---------------------------------------------------------------- create


@post("/batch", status_code=201, responses=error_responses(400, 404, 409, 413))
async def create_tasks(
    request: Request[Any, Any, Any], data: JSONBody[TaskBatchCreate]
) -> TaskItems | TaskRefs:
    """Create 1..1000 tasks in one transaction; idempotent repeats return the existing task.

    With ``Prefer: return=minimal`` (RFC 7240) the answer is only the tasks' ids, in order.
    """
    task_ids = [ids.new_id() for _ in data.tasks]
    news = _batch_news(data, task_ids, request_traceparent(request))
    app = state(request)
    minimal = _MINIMAL in request.headers.get("prefer", "")
    # Ids only, nothing to publish, no key or dependency: a statement that answers no rows.
    plain = minimal and not app.publishes and tasks_store.is_plain(news)
    insert = tasks_store.insert_plain_tasks if plain else tasks_store.insert_tasks
    async with org_conn(request) as (org_id, conn):
        result = await insert(conn, org_id=org_id, task_ids=task_ids, news=news, now=ids.now_ms())
    if result.failed_index is not None:
        raise _batch_failure(result, news[result.failed_index])
    if plain:
        if app.metrics is not None:
            app.metrics.types_created(org_id, (new.task_type for new in news))
        return TaskRefs(data=[TaskRef(id=task_id) for task_id in task_ids])
    if any(task is None for task in result.tasks):
        raise errors.ConflictError("A task could not be created, try again")
    tasks = [task for task in result.tasks if task is not None]
    if app.metrics is not None:
        app.metrics.tasks_created(t for t, made in zip(tasks, result.created, strict=True) if made)
    # After the commit: a lost publish is repaired by the sweeper; a phantom job would not be.
    await app.publish(
        [
            t
            for t, made, new in zip(tasks, result.created, news, strict=True)
            if made and new.enqueue
        ]
    )
    if minimal:
        return TaskRefs(data=[TaskRef(id=t.id) for t in tasks])
    return TaskItems(data=tasks)


def _batch_failure(
    result: tasks_store.BatchInsertResult, new: tasks_store.NewTask
) -> errors.ForemanError:
    """Why a batch was refused, from its first item that failed."""
    if result.run_found and result.parent_found and not result.run_open:
        return run_ended(new.run_id)
    what = (
        f"Run not found: {new.run_id}"
        if not result.run_found
        else (f"Parent task not found: {new.parent_task_id}")
    )
    return errors.NotFoundError(what, index=result.failed_index)


def _batch_news(
    data: TaskBatchCreate, task_ids: list[str], traceparent: str | None
) -> list[tasks_store.NewTask]:
    """The items as the store takes them, refs in dependsOn resolved to the ids of earlier items
    (traceparent: the request's, for the items without one of their own)."""
    all_refs = {item.ref: i for i, item in enumerate(data.tasks) if item.ref is not None}
    refs: dict[str, str] = {}
    news = []
    for index, item in enumerate(data.tasks):
        where = f"tasks[{index}]."
        for name in item.depends_on or ():
            if name not in refs and name in all_refs:
                raise errors.ValidationError(
                    f"{where}dependsOn: {name!r} is the ref of item {all_refs[name]}, not of an"
                    " earlier item (a parent exists before its child)",
                    field=f"{where}dependsOn",
                )
        news.append(new_task(item, parent_ids(item, refs, where), traceparent))
        if item.ref is not None:
            if item.ref in refs:
                raise errors.ValidationError(
                    f"{where}ref: {item.ref!r} is the ref of an earlier item already",
                    field=f"{where}ref",
                )
            refs[item.ref] = task_ids[index]
    return news


# ---------------------------------------------------------------- claim


@post("/claim", status_code=200, responses=error_responses(400))
async def claim_tasks(request: Request[Any, Any, Any], data: JSONBody[TaskClaim]) -> TaskItems:
    """Lease up to ``limit`` ready tasks; when none is ready, wait up to ``waitMs`` for one."""
    org_id = auth.request_org(request)
    app = state(request)
    deadline = time.monotonic() + data.wait_ms / 1000
    with _watch(app, org_id=org_id) as woken:
        while True:
            woken.clear()  # before the query: a NOTIFY during it must still wake the wait
            now = ids.now_ms()
            async with db.org_connection(app.pool, org_id) as conn:
                with db.translate_errors():
                    tasks = await queue_store.claim_tasks(
                        conn,
                        org_id=org_id,
                        worker_id=data.worker_id,
                        types=data.types,
                        limit=data.limit,
                        lease_ms=data.lease_ms,
                        now=now,
                    )
            remaining_s = deadline - time.monotonic()
            if tasks and app.metrics is not None:
                app.metrics.tasks_claimed(tasks, now=now)
            if tasks or remaining_s <= 0 or app.draining:
                return TaskItems(data=tasks)
            await sleep_until(woken, min(remaining_s, app.settings.poll_interval_s))


@post("/{task_id:str}/claim", status_code=200, responses=error_responses(400, 404, 409))
async def claim_task(
    request: Request[Any, Any, Any], task_id: FromPath[str], data: JSONBody[TaskClaimOne]
) -> Task:
    """Lease one task by id (a BullMQ job named it); 409 if it is over or held by a live lease."""
    task_id = params.path_id(task_id, "Task")
    now = ids.now_ms()
    async with org_conn(request) as (org_id, conn):
        result = await queue_store.claim_task(
            conn,
            org_id=org_id,
            task_id=task_id,
            worker_id=data.worker_id,
            lease_ms=data.lease_ms,
            now=now,
        )
    if result.task is not None:
        metrics = state(request).metrics
        if metrics is not None:
            metrics.tasks_claimed([result.task], now=now)
        return result.task
    if result.current is None:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    status = result.current.status
    if status == "running":
        raise errors.ConflictError(f"Task {task_id} is running under another lease", status=status)
    raise errors.ConflictError(f"Task {task_id} is {status}; it cannot be claimed", status=status)


def _claim_result(claimed: queue_store.Claimed) -> ClaimResult:
    if claimed.task is not None:
        return ClaimResult(claimed.task_id, True, None, "running", claimed.task)
    if claimed.duplicate:
        reason = DUPLICATE
    else:
        reason = "not_found" if claimed.status is None else "conflict"
    return ClaimResult(claimed.task_id, False, reason, claimed.status, None)


@post("/claim-ids", status_code=200, responses=error_responses(400))
async def claim_task_ids(
    request: Request[Any, Any, Any], data: JSONBody[TaskClaimIds]
) -> ClaimResultList:
    """Lease many tasks by id in one statement, each as ``POST /tasks/{id}/claim`` would."""
    now = ids.now_ms()
    async with org_conn(request) as (org_id, conn):
        claimed = await queue_store.claim_task_ids(
            conn,
            org_id=org_id,
            task_ids=[str(task_id) for task_id in data.task_ids],
            worker_id=data.worker_id,
            lease_ms=data.lease_ms,
            now=now,
        )
    metrics = state(request).metrics
    if metrics is not None:
        metrics.tasks_claimed((c.task for c in claimed if c.task is not None), now=now)
    return ClaimResultList(data=[_claim_result(c) for c in claimed])


# ---------------------------------------------------------------- heartbeat


def _lease_status(state_: queue_store.LeaseState) -> LeaseStatus:
    return LeaseStatus(
        task_id=state_.task_id,
        ok=state_.ok,
        cancelled=state_.cancelled,
        lease_expires_at=state_.lease_expires_at,
        reason=DUPLICATE if state_.duplicate else None,
    )


@post("/heartbeat", status_code=200, responses=error_responses(400))
async def heartbeat(request: Request[Any, Any, Any], data: JSONBody[Heartbeat]) -> LeaseStatusList:
    """Renew many leases; ``ok: false`` = lost (drop the result), ``cancelled`` = stop early."""
    leases = [
        queue_store.Lease(str(lease.task_id), str(lease.lease_token)) for lease in data.leases
    ]
    if not leases:
        return LeaseStatusList(data=[])
    async with org_conn(request) as (org_id, conn):
        states = await queue_store.heartbeat(
            conn, org_id=org_id, leases=leases, lease_ms=data.lease_ms, now=ids.now_ms()
        )
    return LeaseStatusList(data=[_lease_status(s) for s in states])


@post("/{task_id:str}/heartbeat", status_code=200, responses=error_responses(400, 404, 409))
async def heartbeat_one(
    request: Request[Any, Any, Any], task_id: FromPath[str], data: JSONBody[HeartbeatOne]
) -> LeaseStatus:
    """Renew one lease; 409 when it is lost, unless the task was cancelled (200, cancelled)."""
    task_id = params.path_id(task_id, "Task")
    lease = queue_store.Lease(task_id, str(data.lease_token))
    async with org_conn(request) as (org_id, conn):
        (result,) = await queue_store.heartbeat(
            conn, org_id=org_id, leases=[lease], lease_ms=data.lease_ms, now=ids.now_ms()
        )
    if not result.found:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    if not (result.ok or result.cancelled):
        raise errors.ConflictError(f"Lease lost: task {task_id} is not held under this token")
    return _lease_status(result)


# ---------------------------------------------------------------- end of an attempt


def _outcome(task_id: str, data: TaskComplete | TaskFail) -> queue_store.Outcome:
    if isinstance(data, TaskFail):
        return queue_store.Outcome(
            task_id,
            str(data.lease_token),
            "failed",
            error_data=models.stored(data.error_data),
            retryable=data.retryable,
        )
    return queue_store.Outcome(
        task_id, str(data.lease_token), "completed", output_data=models.stored(data.output_data)
    )


async def _finish_one(
    request: Request[Any, Any, Any], task_id: str, data: TaskComplete | TaskFail
) -> Task:
    """End one attempt (complete_task, fail_task); 404 for no such task, 409 for a stale token."""
    task_id = params.path_id(task_id, "Task")
    outcome = _outcome(task_id, data)
    current = None
    released: list[str] = []
    async with org_conn(request) as (org_id, conn):
        (ended,) = await queue_store.finish_tasks(
            conn, org_id=org_id, outcomes=[outcome], now=ids.now_ms(), released=released
        )
        if ended.repeat:
            current = await tasks_store.get_task(conn, org_id=org_id, task_id=task_id)
        children = await released_tasks(request, conn, org_id, released)
    await state(request).publish(children)
    if not ended.found:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    if ended.task is not None:
        app = state(request)
        if app.metrics is not None:
            app.metrics.tasks_ended([ended.task])
        await app.publish([ended.task])  # bullmq: the retry's job, after its backoff
        return ended.task
    if ended.repeat and current is not None:
        return current
    raise errors.ConflictError(
        f"Task {task_id} is {ended.status}; the lease token is not the current attempt's",
        status=ended.status,
    )


@post("/{task_id:str}/complete", status_code=200, responses=error_responses(400, 404, 409))
async def complete_task(
    request: Request[Any, Any, Any], task_id: FromPath[str], data: JSONBody[TaskComplete]
) -> Task:
    """End the attempt as completed with outputData; 409 for a stale lease token."""
    return await _finish_one(request, task_id, data)


@post("/{task_id:str}/fail", status_code=200, responses=error_responses(400, 404, 409))
async def fail_task(
    request: Request[Any, Any, Any], task_id: FromPath[str], data: JSONBody[TaskFail]
) -> Task:
    """End the attempt as failed: retrying after a backoff while attempts remain, else failed."""
    return await _finish_one(request, task_id, data)


@post("/complete", status_code=200, responses=error_responses(400))
async def complete_tasks(
    request: Request[Any, Any, Any], data: JSONBody[TaskResults]
) -> TaskAckList:
    """End many attempts in one statement; a stale lease is ``ok: false`` and changes nothing."""
    results = data.results
    # Every id and token as text in one C call: str() of a uuid.UUID is Python code, 2 per task.
    texts = msgspec.to_builtins([(r.task_id, r.lease_token) for r in results])
    stored = models.stored
    outcomes = [
        queue_store.Outcome(
            task_id, token, r.status, stored(r.output_data), stored(r.error_data), r.retryable
        )
        for r, (task_id, token) in zip(results, texts, strict=True)
    ]
    released: list[str] = []
    async with org_conn(request) as (org_id, conn):
        ended = await queue_store.finish_tasks(
            conn, org_id=org_id, outcomes=outcomes, now=ids.now_ms(), released=released
        )
        children = await released_tasks(request, conn, org_id, released)
    app = state(request)
    if app.metrics is not None:
        app.metrics.tasks_ended(e.task for e in ended if e.task is not None)
    await app.publish([e.task for e in ended if e.task is not None] + children)
    return TaskAckList(data=_acks(ended))


def _acks(ended: list[queue_store.Ended]) -> list[TaskAck]:
    return [TaskAck(e.task_id, e.ok, e.status, DUPLICATE if e.duplicate else None) for e in ended]


async def _release(
    request: Request[Any, Any, Any], leases: list[queue_store.Lease]
) -> list[queue_store.Ended]:
    released: list[str] = []
    async with org_conn(request) as (org_id, conn):
        ended = await queue_store.release_tasks(
            conn, org_id=org_id, leases=leases, now=ids.now_ms(), released=released
        )
        children = await released_tasks(request, conn, org_id, released)
    await state(request).publish([e.task for e in ended if e.task is not None] + children)
    return ended


@post("/{task_id:str}/release", status_code=200, responses=error_responses(400, 404, 409))
async def release_task(
    request: Request[Any, Any, Any], task_id: FromPath[str], data: JSONBody[TaskRelease]
) -> Task:
    """Put a held task back in the queue without counting the attempt (graceful shutdown)."""
    task_id = params.path_id(task_id, "Task")
    (ended,) = await _release(request, [queue_store.Lease(task_id, str(data.lease_token))])
    if not ended.found:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    if ended.task is None:
        raise errors.ConflictError(
            f"Task {task_id} is {ended.status}; the lease token is not the current attempt's",
            status=ended.status,
        )
    return ended.task


@post("/release", status_code=200, responses=error_responses(400))
async def release_tasks(request: Request[Any, Any, Any], data: JSONBody[LeaseRefs]) -> TaskAckList:
    """Put many held tasks back in the queue; a stale lease is ``ok: false``."""
    leases = [
        queue_store.Lease(str(lease.task_id), str(lease.lease_token)) for lease in data.leases
    ]
    ended = await _release(request, leases)
    return TaskAckList(data=_acks(ended))


# ---------------------------------------------------------------- wait


@get(
    "/{task_id:str}/wait", responses=error_responses(400, 404), before_request=params.exact_request
)
async def wait_task(
    request: Request[Any, Any, Any],
    task_id: FromPath[str],
    timeout_ms: Annotated[
        int, params.integer_param(name="timeoutMs", ge=0, le=60_000)
    ] = DEFAULT_WAIT_MS,
) -> Task:
    """The task as soon as it is terminal, or as it is when timeoutMs has passed."""
    task_id = params.path_id(task_id, "Task")
    org_id = auth.request_org(request)
    app = state(request)
    deadline = time.monotonic() + timeout_ms / 1000
    with _watch(app, task_id=task_id) as done:
        while True:
            done.clear()
            async with db.org_connection(app.pool, org_id) as conn:
                with db.translate_errors():
                    task = await tasks_store.get_task(conn, org_id=org_id, task_id=task_id)
            if task is None:
                raise errors.NotFoundError(f"Task not found: {task_id}")
            remaining_s = deadline - time.monotonic()
            if task.status in TERMINAL_STATUSES or remaining_s <= 0 or app.draining:
                return task
            await sleep_until(done, min(remaining_s, app.settings.poll_interval_s))


router = Router(
    path="/api/v1/tasks",
    middleware=[auth.authenticated],
    route_handlers=[
        create_tasks,
        claim_tasks,
        claim_task_ids,
        claim_task,
        heartbeat,
        heartbeat_one,
        complete_task,
        fail_task,
        complete_tasks,
        release_task,
        release_tasks,
        wait_task,
    ],
    tags=["queue"],
)
