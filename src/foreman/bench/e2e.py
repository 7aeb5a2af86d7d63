"""End-to-end throughput and pickup latency through the SDK and `foreman worker` processes.

- e2e_{backend}_tasks_per_s: in a fresh run, `tasks` no-op tasks enqueued with
  AsyncClient.enqueue_tasks in batches, executed by worker processes started beforehand; tasks/s
  from the first enqueue until the run counts every task completed.
- drain_{backend}_tasks_per_s: processing only: the tasks are queued before the workers start;
  tasks/s from the first completion to the last (the workers' start-up is not counted).
- e2e_{backend}_cpu_us_per_task: CPU of every process involved (server, workers, this load
  generator, the PostgreSQL backends of the bench database) over the end-to-end window, per task.
- e2e_watched_tasks_per_s: e2e_postgres with `watchers` clients following the run's events
  all along (one through AsyncClient.watch_run, nine reading the raw stream: their parsing would
  be this load generator's CPU, not the server's); events_p50_ms/p99_ms: how long after a task.completed
  event's time one of them received it (same machine, same clock).
- pickup: tasks enqueued one at a time at a steady rate, each carrying its enqueue time; the
  handler returns how long after that it started (same machine, same clock).
The server must run with FOREMAN_QUEUE_BACKEND = the backend measured (suite.py starts one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from foreman.bench import services, sysinfo
from foreman.bench.handlers import NOOP, PICKUP
from foreman.bench.stats import percentile
from foreman.client import AsyncClient, TaskSpec

logger = logging.getLogger(__name__)

ENQUEUE_BATCH = 500
ENQUEUE_CONCURRENCY = 4  # batch senders at once in api_batch_enqueue (one per core and more)
POLL_S = 0.02
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class E2eFigure:
    """Tasks/s from first enqueue to last completion."""

    backend: str
    tasks: int
    completed: int  # < tasks: the deadline passed first, the figure is partial
    elapsed_s: float
    enqueue_s: float
    tasks_per_s: float
    cpu_s: dict[str, float | None]  # by part: server, workers, loadgen, postgres
    cpu_tasks: int  # the tasks done while cpu_s was measured
    event_delays_ms: tuple[float, ...] = ()  # watched runs: task.completed time to receipt

    @property
    def cpu_us_per_task(self) -> float | None:
        """All parts' CPU per task; None when a part could not be seen (a remote server)."""
        parts = self.cpu_s.values()
        if not self.cpu_tasks or any(v is None for v in parts):
            return None
        return sum(v for v in parts if v is not None) / self.cpu_tasks * 1e6


@dataclass(frozen=True, slots=True)
class PickupFigure:
    """Enqueue-to-handler-start latency at a steady rate."""

    backend: str
    rate_per_s: float
    samples: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class Workers:
    """How many `foreman worker` processes, each with how many handlers at once."""

    processes: int = 1
    concurrency: int = 200


@dataclass(frozen=True, slots=True)
class Fleet:
    """A server to send tasks to, and the worker processes that run them."""

    endpoint: str
    api_key: str
    backend: str  # the server's FOREMAN_QUEUE_BACKEND: the workers use the same
    workers: Workers = Workers()
    server_pids: tuple[int, ...] = ()  # our own server's processes (empty: a remote endpoint)
    database: str | None = None  # the database whose backends count as the server's PostgreSQL
    env: tuple[tuple[str, str], ...] = ()  # the workers' extra variables (a broker's URL)


@contextlib.asynccontextmanager
async def run_workers(fleet: Fleet) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """Start the worker processes; SIGTERM (graceful stop) and wait for them on exit."""
    env = {
        **os.environ,
        "FOREMAN_ENDPOINT": fleet.endpoint,
        "FOREMAN_API_KEY": fleet.api_key,
        "FOREMAN_LOG_LEVEL": "WARNING",
        **dict(fleet.env),
    }
    command = services.foreman_command(
        "worker", "foreman.bench.handlers:HANDLERS",
        "--concurrency", str(fleet.workers.concurrency), "--backend", fleet.backend,
    )  # fmt: skip
    with tempfile.TemporaryFile(prefix="foreman-bench-worker-") as log:
        processes = [
            subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # noqa: S603, ASYNC220 - this interpreter
            for _ in range(fleet.workers.processes)
        ]
        try:
            yield processes
        finally:
            await asyncio.to_thread(_stop_all, processes)
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace").strip()
            if tail:
                logger.info("worker log tail:\n%s", tail)


