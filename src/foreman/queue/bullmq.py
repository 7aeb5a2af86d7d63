"""The ``bullmq`` backend: BullMQ jobs in Redis that carry only a task id (SPEC section 7).

Wire format, compatible with the Node ``foreman-client`` (SPEC section 7, docs/queue-protocol.md
"BullMQ wire format"): queue ``TASK_QUEUE_NAME`` (or the organisation's queue derived from it,
queue/naming.py) under the default ``bull`` prefix, job name = the
task type, data exactly ``{"taskId": "<id>"}``, options ``priority``, ``delay``,
``attempts = maxRetries + 1`` (the attempts left, for a retry), exponential backoff from 2 s,
``removeOnComplete: true``, ``removeOnFail: false``. The server adds its jobs with the id
``<taskId>:<attempt>``: publishing the same attempt twice (a retried request, the sweeper) never
makes a second live job, since BullMQ ignores an add whose id already exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import redis.asyncio as redis_asyncio
from bullmq import Job
from bullmq.redis_connection import RedisConnection
from bullmq.scripts import Scripts
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from foreman import ids
from foreman.models import Task
from foreman.queue import naming
from foreman.queue.base import BackendName, Message, ready_messages
from foreman.settings import Settings

logger = logging.getLogger(__name__)

# SPEC section 7: the job shape every Foreman client and worker agrees on.
KEY_PREFIX = "bull"
JOB_DATA_KEY = "taskId"
JOB_BACKOFF: dict[str, Any] = {"type": "exponential", "delay": 2000}
REMOVE_ON_COMPLETE = True
REMOVE_ON_FAIL = False
# How many jobs go to Redis in one MULTI/EXEC, and how many existence checks in one pipeline.
ADD_CHUNK = 500
CHECK_CHUNK = 1000
# Queues whose keys are kept per process (one per organisation that published lately).
MAX_CACHED_QUEUES = 4096

# A publish must not hold up the HTTP answer for long: on timeout the sweeper publishes later.
PUBLISH_TIMEOUT_S = 3.0


def job_id(task_id: str, attempt: int) -> str:
    """The id of the job that starts attempt ``attempt`` of a task (one colon: Node accepts it)."""
    return f"{task_id}:{attempt}"


def job_data(task_id: str) -> dict[str, str]:
    """The job data: exactly ``{"taskId": id}``."""
    return {JOB_DATA_KEY: task_id}


def task_id_of(data: Any) -> str | None:
    """The task id in a job's data (ours or the Node client's), or None when there is none."""
    if isinstance(data, dict):
        value = data.get(JOB_DATA_KEY)
        if isinstance(value, str) and ids.is_uuid(value):
            return value
    return None


def job_options(message: Message) -> dict[str, Any]:
    """BullMQ options of a message (SPEC section 7)."""
    options: dict[str, Any] = {
        "jobId": job_id(message.task_id, message.attempt),
        "attempts": max(1, message.max_attempts - message.attempt + 1),
        "backoff": dict(JOB_BACKOFF),
        "removeOnComplete": REMOVE_ON_COMPLETE,
        "removeOnFail": REMOVE_ON_FAIL,
    }
    if message.priority:
        options["priority"] = message.priority
    if message.delay_ms > 0:
        options["delay"] = message.delay_ms
    return options


# A BullMQ Lua script (redis-py Script: .sha, .script), its keys and its arguments.
ScriptCall = tuple[Any, Sequence[Any], Sequence[Any]]
# The keys of BullMQ's add scripts, as bullmq's Scripts.addJob passes them.
_ADD_KEYS = {
    "addStandardJob": ["wait", "paused", "meta", "id", "completed", "delayed", "active", "events",
                       "marker"],
    "addDelayedJob": ["marker", "meta", "id", "delayed", "completed", "events"],
    "addPrioritizedJob": ["marker", "meta", "id", "prioritized", "delayed", "completed", "active",
                          "events", "pc"],
}  # fmt: skip


async def run_scripts(client: redis_asyncio.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run the calls in one pipelined round trip; their replies in order (an error is its reply).

    EVALSHA straight away: redis-py's pipelined Script objects cost a SCRIPT EXISTS round trip on
    every execute (measured on the pickup path, issue 4). A Redis that lost its scripts (it was
    restarted) gets them loaded and the calls it refused are sent again.
    """
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            for index in todo:
                script, keys, args = calls[index]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            answers = await pipe.execute(raise_on_error=False)
        for index, answer in zip(todo, answers, strict=True):
            replies[index] = answer
        todo = [i for i in todo if isinstance(replies[i], NoScriptError)]
        if not todo or attempt:
            break
        for script in {id(calls[i][0]): calls[i][0] for i in todo}.values():
            await client.script_load(script.script)
    return replies


