"""End-to-end fixtures: real `foreman server` and `foreman worker` processes, real PostgreSQL and a
redis-server of our own (restarted and flushed by the tests, so never the shared one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from foreman.queue import rabbitmq
from foreman.queue.naming import org_queue_name
from foreman.queue.rabbitmq import RabbitMQQueue
from foreman.queue.sqs import SqsClient
from tests.conftest import KEY_A, ORG_A, ORG_B
from tests.integration.live_server import ServerProcess, foreman_command, server_env
from tests.services import MOTO_AWS_ENV, MotoServer, _port_open, free_port

ROOT = Path(__file__).resolve().parents[2]
SWEEP_INTERVAL_S = "0.2"


class OwnRedis:
    """A redis-server on a free port, without persistence: a restart loses every job."""

    def __init__(self, *args: str, password: str | None = None) -> None:
        self.args = args  # more redis-server options
        self.password = password  # the default user's (requirepass), when set
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="foreman-e2e-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is needed for the bullmq end-to-end tests"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *self.args,
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _port_open("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flushall(self) -> None:
        with redis.Redis(host="127.0.0.1", port=self.port, password=self.password) as client:
            assert client.flushall()


@contextlib.contextmanager
def running_own_redis(*args: str, password: str | None = None) -> Iterator[OwnRedis]:
    """A private Redis for the duration of the block; its files are removed afterwards."""
    server = OwnRedis(*args, password=password).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="package")
def own_redis() -> Iterator[OwnRedis]:
    with running_own_redis() as server:
        yield server


@pytest.fixture(scope="package")
def e2e_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="foreman-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_server(
    database_url: str, cwd: Path, *, backend: str, own: OwnRedis, **more: str
) -> ServerProcess:
    env = server_env(
        FOREMAN_DATABASE_URL=database_url,
        FOREMAN_AUTO_MIGRATE="false",
        FOREMAN_QUEUE_BACKEND=backend,
        FOREMAN_DB_POOL_MIN="1",
        FOREMAN_DB_POOL_MAX="6",
        FOREMAN_SWEEP_INTERVAL_S=SWEEP_INTERVAL_S,
        FOREMAN_SWEEP_PUBLISH_GRACE_S="0.5",
        FOREMAN_POLL_INTERVAL_S="0.5",
        FOREMAN_LOG_LEVEL="WARNING",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(own.port),
        # Colon-free (SPEC section 5), and one queue per server so runs never see old jobs.
        TASK_QUEUE_NAME=f"foreman-e2e-{uuid.uuid4().hex[:8]}",
        **({"REDIS_PASSWORD": own.password} if own.password else {}),
        **more,
    )
    server = ServerProcess(cwd, env=env).start()
    # What a worker process of this server's backend needs to reach the broker.
    server.worker_env = {k: v for k, v in more.items() if k.startswith(("FOREMAN_", "AWS_"))}
    return server


@pytest.fixture(scope="package")
def pg_server(database_url: str, e2e_dir: Path, own_redis: OwnRedis) -> Iterator[ServerProcess]:
    """`foreman server` with the postgres backend."""
    server = start_server(database_url, e2e_dir, backend="postgres", own=own_redis)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="package")
def bull_server(database_url: str, e2e_dir: Path, own_redis: OwnRedis) -> Iterator[ServerProcess]:
    """`foreman server` with the bullmq backend on our own Redis."""
    server = start_server(database_url, e2e_dir, backend="bullmq", own=own_redis)
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def environment(**variables: str) -> Iterator[None]:
    """os.environ with variables set (for the workers this process runs), restored after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="package")
def rmq_server(
    database_url: str, e2e_dir: Path, own_redis: OwnRedis, rabbitmq: str
) -> Iterator[ServerProcess]:
    """`foreman server` with the rabbitmq backend on the machine's RabbitMQ."""
    server = start_server(
        database_url, e2e_dir, backend="rabbitmq", own=own_redis, FOREMAN_RABBITMQ_URL=rabbitmq
    )
    try:
        with environment(FOREMAN_RABBITMQ_URL=rabbitmq):
            yield server
    finally:
        server.kill()
        asyncio.run(delete_queues(server))  # the machine's RabbitMQ keeps no test queues


