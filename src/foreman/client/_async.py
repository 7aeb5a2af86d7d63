"""AsyncClient: the asyncio twin of ``Client`` (same methods, same signatures, awaited).

It sends with aiohttp rather than httpx: on loopback an httpx request cost about 4 times the
client CPU of an aiohttp one, and workers send every claim, heartbeat and result through here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from msgspec import UNSET, UnsetType

from foreman import errors, ids, tracing
from foreman.client import _base, _calls
from foreman.client._base import (
    Call,
    Lease,
    QueueBackend,
    RedisOptions,
    TaskResult,
    TaskSpec,
)
from foreman.client._bullmq import AsyncPublisher
from foreman.models import (
    Attempt,
    ClaimResult,
    Config,
    JsonObject,
    LeaseStatus,
    Run,
    RunData,
    RunDataList,
    RunEvent,
    RunList,
    RunStatus,
    Schedule,
    ScheduleList,
    Task,
    TaskAck,
    TaskList,
    TaskStatus,
)

T = TypeVar("T")

# Connection errors that surely struck before the request reached the server. aiohttp < 3.10
# has no ConnectionTimeoutError: its connect timeout is a ServerTimeoutError worded so.
_CONNECT_TIMEOUT: type[Exception] = getattr(
    aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError
)
_CONNECT_TIMEOUT_TEXT = "Connection timeout"


def _not_sent(exc: Exception) -> bool:
    """Whether exc (refused, DNS, TLS handshake, connect or pool timeout) came before sending."""
    if isinstance(exc, aiohttp.ClientConnectorError | _CONNECT_TIMEOUT):
        return True
    return isinstance(exc, aiohttp.ServerTimeoutError) and str(exc).startswith(
        _CONNECT_TIMEOUT_TEXT
    )


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """httpx-like timeouts: seconds per read and for a pooled connection, connect at most 5 s."""
    return aiohttp.ClientTimeout(
        total=None, connect=seconds, sock_connect=min(seconds, 5.0), sock_read=seconds
    )


@dataclass(frozen=True, slots=True)
class _Response:
    """A whole answer, read before its connection goes back to the pool (a ``_base.Response``)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


