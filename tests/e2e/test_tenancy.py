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
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis_asyncio
from bullmq import Queue
from redis.exceptions import NoPermissionError, ResponseError

from foreman import AsyncClient, RedisOptions, TaskSpec, Worker
from foreman.queue.naming import org_queue_name
from foreman.worker import _bullmq
from tests.conftest import KEY_A, KEY_B, ORG_A
from tests.e2e import handlers
from tests.e2e.conftest import OwnRedis, running_own_redis, start_server
from tests.e2e.helpers import all_tasks, eventually, run_finished
from tests.integration.live_server import ServerProcess

pytestmark = pytest.mark.timeout(120)

ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
ACL_SECRET = uuid.uuid4().hex + uuid.uuid4().hex
DENIED = r"NOPERM|permission|can't run this command"  # Redis's words for an ACL refusal


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
    # Failed jobs of earlier tests may share A's queue (and its job ids stay unique: no reset).
    failed_before = (await producer.getJobCounts("failed"))["failed"]
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
        assert counts == {
            "active": 0, "wait": 0, "failed": failed_before + len(poison), "completed": 0
        }  # fmt: skip
        for job_id, reason in poison.items():
            assert await admin.hget(f"bull:{name}:{job_id}", "failedReason") == reason, job_id
    finally:
        await producer.obliterate(force=True)
        await producer.close()
        await admin.aclose()
        await raw.aclose()
    logs = foreman_logs.text
    for job_id in poison:  # each logged once, by its job id (numeric ids: whole words only)
        mentions = re.findall(rf"(?<![\w-]){re.escape(job_id)}(?![\w-])", logs)
        assert len(mentions) == 1, (job_id, logs)
        assert f"BullMQ job {job_id} moved to failed" in logs
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


