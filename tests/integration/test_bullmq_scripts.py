"""BullMQ's Lua scripts sent by EVALSHA (queue/bullmq.py ``run_scripts``), on a Redis of our own.

The add scripts go out as EVALSHA in one pipeline, without redis-py's SCRIPT EXISTS round trip,
and a Redis that lost its scripts (restarted, SCRIPT FLUSH) gets them loaded again. SCRIPT FLUSH
and CONFIG RESETSTAT are only ever sent to this module's private redis-server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis_asyncio

from foreman.queue.base import Message
from foreman.queue.bullmq import BullMQQueue, redis_client
from tests.conftest import make_settings
from tests.e2e.conftest import OwnRedis, running_own_redis
from tests.queue_helpers import unique_queue_name

UNUSED_DATABASE = "postgresql://postgres@127.0.0.1:5432/unused"  # Settings needs one; never used


@pytest.fixture(scope="module")
def private_redis() -> Iterator[OwnRedis]:
    with running_own_redis() as server:
        yield server


@pytest.fixture
async def admin(private_redis: OwnRedis) -> AsyncIterator[redis_asyncio.Redis]:
    """A plain client of the private Redis, to flush scripts and read keys."""
    client = redis_asyncio.Redis(port=private_redis.port, decode_responses=True)
    assert (await client.info("server"))["tcp_port"] == private_redis.port  # never the shared one
    yield client
    await client.aclose()


@pytest.fixture
async def queue(private_redis: OwnRedis) -> AsyncIterator[BullMQQueue]:
    settings = make_settings(
        UNUSED_DATABASE,
        queue_backend="bullmq",
        redis_host="127.0.0.1",
        redis_port=private_redis.port,
        task_queue_name=unique_queue_name(),
    )
    queue = BullMQQueue(settings.task_queue_name, client=redis_client(settings))
    yield queue
    await queue.close()


def message(kind: str, *, attempt: int = 1) -> Message:
    task_id = str(uuid.uuid4())
    if kind == "delayed":
        return Message(task_id, "resize", attempt=attempt, delay_ms=60_000, max_attempts=3)
    if kind == "prioritized":
        return Message(task_id, "resize", attempt=attempt, priority=5, max_attempts=3)
    return Message(task_id, "resize", attempt=attempt, max_attempts=3)


def kind_of(sent: Message) -> str:
    if sent.delay_ms:
        return "delayed"
    return "prioritized" if sent.priority else "standard"


async def job_state(admin: redis_asyncio.Redis, queue: BullMQQueue, job_id: str) -> str:
    """Where the job id is: the wait list, the delayed or the prioritized zset (or "nowhere")."""
    prefix = f"bull:{queue.queue_name}"
    places = []
    if job_id in await admin.lrange(f"{prefix}:wait", 0, -1):
        places.append("wait")
    if await admin.zscore(f"{prefix}:delayed", job_id) is not None:
        places.append("delayed")
    if await admin.zscore(f"{prefix}:prioritized", job_id) is not None:
        places.append("prioritized")
    return ",".join(places) or "nowhere"


async def assert_job(
    admin: redis_asyncio.Redis, queue: BullMQQueue, sent: Message, state: str
) -> None:
    job_id = f"{sent.task_id}:{sent.attempt}"
    job = await admin.hgetall(f"bull:{queue.queue_name}:{job_id}")
    assert job, f"no job {job_id}"
    assert json.loads(job["data"]) == {"taskId": sent.task_id}
    assert job["name"] == sent.task_type
    assert await job_state(admin, queue, job_id) == state


async def command_calls(admin: redis_asyncio.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT ("script|load", "evalsha", ...)."""
    stats = await admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


STATES = {"standard": "wait", "delayed": "delayed", "prioritized": "prioritized"}


@pytest.mark.parametrize("kind", list(STATES))
async def test_a_job_is_added_after_redis_lost_its_scripts(admin, queue, kind):
    first = message("standard")
    await queue.enqueue([first])
    assert await admin.script_flush()
    after = message(kind, attempt=2)
    await queue.enqueue([after])
    await assert_job(admin, queue, first, "wait")
    await assert_job(admin, queue, after, STATES[kind])


async def test_every_lost_script_is_loaded_again_in_one_go(admin, queue):
    await queue.enqueue([message("standard")])
    assert await admin.script_flush()
    await admin.config_resetstat()
    sent = [message("standard"), message("delayed"), message("prioritized"), message("standard")]
    await queue.enqueue(sent)
    for one in sent:
        await assert_job(admin, queue, one, STATES[kind_of(one)])
    calls = await command_calls(admin)
    assert calls.get("script|load") == 3  # each of the three add scripts once
    assert calls.get("evalsha") == 2 * len(sent)  # refused with NOSCRIPT, then sent again


async def test_only_the_refused_calls_are_sent_again(admin, queue):
    assert await admin.script_flush()
    await queue.enqueue([message("standard")])  # loads the standard script only
    await admin.config_resetstat()
    sent = [message("standard"), message("delayed"), message("prioritized"), message("standard")]
    await queue.enqueue(sent)
    for one in sent:
        await assert_job(admin, queue, one, STATES[kind_of(one)])
    calls = await command_calls(admin)
    assert calls.get("script|load") == 2
    assert calls.get("evalsha") == len(sent) + 2  # the delayed and the prioritized job again


async def test_scripts_in_redis_go_out_as_evalsha_only(admin, queue):
    await queue.enqueue([message("delayed"), message("prioritized"), message("standard")])
    await admin.config_resetstat()
    sent = [message("standard"), message("delayed"), message("prioritized")] * 2
    await queue.enqueue(sent)
    calls = await command_calls(admin)
    # One EVALSHA per job; no SCRIPT EXISTS (redis-py's pipelined Script objects send one).
    assert calls.get("evalsha") == len(sent)
    assert "script|exists" not in calls
    assert "script|load" not in calls
    for one in sent:
        await assert_job(admin, queue, one, STATES[kind_of(one)])


async def test_adding_the_same_attempt_again_adds_no_second_job(admin, queue):
    sent = message("standard")
    await queue.enqueue([sent])
    assert await admin.script_flush()
    await queue.enqueue([sent])
    assert await admin.lrange(f"bull:{queue.queue_name}:wait", 0, -1) == [
        f"{sent.task_id}:{sent.attempt}"
    ]
