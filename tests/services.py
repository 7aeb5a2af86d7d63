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
from urllib.parse import parse_qsl, urlsplit

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


def os_binary(name: str, package: str) -> str:
    """The path of an OS program the tests need, installing its Debian package when it is
    missing and this runs as root with apt-get (as scripts/test.sh does); never a skip."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is not None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            [apt, "install", "-y", "-qq", package], check=True, env=env, capture_output=True
        )
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
        if found is not None:
            return found
    raise RuntimeError(f"no {name}: install the {package} package (apt-get install {package})")


def _server_address(url: str) -> tuple[str, int, str]:
    """(host or socket folder, port, user) of a postgresql:// URL."""
    parsed = urlsplit(url)
    query = dict(parse_qsl(parsed.query))
    host = query.get("host") or parsed.hostname or "127.0.0.1"
    port = int(query.get("port") or parsed.port or 5432)
    return host, port, parsed.username or "postgres"


class PgBouncer:
    """A pgbouncer process in transaction pooling mode in front of the server of admin_url.

    Few server connections (pool_size) for many clients, so that consecutive transactions of a
    client land on connections other clients used: what the tests need to see.
    """

    def __init__(self, admin_url: str, *, pool_size: int = 4) -> None:
        self.admin_url = admin_url
        self.pool_size = pool_size
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.tmp = ""

    def url(self, database_url: str) -> str:
        """database_url's database, reached through this PgBouncer."""
        parsed = urlsplit(database_url)
        user = parsed.username or "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}{parsed.path}"

    def start(self) -> PgBouncer:
        binary = os_binary("pgbouncer", "pgbouncer")
        host, port, user = _server_address(self.admin_url)
        self.tmp = tempfile.mkdtemp(prefix="foreman-pgbouncer-")
        folder = Path(self.tmp)
        (folder / "users.txt").write_text(f'"{user}" ""\n')
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port} user={user}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {folder / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {folder / 'pgbouncer.log'}\n"
            f"pidfile = {folder / 'pgbouncer.pid'}\n"
        )
        command = [binary, str(folder / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            os.chmod(folder, 0o777)  # its own temp folder: pgbouncer writes its log and pid there
            command[1:1] = ["-u", "nobody"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while not _port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        path = Path(self.tmp) / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
