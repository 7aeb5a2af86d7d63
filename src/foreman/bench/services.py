"""What the bench starts itself: a dedicated database and `foreman` processes, on loopback.

Foreman itself is reached only as a user reaches it: `foreman migrate`, `foreman server` and
`foreman worker` processes, and HTTP. The bench's own SQL creates, settles and drops its databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from foreman import errors
from foreman.settings import Settings

logger = logging.getLogger(__name__)

# Ours alone: two benches on one PostgreSQL must not drop or fill each other's database.
BENCH_DATABASE = f"foreman_bench_{os.getpid()}"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_loopback_host(host: str | None) -> bool:
    """Whether host is this machine: loopback, localhost, or a Unix socket (no host)."""
    if not host or host.startswith("/"):
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(url: str) -> str | None:
    """The host of a URL; a libpq ?host=/socket/dir query counts as the host."""
    parts = urlsplit(url)
    for item in parts.query.split("&"):
        if item.startswith("host="):
            return item[len("host=") :]
    return parts.hostname


def with_database(url: str, name: str) -> str:
    """url with its database replaced by name (keeps a ?host=/socket query)."""
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class BenchDatabase:
    """The PostgreSQL server the bench uses: a superuser URL for admin work, and where it came from."""

    admin_url: str
    source: str  # "FOREMAN_DATABASE_URL" or "embedded"

    def url(self, name: str = BENCH_DATABASE) -> str:
        return with_database(self.admin_url, name)


@contextlib.contextmanager
def postgres_server(settings: Settings) -> Iterator[BenchDatabase]:
    """The configured local PostgreSQL, else an embedded one kept in data_dir/bench."""
    url = settings.resolved_database_url()
    if url is not None:
        if not is_loopback_host(url_host(url)):
            raise errors.ClientError(
                "foreman bench only loads a database on this machine (loopback); "
                "use --endpoint to measure a running server instead"
            )
        yield BenchDatabase(admin_url=with_database(url, "postgres"), source="FOREMAN_DATABASE_URL")
        return
    with embedded_postgres(settings.data_dir / "bench") as admin_url:
        yield BenchDatabase(admin_url=admin_url, source="embedded")


@contextlib.contextmanager
def embedded_postgres(root: Path) -> Iterator[str]:
    """A superuser URL of a pgserver cluster kept in root, stopped (data kept) on exit."""
    try:
        from pgserver import postgres_server  # the [embedded] extra
    except ImportError as exc:
        raise errors.ForemanError(
            "the bench needs a PostgreSQL on this machine: set FOREMAN_DATABASE_URL, "
            "or install foreman[embedded] for one of its own"
        ) from exc
    root.mkdir(parents=True, exist_ok=True)
    # Stopped when the last process using it lets go (a running bench or soak).
    server = postgres_server.get_server(root.resolve() / "pgdata", cleanup_mode="stop")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        server.cleanup()


async def _admin(admin_url: str, *statements: str) -> None:
    """Run statements on the server's maintenance database, one after another."""
    conn = await asyncpg.connect(admin_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def recreate_database(admin_url: str, name: str) -> None:
    """Drop (forcibly) and create database name; identifiers are fixed by the bench, never input."""
    await _admin(admin_url, _drop_database(name), f'CREATE DATABASE "{name}"')


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database name if it exists."""
    await _admin(admin_url, _drop_database(name))


def _drop_database(name: str) -> str:
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


async def database_exists(admin_url: str, name: str) -> bool:
    """Whether database name exists."""
    conn = await asyncpg.connect(admin_url)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def fresh_bench_database(server: BenchDatabase, name: str = BENCH_DATABASE) -> str:
    """A newly created database migrated by `foreman migrate`; its URL."""
    await recreate_database(server.admin_url, name)
    url = server.url(name)
    await migrate(url)
    return url


def foreman_command(*args: str) -> list[str]:
    """The `foreman` command line run by this interpreter (no console script needed)."""
    return [sys.executable, "-c", "from foreman.cli import main; main()", *args]


async def migrate(database_url: str) -> None:
    """Apply Foreman's migrations to database_url with `foreman migrate`."""
    env = {**os.environ, "FOREMAN_DATABASE_URL": database_url, "FOREMAN_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        *foreman_command("migrate"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"foreman migrate failed:\n{output.decode(errors='replace')[-2000:]}")
    logger.info("%s", output.decode(errors="replace").strip())


async def settle(database_url: str) -> None:
    """VACUUM (ANALYZE) the bench database, so that a figure does not inherit the previous one's
    dead rows: autovacuum cleaning up after the lifecycle figures ran during the next window
    (measured: e2e postgres 5,628 tasks/s in a full run, 8,023 measured alone)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()


def _listening_sockets(port: int) -> int:
    """How many sockets listen on port (one per process with SO_REUSEPORT); -1 if unknown."""
    count = 0
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as lines:
                for line in list(lines)[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
    except OSError:
        return -1
    return count


@dataclass(slots=True)
class ServerProcess:
    """A `foreman server` subprocess (with its worker processes) on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    endpoint: str
    workers: int
    log_path: Path
    log_file: IO[bytes]

    @property
    def pids(self) -> list[int]:
        return [self.process.pid]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _server_env(
    database_url: str, port: int, workers: int, log_level: str | None, extra: dict[str, str]
) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.update(
        FOREMAN_DATABASE_URL=database_url,
        FOREMAN_SERVER_HOST="127.0.0.1",
        FOREMAN_SERVER_PORT=str(port),
        FOREMAN_SERVER_WORKERS=str(workers),
        FOREMAN_AUTO_MIGRATE="true",
    )
    if log_level is not None:
        env["FOREMAN_LOG_LEVEL"] = log_level
    return env


async def _wait_ready(server: ServerProcess, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"foreman server exited at start:\n{server.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{server.endpoint}/health") as response:
                    # Every process listens once its own lifespan has run: wait for all of them.
                    if response.status == 200 and _listening_sockets(port) in (-1, server.workers):
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"foreman server not ready after {START_TIMEOUT_S}s:\n{server.log_tail()}")


def _stop(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)
    server.log_file.close()


@contextlib.asynccontextmanager
async def run_server(
    database_url: str,
    *,
    workers: int,
    log_level: str | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[ServerProcess]:
    """Start `foreman server` with workers processes on a free port; stop it on exit.

    env adds variables (FOREMAN_DB_POOL_MAX, or PYTHONPATH pointing at a variant of the code).
    """
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="foreman-bench-server-", suffix=".log")
    log_file = os.fdopen(log_fd, "wb")
    # Popen returns at once (the readiness wait is async); the command is this interpreter.
    process = subprocess.Popen(  # noqa: S603, ASYNC220
        foreman_command("server"),
        env=_server_env(database_url, port, workers, log_level, env or {}),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", workers, Path(log_name), log_file)
    try:
        await _wait_ready(server, port)
        logger.info(
            "server up at %s with %s process(es), log %s", server.endpoint, workers, log_name
        )
        yield server
    finally:
        await asyncio.to_thread(_stop, server)
        with contextlib.suppress(OSError):
            os.unlink(log_name)
