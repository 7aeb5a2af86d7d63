"""The sweeper against real PostgreSQL and Redis: expired leases, replicas, lost BullMQ jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from prometheus_client import generate_latest

from foreman import ids
from foreman.queue import bullmq as bullmq_backend
from foreman.queue.base import message_for
from foreman.queue.naming import org_queue_name
from foreman.queue.postgres import PostgresQueue
from foreman.server.app import create_app
from foreman.server.metrics import ServerMetrics
from foreman.server.sweeper import SWEEP_LOCK_KEY, Sweeper
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import runs as runs_store
from foreman.store import tasks as tasks_store
from tests.conftest import HEADERS_A, ORG_A, ORG_B, make_settings, truncate_all
from tests.queue_helpers import (
    bullmq_queue,
    obliterate,
    redis_settings,
    running_app,
    unique_queue_name,
)
from tests.services import free_port, scratch_database


@pytest.fixture(scope="module")
async def sweeper_database(admin_url: str) -> AsyncIterator[str]:
    """A database of this module alone: no other test's app may sweep it behind our back."""
    async with scratch_database(admin_url, "foreman_sweeper", migrate=True) as url:
        yield url


@pytest.fixture
async def db_url(sweeper_database: str) -> str:
    await truncate_all(sweeper_database)
    return sweeper_database


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(
        db_url, min_size=1, max_size=3, command_timeout_s=10, connect_timeout_s=3
    )
    yield pool
    await pool.close()


@pytest.fixture
async def owner_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Like the sweeper's own pool: the table owner, no SET ROLE."""
    pool = await db.create_pool(
        db_url, min_size=1, max_size=2, command_timeout_s=10, connect_timeout_s=3, app_role=False
    )
    yield pool
    await pool.close()


def later() -> int:
    """A clock the test moves: past every lease of 1 s taken so far, without waiting for it."""
    return ids.now_ms() + 1_100


def sweeper(owner_pool, queue=None, *, batch: int = 1000) -> Sweeper:
    return Sweeper(
        owner_pool, queue=queue or PostgresQueue(), interval_s=1.0, batch=batch, grace_s=0.0
    )


async def leased(pool, org_id: str, count: int, *, lease_ms: int, **fields) -> tuple[str, list]:
    """A run of org_id with count tasks claimed under leases of lease_ms."""
    async with db.org_connection(pool, org_id) as conn:
        run = await runs_store.insert_run(
            conn, run_id=ids.new_id(), org_id=org_id, input_data={}, metadata=None, now=ids.now_ms()
        )
        news = [
            tasks_store.NewTask(run_id=run.id, task_type="w", input_data=i, enqueue=True, **fields)
            for i in range(count)
        ]
        await tasks_store.insert_tasks(
            conn, org_id=org_id, task_ids=[ids.new_id() for _ in news], news=news, now=ids.now_ms()
        )
        held = await queue_store.claim_tasks(
            conn,
            org_id=org_id,
            worker_id="dead",
            types=None,
            limit=count,
            lease_ms=lease_ms,
            now=ids.now_ms(),
        )
    return run.id, held


async def task_of(pool, org_id: str, task_id: str):
    async with db.org_connection(pool, org_id) as conn:
        return await tasks_store.get_task(conn, org_id=org_id, task_id=task_id)


async def counters(pool, org_id: str, run_id: str) -> tuple[int, int, int]:
    async with db.org_connection(pool, org_id) as conn:
        run = await runs_store.get_run(conn, org_id=org_id, run_id=run_id)
    return run.total_tasks, run.completed_tasks, run.failed_tasks


