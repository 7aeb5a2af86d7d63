"""`kill -9` of a worker during slow tasks (issue 5, faults), for each queue backend, and of a
worker in the middle of a fan-in join (issue 13), on the postgres and bullmq backends.

The scenario and its assertions are tests/e2e/test_delivery.py's, run here as they are (imported,
not copied) on this package's own PostgreSQL and Redis: a worker holding 8 of 12 slow tasks is
killed with SIGKILL, a second worker starts, every task completes, the killed attempts count and
their next attempt runs on the survivor. This module adds the measurement: when the worker died
(watched from outside) and how long until its tasks were completed elsewhere.

The join scenario is this module's own: a run of N parents and a join whose handler waits on a
file (tests/e2e/handlers.py gated_join), so the worker is killed while it runs the join; a second
worker takes the join once the lease has ended, and the join's work is done exactly once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from foreman import AsyncClient, TaskSpec
from tests.conftest import KEY_A, ORG_A
from tests.e2e import test_delivery as delivery
from tests.e2e.conftest import SERVERS, WorkerProcess
from tests.e2e.helpers import eventually
from tests.faults.report import FaultReport
from tests.integration.live_server import ServerProcess

pytestmark = pytest.mark.timeout(90)
client = delivery.client  # the scenario's fixture, under its own name

LEASE_S = 2.0  # the killed worker's --lease in the scenario


class DeathWatch:
    """Notes when each process in a (growing) list of workers dies, polling every 10 ms."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers
        self.deaths: dict[int, int] = {}  # pid -> epoch ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            for worker in list(self.workers):
                if worker.pid not in self.deaths and not _alive(worker.pid):
                    self.deaths[worker.pid] = round(time.time() * 1000)

    def __enter__(self) -> DeathWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(1)


def _alive(pid: int) -> bool:
    # Zombie = killed and not reaped yet: dead already (psutil never reaps it).
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_TASKS = """
SELECT count(*), count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE attempt > 1),
       max(completed_at) FILTER (WHERE attempt > 1)
  FROM task
 WHERE org_id = $1
"""


@pytest.fixture
def watched(workers: list[WorkerProcess]) -> Iterator[DeathWatch]:
    with DeathWatch(workers) as watch:
        yield watch


async def test_worker_kill_9_every_task_completes(
    server: ServerProcess,
    client: AsyncClient,
    workers: list[WorkerProcess],
    watched: DeathWatch,
    database_url: str,
    fault_report: FaultReport,
) -> None:
    scenario = delivery.test_kill_9_mid_task_every_task_completes_on_the_other_worker
    await scenario(server, client, workers)  # type: ignore[no-untyped-call]
    killed_ms = watched.deaths[workers[0].pid]
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(_TASKS, ORG_A)
    finally:
        await conn.close()
    assert row is not None
    total, completed, rerun, last_rerun_done = row
    backend = (await client.get_config()).queue.backend
    fault_report.add(
        f"worker_kill_9_{backend}",
        {
            "fault": f"kill -9 of a worker ({backend} backend, lease {LEASE_S:g} s) holding "
            "8+ of 12 tasks of 1.5 s; a second worker started after",
            "test": "tests/e2e/test_delivery.py::test_kill_9_mid_task_every_task_completes_on_the_other_worker",
            "requests_sent": total,  # tasks enqueued
            "acknowledged": total,
            "lost": total - completed,
            "tasks_killed_mid_run": rerun,
            # Lease expiry + sweep + retry backoff (about 2 s) + the task's 1.5 s on the survivor.
            "recovery_s": round((last_rerun_done - killed_ms) / 1000, 3),
        },
    )
    assert completed == total == 12
    assert rerun >= 8


# ---------------------------------------------------------------- a worker killed mid-join

JOIN_PARENTS = 20
JOIN_LEASE_S = 2.0  # the killed worker's lease: the join is retried about 2 s (+ backoff) later


@pytest.fixture(params=["postgres", "bullmq"])
def join_server(request: pytest.FixtureRequest, db_url: str) -> ServerProcess:
    """The postgres and the bullmq server (the package's), the database emptied first."""
    server: ServerProcess = request.getfixturevalue(SERVERS[request.param])
    return server


