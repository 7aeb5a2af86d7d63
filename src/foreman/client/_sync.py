"""Client: the synchronous twin of ``AsyncClient`` (same methods, same signatures)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import httpx

from foreman import errors, ids, tracing
from foreman.client import _base, _calls, _methods
from foreman.client._base import Call, QueueBackend, RedisOptions, TaskSpec
from foreman.client._bullmq import SyncPublisher
from foreman.models import Run, RunEvent, Task

T = TypeVar("T")


class Client(_methods.SyncTwin):
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
        retries = _base.Retries(call, self.options.retries)
        while True:
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
                retries.after_error(exc, not_sent=_base.httpx_not_sent(exc))
            else:
                if retries.answered(response):
                    return _base.parse(response, call)
            time.sleep(retries.delay)

    # ------------------------------------------------------------ runs

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

    # ------------------------------------------------------------ tasks

    def _enqueue(self, spec: TaskSpec) -> Task:
        """enqueue_task: create the task and queue it (or publish its job from here)."""
        with tracing.enqueue_span([spec]) as traceparent:
            # A dependent task is queued by the server when released: never published from here.
            enqueue = not self.options.publishes_jobs or bool(spec.depends_on)
            task = self._send(_calls.create_task(spec, enqueue=enqueue, traceparent=traceparent))
            return task if enqueue else self._publish([task])[0]

    def enqueue_tasks(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[Task]:
        """Create and queue many tasks, 1,000 per request (each request is all-or-nothing).

        A spec's depends_on may name the ref of an earlier spec of the same call.
        """
        publishes = self.options.publishes_jobs
        with _methods.task_batches(tasks, publishes_jobs=publishes) as plan:
            created = _methods.drive(plan, self._send)
            return self._publish(created) if publishes else created

    def enqueue_task_ids(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[str]:
        """enqueue_tasks answering the tasks' ids only: less for the server to send."""
        if self.options.publishes_jobs:  # the jobs are published from the tasks
            return [task.id for task in self.enqueue_tasks(tasks)]
        with _methods.id_batches(tasks) as plan:
            return _methods.drive(plan, self._send)

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