async def test_expired_leases_are_retried_or_failed_in_every_organisation(pool, owner_pool):
    run_a, retried = await leased(pool, ORG_A, 3, lease_ms=1000, max_retries=1)
    run_b, exhausted = await leased(pool, ORG_B, 2, lease_ms=1000, max_retries=0)
    _, alive = await leased(pool, ORG_A, 1, lease_ms=60_000)
    result = await sweeper(owner_pool).sweep(now=later())
    assert (result.locked, result.retried, result.failed) == (True, 3, 2)
    for held in retried:
        task = await task_of(pool, ORG_A, held.id)
        assert (task.status, task.retry_count, task.attempt) == ("retrying", 1, 1)
        assert task.lease_expires_at is None
        assert task.run_after > ids.now_ms()
        assert msgspec.json.decode(task.error_data)["type"] == "LeaseExpired"
    for held in exhausted:
        task = await task_of(pool, ORG_B, held.id)
        assert task.status == "failed"
        assert task.completed_at is not None
        assert msgspec.json.decode(task.error_data) == {
            "message": "Lease expired after 1 attempt(s): attempts exhausted",
            "type": "LeaseExpired",
        }
    assert await counters(pool, ORG_B, run_b) == (2, 0, 2)
    assert await counters(pool, ORG_A, run_a) == (3, 0, 0)
    assert (await task_of(pool, ORG_A, alive[0].id)).status == "running"
    # The old lease token is fenced off: the slow worker's result is refused.
    async with db.org_connection(pool, ORG_A) as conn:
        (late,) = await queue_store.finish_tasks(
            conn,
            org_id=ORG_A,
            outcomes=[queue_store.Outcome(retried[0].id, retried[0].lease_token, "completed")],
            now=ids.now_ms(),
        )
    assert (late.ok, late.status) == (False, "retrying")
    assert (await sweeper(owner_pool).sweep(now=later())).retried == 0


async def test_a_retried_task_expiring_again_exhausts_its_attempts(pool, owner_pool):
    run_id, (held,) = await leased(pool, ORG_A, 1, lease_ms=1000, max_retries=1)
    await sweeper(owner_pool).sweep(now=later())
    async with db.org_connection(pool, ORG_A) as conn:
        (again,) = await queue_store.claim_tasks(
            conn,
            org_id=ORG_A,
            worker_id="w",
            types=None,
            limit=1,
            lease_ms=1000,
            now=ids.now_ms() + 10_000,  # after the backoff
        )
    assert again.attempt == 2
    # Seen from after the second lease (it ends at now + 10 s + 1 s): attempts exhausted.
    async with owner_pool.acquire() as conn:
        (swept,) = await queue_store.expire_leases(conn, now=ids.now_ms() + 12_000, limit=10)
    assert swept.id == held.id
    task = await task_of(pool, ORG_A, held.id)
    assert (task.status, task.attempt, task.retry_count) == ("failed", 2, 1)
    assert "after 2 attempt(s)" in msgspec.json.decode(task.error_data)["message"]
    assert await counters(pool, ORG_A, run_id) == (1, 0, 1)


async def test_only_one_replica_sweeps_at_a_time(pool, owner_pool, db_url):
    run_id, held = await leased(pool, ORG_A, 50, lease_ms=1000, max_retries=0)
    other = await asyncpg.connect(db_url)
    try:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK_KEY)
            assert (await sweeper(owner_pool).sweep(now=later())).locked is False
        assert (await task_of(pool, ORG_A, held[0].id)).status == "running"
    finally:
        await other.close()
    # Replicas racing: each expired lease is handled once, counters stay exact.
    replicas = [sweeper(owner_pool, batch=10) for _ in range(4)]
    for _ in range(10):
        await asyncio.gather(*(r.sweep(now=later()) for r in replicas))
    assert await counters(pool, ORG_A, run_id) == (50, 0, 50)


# ---------------------------------------------------------------- bullmq


@pytest.fixture
async def bullmq(redis_server) -> AsyncIterator[bullmq_backend.BullMQQueue]:
    name = unique_queue_name()
    settings = make_settings(
        "postgresql://unused", redis_host=redis_server.host, redis_port=redis_server.port
    )
    queue = bullmq_backend.BullMQQueue(
        name, client=bullmq_backend.redis_client(settings), per_org=True
    )
    try:
        yield queue
    finally:
        await queue.close()
        for org in (ORG_A, ORG_B):
            await obliterate(redis_server, queue.queue_name_of(org))


async def ready(pool, count: int, *, org: str = ORG_A, **fields) -> list:
    async with db.org_connection(pool, org) as conn:
        run = await runs_store.insert_run(
            conn, run_id=ids.new_id(), org_id=org, input_data={}, metadata=None, now=ids.now_ms()
        )
        news = [
            tasks_store.NewTask(run_id=run.id, task_type="w", input_data=i, enqueue=True, **fields)
            for i in range(count)
        ]
        result = await tasks_store.insert_tasks(
            conn, org_id=org, task_ids=[ids.new_id() for _ in news], news=news, now=ids.now_ms()
        )
    return result.tasks


