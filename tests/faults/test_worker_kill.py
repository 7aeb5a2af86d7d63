"""`kill -9` of a worker during slow tasks (issue 5, faults), for each queue backend.

The scenario and its assertions are tests/e2e/test_delivery.py's, run here as they are (imported,
not copied) on this package's own PostgreSQL and Redis: a worker holding 8 of 12 slow tasks is
killed with SIGKILL, a second worker starts, every task completes, the killed attempts count and
their next attempt runs on the survivor. This module adds the measurement: when the worker died
(watched from outside) and how long until its tasks were completed elsewhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import asyncpg
import psutil
import pytest

from foreman import AsyncClient
from tests.conftest import ORG_A
from tests.e2e import test_delivery as delivery
from tests.e2e.conftest import WorkerProcess
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