class AsyncClient:
    """Foreman's REST API from asyncio code; reuse one instance (it pools connections).

    The connection pool opens on the first request, inside the running event loop, so the client
    may be built outside one. ``aclose()`` closes it; a later request opens a new one.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = _base.DEFAULT_RETRIES,
        queue_backend: QueueBackend | None = None,
        redis: RedisOptions | str | None = None,
        task_queue: str | None = None,
    ) -> None:
        self.options = _base.client_options(
            endpoint,
            api_key,
            timeout=timeout,
            retries=retries,
            queue_backend=queue_backend,
            redis=redis,
            task_queue=task_queue,
        )
        self._headers = _base.default_headers(self.options)
        self._timeout = _timeout(self.options.timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._publisher: AsyncPublisher | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections (and the Redis connection of client-side publishing)."""
        if self._publisher is not None:
            await self._publisher.close()
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            # Keep-alive connections idle for up to 5 s, like httpx's pool.
            connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=5.0)
            self._http = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout
            )
        return self._http

    async def _request(self, call: Call[Any]) -> _Response:
        timeout = self._timeout if call.timeout_s is None else _timeout(call.timeout_s)
        async with self._session().request(
            call.method,
            self.options.endpoint + call.path,  # the endpoint may carry a path prefix
            data=call.body,
            params=call.params or None,
            headers=call.headers or (_base.JSON_HEADERS if call.body is not None else None),
            timeout=timeout,
            allow_redirects=False,  # as httpx: a redirect is an answer, not followed
        ) as response:
            return _Response(response.status, response.headers, await response.read())

    async def _send(self, call: Call[T]) -> T:
        retries = self.options.retries
        for attempt in itertools.count():
            try:
                response = await self._request(call)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A read timeout or a dropped connection may follow a request the server ran.
                not_sent = _not_sent(exc)
                delay = _base.error_retry_delay(
                    call, not_sent=not_sent, attempt=attempt, retries=retries
                )
                if delay is None:
                    raise _base.transport_error(exc, call) from exc
            else:
                delay = _base.response_retry_delay(response, call, attempt=attempt, retries=retries)
                if delay is None:
                    return _base.parse(response, call)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ runs

    async def create_run(
        self, input_data: Any, *, metadata: JsonObject | None = None, auto_complete: bool = False
    ) -> Run:
        """Create a run (pending, counters at 0).

        ``auto_complete``: the run becomes running at its first claim, and completed (or failed,
        if a task failed) once every task is terminal; then it takes no more tasks (409).
        """
        call = _calls.create_run(input_data, metadata=metadata, auto_complete=auto_complete)
        return await self._send(call)

    async def wait_for_run(
        self,
        run_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as wait_for_task's
        poll_s: float = 0.2,
    ) -> Run:
        """The run once it has ended (completedAt set: an autoComplete run finishing, a cancel,
        or a PATCH); TimeoutError after timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.get_run(run_id)
            if run.completed_at is not None:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} has not ended after {timeout} s")
            await asyncio.sleep(poll_s)

    async def get_run(self, run_id: str) -> Run:
        """A run; NotFoundError if it is not in the caller's organisation."""
        return await self._send(_calls.get_run(run_id))

    async def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | UnsetType = UNSET,
        output_data: Any = UNSET,
        error_data: Any = UNSET,
        metadata: JsonObject | UnsetType | None = UNSET,
    ) -> Run:
        """Change the given fields of a run (metadata is replaced whole)."""
        changes = {
            "status": status,
            "output_data": output_data,
            "error_data": error_data,
            "metadata": metadata,
        }
        return await self._send(_calls.update_run(run_id, changes))

    async def watch_run(
        self, run_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[RunEvent]:
        """The run's events as they happen, from its start (or after last_event_id), until the
        run and all its tasks have ended: ``async for event in client.watch_run(run_id)``.

        A dropped connection is opened again with the last event's id (Last-Event-ID), so no
        event is lost or repeated; ``retries`` failed connections in a row raise TransportError.
        """
        url = self.options.endpoint + _calls.run_events_path(run_id)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.options.timeout_s,
            sock_connect=min(self.options.timeout_s, 5.0),
            sock_read=_base.WATCH_READ_TIMEOUT_S,
        )
        last, failures = last_event_id, 0
        while True:
            reader = _base.SseReader()
            try:
                async with self._session().get(
                    url, headers=_base.watch_headers(last), timeout=timeout
                ) as response:
                    if response.status != 200:
                        body = await response.read()
                        raise _base.error_of(_Response(response.status, response.headers, body))
                    async for raw in response.content:
                        event = reader.feed(raw.decode())
                        if event == _base.SseReader.END:
                            return
                        if isinstance(event, RunEvent):
                            failures, last = 0, event.id
                            yield event
            except (aiohttp.ClientError, TimeoutError) as exc:
                if failures >= self.options.retries:
                    raise _base.transport_error(exc, _calls.get_run(run_id)) from exc
            # Dropped, or closed before the run ended (a server restarting): again, after last.
            await asyncio.sleep(_base.retry_delay_s(failures))
            failures += 1

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        limit: int | None = None,
        offset: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> RunList:
        """A page of runs with the total count of matching runs."""
        filters = {
            "status": status,
            "limit": limit,
            "offset": offset,
            "sort_by": sort_by,
            "sort_order": sort_order,
        }
        return await self._send(_calls.list_runs(filters))

    # ------------------------------------------------------------ tasks

    async def create_task(
        self,
        run_id: str,
        *,
        type: str,  # noqa: A002 - the issue's public signature; the JSON field is "type" too
        input_data: Any,
        parent_task_id: str | None = None,
        metadata: JsonObject | None = None,
        max_retries: int | None = None,
        priority: int | None = None,
        delay_ms: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Create a pending task (not queued: see enqueue_task)."""
        spec = TaskSpec(
            run_id=run_id,
            type=type,
            input_data=input_data,
            parent_task_id=parent_task_id,
            metadata=metadata,
            max_retries=max_retries,
            priority=priority,
            delay_ms=delay_ms,
            idempotency_key=idempotency_key,
        )
        return await self._send(_calls.create_task(spec, enqueue=False))

    async def get_task(self, task_id: str) -> Task:
        """A task; NotFoundError if it is not in the caller's organisation."""
        return await self._send(_calls.get_task(task_id))

    async def retry_task(self, task_id: str) -> Task:
        """Queue a failed or cancelled task again with one more attempt allowed (ConflictError
        for a task in another status)."""
        return await self._send(_calls.retry_task(task_id))

    async def cancel_task(self, task_id: str) -> Task:
        """Cancel a task: at once, or (running) when its worker's next heartbeat sees it."""
        return await self._send(_calls.cancel_task(task_id))

    async def cancel_run(self, run_id: str) -> Run:
        """Cancel a run and every task of it that has not ended."""
        return await self._send(_calls.cancel_run(run_id))

    async def list_parents(self, task_id: str, *, limit: int = 100, offset: int = 0) -> TaskList:
        """A page of a task's parents (dependsOn) with their status and outputData."""
        return await self._send(_calls.list_parents(task_id, limit=limit, offset=offset))

    async def list_attempts(self, task_id: str) -> list[Attempt]:
        """Every attempt of a task, oldest first (worker, start, end, outcome, errorData)."""
        return await self._send(_calls.list_attempts(task_id))

    async def update_task(
        self,
        task_id: str,
        *,
        status: TaskStatus | UnsetType = UNSET,
        output_data: Any = UNSET,
        error_data: Any = UNSET,
        metadata: JsonObject | UnsetType | None = UNSET,
        queue_job_id: str | UnsetType | None = UNSET,
    ) -> Task:
        """Change the given fields of a task (legacy path; ConflictError leaving a terminal state)."""
        changes = {
            "status": status,
            "output_data": output_data,
            "error_data": error_data,
            "metadata": metadata,
            "queue_job_id": queue_job_id,
        }
        return await self._send(_calls.update_task(task_id, changes))

    async def list_tasks(
        self,
        *,
        run_id: str | None = None,
        status: TaskStatus | None = None,
        type: str | None = None,  # noqa: A002 - the query parameter's name
        parent_task_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> TaskList:
        """A page of tasks with the total count of matching tasks."""
        filters = {
            "run_id": run_id,
            "status": status,
            "type": type,
            "parent_task_id": parent_task_id,
            "limit": limit,
            "offset": offset,
            "sort_by": sort_by,
            "sort_order": sort_order,
        }
        return await self._send(_calls.list_tasks(filters))

    async def enqueue_task(
        self,
        run_id: str,
        *,
        type: str,  # noqa: A002 - the issue's public signature; the JSON field is "type" too
        input_data: Any,
        parent_task_id: str | None = None,
        metadata: JsonObject | None = None,
        max_retries: int | None = None,
        priority: int | None = None,
        delay_ms: int | None = None,
        idempotency_key: str | None = None,
        depends_on: Sequence[str] | None = None,
        on_parent_failure: str | None = None,
    ) -> Task:
        """Create a task and queue it; a repeated idempotency_key returns the first task.

        With depends_on (parent task ids of the same run) it is ``blocked`` until every parent has
        ended; on_parent_failure ``"cancel"`` (default) or ``"run"`` says what a failed parent does.
        """
        spec = TaskSpec(
            run_id=run_id,
            type=type,
            input_data=input_data,
            parent_task_id=parent_task_id,
            metadata=metadata,
            max_retries=max_retries,
            priority=priority,
            delay_ms=delay_ms,
            idempotency_key=idempotency_key,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
        )
        with tracing.enqueue_span([spec]) as traceparent:
            # A dependent task is queued by the server when released: never published from here.
            enqueue = not self.options.publishes_jobs or bool(depends_on)
            task = await self._send(
                _calls.create_task(spec, enqueue=enqueue, traceparent=traceparent)
            )
            return task if enqueue else (await self._publish([task]))[0]

    async def enqueue_tasks(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[Task]:
        """Create and queue many tasks, 1,000 per request (each request is all-or-nothing).

        A spec's depends_on may name the ref of an earlier spec of the same call.
        """
        specs = [_base.task_spec(item) for item in tasks]
        with tracing.enqueue_span(specs) as traceparent:
            created: list[Task] = []
            known: dict[str, str] = {}
            for chunk in _base.chunks(specs):
                chunk = _base.resolve_refs(chunk, known)
                # Dependent tasks are queued by the server when released, never published here.
                enqueue = not self.options.publishes_jobs or any(s.depends_on for s in chunk)
                batch: list[Task] = await self._send(
                    _calls.create_tasks(chunk, enqueue=enqueue, traceparent=traceparent)
                )
                _base.remember_refs(chunk, [t.id for t in batch], known)
                created.extend(batch)
            if not self.options.publishes_jobs:
                return created
            pending = [t for t in created if t.status == "pending"]  # blocked ones wait for parents
            published = {t.id: t for t in await self._publish(pending)}
            return [published.get(t.id, t) for t in created]

    async def enqueue_task_ids(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[str]:
        """enqueue_tasks answering the tasks' ids only: less for the server to send."""
        if self.options.publishes_jobs:  # the jobs are published from the tasks
            return [task.id for task in await self.enqueue_tasks(tasks)]
        specs = [_base.task_spec(item) for item in tasks]
        task_ids: list[str] = []
        known: dict[str, str] = {}
        with tracing.enqueue_span(specs) as traceparent:
            for chunk in _base.chunks(specs):
                chunk = _base.resolve_refs(chunk, known)
                made = await self._send(_calls.create_task_ids(chunk, traceparent=traceparent))
                _base.remember_refs(chunk, made, known)
                task_ids.extend(made)
        return task_ids

    async def wait_for_task(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - SPEC section 8 names the option
    ) -> Task:
        """The task once it is terminal; TimeoutError after timeout seconds (None: no limit)."""
        plan = _calls.WaitPlan(task_id, timeout=timeout, now=time.monotonic())
        while True:
            try:
                task = await self._send(plan.call(time.monotonic()))
            except errors.ForemanError as exc:
                plan.on_error(exc)
                continue
            if plan.finished(task, time.monotonic()):
                return task
            await asyncio.sleep(plan.pause_s(time.monotonic()))

    # ------------------------------------------------------------ run data

    async def create_run_data(
        self,
        run_id: str,
        *,
        task_id: str,
        key: str,
        value: Any,
        tags: Sequence[str] | None = None,
        metadata: JsonObject | None = None,
    ) -> RunData:
        """Store value under key (every call adds a row)."""
        values = {"task_id": task_id, "key": key, "value": value, "tags": tags}
        return await self._send(_calls.create_run_data(run_id, {**values, "metadata": metadata}))

    async def query_run_data(
        self,
        run_id: str,
        *,
        key: str | None = None,
        keys: Sequence[str] | None = None,
        key_starts_with: Sequence[str] | None = None,
        key_pattern: str | None = None,
        tags: Sequence[str] | None = None,
        tag_starts_with: Sequence[str] | None = None,
        tag_mode: str | None = None,
        include_all: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> RunDataList:
        """Run data matching the filters (the latest row per key unless include_all)."""
        filters = {
            "key": key,
            "keys": keys,
            "key_starts_with": key_starts_with,
            "key_pattern": key_pattern,
            "tags": tags,
            "tag_starts_with": tag_starts_with,
            "tag_mode": tag_mode,
            "include_all": include_all,
            "limit": limit,
            "offset": offset,
            "sort_by": sort_by,
            "sort_order": sort_order,
        }
        return await self._send(_calls.query_run_data(run_id, filters))

    async def update_run_data_tags(
        self,
        run_id: str,
        data_id: str,
        *,
        add: Sequence[str] | None = None,
        remove: Sequence[str] | None = None,
    ) -> RunData:
        """Remove tags, then add the missing ones (order kept, tags unique)."""
        return await self._send(
            _calls.update_run_data_tags(run_id, data_id, add=add, remove=remove)
        )

    async def delete_run_data(
        self, run_id: str, *, key: str | None = None, data_id: str | None = None
    ) -> int:
        """Delete the values of a key, or one value by id; the number deleted."""
        return await self._send(_calls.delete_run_data(run_id, key=key, data_id=data_id))

    # ------------------------------------------------------------ schedules

    async def create_schedule(
        self,
        name: str,
        *,
        type: str,  # noqa: A002 - the task's type, as in enqueue_task
        input_data: Any,
        cron: str | None = None,
        interval_ms: int | None = None,
        timezone: str | None = None,
        enabled: bool | None = None,
        run_input_data: Any = None,
        max_retries: int | None = None,
        priority: int | None = None,
    ) -> Schedule:
        """Create a schedule (cron or interval_ms): each tick creates a run with one queued task."""
        values = {"name": name, "type": type, "input_data": input_data, "cron": cron}
        values |= {"interval_ms": interval_ms, "timezone": timezone, "enabled": enabled}
        values |= {"run_input_data": run_input_data, "max_retries": max_retries}
        return await self._send(_calls.create_schedule({**values, "priority": priority}))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """A schedule, with next_run_at, last_run_at and last_run_id."""
        return await self._send(_calls.get_schedule(schedule_id))

    async def update_schedule(
        self,
        schedule_id: str,
        *,
        name: str | UnsetType = UNSET,
        cron: str | UnsetType = UNSET,
        interval_ms: int | UnsetType = UNSET,
        timezone: str | UnsetType = UNSET,
        enabled: bool | UnsetType = UNSET,
        run_input_data: Any = UNSET,
        type: str | UnsetType = UNSET,  # noqa: A002 - the task's type
        input_data: Any = UNSET,
        max_retries: int | UnsetType = UNSET,
        priority: int | UnsetType = UNSET,
    ) -> Schedule:
        """Change the given fields; cron or interval_ms replaces the trigger."""
        changes = {"name": name, "cron": cron, "interval_ms": interval_ms, "timezone": timezone}
        changes |= {"enabled": enabled, "run_input_data": run_input_data, "type": type}
        changes |= {"input_data": input_data, "max_retries": max_retries, "priority": priority}
        return await self._send(_calls.update_schedule(schedule_id, changes))

    async def delete_schedule(self, schedule_id: str) -> Schedule:
        """Delete a schedule (its runs stay); the schedule as it was."""
        return await self._send(_calls.delete_schedule(schedule_id))

    async def list_schedules(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> ScheduleList:
        """A page of schedules with the total count."""
        filters = {"limit": limit, "offset": offset, "sort_by": sort_by, "sort_order": sort_order}
        return await self._send(_calls.list_schedules(filters))

    async def get_config(self) -> Config:
        """The server's version, Redis settings, queue names and queue backend."""
        return await self._send(_calls.get_config())

    # ------------------------------------------------------------ queue (workers)

    async def claim_tasks(
        self,
        *,
        worker_id: str,
        limit: int = 1,
        lease_s: float = 30.0,
        wait_s: float = 0.0,
        types: Sequence[str] | None = None,
    ) -> list[Task]:
        """Lease up to limit ready tasks, waiting up to wait_s for the first (postgres backend)."""
        call = _calls.claim_tasks(
            worker_id=worker_id, limit=limit, lease_s=lease_s, wait_s=wait_s, types=types
        )
        return await self._send(call)

    async def claim_task(self, task_id: str, *, worker_id: str, lease_s: float = 30.0) -> Task:
        """Lease one task by id (bullmq backend); ConflictError if done or held by another."""
        return await self._send(_calls.claim_task(task_id, worker_id=worker_id, lease_s=lease_s))

    async def claim_task_ids(
        self, task_ids: Sequence[str], *, worker_id: str, lease_s: float = 30.0
    ) -> list[ClaimResult]:
        """Lease many tasks by id in one request (bullmq backend); per id, in input order."""
        call = _calls.claim_task_ids(task_ids, worker_id=worker_id, lease_s=lease_s)
        return await self._send(call)

    async def heartbeat(
        self, leases: Sequence[Lease], *, lease_s: float = 30.0
    ) -> list[LeaseStatus]:
        """Renew leases in one request; each answer says ok (still held) and cancelled."""
        return await self._send(_calls.heartbeat(leases, lease_s=lease_s))

    async def complete_task(
        self, task_id: str, *, lease_token: str, output_data: Any = None
    ) -> Task:
        """End the attempt successfully; ConflictError if the lease is stale."""
        call = _calls.complete_task(task_id, lease_token=lease_token, output_data=output_data)
        return await self._send(call)

    async def fail_task(
        self, task_id: str, *, lease_token: str, error_data: Any, retryable: bool = True
    ) -> Task:
        """End the attempt with an error: retrying while attempts remain, else failed."""
        call = _calls.fail_task(
            task_id, lease_token=lease_token, error_data=error_data, retryable=retryable
        )
        return await self._send(call)

    async def release_task(self, task_id: str, *, lease_token: str) -> Task:
        """Give the task back unrun (queued again, the attempt not counted)."""
        return await self._send(_calls.release_task(task_id, lease_token=lease_token))

    async def release_tasks(self, leases: Sequence[Lease]) -> list[TaskAck]:
        """Give many tasks back unrun in one request; each answer says whether it was held."""
        return await self._send(_calls.release_tasks(leases))

    async def complete_tasks(self, results: Sequence[TaskResult]) -> list[TaskAck]:
        """End many attempts in one request; each answer says whether it was recorded."""
        return await self._send(_calls.complete_tasks(results))

    # ------------------------------------------------------------ client-side BullMQ publishing

    async def _publish(self, tasks: list[Task]) -> list[Task]:
        """Mark pending tasks queued with their job id, then add their jobs (Node client style)."""
        pending = [task for task in tasks if task.status == "pending"]
        if not pending:
            return tasks
        publisher = await self._job_publisher()
        # queued before the job exists: a worker may claim the task as soon as the job is added.
        queued: dict[str, Task] = {}
        for chunk in _base.chunks(pending, _base.PATCH_CONCURRENCY):
            updated = await asyncio.gather(
                *(
                    self.update_task(t.id, status="queued", queue_job_id=_base.job_id(t))
                    for t in chunk
                )
            )
            queued.update((task.id, task) for task in updated)
        now = ids.now_ms()
        await publisher.publish([_base.bullmq_job(task, now_ms=now) for task in queued.values()])
        return [queued.get(task.id, task) for task in tasks]

    async def _job_publisher(self) -> AsyncPublisher:
        if self._publisher is None:
            redis, queue_name = self.options.redis, self.options.task_queue
            if redis is None or queue_name is None:
                config = await self.get_config()
                redis = redis or RedisOptions.from_config(config.redis)
                queue_name = queue_name or config.queues.task_queue
            self._publisher = AsyncPublisher(redis, queue_name)
        return self._publisher
