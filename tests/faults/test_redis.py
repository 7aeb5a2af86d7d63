"""Redis flushed, and Redis restarted, during bullmq processing (issue 5, faults).

A `foreman server` with the bullmq backend and two `foreman worker` processes run against this
package's PostgreSQL and redis-server (no persistence: a restart loses every job, like FLUSHALL).
A backlog of slow tasks is waiting in Redis and an SDK client keeps enqueueing batches while
the fault happens. Proven: every acknowledged task completes (the sweeper publishes the jobs
Redis lost, and the ones the server could not publish while Redis was down), the workers
reconnect by themselves, and the run counters are exact. tests/e2e/test_delivery.py has the
functional version; this one measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from foreman import AsyncClient, TaskSpec, errors, ids
from tests.conftest import KEY_A, ORG_A
from tests.e2e.conftest import OwnRedis, WorkerProcess
from tests.faults import load
from tests.faults.report import FaultReport
from tests.integration.live_server import ServerProcess

pytestmark = pytest.mark.timeout(120)

BACKLOG = 300
NAP_S = 0.1
BATCH = 10
PACE_S = 0.1  # one batch of BATCH tasks every PACE_S: 100 tasks/s on top of the backlog
LOAD_S = 7.0
FAULT_AFTER_S = 1.0
REDIS_DOWN_S = 2.0


@dataclass(slots=True)
class Enqueues:
    """Batches sent by the SDK client: when, how long, acknowledged or not, which tasks."""

    sent: int = 0
    acknowledged: int = 0
    failed: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)  # task id -> acknowledged at (epoch ms)


async def _enqueue_steadily(
    client: AsyncClient, run_id: str, log: Enqueues, *, until: float
) -> None:
    while time.monotonic() < until:
        log.sent += 1
        started = time.monotonic()
        try:
            tasks = await client.enqueue_tasks(
                [TaskSpec(run_id, "nap", NAP_S) for _ in range(BATCH)]
            )
        except errors.ForemanError as exc:
            log.failed.append(repr(exc))
        else:
            log.acknowledged += 1
            log.tasks.update({t.id: t.created_at for t in tasks})
        log.latencies_s.append(time.monotonic() - started)
        await asyncio.sleep(PACE_S)


@pytest.fixture
async def bull_client(bull_server: ServerProcess, db_url: str) -> AsyncIterator[AsyncClient]:
    # retries=0: every request is counted once, as it was answered.
    async with AsyncClient(bull_server.url, KEY_A, retries=0) as client:
        yield client


_STARTS = """
SELECT min(started_at) FILTER (WHERE id = ANY($2::uuid[])),
       max(started_at) FILTER (WHERE id = ANY($2::uuid[])),
       max(completed_at) FILTER (WHERE id = ANY($2::uuid[])),
       min(started_at) FILTER (WHERE started_at >= $3)
  FROM task
 WHERE org_id = $1
"""
_WAITING = "SELECT id::text FROM task WHERE org_id = $1 AND status = 'queued' AND created_at < $2"


async def _waiting_since(database_url: str, before_ms: int) -> list[str]:
    """Tasks created before before_ms that no worker has started: their jobs were in Redis."""
    conn = await asyncpg.connect(database_url)
    try:
        return [r[0] for r in await conn.fetch(_WAITING, ORG_A, before_ms)]
    finally:
        await conn.close()


async def _restarts(database_url: str, task_ids: list[str], since_ms: int) -> asyncpg.Record:
    """First start, last start and last completion (epoch ms) of the tasks; first start of
    any task since since_ms."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(_STARTS, ORG_A, task_ids, since_ms)
    finally:
        await conn.close()
    assert row is not None
    return row