def add_job_call(scripts: Any, job: Any) -> ScriptCall:
    """What bullmq's ``Scripts.addJob`` runs for job (a ``bullmq.Job``), to send it pipelined.

    tests/integration/test_bullmq_contract.py checks it is exactly what bullmq sends.
    """
    if job.opts.get("delay"):
        name, last = "addDelayedJob", job.opts["delay"]
    elif job.opts.get("priority"):
        name, last = "addPrioritizedJob", job.opts["priority"]
    else:
        name, last = "addStandardJob", job.timestamp
    return (
        scripts.commands[name],
        scripts.getKeys(_ADD_KEYS[name]),
        [*scripts.addJobArgs(job), last],
    )


def _other_id(message: Message) -> bool:
    """Whether the task records a job id of its own (a Node client's) besides ours."""
    return bool(message.receipt) and message.receipt != job_id(message.task_id, message.attempt)


def redis_client(settings: Settings) -> redis_asyncio.Redis:
    """A pooled Redis client with short timeouts: a dead Redis must fail fast, not hang requests."""
    return redis_asyncio.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db or 0,
        username=settings.redis_username,
        password=settings.redis_password,
        decode_responses=True,
        socket_timeout=PUBLISH_TIMEOUT_S,
        socket_connect_timeout=PUBLISH_TIMEOUT_S,
        # One immediate retry (a stale pooled connection), no backoff: redis-py's default of
        # three retries with backoff would keep a request waiting seconds while Redis is down.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


@dataclass(frozen=True, slots=True)
class _Queue:
    """One BullMQ queue: its keys over the shared scripts, and what a Job needs of it."""

    scripts: Scripts
    job_queue: Any


