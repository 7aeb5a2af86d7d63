"""AsyncClient: the asyncio twin of ``Client`` (same methods, same signatures, awaited).

It sends with aiohttp rather than httpx: on loopback an httpx request cost about 4 times the
client CPU of an aiohttp one, and workers send every claim, heartbeat and result through here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from foreman import errors, ids, tracing
from foreman.client import _base, _calls, _methods
from foreman.client._base import Call, QueueBackend, RedisOptions, TaskSpec
from foreman.client._bullmq import AsyncPublisher
from foreman.models import Run, RunEvent, Task

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


class AsyncClient(_methods.AsyncTwin):
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
        retries = _base.Retries(call, self.options.retries)
        while True:
            try:
                response = await self._request(call)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A read timeout or a dropped connection may follow a request the server ran.
                retries.after_error(exc, not_sent=_not_sent(exc))
            else:
                if retries.answered(response):
                    return _base.parse(response, call)
            await asyncio.sleep(retries.delay)

    # ------------------------------------------------------------ runs

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

    # ------------------------------------------------------------ tasks

    async def _enqueue(self, spec: TaskSpec) -> Task:
        """enqueue_task: create the task and queue it (or publish its job from here)."""
        with tracing.enqueue_span([spec]) as traceparent:
            # A dependent task is queued by the server when released: never published from here.
            enqueue = not self.options.publishes_jobs or bool(spec.depends_on)
            call = _calls.create_task(spec, enqueue=enqueue, traceparent=traceparent)
            task = await self._send(call)
            return task if enqueue else (await self._publish([task]))[0]

    async def _drive(self, plan: Generator[Call[Any], Any, T]) -> T:
        """plan's result, each of its calls sent and its answer sent back in."""
        try:
            call = next(plan)
            while True:
                call = plan.send(await self._send(call))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def enqueue_tasks(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[Task]:
        """Create and queue many tasks, 1,000 per request (each request is all-or-nothing).

        A spec's depends_on may name the ref of an earlier spec of the same call.
        """
        publishes = self.options.publishes_jobs
        with _methods.task_batches(tasks, publishes_jobs=publishes) as plan:
            created = await self._drive(plan)
            return await self._publish(created) if publishes else created

    async def enqueue_task_ids(self, tasks: Iterable[TaskSpec | Mapping[str, Any]]) -> list[str]:
        """enqueue_tasks answering the tasks' ids only: less for the server to send."""
        if self.options.publishes_jobs:  # the jobs are published from the tasks
            return [task.id for task in await self.enqueue_tasks(tasks)]
        with _methods.id_batches(tasks) as plan:
            return await self._drive(plan)

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
