"""Interop fixtures: the Node `bullmq` package installed from tests/interop/node/package-lock.json,
a real `foreman server` (bullmq backend) on a redis-server of our own, and Node scripts run as child
processes. Every step is bounded by a timeout.

Without node/npm (or when the install fails) the tests skip with the reason, except with CI=true,
where they fail: CI must prove the compatibility, not skip it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from foreman import AsyncClient
from tests.conftest import KEY_A
from tests.e2e.conftest import OwnRedis, own_redis, running_own_redis  # noqa: F401 - fixture reused
from tests.integration.live_server import ServerProcess, server_env

NODE_DIR = Path(__file__).resolve().parent / "node"
LOCKFILE = NODE_DIR / "package-lock.json"
# Written into node_modules after a successful `npm ci`: the lockfile hash it was installed from.
STAMP = NODE_DIR / "node_modules" / ".foreman-lock-sha256"
MIN_NODE_MAJOR = 20  # bullmq 6 runs on older Node too, but the scripts use fetch and AbortSignal
INSTALL_TIMEOUT_S = 180
SCRIPT_TIMEOUT_S = 60


def _unavailable(reason: str) -> NoReturn:
    """Skip outside CI; with CI=true, fail with the reason."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Node interop tests must run)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class NodeTools:
    """The node binary, with tests/interop/node/node_modules installed from the lockfile."""

    node: str

    def script(self, name: str) -> list[str]:
        return [self.node, str(NODE_DIR / name)]


def _node_major(node: str) -> int:
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    return int(match.group(1)) if match else 0


def _lock_hash() -> str:
    return hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()