async def test_bullmq_lost_jobs_go_back_to_their_own_organisation_s_queue(
    pool, owner_pool, bullmq, redis_server
):
    mine, theirs = await ready(pool, 4), await ready(pool, 3, org=ORG_B)
    await bullmq.publish(mine[:1] + theirs[:1])  # the others: lost
    queues = {org: bullmq_queue(redis_server, bullmq.queue_name_of(org)) for org in (ORG_A, ORG_B)}
    try:
        assert (await sweeper(owner_pool, bullmq).sweep(now=later())).republished == 5
        for org, tasks in ((ORG_A, mine), (ORG_B, theirs)):
            queue = queues[org]
            assert (await queue.getJobCounts())["waiting"] == len(tasks)
            for t in tasks:
                assert (await queue.getJob(f"{t.id}:1")).data == {"taskId": t.id}
    finally:
        for queue in queues.values():
            await queue.close()


async def test_bullmq_lost_jobs_are_published_again_once(pool, owner_pool, bullmq, redis_server):
    tasks = await ready(pool, 30)
    await bullmq.publish(tasks[:10])  # the other 20: a publish that failed after the commit
    inspect = bullmq_queue(redis_server, bullmq.queue_name_of(ORG_A))
    try:
        sweep = sweeper(owner_pool, bullmq, batch=7)  # several sweeps walk the whole set
        republished = 0
        for _ in range(6):
            republished += (await sweep.sweep(now=later())).republished
        assert republished == 20
        counts = await inspect.getJobCounts()
        assert counts["waiting"] == 30
        # Redis flushed (this queue's keys only: the Redis is shared): everything comes back.
        await inspect.obliterate(force=True)
        for _ in range(6):
            await sweep.sweep(now=later())
        assert (await inspect.getJobCounts())["waiting"] == 30
        for t in tasks:
            job = await inspect.getJob(f"{t.id}:1")
            assert job.data == {"taskId": t.id}
            assert job.name == "w"
    finally:
        await inspect.close()


async def test_bullmq_sweeper_publishes_expired_leases_and_clears_finished_jobs(
    pool, owner_pool, bullmq, redis_server
):
    _, (held,) = await leased(pool, ORG_A, 1, lease_ms=1000, max_retries=2)
    (stuck,) = await ready(pool, 1)
    inspect = bullmq_queue(redis_server, bullmq.queue_name_of(ORG_A))
    try:
        # A job of the same id that BullMQ failed (removeOnFail is false) must not block a re-add.
        await bullmq.publish([stuck])
        key = bullmq.job_key(message_for(stuck, now=ids.now_ms()))
        await inspect.client.hset(key, "finishedOn", ids.now_ms())
        result = await sweeper(owner_pool, bullmq).sweep(now=later())
        assert (result.retried, result.republished) == (1, 1)
        retry = await inspect.getJob(f"{held.id}:2")
        assert retry is not None
        assert retry.opts["delay"] > 0
        job = await inspect.getJob(f"{stuck.id}:1")
        assert job is not None
        assert not job.finishedOn
    finally:
        await inspect.close()


async def test_bullmq_job_of_a_node_client_counts_as_present(
    pool, owner_pool, bullmq, redis_server
):
    (task,) = await ready(pool, 1)
    inspect = bullmq_queue(redis_server, bullmq.queue_name_of(ORG_A))
    try:
        node_job = await inspect.add("w", {"taskId": task.id})  # the Node client's own job id
        async with db.org_connection(pool, ORG_A) as conn:
            await tasks_store.update_task(
                conn,
                org_id=ORG_A,
                task_id=task.id,
                changes={"queue_job_id": node_job.id},
                now=ids.now_ms() - 10_000,
            )
        assert (await sweeper(owner_pool, bullmq).sweep(now=later())).republished == 0
        assert (await inspect.getJobCounts())["waiting"] == 1
    finally:
        await inspect.close()


# ---------------------------------------------------------------- in the app


