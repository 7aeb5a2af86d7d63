"""Worker: claims tasks, runs their handlers with bounded concurrency, and reports the outcomes.

Delivery is at least once per attempt, fenced by leases (SPEC section 7): a claimed task is held
under a lease that this worker renews in batched heartbeats; results go back in batches with the
lease token, so a result whose lease was lost (the worker stalled, the sweeper re-queued the
task) is refused by the server and dropped here. Tasks come from one ``TaskSource`` per queue
backend (worker/source.py, docs/backends.md); everything else is the Worker's.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import itertools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from foreman import background, errors, ids, tracing
from foreman.client import AsyncClient, Client, TaskResult, chunks, retry_delay_s
from foreman.models import Task
from foreman.worker import _results
from foreman.worker._batching import MicroBatcher
from foreman.worker._leases import Held, LeaseKeeper
from foreman.worker._threads import DaemonThreads
from foreman.worker.context import AttemptState, TaskContext
from foreman.worker.metrics import WorkerMetrics
from foreman.worker.source import SourceContext, TaskSource

logger = logging.getLogger(__name__)

Handler = Callable[[TaskContext], Any] | Callable[[TaskContext], Awaitable[Any]]
Backend = Literal["postgres", "bullmq", "rabbitmq", "sqs"]
# Result requests out at once; while they are out, results gather for the next (MicroBatcher).
RESULTS_IN_FLIGHT = 2


@dataclass(slots=True)
class WorkerStats:
    """Counts since the worker started."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0  # results the server refused (lease lost, task cancelled)
    released: int = 0