@pytest.fixture(scope="package")
def sqs_server(
    database_url: str, e2e_dir: Path, own_redis: OwnRedis, moto: MotoServer
) -> Iterator[ServerProcess]:
    """`foreman server` with the sqs backend on moto's SQS-compatible server."""
    server = start_server(
        database_url,
        e2e_dir,
        backend="sqs",
        own=own_redis,
        FOREMAN_SQS_ENDPOINT_URL=moto.url,
        **MOTO_AWS_ENV,
    )
    try:
        with environment(FOREMAN_SQS_ENDPOINT_URL=moto.url):
            yield server
    finally:
        server.kill()


SERVERS = {
    "postgres": "pg_server",
    "bullmq": "bull_server",
    "rabbitmq": "rmq_server",
    "sqs": "sqs_server",
}


async def purge_queues(server: ServerProcess) -> None:
    """Empty the organisations' queues of a rabbitmq or sqs server: the database was emptied,
    so what an earlier test left there names tasks that are gone."""
    backend, base = server.env["FOREMAN_QUEUE_BACKEND"], server.env["TASK_QUEUE_NAME"]
    if backend == "rabbitmq":
        queue = RabbitMQQueue(server.env["FOREMAN_RABBITMQ_URL"], base=base)
        channel = await queue.channel()
        for org in (ORG_A, ORG_B):
            await (await rabbitmq.declare(channel, queue.queue_name(org), "classic")).purge()
        await queue.close()
    elif backend == "sqs":
        client = SqsClient(endpoint_url=server.env["FOREMAN_SQS_ENDPOINT_URL"], region=None)
        for org in (ORG_A, ORG_B):
            await client.call(org_queue_name(base, org), "purge_queue")
        await client.close()


async def delete_queues(server: ServerProcess) -> None:
    """Remove the organisations' queues (and dead-letter queues) of a rabbitmq server."""
    queue = RabbitMQQueue(server.env["FOREMAN_RABBITMQ_URL"], base=server.env["TASK_QUEUE_NAME"])
    channel = await queue.channel()
    for org in (ORG_A, ORG_B):
        for name in (queue.queue_name(org), queue.queue_name(org) + rabbitmq.DEAD_SUFFIX):
            await channel.queue_delete(name)
    await queue.close()


@pytest.fixture(params=list(SERVERS))
async def server(request, db_url) -> ServerProcess:
    """Each backend's server, the database (and the broker's queues) emptied first."""
    server = request.getfixturevalue(SERVERS[request.param])
    await purge_queues(server)
    return server


@pytest.fixture(params=["rabbitmq", "sqs"])
async def broker_server(request, db_url) -> ServerProcess:
    """The server of each broker that cannot check one message (rabbitmq, sqs)."""
    server = request.getfixturevalue(SERVERS[request.param])
    await purge_queues(server)
    return server


class WorkerProcess:
    """`foreman worker tests.e2e.handlers:HANDLERS` against a server, its output in a log file."""

    def __init__(self, server: ServerProcess, *args: str, name: str = "worker") -> None:
        self.log_path = server.cwd / f"{name}-{uuid.uuid4().hex[:6]}.log"
        env = server_env(FOREMAN_API_KEY=KEY_A, FOREMAN_LOG_LEVEL="INFO", **server.worker_env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*foreman_command(), "worker", "tests.e2e.handlers:HANDLERS",
                 "--endpoint", server.url, *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout_s: float = 30) -> WorkerProcess:
        deadline = time.monotonic() + timeout_s
        while " started: " not in self.log():
            assert self.process.poll() is None, f"worker exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"worker did not start:\n{self.log()}"
            time.sleep(0.05)
        return self

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"worker still running after {signum}:\n{self.log()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes started by a test; killed at its end whatever happened."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()
