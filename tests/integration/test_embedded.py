"""The embedded default: `foreman server` with no database configured (issue 2, item 6).

These run the real console script with no database variables at all, so the server starts the
pgserver PostgreSQL itself; they check that data survives a restart and that every way of
stopping the server also stops that PostgreSQL.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil

from foreman.store import embedded
from tests.integration.live_server import ServerProcess, server_env

KEY = {"x-api-key": "test-api-key"}


def _postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop_leftover(pgdata: Path) -> None:
    # Teardown after a failure: never leave a PostgreSQL running behind the tests.
    pid = _postmaster_pid(pgdata)
    if pid is not None and _running(pid):
        psutil.Process(pid).send_signal(signal.SIGINT)  # "fast" shutdown


def _create_run_task_and_data(url: str) -> tuple[dict[str, Any], ...]:
    with httpx.Client(base_url=url, headers=KEY, timeout=10) as http:
        run = http.post("/api/v1/runs", json={"inputData": {"order": 42}, "metadata": {"a": 1}})
        assert run.status_code == 201, run.text
        task = http.post(
            "/api/v1/tasks",
            json={"runId": run.json()["id"], "type": "resize", "inputData": ["x", 1]},
        )
        assert task.status_code == 201, task.text
        data = http.post(
            f"/api/v1/runs/{run.json()['id']}/data",
            json={"taskId": task.json()["id"], "key": "thumb", "value": "s3://b/k", "tags": ["t"]},
        )
        assert data.status_code == 201, data.text
        return run.json(), task.json(), data.json()


def test_embedded_default_starts_keeps_data_and_stops_with_the_server(pg_work_dir):
    # No FOREMAN_DATA_DIR either: the documented default ./.foreman/pgdata, under the cwd.
    pgdata = pg_work_dir / ".foreman" / "pgdata"
    first = ServerProcess(pg_work_dir, env=server_env())
    second = ServerProcess(pg_work_dir, env=server_env())
    try:
        first.start()
        health = httpx.get(f"{first.url}/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["services"]["database"] == "connected"
        assert "embedded PostgreSQL" in first.log()
        assert str(pgdata) in first.log()  # the log says where the data lives
        run, task, data = _create_run_task_and_data(first.url)
        postgres_pid = _postmaster_pid(pgdata)
        assert postgres_pid is not None
        assert _running(postgres_pid)

        assert first.stop(signal.SIGTERM) == 0
        assert "embedded PostgreSQL stopped" in first.log()
        assert _postmaster_pid(pgdata) is None
        assert not _running(postgres_pid)

        second.start()
        with httpx.Client(base_url=second.url, headers=KEY, timeout=10) as http:
            assert http.get(f"/api/v1/runs/{run['id']}").json() == {**run, "totalTasks": 1}
            assert http.get(f"/api/v1/tasks/{task['id']}").json() == task
            stored = http.get(f"/api/v1/runs/{run['id']}/data", params={"key": "thumb"})
            assert stored.status_code == 200
            assert stored.json()["data"] == [data]
        # The second start found the data: nothing was migrated again.
        assert "applied migrations" not in second.log()
        assert second.stop(signal.SIGTERM) == 0
        assert _postmaster_pid(pgdata) is None
    finally:
        first.kill()
        second.kill()
        _stop_leftover(pgdata)


def test_ctrl_c_stops_the_embedded_postgres(pg_work_dir):
    data_dir = pg_work_dir / "data"
    server = ServerProcess(pg_work_dir, env=server_env(FOREMAN_DATA_DIR=str(data_dir)))
    try:
        server.start()
        postgres_pid = _postmaster_pid(data_dir / "pgdata")
        assert postgres_pid is not None
        server.stop(signal.SIGINT)
        assert "Traceback" not in server.log()
        assert _postmaster_pid(data_dir / "pgdata") is None
        assert not _running(postgres_pid)
    finally:
        server.kill()
        _stop_leftover(data_dir / "pgdata")


def test_after_a_crash_the_next_server_adopts_and_then_stops_the_postgres(pg_work_dir):
    data_dir = pg_work_dir / "data"
    env = server_env(FOREMAN_DATA_DIR=str(data_dir))
    crashed = ServerProcess(pg_work_dir, env=env)
    restarted = ServerProcess(pg_work_dir, env=env)
    try:
        crashed.start()
        run, _, _ = _create_run_task_and_data(crashed.url)
        crashed.stop(signal.SIGKILL)  # no clean-up at all: the PostgreSQL is left running
        orphan = _postmaster_pid(data_dir / "pgdata")
        assert orphan is not None
        assert _running(orphan)

        restarted.start()
        fetched = httpx.get(f"{restarted.url}/api/v1/runs/{run['id']}", headers=KEY, timeout=10)
        assert fetched.status_code == 200
        assert restarted.stop(signal.SIGTERM) == 0
        # The killed server must not count as a user forever: the last real one stops it.
        assert not _running(orphan)
        assert _postmaster_pid(data_dir / "pgdata") is None
    finally:
        crashed.kill()
        restarted.kill()
        _stop_leftover(data_dir / "pgdata")


def test_pgserver_internals_that_embedded_relies_on(pg_work_dir):
    """store/embedded.py edits pgserver's list of user processes under pgserver's own lock.

    When this fails, pgserver changed under that adapter: check forget_dead_users against the new
    pgserver (and its public API) before moving the bound pgserver<0.2.
    """
    import pgserver  # the [embedded] extra; the suite installs it

    major, minor = (int(part) for part in importlib.metadata.version("pgserver").split(".")[:2])
    assert (major, minor) < (0, 2), "pgserver moved past the range store/embedded.py was checked on"
    lock = pgserver.PostgresServer._lock
    assert callable(lock.acquire)
    assert callable(lock.release)
    pgdata = pg_work_dir / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        handles = pgdata / embedded.HANDLES_FILE
        assert json.loads(handles.read_text()) == [os.getpid()]  # this process is a user
        gone = subprocess.Popen(["true"])  # a process that exited: a user killed without cleanup
        gone.wait()
        handles.write_text(json.dumps([os.getpid(), gone.pid]))
        embedded.forget_dead_users(pgserver, pgdata)
        assert json.loads(handles.read_text()) == [os.getpid()]
    finally:
        server.cleanup()
    # This process was the last user left on the list: pgserver stopped the server.
    assert not (pgdata / "postmaster.pid").exists()
