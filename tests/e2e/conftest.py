"""End-to-end fixtures: real `foreman server` and `foreman worker` processes, real PostgreSQL and a
redis-server of our own (restarted and flushed by the tests, so never the shared one)."""

from __future__ import annotations

import contextlib
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

from tests.conftest import KEY_A
from tests.integration.live_server import ServerProcess, foreman_command, server_env
from tests.services import _port_open, free_port

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
    return ServerProcess(cwd, env=env).start()


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


@pytest.fixture(params=["postgres", "bullmq"])
def server(request, db_url) -> ServerProcess:
    """Each backend's server, the database emptied first."""
    fixture = "pg_server" if request.param == "postgres" else "bull_server"
    return request.getfixturevalue(fixture)


class WorkerProcess:
    """`foreman worker tests.e2e.handlers:HANDLERS` against a server, its output in a log file."""

    def __init__(self, server: ServerProcess, *args: str, name: str = "worker") -> None:
        self.log_path = server.cwd / f"{name}-{uuid.uuid4().hex[:6]}.log"
        env = server_env(FOREMAN_API_KEY=KEY_A, FOREMAN_LOG_LEVEL="INFO")
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
