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
import sys
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


LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
# moto's SQS accepts any credentials; botocore needs some (and a region) to sign requests.
MOTO_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def rabbitmq_url() -> str | None:
    """FOREMAN_TEST_RABBITMQ_URL, else the machine's RabbitMQ on 127.0.0.1:5672, else None
    (the ``rabbitmq`` fixture then starts an ``OwnRabbitMQ`` if it can)."""
    if url := os.environ.get("FOREMAN_TEST_RABBITMQ_URL"):
        return url
    return LOCAL_RABBITMQ if _port_open("127.0.0.1", 5672) else None


def _wait_for_port(port: int, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while not _port_open("127.0.0.1", port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start on port {port}")
        time.sleep(0.05)


class MotoServer:
    """moto's SQS-compatible HTTP server (``moto_server`` of ``moto[server]``) on a free port;
    everything it holds lives in its memory, so a restart loses every queue and message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        # The tests purge a queue whenever they empty the database; AWS (and moto by default)
        # refuse a second purge of a queue within 60 s.
        env = {**os.environ, "MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR": "false"}
        self.process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, "moto_server", self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class OwnRabbitMQ:
    """A RabbitMQ node of its own (name, ports and data folder), for tests that restart the
    broker; the machine's stays untouched. Needs the ``rabbitmq-server`` package's scripts."""

    SCRIPTS = Path("/usr/lib/rabbitmq/bin")

    @classmethod
    def installed(cls) -> bool:
        """Whether the rabbitmq-server package's scripts are here."""
        return (cls.SCRIPTS / "rabbitmq-server").exists()

    def __init__(self) -> None:
        self.port = free_port()
        self.node = f"foreman{self.port}@localhost"
        self.dir = tempfile.mkdtemp(prefix="foreman-rabbitmq-")
        os.chmod(self.dir, 0o777)  # the node runs as the rabbitmq user

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _run(self, script: str, *args: str) -> None:
        env = {
            "HOME": "/var/lib/rabbitmq",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(
                self.port + 10000 if self.port < 55000 else self.port - 10000
            ),
            "RABBITMQ_MNESIA_BASE": f"{self.dir}/mnesia",
            "RABBITMQ_LOG_BASE": f"{self.dir}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{self.dir}/plugins",
            "RABBITMQ_PID_FILE": f"{self.dir}/pid",
            "RABBITMQ_CONFIG_FILE": f"{self.dir}/none",
        }
        command = " ".join(
            [f"{k}={v}" for k, v in env.items()] + [str(self.SCRIPTS / script), *args]
        )
        as_rabbitmq = ["su", "rabbitmq", "-s", "/bin/sh", "-c", f"cd {self.dir} && {command}"]
        subprocess.run(
            as_rabbitmq if os.geteuid() == 0 else ["/bin/sh", "-c", command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> OwnRabbitMQ:
        self._run("rabbitmq-server", "-detached")
        _wait_for_port(self.port, "rabbitmq-server")
        return self

    def stop(self) -> None:
        if _port_open("127.0.0.1", self.port):
            self._run("rabbitmqctl", "-n", self.node, "stop")
        deadline = time.monotonic() + 30
        while _port_open("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
