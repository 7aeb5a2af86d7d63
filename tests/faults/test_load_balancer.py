"""Three replicas behind HAProxy under load: one killed, one stopped (issue 16, item 2).

Three `foreman server` processes share this package's PostgreSQL behind an HAProxy (the OS
package) that checks `GET /health` every 200 ms, as docs/deployment.md configures it. SDK clients
(AsyncClient, default retries) send their load to HAProxy only: idempotent task creations (with
an idempotency key, which the SDK retries) and reads, and nine long polls (`wait_for_task`) held
open on the three replicas. Replica 0 gets SIGKILL after 2.5 s, replica 1 SIGTERM after 4.5 s;
replica 2 serves alone to the end. Meanwhile every replica sweeps every 50 ms the leases a
vanished worker left. Proven: no SDK call failed (HAProxy answered 502 for the long polls of the
killed replica, and the SDK asked again; HAProxy's re-dispatch and health checks moved the rest),
every long poll ended with its task, every acknowledged task is in the database once, the stopped
replica exited 0, and each expired lease was swept exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from foreman import AsyncClient, Task, errors
from tests.conftest import KEY_A
from tests.faults.report import FaultReport
from tests.faults.test_server_kill import (
    EARLY,
    EXHAUSTED,
    LATE,
    _abandoned_leases,
    _assert_swept_once,
    _replica,
    _swept,
    _until_swept,
)
from tests.integration.live_server import ServerProcess
from tests.services import _port_open, free_port, os_binary

pytestmark = pytest.mark.timeout(180)

CLIENTS = 6
LOAD_S = 9.0
KILL_AFTER_S = 2.5
STOP_AFTER_S = 4.5
WATCHED = 9  # long polls (GET /tasks/:id/wait) open through the faults


def haproxy_config(port: int, backends: list[int]) -> str:
    """The HAProxy configuration of docs/deployment.md, on loopback ports."""
    servers = "\n".join(
        f"    server foreman{n} 127.0.0.1:{p} check" for n, p in enumerate(backends)
    )
    return f"""global
    maxconn 2000
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch

frontend api
    bind 127.0.0.1:{port}
    default_backend foreman

