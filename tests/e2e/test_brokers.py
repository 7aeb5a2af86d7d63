"""The broker backends that cannot check one message (rabbitmq, sqs), end to end: a `foreman
server` process, the Worker in this process, the machine's RabbitMQ and moto's SQS server.

Poison messages go to the organisation's dead-letter queue while the rest of their batch runs at
once; a purged queue is refilled by the sweeper from the task rows; each organisation's worker
sees only its own queue (a queue per organisation, named by the server).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aio_pika
import pytest

from foreman import AsyncClient, TaskSpec, Worker
from foreman.queue import rabbitmq, sqs
from foreman.queue.sqs import SqsClient
from tests.conftest import KEY_A, KEY_B
from tests.e2e import handlers
from tests.e2e.conftest import purge_queues
from tests.e2e.helpers import all_tasks, run_finished
from tests.integration.live_server import ServerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def client(broker_server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(broker_server.url, KEY_A) as api:
        yield api


def backend_of(server: ServerProcess) -> str:
    return server.env["FOREMAN_QUEUE_BACKEND"]


async def send_raw(server: ServerProcess, queue_name: str, bodies: list[bytes]) -> None:
    """Messages straight into a queue, as anyone with the broker's credentials could."""
    if backend_of(server) == "rabbitmq":
        connection = await aio_pika.connect(server.env["FOREMAN_RABBITMQ_URL"])
        try:
            channel = await connection.channel()
            await rabbitmq.declare(channel, queue_name, "classic")
            for body in bodies:
                # A hostile sender's message id is its body: it must not reach a log either.
                message = aio_pika.Message(body, message_id=body.decode())
                await channel.default_exchange.publish(message, queue_name)
        finally:
            await connection.close()
        return
    client = SqsClient(endpoint_url=server.env["FOREMAN_SQS_ENDPOINT_URL"], region=None)
    try:
        for body in bodies:
            await client.call(queue_name, "send_message", MessageBody=body.decode())
    finally:
        await client.close()


async def dead_letters(server: ServerProcess, queue_name: str) -> int:
    """Messages in a queue's dead-letter queue."""
    if backend_of(server) == "rabbitmq":
        connection = await aio_pika.connect(server.env["FOREMAN_RABBITMQ_URL"])
        try:
            channel = await connection.channel()
            await rabbitmq.declare(channel, queue_name, "classic")
            dead = await channel.declare_queue(queue_name + rabbitmq.DEAD_SUFFIX, durable=True)
            count = rabbitmq.depth(dead)
            await dead.purge()
            return count
        finally:
            await connection.close()
    client = SqsClient(endpoint_url=server.env["FOREMAN_SQS_ENDPOINT_URL"], region=None)
    try:
        name = queue_name + sqs.DEAD_SUFFIX
        answer = await client.call(
            name, "get_queue_attributes", AttributeNames=["ApproximateNumberOfMessages"]
        )
        await client.call(name, "purge_queue")
        return int(answer["Attributes"]["ApproximateNumberOfMessages"])
    finally:
        await client.close()


def make_worker(client: AsyncClient, **options) -> Worker:
    options.setdefault("handlers", handlers.HANDLERS)
    options.setdefault("claim_wait_s", 0.5)
    return Worker(client, handle_signals=False, **options)


async def test_poison_messages_are_dead_lettered_and_the_rest_of_their_batch_runs_at_once(
    broker_server: ServerProcess, client: AsyncClient, caplog: pytest.LogCaptureFixture
):
    queue_name = (await client.get_config()).queue.task_queue
    assert queue_name
    async with AsyncClient(broker_server.url, KEY_B) as other:
        theirs = await other.create_task((await other.create_run({})).id, type="noop", input_data=0)
    # Never published (pending), and another organisation's: a worker of ours must not run it.
    await send_raw(broker_server, queue_name, [b"not a task id", theirs.id.encode()])
    run = await client.create_run({})
    good = await client.enqueue_tasks([TaskSpec(run.id, "noop", i) for i in range(3)])

    caplog.set_level(logging.INFO, logger="foreman")
    worker = make_worker(client, concurrency=10)
    runner = asyncio.create_task(worker.run())
    try:
        # At once: the poison is moved aside in the batch it came in, not retried or waited on.
        finished = await run_finished(client, run.id, 3, timeout_s=3)
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)
    assert (finished.completed_tasks, finished.failed_tasks) == (3, 0)
    assert {t.attempt for t in await all_tasks(client, run.id)} == {1}
    assert await dead_letters(broker_server, queue_name) == 2
    moved = [r.getMessage() for r in caplog.records if "dead-letter queue" in r.getMessage()]
    assert len(moved) == 2, moved  # logged once each
    assert "carries no task id" in " ".join(moved)
    assert "names no task of this organisation" in " ".join(moved)
    assert theirs.id not in caplog.text  # never another organisation's data
    assert (await other_task_status(broker_server, theirs.id)) == "pending"
    assert {g.id for g in good} == {t.id for t in await all_tasks(client, run.id)}


async def other_task_status(server: ServerProcess, task_id: str) -> str:
    async with AsyncClient(server.url, KEY_B) as other:
        return (await other.get_task(task_id)).status


async def test_a_purged_queue_is_refilled_by_the_sweeper(
    broker_server: ServerProcess, client: AsyncClient
):
    run = await client.create_run({})
    await client.enqueue_tasks([TaskSpec(run.id, "noop", i) for i in range(30)])
    await purge_queues(broker_server)  # every message lost; the rows still say queued
    worker = make_worker(client, concurrency=10)
    runner = asyncio.create_task(worker.run())
    try:
        # The sweeper: grace 0.5 s, then two sweeps (0.2 s) that find the queue empty.
        finished = await run_finished(client, run.id, 30, timeout_s=15)
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)
    assert (finished.completed_tasks, finished.failed_tasks) == (30, 0)
    assert {t.attempt for t in await all_tasks(client, run.id)} == {1}  # each ran once


async def test_each_organisation_consumes_its_own_queue_only(
    broker_server: ServerProcess, client: AsyncClient, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="foreman")
    async with AsyncClient(broker_server.url, KEY_B) as other:
        mine, theirs = (await client.get_config()).queue, (await other.get_config()).queue
        assert mine.task_queue
        assert theirs.task_queue
        assert mine.task_queue != theirs.task_queue
        bystander = make_worker(other)
        watching = asyncio.create_task(bystander.run())
        await asyncio.sleep(0.5)
        run = await client.create_run({})
        tasks = await client.enqueue_tasks([TaskSpec(run.id, "noop", i) for i in range(20)])
        worker = make_worker(client)
        runner = asyncio.create_task(worker.run())
        try:
            finished = await run_finished(client, run.id, 20, timeout_s=15)
        finally:
            for w in (worker, bystander):
                w.stop()
            await asyncio.wait_for(asyncio.gather(runner, watching), 30)
    assert finished.completed_tasks == 20
    assert worker.stats.claimed == 20
    # The other organisation's worker received none of them: nothing claimed, nothing refused
    # or moved aside, and no log line of any worker names one of them.
    assert bystander.stats.claimed == 0
    assert await dead_letters(broker_server, theirs.task_queue) == 0
    worker_lines = [r.getMessage() for r in caplog.records if r.name.startswith("foreman.worker")]
    assert not [line for line in worker_lines for t in tasks if t.id in line]