async def delete_bullmq_queue(settings_redis_url: str, queue_name: str) -> int:
    """Remove the keys of the bench's own BullMQ queue, and of the per-organisation queues named
    after it (``<name>-<org>-<hash>``), never anything else on a shared Redis."""
    import redis.asyncio as redis_asyncio  # the [redis] extra

    client = redis_asyncio.from_url(settings_redis_url)
    try:
        keys = [
            key
            for pattern in (f"bull:{queue_name}:*", f"bull:{queue_name}-*")
            async for key in client.scan_iter(match=pattern, count=1000)
        ]
        if keys:
            await client.unlink(*keys)
        return len(keys)
    finally:
        await client.aclose()


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def wait_completed(
    client: AsyncClient, run_id: str, count: int, *, deadline: float, workers: list[Any]
) -> tuple[float, int]:
    """When the run counted `count` finished tasks, or the deadline passed; and how many.

    Bounded: past the deadline the caller gets the count so far and reports a partial figure.
    """
    while True:
        run = await client.get_run(run_id)
        done = run.completed_tasks + run.failed_tasks
        if run.failed_tasks:
            raise RuntimeError(f"{run.failed_tasks} bench tasks failed")
        if done >= count or time.perf_counter() > deadline:
            return time.perf_counter(), run.completed_tasks
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker process exited during the measurement")
        await asyncio.sleep(POLL_S)


@contextlib.asynccontextmanager
async def _started(
    fleet: Fleet, *, timeout_s: float
) -> AsyncIterator[tuple[AsyncClient, list[subprocess.Popen[bytes]]]]:
    """A client of the fleet's server, and its worker processes running."""
    async with (
        AsyncClient(fleet.endpoint, fleet.api_key, timeout=timeout_s) as client,
        run_workers(fleet) as processes,
    ):
        yield client, processes


async def _enqueue(client: AsyncClient, run_id: str, tasks: int) -> None:
    for start in range(0, tasks, ENQUEUE_BATCH):
        batch = [
            TaskSpec(run_id=run_id, type=NOOP, input_data={"i": i})
            for i in range(start, min(start + ENQUEUE_BATCH, tasks))
        ]
        await client.enqueue_task_ids(batch)


async def measure_e2e(
    fleet: Fleet, *, tasks: int, deadline_s: float, watchers: range = range(0)
) -> E2eFigure:
    """Enqueue `tasks` no-op tasks in batches; tasks/s until every one is completed.

    If they are not all done within deadline_s, the figure is the completed ones per second so
    far, marked partial. With watchers, that many clients follow the run's events meanwhile: the
    first with AsyncClient.watch_run, timing each task.completed, the others reading raw bytes.
    """
    async with _started(fleet, timeout_s=60.0) as (client, processes):
        run = await client.create_run({"bench": "e2e", "backend": fleet.backend})
        delays: list[float] = []
        watching = [asyncio.create_task(_watch(client, run.id, delays)) for _ in watchers[:1]]
        watching += [asyncio.create_task(_read_stream(fleet, run.id)) for _ in watchers[1:]]
        await asyncio.sleep(1.0)  # let the workers connect and start polling
        cpu = sysinfo.TaskCpu(list(fleet.server_pids), [p.pid for p in processes], fleet.database)
        cpu.start()
        began = time.perf_counter()
        await _enqueue(client, run.id, tasks)
        enqueued = time.perf_counter()
        finished, completed = await wait_completed(
            client, run.id, tasks, deadline=began + deadline_s, workers=processes
        )
        used = cpu.stop()
        for watcher in watching:
            watcher.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
    elapsed = finished - began
    return E2eFigure(
        fleet.backend, tasks, completed, elapsed, enqueued - began, completed / elapsed, used,
        completed, tuple(delays),
    )  # fmt: skip


async def _watch(client: AsyncClient, run_id: str, delays: list[float]) -> None:
    """Follow the run's events; record each completion's delivery delay into delays."""
    async for event in client.watch_run(run_id):
        if event.type == "task.completed":
            delays.append(time.time() * 1000 - event.at)


async def _read_stream(fleet: Fleet, run_id: str) -> None:
    """Read the run's event stream and drop it: a watcher whose parsing is not this load
    generator's CPU (the server sends it every event all the same)."""
    url = f"{fleet.endpoint}/api/v1/runs/{run_id}/events"
    headers = {"authorization": f"Bearer {fleet.api_key}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        session.get(url, headers=headers) as response,
    ):
        async for _ in response.content.iter_any():
            pass


