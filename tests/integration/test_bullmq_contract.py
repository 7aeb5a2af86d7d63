"""What Foreman's BullMQ adapters rely on in the ``bullmq`` package, checked against the installed
release: a bullmq (or redis-py) upgrade that changes it fails here, by name, not in production.

Three adapters: the server's queue (queue/bullmq.py: add scripts sent by EVALSHA with key lists
copied from ``Scripts``), the worker's source (worker/_bullmq.py: moveToActive, moveToFinished,
extendLocks and moveStalledJobsToWait, pipelined) and the client's publisher (client/_bullmq.py:
``Queue.addBulk``). Each test has a queue of its own on the shared Redis.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from bullmq import Job, Queue
from bullmq.redis_connection import RedisConnection
from bullmq.scripts import Scripts, raw2NextJobData

from foreman.client import AsyncClient, RedisOptions
from foreman.client._bullmq import AsyncPublisher
from foreman.queue.base import Message
from foreman.queue.bullmq import _ADD_KEYS, BullMQQueue, add_job_call, job_options
from foreman.worker import _bullmq
from foreman.worker.source import SourceContext
from tests.queue_helpers import bullmq_queue, obliterate, unique_queue_name

# The Scripts methods the adapters call, with the parameters they pass (positionally).
SCRIPTS_METHODS = {
    "__init__": ["self", "prefix", "queueName", "redisConnection"],
    "addJobArgs": ["self", "job"],
    "getKeys": ["self", "keys"],
    "toKey": ["self", "name"],
    "moveToCompletedArgs": ["self", "job", "return_value", "shouldRemove", "token", "fetchNext"],
    # Poison jobs (a malformed one, one naming no task or another organisation's) go to failed.
    "moveToFailedArgs": ["self", "job", "failed_reason", "shouldRemove", "token", "fetchNext"],
    "extendJobLocks": ["self", "job_ids", "tokens", "duration"],
    "moveStalledJobsToWait": ["self", "maxStalledCount", "stalledInterval"],
    "remove": ["self", "job_id", "remove_children"],  # the sweeper clears a finished job
}
LUA_SCRIPTS = [
    "addStandardJob", "addDelayedJob", "addPrioritizedJob", "moveToActive", "moveToFinished",
    "extendLocks", "moveStalledJobsToWait",
]  # fmt: skip


class Recorder:
    """Stands in for one of bullmq's Lua scripts: records the keys and arguments it is run with."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[Any]]] = []

    async def __call__(self, keys: Any = (), args: Any = (), client: Any = None) -> Any:
        self.calls.append((list(keys), list(args)))
        return None


@pytest.fixture
async def queue_name(redis_server) -> AsyncIterator[str]:
    name = unique_queue_name()
    yield name
    await obliterate(redis_server, name)


@pytest.fixture
async def queue(redis_server, queue_name) -> AsyncIterator[Queue]:
    bullmq = bullmq_queue(redis_server, queue_name)
    yield bullmq
    await bullmq.close()


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


# ---------------------------------------------------------------- what every adapter names


@pytest.mark.parametrize("method", list(SCRIPTS_METHODS))
def test_the_scripts_methods_take_the_arguments_we_pass(method):
    names = parameters(getattr(Scripts, method))
    expected = SCRIPTS_METHODS[method]
    assert names[: len(expected)] == expected, f"Scripts.{method} takes {names}"


def test_job_and_reply_helpers_take_the_arguments_we_pass():
    assert parameters(Job.__init__)[:6] == ["self", "queue", "name", "data", "opts", "job_id"]
    assert parameters(Job.fromJSON)[:3] == ["queue", "rawData", "jobId"]
    assert parameters(raw2NextJobData) == ["raw"]
    assert parameters(RedisConnection.__init__)[:2] == ["self", "redisOpts"]
    assert parameters(Queue.addBulk) == ["self", "jobs"]


def test_the_lua_scripts_and_keys_we_use_exist(queue):
    scripts = queue.scripts
    for name in LUA_SCRIPTS:
        script = scripts.commands[name]
        assert len(script.sha) == 40, name
        assert "redis.call" in script.script, name  # run_scripts loads .script after NOSCRIPT
    named = {key for keys in _ADD_KEYS.values() for key in keys}
    named |= {*_bullmq.MOVE_TO_ACTIVE_KEYS, "", "marker", "wait", "prioritized"}
    assert named <= set(scripts.keys), sorted(named - set(scripts.keys))


# ---------------------------------------------------------------- server: queue/bullmq.py


@pytest.mark.parametrize(
    "message",
    [
        Message(str(uuid.uuid4()), "resize", max_attempts=3),
        Message(str(uuid.uuid4()), "resize", delay_ms=60_000, max_attempts=3),
        Message(str(uuid.uuid4()), "resize", priority=5, max_attempts=3),
    ],
    ids=["standard", "delayed", "prioritized"],
)
async def test_an_add_call_is_what_bullmq_sends_for_the_job(queue, message, monkeypatch):
    opts = {**queue.jobsOpts, **job_options(message)}
    job = Job(queue, message.task_type, {"taskId": message.task_id}, opts, opts["jobId"])
    script, keys, args = add_job_call(queue.scripts, job)
    originals = dict(queue.scripts.commands)
    recorders = {name: Recorder() for name in _ADD_KEYS}
    for name, recorder in recorders.items():
        monkeypatch.setitem(queue.scripts.commands, name, recorder)
    await queue.scripts.addJob(job)
    (used,) = [name for name, recorder in recorders.items() if recorder.calls]
    assert script is originals[used]
    assert recorders[used].calls == [(keys, args)]


