"""RabbitMQ restarted, and the SQS server restarted, during processing (issue 14, faults).

test_redis.py's scenario (a backlog of slow tasks, an SDK client enqueueing batches while the
fault happens, two `foreman worker` processes) on a broker of the test's own: a RabbitMQ node
with its own name, port and data (durable queues and persistent messages survive the restart;
what the server could not publish while it was down is republished by the sweeper once the queue
drained), and a moto_server (everything in memory: a restart loses every queue and message, like
a purge). Proven: every acknowledged task completes exactly once, the workers reconnect by
themselves, and the run counters are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from foreman import AsyncClient, ids
from tests.conftest import KEY_A
from tests.e2e.conftest import OwnRedis, WorkerProcess, start_server
from tests.faults.report import FaultReport
from tests.faults.test_redis import (
    BACKLOG,
    BATCH,
    FAULT_AFTER_S,
    PACE_S,
    _check,
    _run_with_fault,
    _waiting_since,
)
from tests.integration.live_server import ServerProcess
from tests.services import MOTO_AWS_ENV, MotoServer, OwnRabbitMQ

pytestmark = pytest.mark.timeout(150)

BROKER_DOWN_S = 2.0


@pytest.fixture(scope="module")
def own_rabbitmq() -> Iterator[OwnRabbitMQ]:
    if not OwnRabbitMQ.installed():
        pytest.skip(
            f"no RabbitMQ scripts in {OwnRabbitMQ.SCRIPTS} (apt-get install rabbitmq-server)"
        )
    node = OwnRabbitMQ().start()
    try:
        yield node
    finally:
        node.remove()


@pytest.fixture(scope="module")
def own_moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rabbit_server(
    database_url: str, e2e_dir: Path, own_redis: OwnRedis, own_rabbitmq: OwnRabbitMQ, db_url: str
) -> Iterator[ServerProcess]:
    server = start_server(
        database_url,
        e2e_dir,
        backend="rabbitmq",
        own=own_redis,
        FOREMAN_RABBITMQ_URL=own_rabbitmq.url,
    )
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def moto_server(
    database_url: str, e2e_dir: Path, own_redis: OwnRedis, own_moto: MotoServer, db_url: str
) -> Iterator[ServerProcess]:
    server = start_server(
        database_url,
        e2e_dir,
        backend="sqs",
        own=own_redis,
        FOREMAN_SQS_ENDPOINT_URL=own_moto.url,
        **MOTO_AWS_ENV,
    )
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def api(request: pytest.FixtureRequest) -> AsyncIterator[AsyncClient]:
    """An SDK client of the test's server (retries=0: every request counted as answered)."""
    name = "rabbit_server" if "rabbit" in request.node.name else "moto_server"
    server: ServerProcess = request.getfixturevalue(name)
    async with AsyncClient(server.url, KEY_A, retries=0) as client:
        yield client


async def _restart(server: ServerProcess, stop, start) -> tuple[int, list[str]]:
    await asyncio.to_thread(stop)
    await asyncio.sleep(BROKER_DOWN_S)  # the client keeps enqueueing: acknowledged, unpublished
    await asyncio.to_thread(start)
    back = ids.now_ms()
    # Still queued: in the broker's queue (RabbitMQ kept it), lost with it (moto), or never
    # published because the broker was down when the client enqueued it.
    return back, await _waiting_since(server.env["FOREMAN_DATABASE_URL"], back)


async def test_rabbitmq_restart_during_processing(
    rabbit_server: ServerProcess,
    api: AsyncClient,
    own_rabbitmq: OwnRabbitMQ,
    workers: list[WorkerProcess],
    fault_report: FaultReport,
) -> None:
    async def restart() -> tuple[int, list[str]]:
        return await _restart(rabbit_server, own_rabbitmq.stop, own_rabbitmq.start)

    figures, states = await _run_with_fault(rabbit_server, api, workers, restart)
    fault_report.add(
        "rabbitmq_restart",
        {
            "fault": f"RabbitMQ stopped {FAULT_AFTER_S:g} s into rabbitmq processing for "
            f"{BROKER_DOWN_S:g} s (durable queues), backlog {BACKLOG} tasks, {BATCH} more "
            f"every {PACE_S:g} s, 2 workers",
            **figures,
        },
    )
    _check(figures, states)


async def test_sqs_server_restart_during_processing(
    moto_server: ServerProcess,
    api: AsyncClient,
    own_moto: MotoServer,
    workers: list[WorkerProcess],
    fault_report: FaultReport,
) -> None:
    async def restart() -> tuple[int, list[str]]:
        return await _restart(moto_server, own_moto.stop, own_moto.start)

    figures, states = await _run_with_fault(moto_server, api, workers, restart)
    fault_report.add(
        "sqs_restart",
        {
            "fault": f"moto's SQS server stopped {FAULT_AFTER_S:g} s into sqs processing for "
            f"{BROKER_DOWN_S:g} s (in memory: every queue and message lost), backlog "
            f"{BACKLOG} tasks, {BATCH} more every {PACE_S:g} s, 2 workers",
            **figures,
        },
    )
    _check(figures, states)