def _npm_ci(npm: str) -> None:
    """`npm ci` unless node_modules was installed from this very lockfile (the cache)."""
    # flock: two pytest sessions on one checkout must not run npm ci in the same folder at once.
    with LOCKFILE.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = _lock_hash()
        if STAMP.exists() and STAMP.read_text().strip() == wanted:
            return
        try:
            result = subprocess.run(
                [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                 "--ignore-scripts", "--loglevel=error"],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            _unavailable(f"npm ci in {NODE_DIR} took longer than {INSTALL_TIMEOUT_S}s")
        if result.returncode != 0:
            _unavailable(f"npm ci in {NODE_DIR} failed:\n{result.stderr[-3000:]}")
        STAMP.write_text(wanted)


@pytest.fixture(scope="session")
def node_tools() -> NodeTools:
    """node and npm on PATH, Node >= 20, and the pinned npm packages installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed for the Node BullMQ interop tests (Node >= 20)")
    major = _node_major(node)
    if major < MIN_NODE_MAJOR:
        _unavailable(f"Node >= {MIN_NODE_MAJOR} is needed for the interop tests, found v{major}")
    _npm_ci(npm)
    return NodeTools(node)


@pytest.fixture(scope="package")
def bull_server(database_url: str, own_redis: OwnRedis) -> Iterator[ServerProcess]:  # noqa: F811 - the fixture
    """`foreman server` with the bullmq backend, on a free port, over the test database."""
    cwd = Path(tempfile.mkdtemp(prefix="foreman-interop-"))
    env = server_env(
        FOREMAN_DATABASE_URL=database_url,
        FOREMAN_AUTO_MIGRATE="false",
        FOREMAN_QUEUE_BACKEND="bullmq",
        FOREMAN_DB_POOL_MIN="1",
        FOREMAN_DB_POOL_MAX="6",
        FOREMAN_SWEEP_INTERVAL_S="0.2",
        FOREMAN_SWEEP_PUBLISH_GRACE_S="0.5",
        FOREMAN_LOG_LEVEL="WARNING",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(own_redis.port),
        # Colon-free: Node BullMQ refuses ":" in a queue name (SPEC section 5).
        TASK_QUEUE_NAME=f"foreman-interop-{uuid.uuid4().hex[:8]}",
    )
    server = ServerProcess(cwd, env=env).start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(cwd, ignore_errors=True)


@pytest.fixture(scope="package")
def acl_bull_server(database_url: str) -> Iterator[ServerProcess]:
    """The same server with FOREMAN_REDIS_ACL=per-org, on a Redis that needs a password: key
    holders get their organisation's own Redis user."""
    cwd = Path(tempfile.mkdtemp(prefix="foreman-interop-acl-"))
    with running_own_redis(password=uuid.uuid4().hex) as redis:
        env = server_env(
            FOREMAN_DATABASE_URL=database_url,
            FOREMAN_AUTO_MIGRATE="false",
            FOREMAN_QUEUE_BACKEND="bullmq",
            FOREMAN_DB_POOL_MIN="1",
            FOREMAN_DB_POOL_MAX="6",
            FOREMAN_LOG_LEVEL="WARNING",
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(redis.port),
            REDIS_PASSWORD=redis.password or "",
            FOREMAN_REDIS_ACL="per-org",
            FOREMAN_REDIS_ACL_SECRET=uuid.uuid4().hex * 2,
            TASK_QUEUE_NAME=f"foreman-interop-{uuid.uuid4().hex[:8]}",
        )
        server = ServerProcess(cwd, env=env).start()
        try:
            yield server
        finally:
            server.kill()
            shutil.rmtree(cwd, ignore_errors=True)


@pytest.fixture
async def api(bull_server: ServerProcess, db_url: str) -> AsyncIterator[AsyncClient]:
    """The Python SDK against the server, every table emptied first."""
    async with AsyncClient(bull_server.url, KEY_A) as client:
        yield client


def node_env(server: ServerProcess, own: OwnRedis | None, **extra: str) -> dict[str, str]:
    """What a Node foreman-client or worker is configured with: the endpoint and an fmn_ key (it
    reads its organisation's queue name and Redis connection from /api/v1/config)."""
    del own
    return server_env(
        FOREMAN_ENDPOINT=server.url,
        FOREMAN_API_KEY=KEY_A,
        INTEROP_TIMEOUT_MS=str(SCRIPT_TIMEOUT_S * 1000),
        **extra,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a script's stdout, one a line (other lines ignored)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def run_node(
    tools: NodeTools, script: str, *, stdin: Any, env: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Run a Node script to completion (stdin as JSON), its stdout's JSON lines; bounded."""
    process = await asyncio.create_subprocess_exec(
        *tools.script(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=NODE_DIR,
    )
    try:
        async with asyncio.timeout(SCRIPT_TIMEOUT_S + 10):
            out, err = await process.communicate(json.dumps(stdin).encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{script} still running after {SCRIPT_TIMEOUT_S + 10}s") from None
    assert process.returncode == 0, f"{script} exited {process.returncode}:\n{err.decode()}"
    return json_lines(out.decode())


class NodeWorker:
    """tests/interop/node/worker.mjs in the background, its stdout and stderr in log files."""

    def __init__(self, tools: NodeTools, log_dir: Path, *, env: Mapping[str, str]) -> None:
        name = uuid.uuid4().hex[:6]
        self.out_path = log_dir / f"node-worker-{name}.out"
        self.err_path = log_dir / f"node-worker-{name}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                tools.script("worker.mjs"), env=dict(env), cwd=NODE_DIR, stdout=out, stderr=err
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log(self) -> str:
        return f"stdout:\n{self.output()}\nstderr:\n{self.err_path.read_text(errors='replace')}"

    def wait_ready(self, timeout_s: float = 30) -> NodeWorker:
        deadline = time.monotonic() + timeout_s
        while "ready\n" not in self.output():
            assert self.process.poll() is None, f"node worker exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"node worker not ready:\n{self.log()}"
            time.sleep(0.05)
        return self

    async def finished(self, timeout_s: float) -> int:
        """Its exit code, waiting at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        while (code := self.process.poll()) is None:
            assert time.monotonic() < deadline, f"node worker still running:\n{self.log()}"
            await asyncio.sleep(0.05)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def children() -> Iterator[list[Any]]:
    """Worker processes started by a test (Python or Node); killed at its end whatever happened."""
    started: list[Any] = []
    yield started
    for child in started:
        child.kill()
