"""One contract for every queue backend (SPEC section 7), against real PostgreSQL and Redis.

Each backend is driven through the QueueBackend interface the server uses; "delivered" means
what a worker of that backend receives: a claim from the task table (postgres), a job taken by
a real BullMQ Worker (bullmq). Each bullmq test has a queue of its own on the shared Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest
from bullmq import Worker

from foreman import ids
from foreman.queue import QueueBackend, open_queue
from foreman.queue.base import ready_messages
from foreman.queue.bullmq import BullMQQueue
from foreman.queue.naming import org_queue_name
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import runs as runs_store
from foreman.store import tasks as tasks_store
from tests.conftest import ORG_A, make_settings
from tests.queue_helpers import obliterate, unique_queue_name
from tests.services import free_port

Drain = Callable[[int], Awaitable[list[tuple[str, str]]]]


@dataclass
class Backend:
    queue: QueueBackend
    drain: Drain  # (how many to expect) -> [(task id, task type)] delivered, in delivery order


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(
        db_url, min_size=1, max_size=2, command_timeout_s=10, connect_timeout_s=3
    )
    yield pool
    await pool.close()


def postgres_drain(pool) -> Drain:
    async def drain(expected: int) -> list[tuple[str, str]]:
        del expected
        async with db.org_connection(pool, ORG_A) as conn:
            tasks = await queue_store.claim_tasks(
                conn,
                org_id=ORG_A,
                worker_id="w",
                types=None,
                limit=1000,
                lease_ms=60_000,
                now=ids.now_ms(),
            )
        return [(t.id, t.type) for t in tasks]

    return drain


def bullmq_drain(redis_server, queue_name: str) -> Drain:
    async def drain(expected: int) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []

        async def process(job, token):
            assert set(job.data) == {"taskId"}  # SPEC section 7: data is exactly {"taskId"}
            seen.append((job.data["taskId"], job.name))

        connection = {"host": redis_server.host, "port": redis_server.port}
        worker = Worker(queue_name, process, {"connection": connection, "drainDelay": 1})
        try:
            deadline = time.monotonic() + 10
            while len(seen) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # anything beyond `expected` would be a duplicate
        finally:
            await worker.close()
        return seen

    return drain


@pytest.fixture(params=["postgres", "bullmq"])
async def backend(request, pool, db_url) -> AsyncIterator[Backend]:
    if request.param == "postgres":
        queue = open_queue(make_settings(db_url))
        yield Backend(queue, postgres_drain(pool))
        await queue.close()
        return
    redis_server = request.getfixturevalue("redis_server")
    name = unique_queue_name()
    settings = make_settings(
        db_url,
        queue_backend="bullmq",
        redis_host=redis_server.host,
        redis_port=redis_server.port,
        task_queue_name=name,
    )
    queue = open_queue(settings)
    org_queue = org_queue_name(name, ORG_A)  # the tasks are org A's: they go to its queue
    try:
        yield Backend(queue, bullmq_drain(redis_server, org_queue))
    finally:
        await queue.close()
        await obliterate(redis_server, org_queue)


async def make_tasks(pool, count: int, **fields) -> list:
    """Committed tasks (queued by default), as the server creates them before publishing."""
    fields.setdefault("enqueue", True)
    task_type = fields.pop("task_type", "work")
    async with db.org_connection(pool, ORG_A) as conn:
        run = await runs_store.insert_run(
            conn, run_id=ids.new_id(), org_id=ORG_A, input_data={}, metadata=None, now=ids.now_ms()
        )
        news = [
            tasks_store.NewTask(run_id=run.id, task_type=task_type, input_data=i, **fields)
            for i in range(count)
        ]
        result = await tasks_store.insert_tasks(
            conn, org_id=ORG_A, task_ids=[ids.new_id() for _ in news], news=news, now=ids.now_ms()
        )
    return result.tasks


async def test_published_tasks_are_delivered_once(backend, pool):
    tasks = await make_tasks(pool, 20, task_type="resize")
    await backend.queue.publish(tasks)
    await backend.queue.publish(tasks)  # a retried request, or the sweeper: never a duplicate
    delivered = await backend.drain(20)
    assert sorted(delivered) == sorted((t.id, "resize") for t in tasks)
    assert await backend.drain(0) == []


async def test_only_ready_tasks_are_published(backend, pool):
    pending = await make_tasks(pool, 2, enqueue=False)
    await backend.queue.publish(pending)
    assert await backend.drain(0) == []


async def test_priority_order(backend, pool):
    low = await make_tasks(pool, 1, priority=9)
    high = await make_tasks(pool, 1, priority=1)
    plain = await make_tasks(pool, 1)
    for task in (low, high, plain):
        await backend.queue.publish(task)
    delivered = await backend.drain(3)
    # BullMQ order: no priority (0) first, then 1 = highest.
    assert [task_id for task_id, _ in delivered] == [plain[0].id, high[0].id, low[0].id]


async def test_a_delayed_task_waits(backend, pool):
    tasks = await make_tasks(pool, 1, delay_ms=60_000)
    await backend.queue.publish(tasks)
    assert await backend.drain(0) == []


async def test_a_delayed_task_is_delivered_after_its_delay(backend, pool):
    # A failed attempt's retry is published this way: the task's runAfter is its backoff.
    tasks = await make_tasks(pool, 1, delay_ms=700)
    (task,) = tasks
    await backend.queue.publish(tasks)
    assert await backend.drain(0) == []
    await asyncio.sleep(0.8)
    assert await backend.drain(1) == [(task.id, "work")]


async def test_missing_finds_exactly_the_lost_messages(backend, pool):
    tasks = await make_tasks(pool, 5)
    messages = ready_messages(tasks, now=ids.now_ms())
    await backend.queue.publish(tasks)
    assert await backend.queue.missing(messages) == []
    if isinstance(backend.queue, BullMQQueue):
        # Lost from Redis (a flush of this queue's keys): found missing, and published again.
        keys = [backend.queue.job_key(m) for m in messages[:2]]
        await backend.queue._redis.delete(*keys)
        lost = await backend.queue.missing(messages)
        assert [m.task_id for m in lost] == [t.id for t in tasks[:2]]
        await backend.queue.enqueue(lost)
        assert await backend.queue.missing(messages) == []
    assert len(await backend.drain(5)) == 5


async def test_publish_never_raises_when_the_service_is_down(backend, pool, db_url):
    tasks = await make_tasks(pool, 1)
    queue = backend.queue
    if isinstance(queue, BullMQQueue):
        settings = make_settings(db_url, redis_host="127.0.0.1", redis_port=free_port())
        queue = BullMQQueue.from_settings(settings)
    try:
        started = time.monotonic()
        await queue.publish(tasks)  # logged; the sweeper publishes it later
        assert time.monotonic() - started < 5
    finally:
        if queue is not backend.queue:
            await queue.close()


async def test_queues_per_organisation_and_the_shared_queue(pool, db_url, redis_server):
    # The default: each organisation's tasks in its own queue. FOREMAN_QUEUE_PER_ORG=false: all
    # in TASK_QUEUE_NAME itself, for single-organisation deployments with old Node workers.
    tasks = await make_tasks(pool, 2)
    for per_org in (True, False):
        name = unique_queue_name()
        settings = make_settings(
            db_url,
            queue_backend="bullmq",
            redis_host=redis_server.host,
            redis_port=redis_server.port,
            task_queue_name=name,
            queue_per_org=per_org,
        )
        queue = open_queue(settings)
        expected = org_queue_name(name, ORG_A) if per_org else name
        try:
            await queue.publish(tasks)
            delivered = await bullmq_drain(redis_server, expected)(2)
            assert sorted(delivered) == sorted((t.id, "work") for t in tasks)
            other = name if per_org else org_queue_name(name, ORG_A)
            assert await bullmq_drain(redis_server, other)(0) == []
        finally:
            await queue.close()
            for leftover in (name, org_queue_name(name, ORG_A)):
                await obliterate(redis_server, leftover)
