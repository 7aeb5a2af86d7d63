"""Operational behaviour of the real server process (issue 2, item 8).

Database outages use a PostgreSQL of the test's own (pgserver's binaries, data in a temp folder)
that the test stops, freezes and starts again; the machine's shared server is never touched.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from foreman.store.migrate import apply_migrations_async
from tests.integration.live_server import ServerProcess, server_env

KEY = {"x-api-key": "test-api-key"}
ORIGIN = "https://app.example.com"
BODY_LIMIT = 4096
OUTAGE_ANSWER_S = 5.0  # "503 quickly, never hang"


class OwnPostgres:
    """A PostgreSQL cluster for one test, which it may stop, freeze and start at will."""

    def __init__(self, root: Path) -> None:
        # The [embedded] extra; typed loosely, pg_ctl is made at import time.
        self._pgserver: Any = importlib.import_module("pgserver")
        self.pgdata = root / "pgdata"
        # cleanup_mode=None: this class decides when the server stops, not pgserver's atexit.
        server = self._pgserver.get_server(self.pgdata, cleanup_mode=None)
        self.user = server.system_user
        self.socket_dir = server.get_postmaster_info().socket_dir
        self.url = server.get_uri("postgres")

    def _pg_ctl(self, *args: str) -> None:
        self._pgserver.pg_ctl(list(args), pgdata=self.pgdata, user=self.user, timeout=60)

    def postmaster(self) -> psutil.Process | None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        try:
            return psutil.Process(int(pid_file.read_text().splitlines()[0]))
        except psutil.NoSuchProcess:
            return None

    def processes(self) -> list[psutil.Process]:
        postmaster = self.postmaster()
        return [] if postmaster is None else [postmaster, *postmaster.children()]

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def close(self) -> None:
        for process in self.processes():
            process.resume()  # in case a test froze it
        if self.postmaster() is not None:
            self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)


@pytest.fixture
async def own_postgres(pg_work_dir: Path) -> AsyncIterator[OwnPostgres]:
    postgres = await asyncio.to_thread(OwnPostgres, pg_work_dir)
    try:
        await apply_migrations_async(postgres.url)
        yield postgres
    finally:
        await asyncio.to_thread(postgres.close)


@pytest.fixture(scope="module")
def configured_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server with CORS and a small body limit, logging plain lines at INFO."""
    env = server_env(
        FOREMAN_DATABASE_URL=database_url,
        CORS_ORIGIN=ORIGIN,  # the unprefixed name SPEC section 9 uses
        FOREMAN_MAX_BODY_BYTES=str(BODY_LIMIT),
        LOG_LEVEL="INFO",
    )
    server = ServerProcess(tmp_path_factory.mktemp("configured"), env=env)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _log_lines_with(server: ServerProcess, needle: str, *, wait_s: float = 3.0) -> list[str]:
    # The line is written as the response finishes: give it a moment to reach the file.
    deadline = time.monotonic() + wait_s
    while True:
        lines = [line for line in server.log().splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


async def _timed(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    started = time.monotonic()
    response = await http.request(method, path, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < OUTAGE_ANSWER_S, f"{method} {path} took {elapsed:.1f}s"
    return response


async def _wait_healthy(http: httpx.AsyncClient, *, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await http.get("/health")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def _assert_unavailable(http: httpx.AsyncClient, run_id: str) -> None:
    health = await _timed(http, "GET", "/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["services"]["database"] == "disconnected"
    for method, path, body in (
        ("GET", f"/api/v1/runs/{run_id}", None),
        ("POST", "/api/v1/runs", {"inputData": {"during": "outage"}}),
        ("GET", "/api/v1/tasks", None),
    ):
        response = await _timed(http, method, path, json=body)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "unavailable"
        assert "asyncpg" not in response.text  # no driver text leaks


async def test_health_and_requests_follow_a_database_outage(own_postgres, tmp_path):
    server = ServerProcess(tmp_path, env=server_env(FOREMAN_DATABASE_URL=own_postgres.url))
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url, headers=KEY, timeout=30) as http:
            assert (await http.get("/health")).status_code == 200
            created = await http.post("/api/v1/runs", json={"inputData": {"n": 1}})
            assert created.status_code == 201
            run_id = created.json()["id"]

            await asyncio.to_thread(own_postgres.stop)
            for _ in range(3):  # and it stays that way, each answer quick
                await _assert_unavailable(http, run_id)

            await asyncio.to_thread(own_postgres.start)
            # Back by itself: no restart of the server.
            assert (await _wait_healthy(http, timeout_s=15)).status_code == 200
            fetched = await http.get(f"/api/v1/runs/{run_id}")
            assert fetched.status_code == 200
            assert fetched.json() == created.json()
            assert (await http.post("/api/v1/runs", json={"inputData": 2})).status_code == 201
        assert server.exit_code() is None  # the same process throughout
    finally:
        server.kill()


async def test_a_frozen_database_gets_503_within_the_command_timeout(own_postgres, tmp_path):
    # Worse than a stopped server: connections stay open and nothing answers.
    env = server_env(FOREMAN_DATABASE_URL=own_postgres.url, FOREMAN_DB_COMMAND_TIMEOUT_S="3")
    server = ServerProcess(tmp_path, env=env)
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url, headers=KEY, timeout=30) as http:
            created = await http.post("/api/v1/runs", json={"inputData": {"n": 1}})
            assert created.status_code == 201
            run_id = created.json()["id"]

            frozen = own_postgres.processes()
            for process in frozen:
                process.suspend()
            try:
                # /health has its own 2 s bound, whatever the command timeout.
                started = time.monotonic()
                assert (await http.get("/health")).status_code == 503
                assert time.monotonic() - started < 3.0
                await _assert_unavailable(http, run_id)  # the rest: within the command timeout
            finally:
                for process in frozen:
                    process.resume()

            assert (await _wait_healthy(http, timeout_s=15)).status_code == 200
            assert (await http.get(f"/api/v1/runs/{run_id}")).status_code == 200
    finally:
        server.kill()


async def test_sigterm_finishes_the_request_in_flight(database_url, tmp_path):
    server = ServerProcess(tmp_path, env=server_env(FOREMAN_DATABASE_URL=database_url))
    locker = await asyncpg.connect(database_url)
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url, headers=KEY, timeout=60) as http:
            created = await http.post("/api/v1/runs", json={"inputData": {"n": 1}})
            run_id = created.json()["id"]

            # Hold the run's row so that the PATCH below is in the middle of its work.
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM run WHERE id = $1::uuid FOR UPDATE", run_id)
            update = asyncio.create_task(
                http.patch(f"/api/v1/runs/{run_id}", json={"status": "completed"})
            )
            for _ in range(100):
                waiting = await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the PATCH never reached the database"

            server.send(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert server.exit_code() is None  # draining, not gone
            assert not update.done()
            async with httpx.AsyncClient() as newcomer:
                with pytest.raises(httpx.ConnectError):  # no new connections while draining
                    await newcomer.get(f"{server.url}/health")

            await lock.rollback()
            response = await update
            assert response.status_code == 200
            assert response.json()["status"] == "completed"
        assert await asyncio.to_thread(server.wait, 15) == 0
    finally:
        await locker.close()
        server.kill()


def test_one_log_line_per_request_with_its_id(configured_server):
    request_id = f"ops-{uuid.uuid4().hex}"
    missing = str(uuid.uuid4())
    response = httpx.get(
        f"{configured_server.url}/api/v1/runs/{missing}",
        headers={**KEY, "x-request-id": request_id},
    )
    assert response.status_code == 404
    assert response.headers["x-request-id"] == request_id  # echoed

    lines = _log_lines_with(configured_server, request_id)
    assert len(lines) == 1, lines
    # Other key=value fields (the organisation, ...) may sit between the duration and the id.
    assert re.search(
        rf"GET /api/v1/runs/{missing} 404 \d+\.\dms\b.* request_id={request_id}$", lines[0]
    ), lines[0]


def test_a_request_without_an_id_gets_one(configured_server):
    response = httpx.post(
        f"{configured_server.url}/api/v1/runs", headers=KEY, json={"inputData": {"x": 1}}
    )
    assert response.status_code == 201
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    lines = _log_lines_with(configured_server, generated)
    assert len(lines) == 1
    assert "POST /api/v1/runs 201" in lines[0]


def test_a_body_over_the_limit_gets_413(configured_server):
    url = f"{configured_server.url}/api/v1/runs"
    small = {"inputData": "x" * (BODY_LIMIT - 100)}
    assert httpx.post(url, headers=KEY, json=small).status_code == 201

    big = json.dumps({"inputData": "x" * BODY_LIMIT}).encode()
    declared = httpx.post(url, headers={**KEY, "content-type": "application/json"}, content=big)
    assert declared.status_code == 413
    assert declared.json() == {
        "error": f"Request body too large (limit {BODY_LIMIT} bytes)",
        "code": "payload_too_large",
    }

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    streamed = httpx.post(
        url, headers={**KEY, "content-type": "application/json"}, content=chunks()
    )
    assert streamed.status_code == 413
    assert streamed.json()["code"] == "payload_too_large"


def test_cors_allows_the_configured_origin_only(configured_server):
    url = f"{configured_server.url}/api/v1/runs"
    preflight = httpx.options(
        url,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]

    simple = httpx.get(url, headers={**KEY, "Origin": ORIGIN})
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"]

    other = httpx.get(url, headers={**KEY, "Origin": "https://elsewhere.example"})
    assert other.headers.get("access-control-allow-origin") not in (
        "*",
        "https://elsewhere.example",
    )


async def test_json_logs_and_no_cors_by_default(database_url, tmp_path):
    env = server_env(FOREMAN_DATABASE_URL=database_url, FOREMAN_LOG_JSON="true")
    server = ServerProcess(tmp_path, env=env)
    try:
        await asyncio.to_thread(server.start)
        request_id = f"json-{uuid.uuid4().hex}"
        response = await asyncio.to_thread(
            httpx.get,
            f"{server.url}/api/v1/runs",
            headers={**KEY, "x-request-id": request_id, "Origin": ORIGIN},
        )
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers  # CORS_ORIGIN unset
        lines = await asyncio.to_thread(_log_lines_with, server, request_id)
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert record["request_id"] == request_id
        assert record["logger"] == "foreman.access"
        assert record["level"] == "info"
        assert re.match(r"GET /api/v1/runs 200 \d+\.\dms\b", record["message"])
        # Every line is JSON, start-up and shut-down included.
        assert await asyncio.to_thread(server.stop) == 0
        for line in server.log().splitlines():
            if line.strip():
                json.loads(line)
    finally:
        server.kill()


async def test_log_level_warning_silences_request_lines(database_url, tmp_path):
    env = server_env(FOREMAN_DATABASE_URL=database_url, LOG_LEVEL="warning")
    server = ServerProcess(tmp_path, env=env)
    try:
        await asyncio.to_thread(server.start)
        request_id = f"quiet-{uuid.uuid4().hex}"
        response = await asyncio.to_thread(
            httpx.get, f"{server.url}/health", headers={"x-request-id": request_id}
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == request_id  # still echoed
        assert await asyncio.to_thread(server.stop) == 0
        assert request_id not in server.log()
        assert " INFO " not in server.log()
    finally:
        server.kill()
