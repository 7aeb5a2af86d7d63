"""Client: the synchronous twin of ``AsyncClient`` (same methods, same signatures)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
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
from foreman.client._bullmq import SyncPublisher
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


class Client:
    """Foreman's REST API from blocking code; reuse one instance (it pools connections)."""

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
        transport: httpx.BaseTransport | None = None,
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
        self._http = httpx.Client(transport=transport, **_base.http_options(self.options))
        self._publisher: SyncPublisher | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections (and the Redis connection of client-side publishing)."""
        if self._publisher is not None:
            self._publisher.close()
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        retries = self.options.retries
        for attempt in itertools.count():
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    content=call.body,
                    params=call.params or None,
                    headers=call.headers or (_base.JSON_HEADERS if call.body is not None else None),
                    timeout=_base.timeout_of(call),
                )
            except httpx.TransportError as exc:
                not_sent = _base.httpx_not_sent(exc)
                delay = _base.error_retry_delay(
                    call, not_sent=not_sent, attempt=attempt, retries=retries
                )
                if delay is None:
                    raise _base.transport_error(exc, call) from exc
            else:
                delay = _base.response_retry_delay(response, call, attempt=attempt, retries=retries)
                if delay is None:
                    return _base.parse(response, call)
            time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ runs

    def create_run(
        self, input_data: Any, *, metadata: JsonObject | None = None, auto_complete: bool = False
    ) -> Run:
        """Create a run (pending, counters at 0).

        ``auto_complete``: the run becomes running at its first claim, and completed (or failed,
        if a task failed) once every task is terminal; then it takes no more tasks (409).
        """
        call = _calls.create_run(input_data, metadata=metadata, auto_complete=auto_complete)
        return self._send(call)

    def wait_for_run(
        self, run_id: str, *, timeout: float | None = None, poll_s: float = 0.2
    ) -> Run:
        """The run once it has ended (completedAt set: an autoComplete run finishing, a cancel,
        or a PATCH); TimeoutError after timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run.completed_at is not None:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} has not ended after {timeout} s")
            time.sleep(poll_s)

    def get_run(self, run_id: str) -> Run:
        """A run; NotFoundError if it is not in the caller's organisation."""
        return self._send(_calls.get_run(run_id))

    def update_run(
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
        return self._send(_calls.update_run(run_id, changes))

    def watch_run(self, run_id: str, *, last_event_id: str | None = None) -> Iterator[RunEvent]:
        """The run's events as they happen, from its start (or after last_event_id), until the
        run and all its tasks have ended: ``for event in client.watch_run(run_id)``.

        A dropped connection is opened again with the last event's id (Last-Event-ID), so no
        event is lost or repeated; ``retries`` failed connections in a row raise TransportError.
        """
        path = _calls.run_events_path(run_id)
        timeout = httpx.Timeout(self.options.timeout_s, read=_base.WATCH_READ_TIMEOUT_S)
        last, failures = last_event_id, 0
        while True:
            reader = _base.SseReader()
            try:
                with self._http.stream(
                    "GET", path, headers=_base.watch_headers(last), timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        raise _base.error_of(response)
                    for line in response.iter_lines():
                        event = reader.feed(line)
                        if event == _base.SseReader.END:
                            return
                        if isinstance(event, RunEvent):
                            failures, last = 0, event.id
                            yield event
            except httpx.TransportError as exc:
                if failures >= self.options.retries:
                    raise _base.transport_error(exc, _calls.get_run(run_id)) from exc
            # Dropped, or closed before the run ended (a server restarting): again, after last.
            time.sleep(_base.retry_delay_s(failures))
            failures += 1

    def list_runs(
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
        return self._send(_calls.list_runs(filters))

    # ------------------------------------------------------------ tasks

    def create_task(
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
        return self._send(_calls.create_task(spec, enqueue=False))

    def get_task(self, task_id: str) -> Task:
        """A task; NotFoundError if it is not in the caller's organisation."""
        return self._send(_calls.get_task(task_id))

    def retry_task(self, task_id: str) -> Task:
        """Queue a failed or cancelled task again with one more attempt allowed (ConflictError
        for a task in another status)."""
        return self._send(_calls.retry_task(task_id))

    def cancel_task(self, task_id: str) -> Task:
        """Cancel a task: at once, or (running) when its worker's next heartbeat sees it."""
        return self._send(_calls.cancel_task(task_id))

    def cancel_run(self, run_id: str) -> Run:
        """Cancel a run and every task of it that has not ended."""
        return self._send(_calls.cancel_run(run_id))

    def list_parents(self, task_id: str, *, limit: int = 100, offset: int = 0) -> TaskList:
        """A page of a task's parents (dependsOn) with their status and outputData."""
        return self._send(_calls.list_parents(task_id, limit=limit, offset=offset))

    def list_attempts(self, task_id: str) -> list[Attempt]:
        """Every attempt of a task, oldest first (worker, start, end, outcome, errorData)."""
        return self._send(_calls.list_attempts(task_id))

    def update_task(
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
        return self._send(_calls.update_task(task_id, changes))

    def list_tasks(
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
        return self._send(_calls.list_tasks(filters))

    def enqueue_task(
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
            task = self._send(_calls.create_task(spec, enqueue=enqueue, traceparent=traceparent))
            return task if enqueue else self._publish([task])[0]

    def enqueue_tasks(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[Task]:
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
                batch: list[Task] = self._send(
                    _calls.create_tasks(chunk, enqueue=enqueue, traceparent=traceparent)
                )
                _base.remember_refs(chunk, [t.id for t in batch], known)
                created.extend(batch)
            if not self.options.publishes_jobs:
                return created
            pending = [t for t in created if t.status == "pending"]  # blocked ones wait for parents
            published = {t.id: t for t in self._publish(pending)}
            return [published.get(t.id, t) for t in created]

    def enqueue_task_ids(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[str]:
        """enqueue_tasks answering the tasks' ids only: less for the server to send."""
        if self.options.publishes_jobs:  # the jobs are published from the tasks
            return [task.id for task in self.enqueue_tasks(tasks)]
        specs = [_base.task_spec(item) for item in tasks]
        task_ids: list[str] = []
        known: dict[str, str] = {}
        with tracing.enqueue_span(specs) as traceparent:
            for chunk in _base.chunks(specs):
                chunk = _base.resolve_refs(chunk, known)
                made = self._send(_calls.create_task_ids(chunk, traceparent=traceparent))
                _base.remember_refs(chunk, made, known)
                task_ids.extend(made)
        return task_ids

    def wait_for_task(self, task_id: str, *, timeout: float | None = None) -> Task:
        """The task once it is terminal; TimeoutError after timeout seconds (None: no limit)."""
        plan = _calls.WaitPlan(task_id, timeout=timeout, now=time.monotonic())
        while True:
            try:
                task = self._send(plan.call(time.monotonic()))
            except errors.ForemanError as exc:
                plan.on_error(exc)
                continue
            if plan.finished(task, time.monotonic()):
                return task
            time.sleep(plan.pause_s(time.monotonic()))

    # ------------------------------------------------------------ run data

    def create_run_data(
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
        return self._send(_calls.create_run_data(run_id, {**values, "metadata": metadata}))

    def query_run_data(
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
        return self._send(_calls.query_run_data(run_id, filters))

    def update_run_data_tags(
        self,
        run_id: str,
        data_id: str,
        *,
        add: Sequence[str] | None = None,
        remove: Sequence[str] | None = None,
    ) -> RunData:
        """Remove tags, then add the missing ones (order kept, tags unique)."""
        return self._send(_calls.update_run_data_tags(run_id, data_id, add=add, remove=remove))

    def delete_run_data(
        self, run_id: str, *, key: str | None = None, data_id: str | None = None
    ) -> int:
        """Delete the values of a key, or one value by id; the number deleted."""
        return self._send(_calls.delete_run_data(run_id, key=key, data_id=data_id))

    # ------------------------------------------------------------ schedules

    def create_schedule(
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
        return self._send(_calls.create_schedule({**values, "priority": priority}))

    def get_schedule(self, schedule_id: str) -> Schedule:
        """A schedule, with next_run_at, last_run_at and last_run_id."""
        return self._send(_calls.get_schedule(schedule_id))

    def update_schedule(
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
        return self._send(_calls.update_schedule(schedule_id, changes))

    def delete_schedule(self, schedule_id: str) -> Schedule:
        """Delete a schedule (its runs stay); the schedule as it was."""
        return self._send(_calls.delete_schedule(schedule_id))

    def list_schedules(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> ScheduleList:
        """A page of schedules with the total count."""
        filters = {"limit": limit, "offset": offset, "sort_by": sort_by, "sort_order": sort_order}
        return self._send(_calls.list_schedules(filters))

    def get_config(self) -> Config:
        """The server's version, Redis settings, queue names and queue backend."""
        return self._send(_calls.get_config())

    # ------------------------------------------------------------ queue (workers)

    def claim_tasks(
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
        return self._send(call)

    def claim_task(self, task_id: str, *, worker_id: str, lease_s: float = 30.0) -> Task:
        """Lease one task by id (bullmq backend); ConflictError if done or held by another."""
        return self._send(_calls.claim_task(task_id, worker_id=worker_id, lease_s=lease_s))

    def claim_task_ids(
        self, task_ids: Sequence[str], *, worker_id: str, lease_s: float = 30.0
    ) -> list[ClaimResult]:
        """Lease many tasks by id in one request (bullmq backend); per id, in input order."""
        call = _calls.claim_task_ids(task_ids, worker_id=worker_id, lease_s=lease_s)
        return self._send(call)

    def heartbeat(self, leases: Sequence[Lease], *, lease_s: float = 30.0) -> list[LeaseStatus]:
        """Renew leases in one request; each answer says ok (still held) and cancelled."""
        return self._send(_calls.heartbeat(leases, lease_s=lease_s))

    def complete_task(self, task_id: str, *, lease_token: str, output_data: Any = None) -> Task:
        """End the attempt successfully; ConflictError if the lease is stale."""
        call = _calls.complete_task(task_id, lease_token=lease_token, output_data=output_data)
        return self._send(call)

    def fail_task(
        self, task_id: str, *, lease_token: str, error_data: Any, retryable: bool = True
    ) -> Task:
        """End the attempt with an error: retrying while attempts remain, else failed."""
        call = _calls.fail_task(
            task_id, lease_token=lease_token, error_data=error_data, retryable=retryable
        )
        return self._send(call)

    def release_task(self, task_id: str, *, lease_token: str) -> Task:
        """Give the task back unrun (queued again, the attempt not counted)."""
        return self._send(_calls.release_task(task_id, lease_token=lease_token))

    def release_tasks(self, leases: Sequence[Lease]) -> list[TaskAck]:
        """Give many tasks back unrun in one request; each answer says whether it was held."""
        return self._send(_calls.release_tasks(leases))

    def complete_tasks(self, results: Sequence[TaskResult]) -> list[TaskAck]:
        """End many attempts in one request; each answer says whether it was recorded."""
        return self._send(_calls.complete_tasks(results))

    # ------------------------------------------------------------ client-side BullMQ publishing

    def _publish(self, tasks: list[Task]) -> list[Task]:
        """Mark pending tasks queued with their job id, then add their jobs (Node client style)."""
        pending = [task for task in tasks if task.status == "pending"]
        if not pending:
            return tasks
        publisher = self._job_publisher()
        # queued before the job exists: a worker may claim the task as soon as the job is added.
        queued: dict[str, Task] = {}
        for task in pending:
            updated = self.update_task(task.id, status="queued", queue_job_id=_base.job_id(task))
            queued[updated.id] = updated
        now = ids.now_ms()
        publisher.publish([_base.bullmq_job(task, now_ms=now) for task in queued.values()])
        return [queued.get(task.id, task) for task in tasks]

    def _job_publisher(self) -> SyncPublisher:
        if self._publisher is None:
            redis, queue_name = self.options.redis, self.options.task_queue
            if redis is None or queue_name is None:
                config = self.get_config()
                redis = redis or RedisOptions.from_config(config.redis)
                queue_name = queue_name or config.queues.task_queue
            self._publisher = SyncPublisher(redis, queue_name)
        return self._publisher