class BullMQQueue:
    """Publishes task ids as BullMQ jobs and checks which ones are still in Redis.

    With ``per_org`` (FOREMAN_QUEUE_PER_ORG, the default) each task goes to its organisation's
    queue, ``org_queue_name(queue_name, org)``; else every task goes to ``queue_name``.
    """

    name: BackendName = "bullmq"

    def __init__(
        self, queue_name: str, *, client: redis_asyncio.Redis, per_org: bool = False
    ) -> None:
        self.queue_name = queue_name
        self.per_org = per_org
        self._redis = client
        # BullMQ's Lua scripts, registered once (a bullmq Queue registers them all again: 0.8 ms
        # and 280 KiB each), and each queue's keys over them, by organisation ("": the shared
        # queue), kept up to MAX_CACHED_QUEUES.
        self._connection = RedisConnection(client)
        self._queues: dict[str, _Queue] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> BullMQQueue:
        """The queue(s) of TASK_QUEUE_NAME on the configured Redis."""
        return cls(
            settings.task_queue_name,
            client=redis_client(settings),
            per_org=settings.queue_per_org,
        )

    def queue_name_of(self, org_id: str) -> str:
        """The BullMQ queue that carries org_id's tasks."""
        return naming.org_queue_name(self.queue_name, org_id) if self.per_org else self.queue_name

    def _queue(self, message: Message) -> _Queue:
        """Message's queue."""
        org = message.org_id if self.per_org else ""  # by organisation: no name hashed per job
        queue = self._queues.get(org)
        if queue is None:
            if len(self._queues) >= MAX_CACHED_QUEUES:
                self._queues.pop(next(iter(self._queues)))
            name = self.queue_name_of(org)
            queue = _Queue(
                Scripts(KEY_PREFIX, name, self._connection),
                # What bullmq.Job reads of its queue (a job here is only serialised).
                SimpleNamespace(opts={}, backend=None, qualifiedName=f"{KEY_PREFIX}:{name}"),
            )
            self._queues[org] = queue
        return queue

    def job_key(self, message: Message) -> str:
        """The Redis hash of a message's job."""
        return str(self._queue(message).scripts.toKey(job_id(message.task_id, message.attempt)))

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Add a job for every queued/retrying task; a Redis failure is logged, not raised."""
        messages = ready_messages(tasks, now=ids.now_ms())
        if not messages:
            return
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.enqueue(messages)
        except (RedisError, OSError, TimeoutError) as exc:
            # The rows are committed: the sweeper finds these tasks missing and publishes them.
            logger.warning(
                "publishing %d task(s) to BullMQ failed; the sweeper will retry: %s",
                len(messages),
                exc,
                extra={"task_id": messages[0].task_id},
            )

    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Add the jobs, ADD_CHUNK per round trip; RedisError if Redis refused any of them."""
        for start in range(0, len(messages), ADD_CHUNK):
            chunk = messages[start : start + ADD_CHUNK]
            replies = await run_scripts(self._redis, [self._add_call(m) for m in chunk])
            refused = [
                r for r in replies if isinstance(r, Exception) or (isinstance(r, int) and r < 0)
            ]
            if refused:
                raise RedisError(f"Redis refused {len(refused)} job(s): {refused[0]!r}")

    def _add_call(self, message: Message) -> ScriptCall:
        """The script bullmq's Queue.add runs for this message's job, with its keys and arguments."""
        queue, opts = self._queue(message), job_options(message)
        job = Job(
            queue.job_queue, message.task_type, job_data(message.task_id), opts, opts["jobId"]
        )
        return add_job_call(queue.scripts, job)

    async def missing(self, messages: Sequence[Message]) -> list[Message]:
        """Messages with no live job; a finished job of the same id is removed so it can be re-added.

        One pipelined HMGET per job, CHECK_CHUNK per round trip: ``timestamp`` is set on every job
        hash, ``finishedOn`` only once BullMQ moved the job to completed or failed. A job the Node
        client added under its own id (the task's ``queueJobId``) counts as live too.
        """
        lost: list[Message] = []
        for start in range(0, len(messages), CHECK_CHUNK):
            chunk = messages[start : start + CHECK_CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for message in chunk:
                    pipe.hmget(self.job_key(message), ["timestamp", "finishedOn"])
                    if _other_id(message):
                        other_key = self._queue(message).scripts.toKey(message.receipt)
                        pipe.hmget(other_key, ["timestamp", "finishedOn"])
                replies = iter(await pipe.execute())
            for message in chunk:
                created, finished = next(replies)
                other_live = False
                if _other_id(message):
                    other_created, other_finished = next(replies)
                    other_live = other_created is not None and not other_finished
                if created is not None and not finished:
                    continue
                if created is not None:
                    await self._remove_finished(message)
                if not other_live:
                    lost.append(message)
        return lost

    async def _remove_finished(self, message: Message) -> None:
        # A job that BullMQ failed (removeOnFail is false) would block re-adding the same id.
        with contextlib.suppress(RedisError):
            job = job_id(message.task_id, message.attempt)
            await self._queue(message).scripts.remove(job, True)

    async def ping(self) -> None:
        """Raise if Redis does not answer."""
        await self._redis.ping()

    async def close(self) -> None:
        """Close the Redis connections."""
        self._queues.clear()
        await self._redis.aclose()