async def measure_drain(fleet: Fleet, *, tasks: int, deadline_s: float) -> E2eFigure:
    """Processing only: queue `tasks` no-op tasks, then start the workers; tasks/s from the
    first completion to the last (enqueue_s is the time the tasks took to queue)."""
    async with AsyncClient(fleet.endpoint, fleet.api_key, timeout=60.0) as client:
        run = await client.create_run({"bench": "drain", "backend": fleet.backend})
        began = time.perf_counter()
        await _enqueue(client, run.id, tasks)
        enqueue_s = time.perf_counter() - began
        async with run_workers(fleet) as processes:
            deadline = time.perf_counter() + deadline_s
            first, before = await first_completion(client, run.id, deadline, processes)
            # From the first completion: the workers' start-up is not the tasks' cost.
            cpu = sysinfo.TaskCpu(
                list(fleet.server_pids), [p.pid for p in processes], fleet.database
            )
            cpu.start()
            finished, completed = await wait_completed(
                client, run.id, tasks, deadline=deadline, workers=processes
            )
            used = cpu.stop()
    elapsed = max(finished - first, 1e-9)
    done = completed - before
    return E2eFigure(
        fleet.backend, tasks, completed, elapsed, enqueue_s, done / elapsed, used, done
    )


async def first_completion(
    client: AsyncClient, run_id: str, deadline: float, workers: list[Any]
) -> tuple[float, int]:
    """When the run first counts a finished task, and how many it counts then."""
    while True:
        run = await client.get_run(run_id)
        done = run.completed_tasks + run.failed_tasks
        if done or time.perf_counter() > deadline:
            return time.perf_counter(), done
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker process exited before the first completion")
        await asyncio.sleep(POLL_S / 4)


@dataclass(frozen=True, slots=True)
class EnqueueFigure:
    """Tasks/s queued through ``POST /tasks/batch`` with no worker running."""

    tasks: int
    concurrency: int
    elapsed_s: float
    cpu_s: dict[str, float | None]  # by part: server, loadgen, postgres (as E2eFigure's)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.elapsed_s


async def measure_batch_enqueue(
    fleet: Fleet, *, tasks: int, concurrency: int = ENQUEUE_CONCURRENCY
) -> EnqueueFigure:
    """`tasks` no-op tasks queued in batches of ENQUEUE_BATCH by `concurrency` senders at once."""
    async with AsyncClient(fleet.endpoint, fleet.api_key, timeout=60.0) as client:
        run = await client.create_run({"bench": "enqueue", "backend": fleet.backend})
        await _enqueue(client, run.id, ENQUEUE_BATCH)  # warm: connections, prepared statements
        share = tasks // concurrency
        cpu = sysinfo.TaskCpu(list(fleet.server_pids), [], fleet.database)
        cpu.start()
        began = time.perf_counter()
        await asyncio.gather(*(_enqueue(client, run.id, share) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        used = cpu.stop()
    del used["workers"]  # none runs
    return EnqueueFigure(share * concurrency, concurrency, elapsed, used)


async def measure_pickup(fleet: Fleet, *, rate_per_s: float, duration_s: float) -> PickupFigure:
    """Enqueue one task at a time at rate_per_s for duration_s; enqueue-to-start p50/p99."""
    count = max(1, round(rate_per_s * duration_s))
    async with _started(fleet, timeout_s=30.0) as (client, processes):
        run = await client.create_run({"bench": "pickup", "backend": fleet.backend})
        await asyncio.sleep(1.0)
        began = time.perf_counter()
        pending: set[asyncio.Task[Any]] = set()
        for i in range(count):
            # A steady schedule: a slow enqueue does not delay the next one.
            await asyncio.sleep(max(0.0, began + i / rate_per_s - time.perf_counter()))
            task = asyncio.ensure_future(
                client.enqueue_task(
                    run.id, type=PICKUP, input_data={"enqueuedAtMs": time.time() * 1000}
                )
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        deadline = time.perf_counter() + 30.0
        await wait_completed(client, run.id, count, deadline=deadline, workers=processes)
        latencies = await _pickup_latencies(client, run.id)
    ordered = sorted(latencies)
    return PickupFigure(
        fleet.backend, rate_per_s, len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.99)
    )


async def _pickup_latencies(client: AsyncClient, run_id: str) -> list[float]:
    found: list[float] = []
    offset = 0
    while True:
        page = await client.list_tasks(run_id=run_id, status="completed", limit=100, offset=offset)
        found += [float(t.output_data["pickupMs"]) for t in page.data if t.output_data]
        offset += len(page.data)
        if not page.data or offset >= page.pagination.total:
            return found
