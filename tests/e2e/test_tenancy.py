"""The bullmq backend against hostile tenants (issue 14): the three findings, reproduced and gone.

1. A worker of organisation B used to receive A's jobs from the one shared queue, drop them (404),
   and log A's task ids while the sweeper re-published them every second (A's pickup: seconds).
2. Every key holder got the Redis admin password, so B could add a job naming A's pending or
   delayed task to A's queue and have A's worker run it early.
3. One malformed job next to good ones made the consumer drop its whole batch (the good jobs
   started at the stalled check, 30+ s later) and log the same error every 0.5 s.

A real `foreman server` on a redis-server of our own (one with the admin password for the ACL
tests), in-process workers whose logs the tests read.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from bullmq import Queue
from redis.exceptions import NoPermissionError, ResponseError

from foreman import AsyncClient, RedisOptions, TaskSpec, Worker
from foreman.queue.naming import org_queue_name
from foreman.worker import _bullmq
from tests.conftest import KEY_A, KEY_B
from tests.e2e import handlers
from tests.e2e.conftest import OwnRedis, running_own_redis, start_server
from tests.e2e.helpers import all_tasks, eventually, run_finished
from tests.integration.live_server import ServerProcess

pytestmark = pytest.mark.timeout(120)

ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
ACL_SECRET = uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture
async def api_a(bull_server, db_url) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(bull_server.url, KEY_A) as client:
        yield client


@pytest.fixture
async def api_b(bull_server, db_url) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(bull_server.url, KEY_B) as client:
        yield client


def admin_redis(own: OwnRedis) -> redis_asyncio.Redis:
    return redis_asyncio.Redis(
        port=own.port, password=own.password, decode_responses=True, encoding_errors="replace"
    )


class Running:
    """An in-process Worker running in the background of the test."""

    def __init__(self, client: AsyncClient, **options: Any) -> None:
        options.setdefault("concurrency", 20)
        self.worker = Worker(
            client, handlers.HANDLERS, handle_signals=False, backend="bullmq", **options
        )
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, 40)


@pytest.fixture
def foreman_logs(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="foreman")
    return caplog


# ---------------------------------------------------------------- finding 1


async def test_a_worker_of_another_organisation_never_sees_a_task_id(
    bull_server, api_a, api_b, own_redis, foreman_logs
):
    b_worker = Running(api_b)
    try:
        await asyncio.sleep(0.5)  # B's worker waits on its queue
        run = await api_a.create_run({"tenant": "a"})
        tasks = await api_a.enqueue_tasks([TaskSpec(run.id, "noop", i) for i in range(50)])
        # Long enough for B to have taken them and for the sweeper (every 0.2 s, after 0.5 s of
        # grace) to have re-published what B dropped: the old shared queue's failure.
        await asyncio.sleep(2.0)
        config = await api_a.get_config()
        admin = admin_redis(own_redis)
        try:
            assert await admin.llen(f"bull:{config.queues.task_queue}:wait") == 50
        finally:
            await admin.aclose()
    finally:
        await b_worker.stop()
    assert b_worker.worker.stats.claimed == 0
    seen_by_b = foreman_logs.text
    assert not [t.id for t in tasks if t.id in seen_by_b]
    # A's own worker then takes every one at once, each in its first attempt (none republished).
    started = time.monotonic()
    a_worker = Running(api_a)
    try:
        finished = await run_finished(api_a, run.id, 50, timeout_s=30)
    finally:
        await a_worker.stop()
    assert finished.completed_tasks == 50
    assert time.monotonic() - started < 10
    done = await all_tasks(api_a, run.id)
    assert {(t.status, t.attempt, t.retry_count) for t in done} == {("completed", 1, 0)}


# ---------------------------------------------------------------- finding 3


async def _raw_job(admin: redis_asyncio.Redis, queue: str, fields: dict[str, Any]) -> str:
    """A job written straight into Redis the way BullMQ's add does (FIFO), whatever it holds."""
    job_id = f"raw-{uuid.uuid4().hex[:8]}"
    key = f"bull:{queue}:{job_id}"
    await admin.hset(key, mapping={"name": "noop", "timestamp": str(int(time.time() * 1000)),
                                   **fields})  # fmt: skip
    await admin.lpush(f"bull:{queue}:wait", job_id)
    await admin.zadd(f"bull:{queue}:marker", {"0": 0})
    return job_id


