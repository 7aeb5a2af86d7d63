"""Real PostgreSQL and Redis for the tests: the machine's services, else ones started here.

Order of preference: FOREMAN_TEST_DATABASE_URL / FOREMAN_TEST_REDIS_URL, then the local services
(127.0.0.1:5432 as postgres, 127.0.0.1:6379), then an embedded PostgreSQL (pgserver) and a
redis-server binary started for the session. Nothing is ever skipped for a missing service.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from foreman.store.migrate import apply_migrations_async

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _can_connect(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def admin_postgres_url() -> str:
    """A superuser URL to a maintenance database where test databases can be created."""
    if url := os.environ.get("FOREMAN_TEST_DATABASE_URL"):
        return url
    if _port_open("127.0.0.1", 5432) and await _can_connect(LOCAL_PG):
        return LOCAL_PG
    import pgserver  # the [embedded] extra, installed by the test set-up

    data = Path(tempfile.gettempdir()) / "foreman-test-pgdata"
    server = pgserver.get_server(data, cleanup_mode="stop")
    return str(server.get_uri("postgres"))


def with_database(url: str, name: str) -> str:
    """url with its database replaced by name (keeps a ?host=/socket query)."""
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, prefix: str, *, migrate: bool) -> AsyncIterator[str]:
    """A new database on admin_url's server (every migration applied if asked), dropped on exit."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(admin_url, name)
        if migrate:
            await apply_migrations_async(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class RedisServer:
    """The machine's Redis, or a redis-server process started for the tests."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 6379
        self.tmp: str | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        if url := os.environ.get("FOREMAN_TEST_REDIS_URL"):
            rest = url.split("://", 1)[1].split("/", 1)[0]
            self.host, _, port = rest.partition(":")
            self.port = int(port or 6379)
            return self
        if _port_open("127.0.0.1", 6379):
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "No Redis at 127.0.0.1:6379 and no redis-server binary: install Redis "
                "(apt-get install redis-server) or set FOREMAN_TEST_REDIS_URL"
            )
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="foreman-redis-")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
