"""The `foreman` command: ports, database settings, auto-migration and worker processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import psutil
import pytest

from tests.integration.live_server import ServerProcess, run_foreman, server_env
from tests.services import free_port, scratch_database

KEY = {"x-api-key": "test-api-key"}


@pytest.fixture
async def empty_db(admin_url: str) -> AsyncIterator[str]:
    async with scratch_database(admin_url, "foreman_cli", migrate=False) as url:
        yield url


def _db_parts(url: str) -> dict[str, str]:
    """FOREMAN_DB_* variables for url (a TCP host, or a socket directory given as ?host=)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or query["host"][0]
    env = {
        "FOREMAN_DB_HOST": host,
        "FOREMAN_DB_PORT": str(parts.port or query.get("port", ["5432"])[0]),
        "FOREMAN_DB_NAME": parts.path.lstrip("/"),
        "FOREMAN_DB_USER": parts.username or "postgres",
    }
    if parts.password:
        env["FOREMAN_DB_PASSWORD"] = parts.password
    return env


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.TransportError:
        return False
    return True


def test_help_lists_the_commands(tmp_path):
    result = run_foreman(["--help"], env=server_env(), cwd=tmp_path)
    assert result.returncode == 0
    assert "server" in result.stdout
    assert "migrate" in result.stdout
    server_help = run_foreman(["server", "--help"], env=server_env(), cwd=tmp_path)
    assert server_help.returncode == 0
    assert "--port" in server_help.stdout
    assert "--workers" in server_help.stdout
    assert "runs" in result.stdout
    assert "tasks" in result.stdout
    worker_help = run_foreman(["worker", "--help"], env=server_env(), cwd=tmp_path)
    assert "--metrics-port" in worker_help.stdout
    tasks_help = run_foreman(["tasks", "--help"], env=server_env(), cwd=tmp_path)
    assert all(command in tasks_help.stdout for command in ("ls", "show", "retry"))


async def test_port_comes_from_foreman_server_port_then_port_then_the_flag(database_url, tmp_path):
    url_env = {"FOREMAN_DATABASE_URL": database_url}
    plain, preferred, flag = free_port(), free_port(), free_port()

    # PORT alone (the platform convention) is used.
    server = ServerProcess(tmp_path, env=server_env(**url_env, PORT=str(plain)), port=plain)
    server.env.pop("FOREMAN_SERVER_PORT")
    try:
        await asyncio.to_thread(server.start)
        assert f"serving on http://127.0.0.1:{plain}" in server.log()  # default host
    finally:
        server.kill()

    # FOREMAN_SERVER_PORT wins over PORT.
    server = ServerProcess(tmp_path, env=server_env(**url_env, PORT=str(plain)), port=preferred)
    try:
        await asyncio.to_thread(server.start)
        assert not _listening(plain)
    finally:
        server.kill()

    # --port wins over both.
    server = ServerProcess(
        tmp_path,
        env=server_env(**url_env, PORT=str(plain)),
        port=preferred,
        args=["--port", str(flag)],
    )
    server.port = flag  # where start() looks for it
    try:
        await asyncio.to_thread(server.start)
        assert not _listening(preferred)
        assert not _listening(plain)
    finally:
        server.kill()


async def test_database_from_foreman_db_parts(empty_db, tmp_path):
    env = server_env(**_db_parts(empty_db))
    migrated = await asyncio.to_thread(run_foreman, ["migrate"], env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "run" in await _tables(empty_db)

    server = ServerProcess(tmp_path, env=env)
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url, headers=KEY) as http:
            created = await http.post("/api/v1/runs", json={"inputData": 1})
            assert created.status_code == 201
    finally:
        server.kill()
    conn = await asyncpg.connect(empty_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM run") == 1  # it went to that database
    finally:
        await conn.close()


async def test_server_migrates_at_start_by_default(empty_db, tmp_path):
    server = ServerProcess(tmp_path, env=server_env(FOREMAN_DATABASE_URL=empty_db))
    try:
        await asyncio.to_thread(server.start)
        assert {"run", "task", "run_data"} <= await _tables(empty_db)
        assert "applied migrations 0001_initial" in server.log()
    finally:
        server.kill()


async def test_auto_migrate_false_leaves_the_schema_to_foreman_migrate(empty_db, tmp_path):
    env = server_env(FOREMAN_DATABASE_URL=empty_db, FOREMAN_AUTO_MIGRATE="false")
    server = ServerProcess(tmp_path, env=env)
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url, headers=KEY) as http:
            assert (await http.get("/health")).status_code == 200  # the database is reachable
            assert await _tables(empty_db) == set()  # and untouched

            migrated = await asyncio.to_thread(run_foreman, ["migrate"], env=env, cwd=tmp_path)
            assert migrated.returncode == 0, migrated.stderr
            # The running server uses the new schema without a restart.
            created = await http.post("/api/v1/runs", json={"inputData": {"a": 1}})
            assert created.status_code == 201, created.text
    finally:
        server.kill()


async def test_several_worker_processes_serve_and_all_stop_on_sigterm(database_url, tmp_path):
    server = ServerProcess(
        tmp_path, env=server_env(FOREMAN_DATABASE_URL=database_url), args=["--workers", "2"]
    )
    try:
        await asyncio.to_thread(server.start)
        children = psutil.Process(server.pid).children()
        assert len(children) >= 2
        async with httpx.AsyncClient(base_url=server.url, headers=KEY) as http:
            for _ in range(10):
                created = await http.post("/api/v1/runs", json={"inputData": "x"})
                assert created.status_code == 201
                fetched = await http.get(f"/api/v1/runs/{created.json()['id']}")
                assert fetched.json() == created.json()
        assert await asyncio.to_thread(server.stop, signal.SIGTERM) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        server.kill()