async def _run_with_fault(
    server: ServerProcess,
    client: AsyncClient,
    workers: list[WorkerProcess],
    fault: Callable[[], Awaitable[tuple[int, list[str]]]],
) -> tuple[dict[str, Any], load.TaskStates]:
    """Backlog + steady enqueues, the fault after FAULT_AFTER_S; figures once all is done.

    fault returns the epoch ms at which Redis was usable again and the tasks that had to be
    published again (their first start after it is the recovery).
    """
    workers += [WorkerProcess(server, "--concurrency", "10", "--lease", "5") for _ in range(2)]
    for worker in workers:
        worker.wait_started()
    run = await client.create_run({"fault": "redis"})
    backlog = await client.enqueue_tasks([TaskSpec(run.id, "nap", NAP_S) for _ in range(BACKLOG)])
    log = Enqueues()
    loader = asyncio.create_task(
        _enqueue_steadily(client, run.id, log, until=time.monotonic() + LOAD_S)
    )
    await asyncio.sleep(FAULT_AFTER_S)
    back_ms, stranded = await fault()
    await loader
    database_url = server.env["FOREMAN_DATABASE_URL"]
    states = await load.wait_tasks_finished(database_url, timeout_s=60)
    first, last, done, any_first = await _restarts(database_url, stranded, back_ms)
    finished = await client.get_run(run.id)
    acknowledged = len(backlog) + len(log.tasks)
    assert all(w.process.poll() is None for w in workers), "a worker exited"
    return {
        "requests_sent": log.sent + 1,  # + the backlog's batch
        "acknowledged": log.acknowledged + 1,
        "request_errors": log.failed,
        "max_request_s": round(max(log.latencies_s), 3),
        "tasks_enqueued": acknowledged,
        "tasks_stranded": len(stranded),
        "tasks_completed": states.counts.get("completed", 0),
        "lost": acknowledged - states.counts.get("completed", 0),
        "tasks_rerun": states.rerun,
        # From Redis usable again to the first / last stranded task running, and all completed.
        "recovery_s": _seconds(first, back_ms),
        "stranded_all_started_s": _seconds(last, back_ms),
        "stranded_all_done_s": _seconds(done, back_ms),
        "first_task_started_s": _seconds(any_first, back_ms),
        "run_counters": [finished.total_tasks, finished.completed_tasks, finished.failed_tasks],
    }, states


def _seconds(epoch_ms: int | None, since_ms: int) -> float | None:
    return None if epoch_ms is None else round((epoch_ms - since_ms) / 1000, 3)


def _check(figures: dict[str, Any], states: load.TaskStates) -> None:
    assert figures["request_errors"] == [], figures["request_errors"]
    assert figures["lost"] == 0, figures
    assert states.counts == {"completed": figures["tasks_enqueued"]}, states
    total = figures["tasks_enqueued"]
    assert figures["run_counters"] == [total, total, 0], figures["run_counters"]
    assert figures["tasks_stranded"] > 0, "the fault happened when Redis held no job"


async def test_redis_flushall_during_processing(
    bull_server: ServerProcess,
    bull_client: AsyncClient,
    own_redis: OwnRedis,
    workers: list[WorkerProcess],
    fault_report: FaultReport,
) -> None:
    async def flush() -> tuple[int, list[str]]:
        at = ids.now_ms()
        await asyncio.to_thread(own_redis.flushall)
        # Created before the flush and still not started a moment later (a claim takes
        # milliseconds): their jobs were in Redis, and are gone.
        await asyncio.sleep(0.3)
        return at, await _waiting_since(bull_server.env["FOREMAN_DATABASE_URL"], at)

    figures, states = await _run_with_fault(bull_server, bull_client, workers, flush)
    fault_report.add(
        "redis_flushall",
        {
            "fault": f"FLUSHALL on Redis {FAULT_AFTER_S:g} s into bullmq processing "
            f"(backlog {BACKLOG} tasks, {BATCH} more every {PACE_S:g} s, 2 workers)",
            **figures,
        },
    )
    _check(figures, states)


async def test_redis_restart_during_processing(
    bull_server: ServerProcess,
    bull_client: AsyncClient,
    own_redis: OwnRedis,
    workers: list[WorkerProcess],
    fault_report: FaultReport,
) -> None:
    async def restart() -> tuple[int, list[str]]:
        await asyncio.to_thread(own_redis.stop)
        await asyncio.sleep(REDIS_DOWN_S)  # the client keeps enqueueing: acknowledged, unpublished
        await asyncio.to_thread(own_redis.start)
        back = ids.now_ms()
        # Everything still queued is stranded: its job died with Redis, or was never published
        # because Redis was down when the client enqueued it.
        return back, await _waiting_since(bull_server.env["FOREMAN_DATABASE_URL"], back)

    figures, states = await _run_with_fault(bull_server, bull_client, workers, restart)
    fault_report.add(
        "redis_restart",
        {
            "fault": f"Redis stopped {FAULT_AFTER_S:g} s into bullmq processing for "
            f"{REDIS_DOWN_S:g} s (no persistence: every job lost), enqueueing going on",
            **figures,
        },
    )
    _check(figures, states)