async def test_jobs_added_by_the_server_are_what_bullmq_reads(redis_server, queue_name, queue):
    server = BullMQQueue(queue_name, client=_redis(redis_server))
    try:
        sent = Message(str(uuid.uuid4()), "resize", priority=2, max_attempts=3)
        await server.enqueue([sent])
        job = await queue.getJob(f"{sent.task_id}:1")
        assert (job.name, job.data) == ("resize", {"taskId": sent.task_id})
        assert job.opts["attempts"] == 3
        assert await queue.getJobState(job.id) == "prioritized"
    finally:
        await server.close()


def _redis(redis_server) -> redis_asyncio.Redis:
    return redis_asyncio.Redis(
        host=redis_server.host, port=redis_server.port, decode_responses=True
    )


# ---------------------------------------------------------------- worker: worker/_bullmq.py


@pytest.fixture
async def source(redis_server, queue_name) -> AsyncIterator[_bullmq.BullMQSource]:
    context = SourceContext(
        client=AsyncClient("http://127.0.0.1:9"),  # never called: no claims in these tests
        worker_id="contract",
        lease_s=30.0,
        claim_wait_s=0.0,
        types=None,
        stopped=asyncio.Event(),
    )
    options = RedisOptions(host=redis_server.host, port=redis_server.port)
    taking = _bullmq.BullMQSource(context, options, queue_name)
    yield taking
    await taking.close()


async def test_move_to_active_is_called_as_bullmq_calls_it(source, monkeypatch):
    recorder = Recorder()
    monkeypatch.setitem(source._scripts.commands, "moveToActive", recorder)
    await source._scripts.moveToActive("token-1", {"lockDuration": source.lock_ms})
    ((keys, args),) = recorder.calls
    ours = source._move_to_active_args("token-1")
    assert source._move_keys == keys
    assert (ours[0], ours[2]) == (args[0], args[2])  # args[1] is the time of the call
    assert len(ours) == len(args)


async def test_a_job_is_taken_locked_and_acknowledged_as_bullmq_sees_it(
    redis_server, queue_name, queue, source
):
    server = BullMQQueue(queue_name, client=_redis(redis_server))
    try:
        sent = [Message(str(uuid.uuid4()), "resize", max_attempts=2) for _ in range(3)]
        await server.enqueue(sent)
        jobs = await source._take(4)  # pipelined moveToActive, one call finds nothing
        assert sorted(job.job.data["taskId"] for job in jobs) == sorted(m.task_id for m in sent)
        assert source._drained
        assert {await queue.getJobState(job.job.id) for job in jobs} == {"active"}
        ids, tokens = [job.job.id for job in jobs], [job.token for job in jobs]
        assert await source._scripts.extendJobLocks(ids, tokens, source.lock_ms) == []
        assert await source._scripts.moveStalledJobsToWait(1, 30_000) is not None
        await source._acknowledge(jobs)
        # removeOnComplete: acknowledged jobs are gone, as bullmq's Worker leaves them.
        assert [await queue.getJobState(job_id) for job_id in ids] == ["unknown"] * 3
    finally:
        await server.close()


async def test_the_marker_wait_takes_the_job_that_wakes_it(redis_server, queue_name, source):
    server = BullMQQueue(queue_name, client=_redis(redis_server))
    try:
        waiting = asyncio.create_task(source._wait_for_marker(5.0))
        await asyncio.sleep(0.2)
        sent = Message(str(uuid.uuid4()), "resize", max_attempts=1)
        await server.enqueue([sent])
        woke = await asyncio.wait_for(waiting, 10)
        assert [job.job.data for job in woke.jobs] == [{"taskId": sent.task_id}]
        assert woke.marker == 0
        await source._acknowledge(woke.jobs)
    finally:
        await server.close()


# ---------------------------------------------------------------- client: client/_bullmq.py


async def test_the_client_publishes_jobs_bullmq_reads(redis_server, queue_name, queue):
    publisher = AsyncPublisher(
        RedisOptions(host=redis_server.host, port=redis_server.port), queue_name
    )
    task_id = str(uuid.uuid4())
    opts = {
        "jobId": f"{task_id}:1",
        "attempts": 3,
        "backoff": {"type": "exponential", "delay": 2000},
        "removeOnComplete": True,
        "removeOnFail": False,
        "delay": 60_000,
    }
    try:
        await publisher.publish([{"name": "email", "data": {"taskId": task_id}, "opts": opts}])
    finally:
        await publisher.close()
    job = await queue.getJob(f"{task_id}:1")
    assert (job.name, job.data) == ("email", {"taskId": task_id})
    assert (job.opts["attempts"], job.opts["backoff"]) == (
        3,
        {"type": "exponential", "delay": 2000},
    )
    assert await queue.getJobState(job.id) == "delayed"