async def test_the_app_sweeps_in_the_background(db_url):
    settings = make_settings(db_url, sweep_interval_s=0.2)
    async with running_app(create_app(settings)) as client:
        run = (await client.post("/api/v1/runs", json={"inputData": 1}, headers=HEADERS_A)).json()
        body = {"runId": run["id"], "type": "w", "inputData": 1, "enqueue": True, "maxRetries": 0}
        task = (await client.post("/api/v1/tasks", json=body, headers=HEADERS_A)).json()
        claim = {"workerId": "w", "leaseMs": 1000}
        await client.post(f"/api/v1/tasks/{task['id']}/claim", json=claim, headers=HEADERS_A)
        waited = await client.get(
            f"/api/v1/tasks/{task['id']}/wait?timeoutMs=10000", headers=HEADERS_A
        )
    assert waited.json()["status"] == "failed"
    assert waited.json()["errorData"]["type"] == "LeaseExpired"


async def test_a_redis_outage_does_not_stop_the_lease_sweep(pool, owner_pool, db_url):
    settings = make_settings(db_url, redis_host="127.0.0.1", redis_port=free_port())
    down = bullmq_backend.BullMQQueue.from_settings(settings)
    try:
        _, (held,) = await leased(pool, ORG_A, 1, lease_ms=1000, max_retries=0)
        await ready(pool, 3)
        result = await sweeper(owner_pool, down).sweep(now=later())
    finally:
        await down.close()
    assert (result.locked, result.failed, result.republished) == (True, 1, 0)
    assert (await task_of(pool, ORG_A, held.id)).status == "failed"


async def test_sweeps_and_expired_leases_are_counted_in_metrics(pool, owner_pool):
    metrics = ServerMetrics(per_org=False)
    await leased(pool, ORG_A, 2, lease_ms=1000, max_retries=1)
    await leased(pool, ORG_B, 1, lease_ms=1000, max_retries=0)
    swept = Sweeper(
        owner_pool, queue=PostgresQueue(), interval_s=1.0, batch=1000, grace_s=0.0, metrics=metrics
    )
    await swept.sweep(now=later())
    await swept.sweep(now=later())
    metrics.flush()
    text = generate_latest(metrics.registry).decode()
    assert "foreman_sweeper_runs_total 2.0" in text
    assert "foreman_leases_expired_total 3.0" in text
    assert 'foreman_task_retries_total{type="w"} 2.0' in text
    assert 'foreman_tasks_finished_total{status="failed",type="w"} 1.0' in text


@pytest.mark.parametrize("end", ["cancel", "patch"])
async def test_bullmq_children_released_by_a_cancel_or_patch_are_published_at_once(
    db_url, redis_server, end
):
    # Not only a worker's completion publishes the children it releases (issue 13): every end
    # does, right after its commit, without waiting for the sweeper (not running here).
    name = unique_queue_name()
    settings = make_settings(db_url, **redis_settings(redis_server, name), sweep_interval_s=3600.0)
    inspect = bullmq_queue(redis_server, org_queue_name(name, ORG_A))
    try:
        async with running_app(create_app(settings)) as client:
            run = (
                await client.post("/api/v1/runs", json={"inputData": 1}, headers=HEADERS_A)
            ).json()
            task = {"runId": run["id"], "type": "w", "inputData": 1}
            parent = (await client.post("/api/v1/tasks", json=task, headers=HEADERS_A)).json()
            child = {**task, "enqueue": True, "dependsOn": [parent["id"]], "onParentFailure": "run"}
            tolerant = (await client.post("/api/v1/tasks", json=child, headers=HEADERS_A)).json()
            assert tolerant["status"] == "blocked"
            if end == "cancel":
                url = f"/api/v1/tasks/{parent['id']}/cancel"
                response = await client.post(url, headers=HEADERS_A)
            else:
                url = f"/api/v1/tasks/{parent['id']}"
                response = await client.patch(url, json={"status": "failed"}, headers=HEADERS_A)
            assert response.status_code == 200, response.text
            job = await inspect.getJob(f"{tolerant['id']}:1")
            assert job is not None
            assert job.data == {"taskId": tolerant["id"]}
    finally:
        await inspect.close()
        await obliterate(redis_server, org_queue_name(name, ORG_A))
