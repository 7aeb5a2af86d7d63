"""`kill -9` of one of two server replicas during load (issue 5, faults).

Two `foreman server` processes (replicas A and B) share this package's PostgreSQL. Four API
clients spread their load over both and fail over to the other replica when theirs stops
answering; A is killed with SIGKILL in the middle. Meanwhile both replicas run the sweeper every
50 ms on leases that a vanished worker left behind: some expire while both replicas sweep, the
rest after A is dead. Proven: every acknowledged write survives, B keeps serving (every request
it got was answered 2xx), and each expired lease was swept exactly once (retryCount +1, one
LeaseExpired error, the run's counters exact, and the sweep counts logged by the two replicas
add up to the number of leases, not more).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from foreman import AsyncClient, Run, Task, TaskSpec
from tests.conftest import KEY_A
from tests.faults import load
from tests.faults.report import FaultReport
from tests.integration.live_server import ServerProcess, server_env

pytestmark = pytest.mark.timeout(120)

CLIENTS = 4
LOAD_S = 8.0
KILL_AFTER_S = 2.5
EARLY, LATE, EXHAUSTED = 30, 30, 10
EARLY_LEASE_S, LATE_LEASE_S = 1.0, 5.0  # expire before and after the kill
_SWEEP_LINE = re.compile(r"sweep: (\d+) lease\(s\) expired and retried, (\d+) failed")


def _replica(database_url: str, cwd: Path) -> ServerProcess:
    env = server_env(
        FOREMAN_DATABASE_URL=database_url,
        FOREMAN_AUTO_MIGRATE="false",
        FOREMAN_QUEUE_BACKEND="postgres",
        FOREMAN_DB_POOL_MIN="1",
        FOREMAN_DB_POOL_MAX="6",
        FOREMAN_SWEEP_INTERVAL_S="0.05",  # both replicas try the sweep lock 20 times a second
        FOREMAN_LOG_LEVEL="INFO",  # the sweeper's counts are INFO lines
    )
    return ServerProcess(cwd, env=env)


def _swept(log: str) -> tuple[int, int]:
    """(retried, failed) leases that a replica's sweeper reported."""
    counts = [tuple(map(int, m.groups())) for m in _SWEEP_LINE.finditer(log)]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


async def _abandoned_leases(client: AsyncClient) -> str:
    """A run whose tasks are claimed by a worker that then vanishes; its id."""
    run = await client.create_run({"fault": "abandoned leases"})
    specs = [TaskSpec(run.id, "early", i, max_retries=2) for i in range(EARLY)]
    specs += [TaskSpec(run.id, "late", i, max_retries=2) for i in range(LATE)]
    specs += [TaskSpec(run.id, "exhausted", i, max_retries=0) for i in range(EXHAUSTED)]
    await client.enqueue_tasks(specs)
    for types, count, lease_s in (
        (["early", "exhausted"], EARLY + EXHAUSTED, EARLY_LEASE_S),
        (["late"], LATE, LATE_LEASE_S),
    ):
        claimed = await client.claim_tasks(
            worker_id="vanished", types=types, limit=count, lease_s=lease_s
        )
        assert len(claimed) == count
    return run.id


async def test_kill_9_of_one_replica_loses_nothing_and_sweeps_once(
    own_database: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    db_url = own_database  # no other server's sweeper works on it
    replica_a, replica_b = _replica(db_url, tmp_path), _replica(db_url, tmp_path)
    try:
        await asyncio.gather(asyncio.to_thread(replica_a.start), asyncio.to_thread(replica_b.start))
        async with AsyncClient(replica_a.url, KEY_A, retries=0) as client:
            run_id = await _abandoned_leases(client)

        ledger = load.Ledger()
        driving = asyncio.create_task(
            load.drive([replica_a.url, replica_b.url], ledger, clients=CLIENTS, duration_s=LOAD_S)
        )
        await asyncio.sleep(KILL_AFTER_S)
        replica_a.send(signal.SIGKILL)
        killed_at = time.monotonic()
        assert replica_a.wait(10) == -signal.SIGKILL
        await driving

        async with AsyncClient(replica_b.url, KEY_A) as client:
            await _until_swept(client, run_id)
            tasks = await client.list_tasks(run_id=run_id, limit=100)
            run = await client.get_run(run_id)
        check = await load.check_writes(ledger, db_url)
        b_alive = replica_b.exit_code() is None
        logs = {"a": replica_a.log(), "b": replica_b.log()}
        server_errors = load.error_lines(logs["a"]) + load.error_lines(logs["b"])
    finally:
        replica_a.kill()
        replica_b.kill()

    swept = {name: _swept(log) for name, log in logs.items()}
    to_b_after = ledger.statuses(since=killed_at, endpoint=replica_b.url)
    failed_over = [i for i in range(CLIENTS) if i % 2 == 0]  # the clients that preferred A
    figures = ledger.figures()
    fault_report.add(
        "server_kill_9",
        {
            "fault": f"kill -9 of replica A of 2 after {KILL_AFTER_S:g} s of load from "
            f"{CLIENTS} clients spread over both (failover to B); both sweeping every 50 ms",
            **figures,
            **check.figures(),
            "recovery_s": max(
                ledger.first_ack_after(killed_at, client=i) or float("inf") for i in failed_over
            ),
            "survivor_requests_after_kill": sum(to_b_after.values()),
            "survivor_errors_after_kill": sum(
                n for status, n in to_b_after.items() if not status.startswith("2")
            ),
            "leases_expired": EARLY + LATE + EXHAUSTED,
            "swept_by_replica": {
                name: {"retried": r, "failed": f} for name, (r, f) in swept.items()
            },
        },
    )
    assert check.lost == [], check.lost
    assert set(figures["statuses"]) <= {"200", "201", "transport"}, (figures, server_errors)
    # A connection error only for a request that was in flight to A, once per client of A.
    transport = Counter(o.client for o in ledger.outcomes if o.status == "transport")
    assert all(o.endpoint == replica_a.url for o in ledger.outcomes if o.status == "transport")
    assert all(n == 1 for n in transport.values()), transport
    assert b_alive
    assert sum(to_b_after.values()) > 0
    assert set(to_b_after) <= {"200", "201"}, to_b_after
    _assert_swept_once(tasks.data, run)
    retried = sum(r for r, _ in swept.values())
    failed = sum(f for _, f in swept.values())
    assert (retried, failed) == (EARLY + LATE, EXHAUSTED), swept
    assert swept["b"][0] >= LATE, "B swept the leases that expired after A died"


async def _until_swept(client: AsyncClient, run_id: str, *, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while (await client.list_tasks(run_id=run_id, status="running")).pagination.total:
        assert time.monotonic() < deadline, "expired leases were not swept"
        await asyncio.sleep(0.2)


def _assert_swept_once(tasks: list[Task], run: Run) -> None:
    assert len(tasks) == EARLY + LATE + EXHAUSTED
    for task in tasks:
        assert task.attempt == 1, task
        if task.type == "exhausted":
            assert (task.status, task.retry_count) == ("failed", 0), task
            assert "attempts exhausted" in task.error_data["message"]
        else:
            assert (task.status, task.retry_count) == ("retrying", 1), task
            assert task.error_data == {
                "message": "Lease expired on attempt 1; retrying",
                "type": "LeaseExpired",
            }
        assert task.error_data["type"] == "LeaseExpired"
    counters = (run.total_tasks, run.completed_tasks, run.failed_tasks, run.cancelled_tasks)
    assert counters == (EARLY + LATE + EXHAUSTED, 0, EXHAUSTED, 0), counters