# ---------------------------------------------------------------- finding 2: Redis ACLs


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[OwnRedis]:
    """A Redis whose default user needs the admin password, as FOREMAN_REDIS_ACL requires."""
    with running_own_redis(password=ADMIN_PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def acl_server(database_url: str, e2e_dir: Path, acl_redis: OwnRedis) -> Iterator[ServerProcess]:
    server = start_server(
        database_url,
        e2e_dir,
        backend="bullmq",
        own=acl_redis,
        FOREMAN_REDIS_ACL="per-org",
        FOREMAN_REDIS_ACL_SECRET=ACL_SECRET,
    )
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def acl_apis(acl_server, db_url) -> AsyncIterator[tuple[AsyncClient, AsyncClient]]:
    async with AsyncClient(acl_server.url, KEY_A) as a, AsyncClient(acl_server.url, KEY_B) as b:
        yield a, b


def _connection(config: Any) -> dict[str, Any]:
    return RedisOptions.from_config(config.redis).connection()


async def test_each_organisation_gets_a_redis_user_of_its_own_and_never_the_admin_password(
    acl_apis, acl_server
):
    api_a, api_b = acl_apis
    a, b = await api_a.get_config(), await api_b.get_config()
    for config in (a, b):
        assert config.redis.username
        assert config.redis.password
        assert config.redis.password != ADMIN_PASSWORD
    assert a.redis.username != b.redis.username
    assert a.redis.password != b.redis.password
    # Asked again (another replica would derive the same): the same user and password.
    again = await api_a.get_config()
    assert (again.redis.username, again.redis.password) == (a.redis.username, a.redis.password)
    # The admin password appears in no answer of any config endpoint.
    async with httpx.AsyncClient(base_url=acl_server.url) as http:
        for key in (KEY_A, KEY_B):
            for path in ("/api/v1/config", "/api/v1/config/redis", "/api/v1/config/queues"):
                answer = await http.get(path, headers={"x-api-key": key})
                assert answer.status_code == 200
                assert ADMIN_PASSWORD not in answer.text


async def test_organisation_b_cannot_read_or_write_organisation_a_s_queue(
    acl_apis, acl_server, acl_redis
):
    api_a, api_b = acl_apis
    a, b = await api_a.get_config(), await api_b.get_config()
    run = await api_a.create_run({})
    pending = await api_a.create_task(run.id, type="noop", input_data="never enqueued")
    delayed = await api_a.enqueue_task(run.id, type="noop", input_data="later", delay_ms=60_000)
    a_queue = a.queues.task_queue
    assert a_queue == org_queue_name(acl_server.env["TASK_QUEUE_NAME"], ORG_A)
    b_redis = redis_asyncio.Redis(**_connection(b), decode_responses=True)
    a_as_b = Queue(a_queue, {"connection": _connection(b)})
    try:
        assert await b_redis.ping()
        # The old attack: B adds a job naming A's pending task to A's queue. Refused.
        with pytest.raises(NoPermissionError):
            await a_as_b.add("noop", {"taskId": pending.id})
        with pytest.raises(NoPermissionError):
            await a_as_b.add("noop", {"taskId": delayed.id}, {"jobId": f"{delayed.id}:1"})
        denied = [
            ("HGETALL", f"bull:{a_queue}:{delayed.id}:1"),
            ("ZRANGE", f"bull:{a_queue}:delayed", "0", "-1"),
            ("DEL", f"bull:{a_queue}:delayed"),
            ("SET", f"bull:{a_queue}:wait", "x"),
            ("KEYS", "*"),
            ("SCAN", "0"),
            ("RANDOMKEY",),
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("CONFIG", "GET", "requirepass"),
            ("ACL", "LIST"),
            ("CLIENT", "LIST"),
            ("MONITOR",),
            ("PUBLISH", f"bull:{a_queue}:events", "x"),
            ("EVAL", "return redis.call('GET', KEYS[1])", "1", f"bull:{a_queue}:meta"),
            ("EVAL", f"return redis.call('KEYS', 'bull:{a_queue}:*')", "0"),
            ("CLIENT", "TRACKING", "on", "BCAST"),
        ]
        for command in denied:
            with pytest.raises(ResponseError, match=DENIED):
                await b_redis.execute_command(*command)
        # Its own queue's keys it may use.
        await b_redis.set(f"bull:{b.queues.task_queue}:probe", "1")
        await b_redis.delete(f"bull:{b.queues.task_queue}:probe")
    finally:
        await a_as_b.close()
        await b_redis.aclose()
    # Nothing of A's changed: the pending task is pending, the delayed one still waits.
    assert (await api_a.get_task(pending.id)).status == "pending"
    assert (await api_a.get_task(delayed.id)).attempt == 0
    admin = admin_redis(acl_redis)
    try:
        assert await admin.zcard(f"bull:{a_queue}:delayed") == 1
    finally:
        await admin.aclose()


async def test_workers_run_their_organisation_s_tasks_with_their_own_redis_user(acl_apis):
    api_a, api_b = acl_apis
    runs = [await api.create_run({}) for api in (api_a, api_b)]
    for api, run in zip((api_a, api_b), runs, strict=True):
        await api.enqueue_tasks([TaskSpec(run.id, "noop", i, priority=i % 3 or None)
                                 for i in range(20)])  # fmt: skip
    workers = [Running(api_a), Running(api_b)]
    try:
        for api, run in zip((api_a, api_b), runs, strict=True):
            finished = await run_finished(api, run.id, 20, timeout_s=30)
            assert finished.completed_tasks == 20
    finally:
        for worker in workers:
            await worker.stop()
    # The client publishing jobs itself (as the Node foreman-client) uses the same user.
    async with AsyncClient(api_a.options.endpoint, KEY_A, queue_backend="bullmq") as sdk:
        run = await sdk.create_run({})
        await sdk.enqueue_tasks([TaskSpec(run.id, "noop", i) for i in range(5)])
        worker = Running(api_a)
        try:
            assert (await run_finished(api_a, run.id, 5, timeout_s=30)).completed_tasks == 5
        finally:
            await worker.stop()


async def test_a_worker_whose_redis_user_vanished_asks_again_and_carries_on(acl_apis, acl_redis):
    # A Redis restarted without its ACL file (or a password rotated out): the worker's next
    # connection is refused, it asks /api/v1/config again, and the server sets the user up again.
    api_a, _ = acl_apis
    config = await api_a.get_config()
    run = await api_a.create_run({})
    worker = Running(api_a)
    admin = admin_redis(acl_redis)
    try:
        first = await api_a.enqueue_task(run.id, type="noop", input_data=1)
        await run_finished(api_a, run.id, 1, timeout_s=20)
        assert await admin.execute_command("ACL", "DELUSER", config.redis.username) == 1
        started = time.monotonic()
        second = await api_a.enqueue_task(run.id, type="noop", input_data=2)
        finished = await run_finished(api_a, run.id, 2, timeout_s=60)
        assert finished.completed_tasks == 2
        # redis-py retries a refused connection for up to 10 s (RECONNECT_S x RECONNECT_TRIES)
        # before the worker sees it: 11 s measured.
        assert time.monotonic() - started < 30
    finally:
        await worker.stop()
        await admin.aclose()
    assert first.id != second.id
