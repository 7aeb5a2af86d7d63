"""One contract for every queue backend (SPEC section 7), against the real services:
PostgreSQL, Redis, RabbitMQ and moto's SQS-compatible server.

Each backend is driven through the QueueBackend interface the server uses; "delivered" means
what a worker of that backend receives: a claim from the task table (postgres), a job taken by
a real BullMQ Worker (bullmq), a message consumed from the organisation's queue (rabbitmq, sqs).
Each broker test has queues of its own (a unique TASK_QUEUE_NAME). The worker's side of the
contract (claims, leases, poison messages, kill -9) is tests/e2e, for every backend too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aio_pika
import asyncpg
import msgspec
import pytest
from bullmq import Worker

from foreman import ids
from foreman.queue import QueueBackend, open_queue, rabbitmq, sqs
from foreman.queue.base import ready_messages
from foreman.queue.bullmq import BullMQQueue
from foreman.queue.naming import org_queue_name
from foreman.queue.rabbitmq import RabbitMQQueue
from foreman.queue.sqs import SqsQueue
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import runs as runs_store
from foreman.store import tasks as tasks_store
from tests.conftest import ORG_A, ORG_B, make_settings
from tests.queue_helpers import obliterate, redis_settings, unique_queue_name
from tests.services import free_port

# (how many to expect, organisation) -> [(task id, task type)] delivered, in delivery order
Drain = Callable[..., Awaitable[list[tuple[str, str]]]]
BACKENDS = ["postgres", "bullmq", "rabbitmq", "sqs"]


@dataclass
class Backend:
    name: str
    queue: QueueBackend
    drain: Drain
    purge: Callable[[str], Awaitable[None]] | None = None  # empty an organisation's queue


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(
        db_url, min_size=1, max_size=2, command_timeout_s=10, connect_timeout_s=3
    )
    yield pool
    await pool.close()


def postgres_drain(pool) -> Drain:
    async def drain(expected: int, org: str = ORG_A) -> list[tuple[str, str]]:
        del expected
        async with db.org_connection(pool, org) as conn:
            tasks = await queue_store.claim_tasks(
                conn,
                org_id=org,
                worker_id="w",
                types=None,
                limit=1000,
                lease_ms=60_000,
                now=ids.now_ms(),
            )
        return [(t.id, t.type) for t in tasks]

    return drain


def bullmq_drain(redis_server, queue_name: str, *, per_org: bool = True) -> Drain:
    async def drain(expected: int, org: str = ORG_A) -> list[tuple[str, str]]:
        # The organisation's own queue (per_org=False: queue_name itself, the shared one).
        name = org_queue_name(queue_name, org) if per_org else queue_name
        seen: list[tuple[str, str]] = []

        async def process(job, token):
            assert set(job.data) == {"taskId"}  # SPEC section 7: data is exactly {"taskId"}
            seen.append((job.data["taskId"], job.name))

        connection = {"host": redis_server.host, "port": redis_server.port}
        worker = Worker(name, process, {"connection": connection, "drainDelay": 1})
        try:
            deadline = time.monotonic() + 10
            while len(seen) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # anything beyond `expected` would be a duplicate
        finally:
            await worker.close()
        return seen

    return drain


async def until(expected: int, seen: list, *, timeout_s: float = 10) -> None:
    """Until expected deliveries were seen, then a little longer: more would be duplicates."""
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)


def rabbitmq_drain(url: str, queue: RabbitMQQueue) -> Drain:
    async def drain(expected: int, org: str = ORG_A) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            amqp_queue = await rabbitmq.declare(channel, queue.queue_name(org), "classic")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                # basic.get, one at a time: the order RabbitMQ delivers in (priorities first).
                message = await amqp_queue.get(fail=False)
                if message is None:
                    if len(seen) >= expected:
                        break
                    await asyncio.sleep(0.05)
                    continue
                assert message.headers[rabbitmq.HEADER_ATTEMPT] >= 1
                seen.append((message.body.decode(), message.headers[rabbitmq.HEADER_TYPE]))
                await message.ack()
                if len(seen) >= expected:
                    await asyncio.sleep(0.3)  # anything beyond `expected` would be a duplicate
        finally:
            await connection.close()
        return seen

    return drain


def sqs_drain(queue: SqsQueue) -> Drain:
    async def drain(expected: int, org: str = ORG_A) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        name = queue.queue_name(org)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answer = await queue.sqs.call(
                name,
                "receive_message",
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0 if len(seen) >= expected else 1,
                MessageAttributeNames=["All"],
            )
            messages = answer.get("Messages") or []
            if not messages and len(seen) >= expected:
                break
            for m in messages:
                seen.append((m["Body"], m["MessageAttributes"][sqs.ATTR_TYPE]["StringValue"]))
                await queue.sqs.call(name, "delete_message", ReceiptHandle=m["ReceiptHandle"])
        return seen

    return drain


@pytest.fixture(params=BACKENDS)
async def backend(request, pool, db_url) -> AsyncIterator[Backend]:
    if request.param == "postgres":
        queue = open_queue(make_settings(db_url))
        yield Backend("postgres", queue, postgres_drain(pool))
        await queue.close()
        return
    if request.param == "rabbitmq":
        url = request.getfixturevalue("rabbitmq")
        settings = make_settings(
            db_url, queue_backend="rabbitmq", rabbitmq_url=url, task_queue_name=unique_queue_name()
        )
        queue = open_queue(settings)
        assert isinstance(queue, RabbitMQQueue)

        async def purge_rabbitmq(org: str) -> None:
            channel = await queue.channel()
            await (await rabbitmq.declare(channel, queue.queue_name(org), "classic")).purge()

        try:
            yield Backend("rabbitmq", queue, rabbitmq_drain(url, queue), purge_rabbitmq)
        finally:
            await delete_rabbitmq_queues(queue)
            await queue.close()
        return
    if request.param == "sqs":
        moto = request.getfixturevalue("moto")
        settings = make_settings(
            db_url,
            queue_backend="sqs",
            sqs_endpoint_url=moto.url,
            task_queue_name=unique_queue_name(),
        )
        queue = open_queue(settings)
        assert isinstance(queue, SqsQueue)

        async def purge_sqs(org: str) -> None:
            await queue.sqs.call(queue.queue_name(org), "purge_queue")

        try:
            yield Backend("sqs", queue, sqs_drain(queue), purge_sqs)
        finally:
            await queue.close()
        return
    redis_server = request.getfixturevalue("redis_server")
    name = unique_queue_name()
    settings = make_settings(db_url, **redis_settings(redis_server, name))
    queue = open_queue(settings)
    try:
        yield Backend("bullmq", queue, bullmq_drain(redis_server, name))
    finally:
        await queue.close()
        for org in (ORG_A, ORG_B):
            await obliterate(redis_server, org_queue_name(name, org))


async def delete_rabbitmq_queues(queue: RabbitMQQueue) -> None:
    """Remove the queues a test made on the shared RabbitMQ."""
    channel = await queue.channel()
    for org in (ORG_A, ORG_B):
        for name in (queue.queue_name(org), queue.queue_name(org) + rabbitmq.DEAD_SUFFIX):
            await channel.queue_delete(name)


async def make_tasks(pool, count: int, *, org: str = ORG_A, **fields) -> list:
    """Committed tasks (queued by default), as the server creates them before publishing."""
    fields.setdefault("enqueue", True)
    task_type = fields.pop("task_type", "work")
    async with db.org_connection(pool, org) as conn:
        run = await runs_store.insert_run(
            conn, run_id=ids.new_id(), org_id=org, input_data={}, metadata=None, now=ids.now_ms()
        )
        news = [
            tasks_store.NewTask(run_id=run.id, task_type=task_type, input_data=i, **fields)
            for i in range(count)
        ]
        result = await tasks_store.insert_tasks(
            conn, org_id=org, task_ids=[ids.new_id() for _ in news], news=news, now=ids.now_ms()
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
    order = [task_id for task_id, _ in delivered]
    if backend.name == "sqs":
        # SQS has no priorities (docs/backends.md): every task, in any order.
        assert sorted(order) == sorted([plain[0].id, high[0].id, low[0].id])
        return
    # BullMQ order: no priority (0) first, then 1 = highest.
    assert order == [plain[0].id, high[0].id, low[0].id]


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
    if backend.purge is not None:
        # A broker that cannot check one message: a purged (or lost) queue is all missing.
        await backend.purge(ORG_A)
        assert await backend.queue.missing(messages) == []  # once might be a worker's claim
        lost = await backend.queue.missing(messages)
        assert sorted(m.task_id for m in lost) == sorted(t.id for t in tasks)
        await backend.queue.enqueue(lost)
        assert await backend.queue.missing(messages) == []
    assert len(await backend.drain(5)) == 5


async def test_publish_never_raises_when_the_service_is_down(backend, pool, db_url):
    tasks = await make_tasks(pool, 1)
    queue = backend.queue
    if isinstance(queue, BullMQQueue):
        settings = make_settings(db_url, redis_host="127.0.0.1", redis_port=free_port())
        queue = BullMQQueue.from_settings(settings)
    elif isinstance(queue, RabbitMQQueue):
        down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        queue = RabbitMQQueue.from_settings(make_settings(db_url, rabbitmq_url=down))
    elif isinstance(queue, SqsQueue):
        down = f"http://127.0.0.1:{free_port()}"
        queue = SqsQueue.from_settings(make_settings(db_url, sqs_endpoint_url=down))
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
            db_url, **redis_settings(redis_server, name), queue_per_org=per_org
        )
        queue = open_queue(settings)
        expected = org_queue_name(name, ORG_A) if per_org else name
        try:
            await queue.publish(tasks)
            delivered = await bullmq_drain(redis_server, expected, per_org=False)(2)
            assert sorted(delivered) == sorted((t.id, "work") for t in tasks)
            other = name if per_org else org_queue_name(name, ORG_A)
            assert await bullmq_drain(redis_server, other, per_org=False)(0) == []
        finally:
            await queue.close()
            for leftover in (name, org_queue_name(name, ORG_A)):
                await obliterate(redis_server, leftover)


async def test_each_organisation_has_its_own_queue(backend, pool):
    mine = await make_tasks(pool, 3, org=ORG_A)
    theirs = await make_tasks(pool, 2, org=ORG_B)
    await backend.queue.publish([*mine, *theirs])
    assert sorted(await backend.drain(3, ORG_A)) == sorted((t.id, "work") for t in mine)
    assert sorted(await backend.drain(2, ORG_B)) == sorted((t.id, "work") for t in theirs)


async def test_a_retried_attempt_is_published_again(backend, pool):
    # The same task, published again after a release or a failed attempt (the row changed):
    # a second message, where a repeated publish of the same row state is skipped.
    (task,) = await make_tasks(pool, 1)
    await backend.queue.publish([task])
    await backend.queue.publish([task])
    assert await backend.drain(1) == [(task.id, "work")]
    if backend.name == "postgres":
        return  # the row is the message, and the drain claimed it: nothing is ready again
    again = msgspec.structs.replace(task, attempt=task.attempt + 1, updated_at=task.updated_at + 1)
    await backend.queue.publish([again])
    assert await backend.drain(1) == [(task.id, "work")]


async def test_rabbitmq_a_queue_deleted_under_the_server_is_declared_again(pool, db_url, rabbitmq):
    # A batch goes out in one write with its confirms awaited together: RabbitMQ returns the
    # messages of a queue deleted since the server declared it, the batch raises, and the next
    # publish declares the queue again and delivers.
    settings = make_settings(
        db_url, queue_backend="rabbitmq", rabbitmq_url=rabbitmq, task_queue_name=unique_queue_name()
    )
    queue = RabbitMQQueue.from_settings(settings)
    tasks = await make_tasks(pool, 3)
    messages = ready_messages(tasks, now=ids.now_ms())
    try:
        await queue.enqueue(messages[:1])
        assert await rabbitmq_drain(rabbitmq, queue)(1) == [(tasks[0].id, "work")]
        await (await queue.channel()).queue_delete(queue.queue_name(ORG_A))
        with pytest.raises(aio_pika.exceptions.PublishError):
            await queue.enqueue(messages[1:])
        await queue.enqueue(messages[1:])
        delivered = await rabbitmq_drain(rabbitmq, queue)(2)
        assert sorted(delivered) == sorted((t.id, "work") for t in tasks[1:])
    finally:
        await delete_rabbitmq_queues(queue)
        await queue.close()
