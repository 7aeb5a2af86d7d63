"""The attempt history (task_attempt, issue 13 item 5) written by the queue statements themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from foreman import ids
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import tasks as tasks_store
from tests.conftest import ORG_A, ORG_B
from tests.integration.test_queue_store import LEASE_MS, claim, done, make_run, make_tasks, raw


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(
        db_url, min_size=1, max_size=4, command_timeout_s=10, connect_timeout_s=3
    )
    yield pool
    await pool.close()


@pytest.fixture
async def conn(pool) -> AsyncIterator[db.Connection]:
    async with db.org_connection(pool, ORG_A) as conn:
        yield conn


async def attempts(conn, task_id: str):
    found = await tasks_store.list_attempts(conn, org_id=ORG_A, task_id=task_id)
    assert found is not None
    return found


async def test_every_transition_keeps_its_attempt(conn, db_url: str):
    run_id = await make_run(conn)
    (task,) = await make_tasks(conn, run_id, 1, max_retries=3)
    t0 = ids.now_ms()
    assert await attempts(conn, task.id) == []

    # 1: claimed, failed (retryable) -> failed attempt with its error.
    (held,) = await claim(conn, now=t0)
    error = {"message": "boom", "type": "ValueError"}
    await queue_store.finish_tasks(
        conn, org_id=ORG_A, outcomes=[done(held, "failed", error_data=error)], now=t0 + 5
    )
    # 2: claimed after the backoff, its lease expires (the sweeper).
    (held,) = await claim(conn, now=t0 + 600_000)
    admin = await asyncpg.connect(db_url)
    try:
        expired = await queue_store.expire_leases(admin, now=t0 + 600_000 + LEASE_MS + 1, limit=10)
    finally:
        await admin.close()
    assert [str(t.id) for t in expired] == [task.id]
    # 3: claimed by id, released (graceful shutdown): the number is given back...
    by_id = await queue_store.claim_task(
        conn, org_id=ORG_A, task_id=task.id, worker_id="w2", lease_ms=LEASE_MS, now=t0 + 700_000
    )
    assert by_id.task is not None
    await queue_store.release_tasks(
        conn,
        org_id=ORG_A,
        leases=[queue_store.Lease(task.id, by_id.task.lease_token)],
        now=t0 + 700_010,
    )
    # ...and 3 again: claimed by id, lease expired, taken over by another claim (4), completed.
    again = await queue_store.claim_task(
        conn, org_id=ORG_A, task_id=task.id, worker_id="w3", lease_ms=1000, now=t0 + 800_000
    )
    taken = await queue_store.claim_task(
        conn, org_id=ORG_A, task_id=task.id, worker_id="w4", lease_ms=LEASE_MS, now=t0 + 802_000
    )
    assert again.task is not None
    assert taken.task is not None
    await queue_store.finish_tasks(
        conn, org_id=ORG_A, outcomes=[done(taken.task, output_data={"ok": 1})], now=t0 + 802_050
    )

    rows = await attempts(conn, task.id)
    assert [(a.attempt, a.worker_id, a.outcome) for a in rows] == [
        (1, "w1", "failed"),
        (2, "w1", "lease_expired"),
        (3, "w2", "released"),
        (3, "w3", "lease_expired"),
        (4, "w4", "completed"),
    ]
    assert raw(rows[0].error_data) == error
    assert raw(rows[1].error_data)["type"] == "LeaseExpired"
    assert raw(rows[3].error_data)["type"] == "LeaseExpired"
    assert (rows[0].started_at, rows[0].ended_at, rows[0].duration_ms) == (t0, t0 + 5, 5)
    assert (rows[2].ended_at, rows[2].duration_ms) == (t0 + 700_010, 10)
    assert (rows[4].duration_ms, rows[4].error_data) == (50, None)
    # Closed exactly once: no attempt is left running.
    assert [a for a in rows if a.outcome == "running"] == []


async def test_a_running_attempt_and_a_stale_token_change_nothing(conn):
    run_id = await make_run(conn)
    (task,) = await make_tasks(conn, run_id, 1)
    (held,) = await claim(conn)
    (running,) = await attempts(conn, task.id)
    assert (running.outcome, running.ended_at, running.duration_ms) == ("running", None, None)
    stale = queue_store.Outcome(task.id, "00000000-0000-0000-0000-000000000000", "completed")
    await queue_store.finish_tasks(conn, org_id=ORG_A, outcomes=[stale], now=ids.now_ms())
    assert [a.outcome for a in await attempts(conn, task.id)] == ["running"]
    await queue_store.finish_tasks(conn, org_id=ORG_A, outcomes=[done(held)], now=ids.now_ms())
    # A repeat of the same call (its answer was lost) does not close the attempt twice.
    await queue_store.finish_tasks(conn, org_id=ORG_A, outcomes=[done(held)], now=ids.now_ms())
    assert [a.outcome for a in await attempts(conn, task.id)] == ["completed"]


async def test_attempts_of_another_organisation_are_invisible(pool, conn):
    run_id = await make_run(conn)
    (task,) = await make_tasks(conn, run_id, 1)
    await claim(conn)
    async with db.org_connection(pool, ORG_B) as other:
        assert await tasks_store.list_attempts(other, org_id=ORG_B, task_id=task.id) is None
        # Row-level security: even a query without the org filter sees no row of ORG_A.
        assert await other.fetchval("SELECT count(*) FROM task_attempt") == 0
    assert await tasks_store.list_attempts(conn, org_id=ORG_A, task_id=ids.new_id()) is None
