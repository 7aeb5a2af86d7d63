"""Nothing is lost, nothing runs twice: `foreman worker` processes against `foreman server`
processes, for each backend, with workers killed and Redis flushed and restarted."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis
from bullmq import Queue

from foreman import AsyncClient, RedisOptions, TaskSpec, Worker
from tests.conftest import KEY_A
from tests.e2e import handlers
from tests.e2e.conftest import OwnRedis, WorkerProcess
from tests.e2e.helpers import all_tasks, eventually, run_finished
from tests.queue_helpers import unique_queue_name

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def client(server) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.url, KEY_A) as api:
        yield api


@pytest.fixture
async def bull_client(bull_server, db_url) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(bull_server.url, KEY_A) as api:
        yield api


async def test_500_tasks_two_worker_processes_each_completed_once(server, client, workers):
    # 200 on moto's SQS server, whose cost per call grows with its backlog (docs/backends.md).
    n = 200 if server.env["FOREMAN_QUEUE_BACKEND"] == "sqs" else 500
    workers += [WorkerProcess(server, "--concurrency", "20") for _ in range(2)]
    for worker in workers:
        worker.wait_started()
    run = await client.create_run({"n": n})
    await client.enqueue_tasks([TaskSpec(run.id, "nap", 0.01) for _ in range(n)])

    finished = await run_finished(client, run.id, n, timeout_s=60)
    assert (finished.total_tasks, finished.completed_tasks) == (n, n)
    assert (finished.failed_tasks, finished.cancelled_tasks) == (0, 0)
    tasks = await all_tasks(client, run.id)
    assert len(tasks) == n
    assert {t.status for t in tasks} == {"completed"}
    assert {t.attempt for t in tasks} == {1}  # each claimed exactly once
    ran_on = Counter(t.output_data["pid"] for t in tasks)
    assert set(ran_on) == {w.pid for w in workers}  # both workers took part
    for worker in workers:
        assert worker.stop() == 0, worker.log()
    # Still exact after the workers are gone (no late double completion).
    assert (await client.get_run(run.id)).completed_tasks == n


async def test_kill_9_mid_task_every_task_completes_on_the_other_worker(server, client, workers):
    doomed = WorkerProcess(server, "--concurrency", "10", "--lease", "2", name="doomed")
    workers.append(doomed)
    doomed.wait_started()
    run = await client.create_run({})
    tasks = await client.enqueue_tasks([TaskSpec(run.id, "nap", 1.5) for _ in range(12)])

    async def held_by_doomed() -> bool:
        page = await client.list_tasks(run_id=run.id, status="running")
        return page.pagination.total >= 8

    await eventually(held_by_doomed, timeout_s=15, what="the first worker to hold 8 tasks")
    running = {t.id for t in (await client.list_tasks(run_id=run.id, status="running")).data}
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(10)
    survivor = WorkerProcess(server, "--concurrency", "10", "--lease", "5", name="survivor")
    workers.append(survivor)

    finished = await run_finished(client, run.id, 12, timeout_s=45)
    assert (finished.completed_tasks, finished.failed_tasks, finished.total_tasks) == (12, 0, 12)
    by_id = {t.id: t for t in await all_tasks(client, run.id)}
    assert {t.status for t in by_id.values()} == {"completed"}
    for task_id in running:
        task = by_id[task_id]
        # The killed attempt counted; the next one ran on the survivor.
        assert task.attempt == 2, task
        assert task.output_data["pid"] == survivor.pid
    assert len(by_id) == len(tasks)
    assert survivor.stop() == 0


async def test_graceful_shutdown_of_a_worker_process(server, client, workers):
    worker = WorkerProcess(server, "--concurrency", "4", "--grace", "1.5")
    workers.append(worker)
    worker.wait_started()
    run = await client.create_run({})
    # The slow ones first, and 1 s for the quick ones to overlap: a broker's pickup (moto's SQS
    # on a loaded machine) may take a few hundred ms.
    slow = [await client.enqueue_task(run.id, type="sync_nap", input_data=20) for _ in range(2)]
    quick = [await client.enqueue_task(run.id, type="nap", input_data=1.0) for _ in range(2)]

    async def all_running() -> bool:
        page = await client.list_tasks(run_id=run.id, status="running")
        return page.pagination.total == 4

    await eventually(all_running, timeout_s=15, what="4 running tasks")
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout_s=15) == 0, worker.log()
    assert time.monotonic() - started < 6
    for task in quick:
        assert (await client.get_task(task.id)).status == "completed"
    for task in slow:
        released = await client.get_task(task.id)
        assert (released.status, released.attempt) == ("queued", 0)  # back, attempt not counted
    assert "stopped" in worker.log()


async def test_redis_flushall_and_restart_lose_nothing(
    bull_server, bull_client, own_redis: OwnRedis, workers
):
    client = bull_client
    run = await client.create_run({})
    await client.enqueue_tasks([TaskSpec(run.id, "noop", i) for i in range(100)])
    own_redis.flushall()  # every job gone while no worker runs
    worker = WorkerProcess(bull_server, "--concurrency", "20")
    workers.append(worker)
    await run_finished(client, run.id, 100, timeout_s=30)

    await client.enqueue_tasks([TaskSpec(run.id, "nap", 0.2) for _ in range(100)])

    async def some_done() -> bool:
        return (await client.get_run(run.id)).completed_tasks >= 110

    await eventually(some_done, timeout_s=20, what="processing to start")
    own_redis.restart()  # connections dropped and, without persistence, every job lost
    assert (await client.get_run(run.id)).completed_tasks < 200  # it did land mid-run
    finished = await run_finished(client, run.id, 200, timeout_s=60)
    assert (finished.completed_tasks, finished.failed_tasks) == (200, 0)
    tasks = await all_tasks(client, run.id)
    assert {t.status for t in tasks} == {"completed"}
    assert sorted(t.output_data["echo"] for t in tasks if t.type == "noop") == list(range(100))
    assert worker.stop() == 0, worker.log()


async def test_a_job_in_the_node_client_format_is_processed(bull_server, bull_client, own_redis):
    client = bull_client
    config = await client.get_config()
    run = await client.create_run({})
    # The Node foreman-client creates a pending task, then adds its own job with extra fields.
    task = await client.create_task(run.id, type="noop", input_data={"from": "node"})
    queue = Queue(
        config.queues.task_queue,
        {"connection": RedisOptions.from_config(config.redis).connection()},
    )
    try:
        job = await queue.add(
            "noop",
            {
                "taskId": task.id,
                "runId": run.id,
                "type": "noop",
                "inputData": {"from": "node"},
                "metadata": None,
            },
            {
                "removeOnComplete": True,
                "removeOnFail": False,
                "attempts": 3,
                "backoff": {"type": "exponential", "delay": 2000},
            },
        )
        assert job.id  # an id of BullMQ's choosing, not ours
        worker = Worker(client, handlers.HANDLERS, handle_signals=False, backend="bullmq")
        stats = await worker.run(burst=True)
        done = await client.get_task(task.id)
        assert done.status == "completed"
        assert done.output_data["echo"] == {"from": "node"}
        assert stats.completed == 1
        assert await queue.getJob(job.id) is None  # acknowledged and removed
    finally:
        await queue.close()


async def test_a_bullmq_burst_worker_takes_a_job_that_arrives_while_it_waits(
    bull_server, bull_client, monkeypatch
):
    # A burst ends only when its last wait for the queue's marker passes with nothing ready;
    # a job published during that wait is processed first. (The wait is lengthened here so that
    # the publish surely lands inside it.)
    from foreman.worker import _bullmq

    monkeypatch.setattr(_bullmq, "BURST_WAIT_S", 3.0)
    run = await bull_client.create_run({})
    worker = Worker(bull_client, handlers.HANDLERS, handle_signals=False, backend="bullmq")
    running = asyncio.create_task(worker.run(burst=True))
    await asyncio.sleep(0.5)  # the worker found the queue empty and waits for the marker
    task = await bull_client.enqueue_task(run.id, type="noop", input_data={"late": True})
    stats = await asyncio.wait_for(running, 30)
    assert stats.completed == 1
    assert (await bull_client.get_task(task.id)).status == "completed"


async def test_an_idle_bullmq_worker_takes_a_new_job_with_the_move_queued_behind_its_wait(
    bull_server, bull_client, own_redis, monkeypatch
):
    # An idle worker blocks on the queue's marker with a moveToActive pipelined behind the wait:
    # the job arrives with no further round trip. That move carries the wait's start as its
    # timestamp, so the job's processedOn is set again to when it was taken (never before the job
    # was added, which BullMQ tools would show as a negative wait).
    from foreman.worker import _bullmq

    started_by: list[int] = []
    moved = _bullmq.BullMQSource._moved

    def spy(self, reply, token, *, moved_at_ms=0):
        job, delay = moved(self, reply, token, moved_at_ms=moved_at_ms)
        if job is not None:
            started_by.append(moved_at_ms)
        return job, delay

    monkeypatch.setattr(_bullmq.BullMQSource, "_moved", spy)
    gate = asyncio.Event()
    running_handler = asyncio.Event()

    async def held(_ctx):
        running_handler.set()
        await gate.wait()
        return {"held": True}

    config = await bull_client.get_config()
    run = await bull_client.create_run({})
    worker = Worker(bull_client, {"held": held}, handle_signals=False, backend="bullmq")
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.5)  # the queue is empty: the worker waits on the marker
        task = await bull_client.enqueue_task(run.id, type="held", input_data={})
        await asyncio.wait_for(running_handler.wait(), 10)
        assert len(started_by) == 1
        assert started_by[0] > 0  # taken by the queued move
        key = f"bull:{config.queues.task_queue}:{task.id}:1"
        job = await asyncio.to_thread(
            redis.Redis(port=own_redis.port, decode_responses=True).hgetall, key
        )
        assert int(job["processedOn"]) >= int(job["timestamp"]) > started_by[0]
        gate.set()

        async def completed() -> bool:
            return (await bull_client.get_task(task.id)).status == "completed"

        await eventually(completed, timeout_s=10, what="the held task to complete")
    finally:
        gate.set()
        worker.stop()
        await asyncio.wait_for(running, 30)


async def test_an_idle_bullmq_worker_starts_a_job_delayed_past_five_seconds_on_time(
    bull_server, bull_client
):
    # The worker waits on the marker until the delayed job is due (6.5 s here). redis-py's default
    # socket timeout of 5 s used to cut such a wait short and retry it until it gave up: the job
    # started ~110 s late.
    run = await bull_client.create_run({})
    worker = Worker(bull_client, handlers.HANDLERS, handle_signals=False, backend="bullmq")
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.5)  # idle: the queue is empty
        task = await bull_client.enqueue_task(run.id, type="noop", input_data=1, delay_ms=6500)

        async def completed() -> bool:
            return (await bull_client.get_task(task.id)).status == "completed"

        await eventually(completed, timeout_s=20, what="the delayed task to complete")
        done = await bull_client.get_task(task.id)
        assert done.started_at is not None
        assert 6500 <= done.started_at - done.created_at <= 8500
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)


async def test_an_incompatible_bullmq_stops_the_worker_with_its_error(
    bull_server, bull_client, monkeypatch
):
    # Only Redis's own errors (down, restarting) are logged and retried; anything else, such as a
    # bullmq upgrade whose helpers read its replies differently, ends run() with that error
    # (it used to be a warning logged every 0.5 s, forever).
    from foreman.worker import _bullmq

    def changed(raw):
        raise TypeError("raw2NextJobData changed")

    monkeypatch.setattr(_bullmq, "raw2NextJobData", changed)
    config = await bull_client.get_config()
    name = unique_queue_name()  # the job stays locked: a queue of this test alone
    connection = RedisOptions.from_config(config.redis).connection()
    queue = Queue(name, {"connection": connection})
    try:
        await queue.add("noop", {"taskId": str(uuid.uuid4())})
        async with AsyncClient(bull_server.url, KEY_A, task_queue=name) as client:
            worker = Worker(client, handlers.HANDLERS, handle_signals=False, backend="bullmq")
            with pytest.raises(TypeError, match="raw2NextJobData changed"):
                # Not "at once": run() closes the source first, which may wait out the marker
                # wait in flight (up to 10 s, more on a loaded machine); forever is what failed.
                await asyncio.wait_for(worker.run(burst=True), 40)
    finally:
        await queue.obliterate(force=True)
        await queue.close()