def default_worker_id() -> str:
    """host:pid:random, unique per worker instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs handlers ({task type: function}) for the tasks of the caller's organisation.

    concurrency bounds the handlers running at once; backend (postgres|bullmq|rabbitmq|sqs) defaults to the
    client's override, else what the server advertises. lease_s is the lease of each claimed
    task, renewed every heartbeat_s (default lease_s / 3) in one request for all of them.
    grace_s is what running handlers get after stop() or SIGTERM before their tasks are put
    back in the queue. claim_wait_s is the long poll of an idle postgres worker. Results go to
    the server at once when no result request is out, else together after result_flush_s (or
    result_batch of them).
    """

    def __init__(
        self,
        client: AsyncClient | Client | None = None,
        handlers: Mapping[str, Handler] | None = None,
        *,
        concurrency: int = 10,
        backend: Backend | None = None,
        lease_s: float = 30.0,
        heartbeat_s: float | None = None,
        grace_s: float = 30.0,
        claim_wait_s: float = 2.0,
        only_known_types: bool = False,
        result_batch: int = 500,
        result_flush_s: float = 0.005,
        worker_id: str | None = None,
        handle_signals: bool = True,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not handlers:
            # Every task would fail as an unknown type: surely a mistake.
            raise ValueError("Worker needs at least one handler: {task type: function}")
        if not 1.0 <= lease_s <= 3600.0:
            raise ValueError("lease_s must be between 1 and 3600 seconds")
        self.client = _async_client(client)
        # A client built here (from a sync Client's options, or the environment) is closed by run().
        self._owns_client = not isinstance(client, AsyncClient)
        self.handlers = dict(handlers or {})
        self.concurrency = concurrency
        self.backend = backend or self.client.options.queue_backend
        self.lease_s = lease_s
        self.grace_s = grace_s
        self.claim_wait_s = claim_wait_s
        # False (default): claim every type and fail unknown ones clearly (SPEC section 7);
        # True: claim only handled types, leaving the others to other workers.
        self.only_known_types = only_known_types
        self.worker_id = worker_id or default_worker_id()
        self.handle_signals = handle_signals
        self.metrics = metrics
        self.stats = WorkerStats()
        self._result_batch = result_batch
        self._result_flush_s = result_flush_s
        self._heartbeat_s = heartbeat_s or lease_s / 3
        self._is_async = {name: _is_async(fn) for name, fn in self.handlers.items()}
        self._running = 0
        self._stopping = False
        self._force = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._leases = LeaseKeeper(self.client, lease_s=lease_s, interval_s=self._heartbeat_s)
        self._results: MicroBatcher[TaskResult, bool] | None = None
        self._attempts: set[asyncio.Task[None]] = set()  # until each message is acknowledged
        self._failure: BaseException | None = None
        self._threads: DaemonThreads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, burst: bool = False) -> WorkerStats:
        """Work until stop() or a signal; with burst=True, until no ready task is left."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._force.clear()
        self._stopped.clear()
        self._failure = None
        backend = self.backend or await self._server_backend()
        self._results = MicroBatcher(
            functools.partial(_results.send, self.client),
            window_s=self._result_flush_s,
            max_batch=self._result_batch,
            max_in_flight=RESULTS_IN_FLIGHT,
        )
        self._threads = DaemonThreads(self.concurrency, name="foreman-task")
        beats = asyncio.create_task(self._leases.run())
        signals = self._install_signals()
        logger.info(
            "worker %s started: %s backend, concurrency %s, types %s",
            self.worker_id,
            backend,
            self.concurrency,
            ", ".join(sorted(self.handlers)) or "none",
        )
        try:
            source = await open_source(backend, self._source_context())
            try:
                await self._work(source, burst=burst)
            finally:
                await self._drain()
                await source.close()
        finally:
            await self._results.drain()
            await background.cancel_and_wait(beats)
            self._remove_signals(signals)
            self._threads.shutdown()
            if self._owns_client:
                await self.client.aclose()  # it reopens if run() is called again
        if self._failure is not None:
            raise self._failure
        logger.info("worker %s stopped: %s", self.worker_id, self.stats)
        return self.stats

    def _source_context(self) -> SourceContext:
        return SourceContext(
            client=self.client,
            worker_id=self.worker_id,
            lease_s=self.lease_s,
            claim_wait_s=self.claim_wait_s,
            types=sorted(self.handlers) if self.only_known_types else None,
            stopped=self._stopped,
            concurrency=self.concurrency,
        )

    async def _server_backend(self) -> Backend:
        """The backend the server advertises, asking until it answers (it may start later)."""
        for attempt in itertools.count():
            try:
                return (await self.client.get_config()).queue.backend
            except (errors.TransportError, errors.UnavailableError) as exc:
                logger.warning("server not reachable yet (%s); retrying", exc)
                await asyncio.sleep(retry_delay_s(min(attempt + 2, 6)))
        raise AssertionError("unreachable")

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; running handlers get grace_s to finish (now=True: release them now)."""
        self._stopping = True
        if now:
            self._force.set()
        self._stopped.set()
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping

    @property
    def running(self) -> int:
        """Handlers running now."""
        return self._running

    @property
    def held(self) -> int:
        """Tasks claimed whose result the server does not have yet."""
        return len(self._leases.held)

    def _install_signals(self) -> list[signal.Signals]:
        if not self.handle_signals:
            return []
        installed = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals on this platform
            installed.append(sig)
        return installed

    def _remove_signals(self, installed: list[signal.Signals]) -> None:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        # A second signal does not wait for the grace period.
        now = self._stopping
        logger.info("%s: %s", sig.name, "stopping now" if now else "stopping gracefully")
        self.stop(now=now)

    # ------------------------------------------------------------ the loop

    async def _work(self, source: TaskSource, *, burst: bool) -> None:
        """Take tasks for the free slots and start them, until stopped (burst: until none is left).

        A source may have several takes out at once (``takes_in_flight``), each for its share of
        the slots: the next claim's round trip then overlaps the current one's, instead of every
        slot waiting for one request at a time.
        """
        parallel = max(1, source.takes_in_flight)
        share = -(-self.concurrency // parallel)  # ceil: the slots one take may fill
        takes: dict[asyncio.Task[list[Task]], int] = {}  # out now, with the slots each reserves
        idle = False  # burst: the last take found nothing; wait for a slot to free first
        try:
            while not self._stopping:
                self._wakeup.clear()  # before counting: a slot freed from here on wakes the wait
                free = self.concurrency - self._running - sum(takes.values())
                if free > 0 and len(takes) < parallel and not idle:
                    limit = min(free, share)
                    takes[asyncio.create_task(source.take(limit, burst=burst))] = limit
                    continue
                if burst and idle and not takes and self._running == 0:
                    return
                if await self._take_or_slot(takes):
                    idle = False  # a slot freed: more may be ready now
                for take in [t for t in takes if t.done()]:
                    del takes[take]
                    tasks = take.result()
                    for task in tasks:
                        self._start(task, source)
                    idle = idle or (burst and not tasks)
        finally:
            # Stopping: takes still out return soon; what they claimed is released at once.
            for take in takes:
                for task in await take:
                    self._start(task, source)

    async def _take_or_slot(self, takes: Mapping[asyncio.Task[list[Task]], int]) -> bool:
        """Until a take answers or a slot frees (or stop()); whether a slot freed."""
        slot = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait([slot, *takes], return_when=asyncio.FIRST_COMPLETED)
        finally:
            slot.cancel()
        return self._wakeup.is_set()

    # ------------------------------------------------------------ running tasks

    def _start(self, task: Task, source: TaskSource) -> None:
        """Run a claimed task's handler in the background (released at once when stopping)."""
        held = Held(task, AttemptState())
        self._leases.add(held)
        self.stats.claimed += 1
        run = not self._stopping
        if run:
            self._running += 1
        else:
            held.executing = False
        assert self._loop is not None
        # The loop's own create_task: asyncio.create_task asks for the running loop (a getpid
        # system call each time) and names the task, per task.
        held.handle = self._loop.create_task(self._attempt(held, source, run=run))
        self._attempts.add(held.handle)

    def _fail(self, exc: BaseException) -> None:
        # Reporting and acknowledging raise only on a bug or an incompatible library: stop and
        # raise it from run(), rather than failing every task the same way.
        if self._failure is None:
            self._failure = exc
            logger.error("worker %s failed: %r", self.worker_id, exc)
        self.stop()

    async def _attempt(self, held: Held, source: TaskSource, *, run: bool) -> None:
        """Run held's handler and report its result (run=False: give it back unrun); then
        acknowledge its message."""
        try:
            try:
                if run:
                    await self._execute(held, source)
                else:
                    await self._release([held])
            finally:
                await source.acknowledge(held.task)
        except Exception as exc:  # here rather than in a done callback: one less per task
            self._fail(exc)
        finally:
            self._attempts.discard(held.handle)

    async def _execute(self, held: Held, source: TaskSource) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.started(held.task, now_ms=ids.now_ms())
            start = time.perf_counter()
        try:
            result = await self._outcome(held)
        finally:
            if metrics is not None:
                metrics.ended(held.task, seconds=time.perf_counter() - start)
            held.executing = False
            self._running -= 1
            self._wakeup.set()
        if source.acknowledges_when_free:
            await source.acknowledge(held.task)
        if result is not None:
            await self._report(held, result)

    async def _outcome(self, held: Held) -> TaskResult | None:
        task = held.task
        handler = self.handlers.get(task.type)
        if handler is None:
            logger.error("no handler for task type %r (task %s)", task.type, task.id)
            return _results.unknown_type(task, self.handlers)
        assert self._loop is not None
        assert self._threads is not None
        ctx = TaskContext(task, self.worker_id, self.client, held.state, self._loop)
        try:
            # Child of the enqueue's span (README "Traces"); nothing while traces are off.
            with tracing.handler_span(task, self.worker_id):
                if self._is_async[task.type]:
                    value = await handler(ctx)
                else:
                    value = await self._threads.run(handler, ctx)
        except asyncio.CancelledError:
            if held.state.released:
                return None  # forced stop: _drain releases the lease
            return _results.failure(task, _results.error_data(asyncio.CancelledError()))
        except errors.InputValidationError as exc:
            # The same input would fail again: no retry (worker/handlers.py).
            logger.info("task %s (%s) input refused: %s", task.id, task.type, exc)
            return _results.failure(task, _results.input_error(exc), retryable=False)
        except Exception as exc:  # any handler error fails the attempt
            logger.info("task %s (%s) failed: %r", task.id, task.type, exc)
            return _results.failure(task, _results.error_data(exc))
        return _results.success(task, value)

    async def _report(self, held: Held, result: TaskResult) -> None:
        """Hand result to the batcher; drop it when the lease was lost.

        A cancelled task's result is sent all the same: it is what ends a task whose cancel was
        asked while it ran (as ``cancelled``, whatever the result), rather than its lease running
        out; a task cancelled outright refuses it (not recorded).
        """
        if held.state.lease_lost:
            self.stats.dropped += 1
            self._leases.remove(held.task.id)
            self._count(held.task, "dropped")
            return
        assert self._results is not None
        recorded = await self._results.submit(result)
        self._leases.remove(held.task.id)
        if not recorded or held.state.cancelled:
            self.stats.dropped += 1  # not the task's outcome: it ended cancelled
        elif result.status == "completed":
            self.stats.completed += 1
        else:
            self.stats.failed += 1
        self._count(held.task, result.status if recorded else "dropped")

    def _count(self, task: Task, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reported(task, outcome)

    # ------------------------------------------------------------ stopping

    async def _drain(self) -> None:
        """Give running handlers grace_s to finish, then release the tasks still running."""
        running = {h.handle for h in self._leases.held.values() if h.handle and not h.handle.done()}
        if running:
            logger.info("waiting up to %.1fs for %s running task(s)", self.grace_s, len(running))
            forced = asyncio.create_task(self._force.wait())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.grace_s
            while running and not self._force.is_set() and loop.time() < deadline:
                done, _ = await asyncio.wait(
                    {*running, forced},
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                running -= done
            forced.cancel()
        # Only handlers still executing: a finished one's result is already on its way.
        late = [h for h in self._leases.held.values() if h.executing and h.handle]
        for held in late:
            if not held.state.released:
                held.state.mark(released=True)
                held.handle.cancel()  # type: ignore[union-attr]
        await self._release(late)
        # Every attempt reported (or released) and acknowledged.
        await asyncio.gather(*self._attempts, return_exceptions=True)

    async def _release(self, helds: list[Held]) -> None:
        """Give tasks back unrun, in batches (the attempt is not counted)."""
        for held in helds:
            held.state.mark(released=True)
        try:
            for chunk in chunks(helds):
                acks = await self.client.release_tasks([held.lease for held in chunk])
                self.stats.released += sum(ack.ok for ack in acks)
        except errors.ForemanError as exc:
            # Their leases then expire and the sweeper re-queues the tasks.
            logger.warning("could not release %s task(s): %s", len(helds), exc)
        finally:
            for held in helds:
                self._leases.remove(held.task.id)


# The worker side of each broker backend: its module and source class, and the package and extra
# it needs. A new queue backend registers here.
_BROKER_SOURCES: dict[str, tuple[str, str, str, str]] = {
    "bullmq": ("foreman.worker._bullmq", "BullMQSource", "bullmq", "redis"),
    "rabbitmq": ("foreman.worker._rabbitmq", "RabbitMQSource", "aio-pika", "rabbitmq"),
    "sqs": ("foreman.worker._sqs", "SqsSource", "aiobotocore", "sqs"),
}


async def open_source(backend: Backend, context: SourceContext) -> TaskSource:
    """The source of backend; a broker's module is imported only when it is used."""
    if backend == "postgres":
        from foreman.worker import _postgres

        return _postgres.PostgresSource(context)
    module_name, class_name, package, extra = _BROKER_SOURCES[backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise errors.ForemanError(
            f"The {backend} backend needs the {package} package: pip install 'foreman[{extra}]'"
        ) from exc
    source: TaskSource = await getattr(module, class_name).open(context)
    return source


def _is_async(handler: Handler) -> bool:
    target = handler.func if isinstance(handler, functools.partial) else handler
    # An object with an async __call__ is an async handler too.
    call = None if inspect.isroutine(target) else type(target).__call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


def _async_client(client: AsyncClient | Client | None) -> AsyncClient:
    """The worker's AsyncClient (a sync Client lends its endpoint, key and queue options)."""
    if isinstance(client, AsyncClient):
        return client
    if client is None:
        return AsyncClient()
    options = client.options
    return AsyncClient(
        options.endpoint,
        options.api_key,
        timeout=options.timeout_s,
        retries=options.retries,
        queue_backend=options.queue_backend,
        redis=options.redis,
        task_queue=options.task_queue,
    )