backend foreman
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
"""


@pytest.fixture
def haproxy_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="foreman-haproxy-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_haproxy(folder: Path, backends: list[int]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = folder / "haproxy.cfg"
    config.write_text(haproxy_config(port, backends))
    log = (folder / "haproxy.log").open("wb")
    process = subprocess.Popen(
        [os_binary("haproxy", "haproxy"), "-db", "-f", str(config)], stdout=log, stderr=log
    )
    deadline = time.monotonic() + 10
    while not _port_open("127.0.0.1", port):
        assert process.poll() is None, (folder / "haproxy.log").read_text()
        assert time.monotonic() < deadline, "haproxy did not listen"
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port}"


async def _watched_tasks(client: AsyncClient, run_id: str) -> list[Task]:
    """WATCHED tasks claimed under a long lease, to be completed once the faults are over."""
    for i in range(WATCHED):
        await client.enqueue_task(run_id, type="watched", input_data=i)
    claimed = await client.claim_tasks(
        worker_id="watcher", types=["watched"], limit=WATCHED, lease_s=120
    )
    assert len(claimed) == WATCHED
    return claimed


async def _watch(url: str, task_id: str) -> Task:
    """The task once it ends, long-polling through the load balancer (SDK retries on)."""
    async with AsyncClient(url, KEY_A) as client:
        return await client.wait_for_task(task_id, timeout=60)


class Load:
    """SDK clients through the load balancer: acknowledged task ids, and every SDK failure."""

    def __init__(self, url: str, run_id: str) -> None:
        self.url = url
        self.run_id = run_id
        self.acked: dict[str, str] = {}  # idempotency key -> task id
        self.failures: list[BaseException] = []
        self.calls = 0
        self.acked_at: list[float] = []  # time.monotonic() of each acknowledged creation

    async def client(self, index: int, stop_at: float) -> None:
        async with AsyncClient(self.url, KEY_A) as client:
            for n in itertools.count():
                if time.monotonic() >= stop_at:
                    return
                key = f"lb-{index}-{n}"
                try:
                    task = await client.create_task(
                        self.run_id, type="noop", input_data=n, idempotency_key=key
                    )
                    self.acked[key] = task.id
                    self.acked_at.append(time.monotonic())
                    assert (await client.get_task(task.id)).id == task.id
                except errors.ForemanError as exc:
                    self.failures.append(exc)
                self.calls += 2
                await asyncio.sleep(0.01)


async def test_replicas_behind_haproxy_ride_over_a_kill_and_a_stop(
    own_database: str, tmp_path: Path, haproxy_dir: Path, fault_report: FaultReport
) -> None:
    db_url = own_database
    replicas: list[ServerProcess] = [_replica(db_url, tmp_path) for _ in range(3)]
    haproxy = None
    try:
        await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
        haproxy, url = start_haproxy(haproxy_dir, [r.port for r in replicas])
        async with AsyncClient(url, KEY_A) as client:
            run_id = await _abandoned_leases(client)
            load_run = (await client.create_run({"load": "haproxy"})).id
            watched = await _watched_tasks(client, load_run)

        # Long polls held open on every replica while the faults hit, sent before the load so
        # that round robin gives each replica the same share: HAProxy answers 502 for those on
        # the killed one, and the SDK asks again elsewhere.
        watchers = asyncio.gather(*(_watch(url, task.id) for task in watched))
        await asyncio.sleep(0.5)
        load = Load(url, load_run)
        began = time.monotonic()
        clients = asyncio.gather(*(load.client(i, began + LOAD_S) for i in range(CLIENTS)))
        await asyncio.sleep(KILL_AFTER_S)
        replicas[0].send(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.sleep(STOP_AFTER_S - KILL_AFTER_S)
        stopped = asyncio.to_thread(replicas[1].stop, signal.SIGTERM)
        await clients
        async with AsyncClient(url, KEY_A) as client:
            for task in watched:
                assert task.lease_token is not None
                await client.complete_task(task.id, lease_token=task.lease_token, output_data=1)
        waited = await watchers
        assert replicas[0].wait(10) == -signal.SIGKILL
        stop_code = await stopped

        async with AsyncClient(url, KEY_A) as client:
            await _until_swept(client, run_id)
            tasks = await client.list_tasks(run_id=run_id, limit=100)
            run = await client.get_run(run_id)
        conn = await asyncpg.connect(db_url)
        try:
            found = await conn.fetch(
                "SELECT id::text, idempotency_key FROM task WHERE run_id = $1 AND type = 'noop'",
                load_run,
            )
        finally:
            await conn.close()
        survivor_alive = replicas[2].exit_code() is None
        balancer_log = (haproxy_dir / "haproxy.log").read_text(errors="replace")
        logs = [r.log() for r in replicas]
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(10)
        for replica in replicas:
            replica.kill()

    in_db = {r["idempotency_key"]: r["id"] for r in found}
    # Answers HAProxy gave itself for a replica that died under a request (the SDK retried them).
    haproxy_5xx = sum(
        f" {code} " in line for line in balancer_log.splitlines() for code in ("502", "503", "504")
    )
    swept = [_swept(log) for log in logs]
    fault_report.add(
        "haproxy_kill_and_stop",
        {
            "fault": f"3 replicas behind HAProxy; SIGKILL of one after {KILL_AFTER_S:g} s, "
            f"SIGTERM of another after {STOP_AFTER_S:g} s; {CLIENTS} SDK clients",
            "requests_sent": load.calls,
            "acknowledged": load.calls - len(load.failures),
            "lost": len([k for k in load.acked if k not in in_db]),
            # the longest pause in acknowledged creations from the kill on
            "recovery_s": round(
                max(
                    b - a
                    for a, b in itertools.pairwise(
                        [killed_at, *(t for t in sorted(load.acked_at) if t > killed_at)]
                    )
                ),
                3,
            ),
            "sdk_failures": len(load.failures),
            "acknowledged_tasks": len(load.acked),
            "tasks_in_database": len(in_db),
            "haproxy_5xx": haproxy_5xx,
            "long_polls_completed": len(waited),
            "swept_by_replica": [{"retried": r, "failed": f} for r, f in swept],
        },
    )
    assert load.failures == []
    assert [t.status for t in waited] == ["completed"] * WATCHED
    assert haproxy_5xx >= 1  # a long poll died with the killed replica: the SDK rode over it
    assert len(load.acked) > 100
    # Every acknowledged task is there, once (a retried creation replayed the first one).
    assert {k: in_db.get(k) for k in load.acked} == load.acked
    assert len(found) == len(load.acked)  # and nothing else: no creation twice
    assert stop_code == 0, logs[1]
    assert survivor_alive
    _assert_swept_once(tasks.data, run)
    assert (sum(r for r, _ in swept), sum(f for _, f in swept)) == (EARLY + LATE, EXHAUSTED)