@pytest.fixture
async def join_client(join_server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(join_server.url, KEY_A) as api:
        yield api


async def _data(client: AsyncClient, run_id: str, key: str) -> list[Any]:
    """Every value stored under key in the run (not only the latest)."""
    page = await client.query_run_data(run_id, key=key, include_all=True, limit=100)
    return [row.value for row in page.data]


async def test_worker_kill_9_mid_join_retries_the_join_once(
    join_server: ServerProcess,
    join_client: AsyncClient,
    workers: list[WorkerProcess],
    fault_report: FaultReport,
) -> None:
    client, server = join_client, join_server
    gate = server.cwd / f"join-gate-{time.monotonic_ns()}"
    doomed = WorkerProcess(
        server, "--concurrency", "4", "--lease", f"{JOIN_LEASE_S:g}", name="doomed"
    )
    workers.append(doomed)
    doomed.wait_started()
    run = await client.create_run({"parents": JOIN_PARENTS}, auto_complete=True)
    specs = [TaskSpec(run.id, "square", i, ref=f"p{i}") for i in range(JOIN_PARENTS)]
    join_spec = TaskSpec(
        run.id,
        "gated_join",
        {"gate": str(gate)},
        depends_on=[f"p{i}" for i in range(JOIN_PARENTS)],
    )
    *parents, join = await client.enqueue_tasks([*specs, join_spec])
    assert join.status == "blocked"

    async def join_running() -> bool:
        return bool(await _data(client, run.id, "join_started"))

    await eventually(join_running, timeout_s=30, what="the join to start on the first worker")
    assert await _data(client, run.id, "join_started") == [{"attempt": 1, "pid": doomed.pid}]
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(10)
    killed_ms = round(time.time() * 1000)
    Path(gate).touch()  # from now on the join goes through: only a second attempt can get here
    survivor = WorkerProcess(server, "--concurrency", "4", "--lease", "10", name="survivor")
    workers.append(survivor)

    async def run_ended() -> bool:
        return (await client.get_run(run.id)).status in ("completed", "failed", "cancelled")

    await eventually(run_ended, timeout_s=45, what=f"run {run.id} to end itself")
    final = await client.get_run(run.id)
    total = JOIN_PARENTS + 1
    assert (final.status, final.completed_tasks, final.failed_tasks) == ("completed", total, 0)
    assert final.total_tasks == total
    done = await client.get_task(join.id)
    squares = sum(i * i for i in range(JOIN_PARENTS))
    expected = {"attempt": 2, "pid": survivor.pid, "sum": squares, "parents": JOIN_PARENTS}
    assert (done.status, done.attempt, done.output_data) == ("completed", 2, expected)
    # The join's side effect happened once, by the second attempt; the first one died before it.
    assert await _data(client, run.id, "joined") == [expected]
    started = await _data(client, run.id, "join_started")
    assert sorted(started, key=lambda v: v["attempt"]) == [
        {"attempt": 1, "pid": doomed.pid},
        {"attempt": 2, "pid": survivor.pid},
    ]
    attempts = await client.list_attempts(join.id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "lease_expired"), (2, "completed")]
    assert attempts[0].worker_id != attempts[1].worker_id
    assert attempts[0].error_data["type"] == "LeaseExpired"
    for parent in parents:  # the parents ran once each, before the kill
        assert [a.outcome for a in await client.list_attempts(parent.id)] == ["completed"]
    assert survivor.stop() == 0
    backend = server.env["FOREMAN_QUEUE_BACKEND"]
    fault_report.add(
        f"worker_kill_9_mid_join_{backend}",
        {
            "fault": f"kill -9 of a worker ({backend} backend, lease {JOIN_LEASE_S:g} s) while it "
            f"runs the join of {JOIN_PARENTS} parents; a second worker started after",
            "test": "tests/faults/test_worker_kill.py::test_worker_kill_9_mid_join_retries_the_join_once",
            "requests_sent": total,  # tasks enqueued
            "acknowledged": total,
            "lost": total - final.completed_tasks,
            "join_runs_completed": len(await _data(client, run.id, "joined")),
            # Lease expiry + sweep + retry backoff (about 2 s) + the survivor's start and pickup.
            "recovery_s": round(((done.completed_at or 0) - killed_ms) / 1000, 3),
        },
    )