async def test_poison_jobs_are_failed_and_the_rest_of_their_batch_runs_at_once(
    bull_server, api_a, api_b, own_redis, foreman_logs
):
    config = await api_a.get_config()
    name = config.queues.task_queue
    run = await api_a.create_run({"poison": True})
    b_run = await api_b.create_run({})
    b_task = await api_b.enqueue_task(b_run.id, type="noop", input_data="b's")
    admin = admin_redis(own_redis)
    raw = redis_asyncio.Redis(port=own_redis.port, password=own_redis.password)
    producer = Queue(name, {"connection": RedisOptions.from_config(config.redis).connection()})
    poison: dict[str, str] = {}  # job id -> the reason it must be failed with
    good = []
    try:
        for i in range(30):  # the poison jobs sit between good ones, so they share batches
            good.append(await api_a.enqueue_task(run.id, type="noop", input_data=i))
            if i == 2:
                poison[await _raw_job(admin, name, {"data": "{not json", "opts": "{}"})] = (
                    _bullmq.MALFORMED
                )
            elif i == 5:
                poison[await _raw_job(admin, name, {"data": "{}", "opts": "[1]"})] = (
                    _bullmq.MALFORMED
                )
            elif i == 9:
                job_id = f"raw-{uuid.uuid4().hex[:8]}"
                await raw.hset(f"bull:{name}:{job_id}", mapping={"name": "noop",
                               "data": b'{"taskId": "\xff\xfe"}', "opts": "{}"})  # fmt: skip
                await raw.lpush(f"bull:{name}:wait", job_id)
                poison[job_id] = _bullmq.NO_TASK_ID
            elif i == 14:
                poison[(await producer.add("noop", {"no": "task"})).id] = _bullmq.NO_TASK_ID
            elif i == 17:  # a task of organisation B, named in A's queue
                poison[(await producer.add("noop", {"taskId": b_task.id})).id] = (
                    _bullmq.UNKNOWN_TASK
                )
            elif i == 23:
                poison[(await producer.add("noop", {"taskId": str(uuid.uuid4())})).id] = (
                    _bullmq.UNKNOWN_TASK
                )
        started = time.monotonic()
        worker = Running(api_a, concurrency=50)
        try:
            finished = await run_finished(api_a, run.id, 30, timeout_s=30)
            taken_s = time.monotonic() - started
        finally:
            await worker.stop()
        # The good jobs ran at once: not at the stalled check, 30 s later.
        assert finished.completed_tasks == 30
        assert taken_s < 10
        assert {t.attempt for t in await all_tasks(api_a, run.id)} == {1}
        counts = await producer.getJobCounts("active", "wait", "failed", "completed")
        assert counts == {"active": 0, "wait": 0, "failed": len(poison), "completed": 0}
        for job_id, reason in poison.items():
            assert await admin.hget(f"bull:{name}:{job_id}", "failedReason") == reason, job_id
    finally:
        await producer.obliterate(force=True)
        await producer.close()
        await admin.aclose()
        await raw.aclose()
    logs = foreman_logs.text
    for job_id in poison:  # each logged once, by its job id
        assert logs.count(job_id) == 1, (job_id, logs)
    assert b_task.id not in logs  # never another organisation's data
    assert "Traceback" not in logs
    # B's task is untouched: still queued, never claimed.
    b_now = await api_b.get_task(b_task.id)
    assert (b_now.status, b_now.attempt) == ("queued", 0)


async def test_a_broker_error_is_retried_with_backoff_not_logged_at_a_fixed_rate(
    bull_server, api_a, own_redis, foreman_logs
):
    config = await api_a.get_config()
    wait_key = f"bull:{config.queues.task_queue}:wait"
    admin = admin_redis(own_redis)
    worker = None
    try:
        # The queue's wait list made a string: every moveToActive is refused (WRONGTYPE).
        await admin.set(wait_key, "not a list")
        worker = Running(api_a)
        await asyncio.sleep(4.0)
        refused = [r for r in foreman_logs.records if "taking jobs from BullMQ failed" in r.message]
        # At a fixed 0.5 s: 8 lines by now. Backing off (0.5, 1, 2 s...), logged at the 1st,
        # 2nd and 4th failure: at most 3.
        assert 1 <= len(refused) <= 3, [r.message for r in refused]
        await admin.delete(wait_key)
        run = await api_a.create_run({})
        task = await api_a.enqueue_task(run.id, type="noop", input_data=1)

        async def completed() -> bool:
            return (await api_a.get_task(task.id)).status == "completed"

        await eventually(completed, timeout_s=15, what="the worker to recover")
    finally:
        if worker is not None:
            await worker.stop()
        await admin.delete(wait_key)
        await admin.aclose()
    assert any("BullMQ answers again" in r.message for r in foreman_logs.records)
