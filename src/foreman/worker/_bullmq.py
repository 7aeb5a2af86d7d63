"""The bullmq backend's source: take BullMQ jobs in batches, claim each task by its id.

Jobs carry only ``{"taskId"}`` (SPEC section 7), from the server, from ``Client`` with
``queue_backend="bullmq"`` or from the Node foreman-client, so Node and Python workers share one
queue. It speaks BullMQ's protocol with the ``bullmq`` package's Lua scripts, pipelined (several
jobs per round trip) where bullmq's ``Worker`` makes one round trip per job; the database decides
whether a job's task runs. Measurements behind the design: benchmarks/README.md, "Notes moved from
worker/_bullmq.py".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import msgpack
import redis.asyncio as redis_asyncio
from bullmq import Job
from bullmq.redis_connection import RedisConnection
from bullmq.scripts import Scripts, raw2NextJobData
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff, NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError, RedisError

from foreman import errors
from foreman.client import AsyncClient, RedisOptions, retry_delay_s
from foreman.models import Task
from foreman.queue.bullmq import KEY_PREFIX, run_scripts, task_id_of
from foreman.worker._backoff import Backoff
from foreman.worker._batching import MicroBatcher
from foreman.worker.source import SourceContext

logger = logging.getLogger(__name__)

# What a lost or restarting Redis raises (redis-py wraps socket errors; OSError for the rest).
# Anything else is a bug or an incompatible bullmq/redis release: raised, never retried.
REDIS_ERRORS = (RedisError, OSError)

# Jobs moved to active per round trip: after an idle spell 1, doubling while every call of the
# round trip found a job (a short queue wastes few empty calls), at most FETCH_MAX.
FETCH_MAX = 128
# Finished jobs are acknowledged together: while an acknowledgement is out, others gather for
# ACK_WINDOW_S (or ACK_BATCH of them).
ACK_WINDOW_S = 0.002
ACK_BATCH = 500
# bullmq's defaults, so that a mixed fleet of workers agrees on when a job has stalled.
MIN_LOCK_MS = 30_000
STALLED_INTERVAL_MS = 30_000
MAX_STALLED_COUNT = 1
# The longest wait on the marker while idle (bullmq's drainDelay); a delayed job's marker ends
# it earlier. A burst run ends when BURST_WAIT_S passes with no job and nothing running.
DRAIN_DELAY_S = 5.0
MAX_BLOCK_S = 10.0
BLOCK_TIMEOUT_MARGIN_S = 5.0  # the wait's socket timeout is MAX_BLOCK_S + this
MIN_BLOCK_S = 0.001
BURST_WAIT_S = 0.2
# After a Redis restart, redis-py's default backoff (exponential up to seconds) kept a worker
# idle for 4.8-5.8 s (tests/faults); a constant short backoff picks up again within RECONNECT_S.
RECONNECT_S = 0.5
RECONNECT_TRIES = 20
# A take that keeps failing (Redis down, a refusing script) waits longer each time, up to
# MAX_RETRY_S, and is logged at the 1st, 2nd, 4th, 8th... failure: never at a fixed rate.
MAX_RETRY_S = 5.0
RECANCEL_S = 0.1
# Why a job is moved to failed (kept in BullMQ's failed set for inspection, with this reason).
MALFORMED = "foreman: malformed job (its data or options are not BullMQ JSON)"
NO_TASK_ID = 'foreman: the job names no task (its data is not {"taskId": <uuid>})'
UNKNOWN_TASK = "foreman: no task of this organisation has the job's taskId"
# A job taken by the move queued behind a marker wait carries the wait's start as processedOn;
# past this much it is set again, to when the job was taken, in the next wait's round trip.
PROCESSED_ON_SLACK_MS = 1
_SET_PROCESSED_ON = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then"
    " return redis.call('HSET', KEYS[1], 'processedOn', ARGV[1]) end return 0"
)
# The keys of BullMQ's moveToActive script, as bullmq's Scripts.moveToActive passes them
# (tests/integration/test_bullmq_contract.py checks they still are).
MOVE_TO_ACTIVE_KEYS = [
    "wait", "active", "prioritized", "events", "stalled", "limiter", "delayed", "paused", "meta",
    "pc", "marker",
]  # fmt: skip


async def queue_settings(client: AsyncClient) -> tuple[RedisOptions, str]:
    """The Redis connection and queue name: the client's overrides, else the server's config."""
    redis, queue_name = client.options.redis, client.options.task_queue
    if redis is None or queue_name is None:
        config = await client.get_config()
        redis = redis or RedisOptions.from_config(config.redis)
        queue_name = queue_name or config.queues.task_queue
    return redis, queue_name


class _Credentials(CredentialProvider):
    """The Redis user and password, replaceable while connections come and go: a per-organisation
    password rotated out (FOREMAN_REDIS_ACL=per-org) is asked of the server again."""

    def __init__(self, options: RedisOptions) -> None:
        self.options = options

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        if self.options.username:
            return (self.options.username, self.options.password or "")
        return (self.options.password or "",)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


def _redis(
    options: RedisOptions, credentials: _Credentials, *, blocking: bool = False
) -> redis_asyncio.Redis:
    """A client for commands; blocking: for the marker wait, whose reads may block up to
    MAX_BLOCK_S and which redis-py never retries (a retry would run the queued moveToActive again
    and strand the job the first one took; a failed wait is the source's to handle)."""
    if blocking:
        # redis-py's default timeout of 5 s cut every wait of 5 s or more short and retried it:
        # an idle worker reconnected every 5 s, and a job delayed past 5 s started ~110 s late.
        timeouts: dict[str, Any] = {
            "socket_timeout": MAX_BLOCK_S + BLOCK_TIMEOUT_MARGIN_S,
            "retry": Retry(NoBackoff(), 0),
        }
    else:
        timeouts = {"retry": Retry(ConstantBackoff(RECONNECT_S), RECONNECT_TRIES)}
    connection = options.connection()
    del connection["username"], connection["password"]
    if options.username or options.password:
        connection["credential_provider"] = credentials
    return redis_asyncio.Redis(
        **connection,
        **timeouts,
        decode_responses=True,  # what bullmq's scripts and Job expect
        # A job of bytes that are not UTF-8 must be one malformed job, not a failed round trip.
        encoding_errors="replace",
        health_check_interval=30,
    )


@dataclass(slots=True)
class _Job:
    """A job this worker moved to active: held until acknowledged."""

    job: Any  # bullmq.Job
    token: str
    poison: str = ""  # why the job is failed instead of run (MALFORMED, ...); "" for a good job


class _Unknown:
    """A claim answered 404: no task of this organisation has the id."""


UNKNOWN = _Unknown()


@dataclass(frozen=True, slots=True)
class _Woken:
    """How a wait on the marker ended."""

    marker: int | None  # 0: a job is ready; else a delayed job's due time (ms); None: timed out
    jobs: list[_Job]  # what the move queued behind the wait took
    due: int | None  # the move's next delayed job (ms, 0: none); None: the move did not run
    more: bool  # jobs still wait after the move


class BullMQSource:
    """Takes jobs for the worker's free slots, claims their tasks, acknowledges them when done."""

    takes_in_flight = 1  # one reader of the queue
    acknowledges_when_free = False

    def __init__(self, context: SourceContext, redis: RedisOptions, queue_name: str) -> None:
        self.context = context
        self.queue_name = queue_name
        self.lock_ms = max(round(context.lease_s * 1000), MIN_LOCK_MS)
        self._credentials = _Credentials(redis)
        self._redis = _redis(redis, self._credentials)
        # The wait holds up no other command.
        self._blocking = _redis(redis, self._credentials, blocking=True)
        self._scripts = Scripts(KEY_PREFIX, queue_name, RedisConnection(self._redis))
        self._move = self._scripts.commands["moveToActive"]
        self._finish = self._scripts.commands["moveToFinished"]
        self._move_keys = self._scripts.getKeys(MOVE_TO_ACTIVE_KEYS)
        self._marker: str = self._scripts.keys["marker"]
        self._waiting_keys = (self._scripts.keys["wait"], self._scripts.keys["prioritized"])
        self._stale: list[tuple[str, int]] = []  # (job key, when taken) of stale processedOn
        # What bullmq.Job and the scripts' argument builders read of their queue.
        self._queue = SimpleNamespace(
            opts={"lockDuration": self.lock_ms},
            backend=None,  # never used: this source runs the scripts itself
            qualifiedName=f"{KEY_PREFIX}:{queue_name}",
        )
        self._active: dict[str, _Job] = {}  # by job id: every job whose lock is renewed
        self._by_task: dict[str, _Job] = {}  # the job of each task handed to the worker
        self._tokens = (f"{uuid.uuid4()}:{n}" for n in itertools.count(1))
        self._acks: MicroBatcher[_Job, None] = MicroBatcher(
            self._acknowledge, window_s=ACK_WINDOW_S, max_batch=ACK_BATCH
        )
        self._fetch_size = 1
        self._drained = False
        self._block_until = 0  # epoch ms of the next delayed job, once drained
        self._pause_until = 0.0
        self._backoff = Backoff(first_s=RECONNECT_S, max_s=MAX_RETRY_S)
        self._background: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None

    @classmethod
    async def open(cls, context: SourceContext) -> BullMQSource:
        """The source of the queue the client names, else the server's; lock upkeep started."""
        redis, queue_name = await queue_settings(context.client)
        logger.info("consuming BullMQ queue %r on %s:%s", queue_name, redis.host, redis.port)
        source = cls(context, redis, queue_name)
        source._background = [
            asyncio.create_task(source._renew_locks()),
            asyncio.create_task(source._check_stalled()),
        ]
        return source

    async def close(self) -> None:
        """Acknowledge what is left, stop the lock upkeep, close the connections."""
        await self._acks.drain()
        for task in self._background:
            # A cancellation that lands as a Redis call returns was seen swallowed below us (the
            # stalled check went on to its 30 s sleep and close() waited it out): cancel again
            # until the task has ended.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=RECANCEL_S)
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._redis.aclose()
        await self._blocking.aclose()

    async def acknowledge(self, task: Task) -> None:
        """Move the task's job to completed (with others that finished about together)."""
        job = self._by_task.pop(task.id, None)
        if job is not None:
            await self._acks.submit(job)

    # ------------------------------------------------------------ taking jobs

    async def take(self, limit: int, *, burst: bool) -> list[Task]:
        """Up to limit claimed tasks; [] after a wait found no job or when the worker stops."""
        stopped = self.context.stopped
        while not stopped.is_set():
            self._raise_failure()
            pause_s = self._pause_until - time.monotonic()
            if pause_s > 0:
                await self.context.pause(pause_s)
                continue
            jobs = await self._jobs(limit, burst=burst)
            if jobs is None:
                return []  # waited, nothing came
            if jobs:
                tasks = await self._claim(jobs)
                if tasks:
                    return tasks
        return []

    async def _jobs(self, limit: int, *, burst: bool) -> list[_Job] | None:
        """Jobs moved to active (maybe none: look again); None when a wait ended with none."""
        if not self._drained:
            try:
                return await self._take(min(self._fetch_size, limit))
            except REDIS_ERRORS as exc:  # Redis down or restarting: retry, backing off
                await self._broker_failed("taking jobs from BullMQ failed", exc)
                return []
        woke = await self._wait_for_marker(BURST_WAIT_S if burst else _block_s(self._block_until))
        if woke.jobs:
            # A backlog is taken in batches; else the next wait (at once: BullMQ leaves a
            # marker behind every job it moves) finds what came meanwhile.
            self._drained = not woke.more
            return woke.jobs
        if woke.marker is None and (burst or self.context.stopped.is_set()):
            return None  # nothing came: a burst is over unless handlers still run
        now_ms = time.time() * 1000
        if woke.due is None:  # the move did not run: as the marker says
            self._block_until = woke.marker or 0
            # A delayed job, not due yet: wait for it.
            self._drained = self._block_until > now_ms
        else:
            # The move ran after the wait and found no job (BullMQ leaves a marker behind every
            # job it moves: most wakes after a job find nothing). Only a delayed job due by now,
            # which its stale timestamp missed, needs a take.
            self._block_until = woke.due
            self._drained = not 0 < self._block_until <= now_ms
        return []

    async def _take(self, count: int) -> list[_Job]:
        """Move up to count jobs to active in one round trip."""
        tokens = [next(self._tokens) for _ in range(count)]
        replies = await run_scripts(
            self._redis,
            [(self._move, self._move_keys, self._move_to_active_args(t)) for t in tokens],
        )
        jobs, delay_until, failure = [], 0, None
        for token, reply in zip(tokens, replies, strict=True):
            if isinstance(reply, Exception):
                failure = reply
                continue
            job, delay = self._moved(reply, token)
            if job is not None:
                jobs.append(job)
            delay_until = delay or delay_until
        if failure is not None:
            # Redis refused a move: the jobs the others took run, the next take waits (longer
            # each time it is refused again).
            self._pause_until = time.monotonic() + self._broker_retry_s(
                "taking jobs from BullMQ failed", failure
            )
        else:
            self._broker_ok()
        self._drained = failure is None and len(jobs) < count
        self._block_until = delay_until
        self._fetch_size = 1 if len(jobs) < count else min(self._fetch_size * 2, FETCH_MAX)
        return jobs

    def _moved(self, reply: Any, token: str, *, moved_at_ms: int = 0) -> tuple[_Job | None, int]:
        """The job a moveToActive reply holds (None: none), and the next delayed job's ms.

        moved_at_ms: the timestamp the move ran with, when it may be stale (the move queued behind
        a marker wait): the job's processedOn is then set to the time it was taken.
        """
        job_data, job_id, _limit_until, delay = raw2NextJobData(reply) or (None,) * 4
        if not (job_data and job_id):
            return None, int(delay or 0)
        try:
            if not isinstance(json.loads(job_data.get("opts", "{}")), dict):
                raise ValueError("the job's opts are not an object")
            job = _Job(Job.fromJSON(self._queue, job_data, job_id), token)
        except ValueError:  # JSON or numbers that do not parse
            # Anyone with write access to the queue can put anything there: this one job is
            # moved to failed (by _claim), the others of the batch run. Other errors are bugs or
            # an incompatible bullmq, and stop the worker.
            job = _Job(Job(self._queue, "", {}, {}, job_id), token, poison=MALFORMED)
        self._active[job_id] = job
        now_ms = round(time.time() * 1000)
        if moved_at_ms and now_ms - moved_at_ms > PROCESSED_ON_SLACK_MS:
            self._stale.append((self._scripts.toKey(job_id), now_ms))
        return job, int(delay or 0)

    def _move_to_active_args(self, token: str) -> list[Any]:
        opts = {"token": token, "lockDuration": self.lock_ms, "limiter": None}
        return [
            self._scripts.keys[""],
            round(time.time() * 1000),
            msgpack.packb(opts, use_bin_type=True),
        ]

    async def _wait_for_marker(self, timeout_s: float) -> _Woken:
        """Block until a job may be ready (or timeout_s passes, or the worker stops) and take
        one if there is.

        A moveToActive is queued behind the wait on the same connection: Redis runs it as soon
        as the wait ends, so an idle worker takes a new job in one round trip, not two.
        """
        token = next(self._tokens)
        args = self._move_to_active_args(token)
        stale, self._stale = self._stale, []
        waiting = asyncio.ensure_future(self._wait_round_trip(stale, timeout_s, args))
        stopped = asyncio.ensure_future(self.context.stopped.wait())
        try:
            await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not waiting.done():
                # Stopping: a job the cancelled move took is given back by the stalled check.
                waiting.cancel()
                await asyncio.wait({waiting})
        if waiting.cancelled():
            return _Woken(marker=None, jobs=[], due=None, more=False)
        try:
            replies = waiting.result()
        except REDIS_ERRORS as exc:  # the connection failed: nothing is known to have run
            await self._broker_failed("waiting for BullMQ jobs failed", exc)
            return _Woken(marker=0, jobs=[], due=None, more=False)  # look again
        popped, moved, *counts = replies[len(stale) :]
        # The move's reply first: whatever became of the wait, a job it took is ours to run.
        jobs, due = [], None
        if not isinstance(moved, Exception):  # refused: its script not loaded (Redis restarted)
            job, due = self._moved(moved, token, moved_at_ms=args[1])
            jobs = [job] if job is not None else []
        if isinstance(popped, Exception):
            await self._broker_failed("waiting for BullMQ jobs failed", popped)
            return _Woken(marker=0, jobs=jobs, due=None, more=False)
        self._broker_ok()
        marker = None
        if popped:
            _key, member, score = popped
            marker = int(score) if member else 0
        more = any(isinstance(n, int) and n > 0 for n in counts)
        return _Woken(marker, jobs, due, more)

    async def _wait_round_trip(
        self, stale: list[tuple[str, int]], timeout_s: float, move_args: list[Any]
    ) -> list[Any]:
        async with self._blocking.pipeline(transaction=False) as pipe:
            for key, taken_ms in stale:  # cosmetic: lost with a failed round trip
                pipe.eval(_SET_PROCESSED_ON, 1, key, taken_ms)
            pipe.bzpopmin(self._marker, timeout_s)
            pipe.evalsha(self._move.sha, len(self._move_keys), *self._move_keys, *move_args)
            pipe.llen(self._waiting_keys[0])
            pipe.zcard(self._waiting_keys[1])
            return list(await pipe.execute(raise_on_error=False))

    # ------------------------------------------------------------ claiming tasks

    async def _claim(self, jobs: list[_Job]) -> list[Task]:
        """The tasks of jobs, leased to this worker; the jobs of the others are acknowledged, and
        poison jobs (malformed, naming no task or another organisation's) moved to failed."""
        by_task: dict[str, _Job] = {}
        for job in jobs:
            task_id = None if job.poison else task_id_of(job.job.data)
            if task_id is None:
                self._reject(job, job.poison or NO_TASK_ID)
                continue
            if task_id in by_task or task_id in self._by_task:
                logger.debug("job %s names a task another job took: dropped", job.job.id)
            else:
                by_task[task_id] = job
                continue
            self._drop(job)
        if not by_task or self.context.stopped.is_set():
            # Stopping: never claimed, the task stays queued (the sweeper publishes it again).
            for job in by_task.values():
                self._drop(job)
            return []
        try:
            tasks = await self._claim_tasks(list(by_task))
        except errors.ForemanError as exc:
            # The tasks stay queued in the database: the server's sweeper publishes them again.
            logger.warning("claiming tasks failed, pausing: %s", exc)
            self._pause_until = time.monotonic() + retry_delay_s(3)
            tasks = [None] * len(by_task)
        claimed = []
        for (task_id, job), task in zip(by_task.items(), tasks, strict=True):
            if task is UNKNOWN:
                # Never logged with the task id: it may be another organisation's.
                self._reject(job, UNKNOWN_TASK)
            elif task is None:
                self._drop(job)
            else:
                assert isinstance(task, Task)
                self._by_task[task_id] = job
                claimed.append(task)
        return claimed

    async def _claim_tasks(self, task_ids: list[str]) -> list[Task | _Unknown | None]:
        """Per id, the leased task, None (done or held by another attempt), or UNKNOWN (no such
        task in this organisation)."""
        context = self.context
        if len(task_ids) == 1:
            # A lone job (an idle worker's pickup): the single-task statement is cheaper
            # (measured 0.2 against 0.6 ms in PostgreSQL).
            return [await self._claim_one(task_ids[0])]
        results = await context.client.claim_task_ids(
            task_ids, worker_id=context.worker_id, lease_s=context.lease_s
        )
        return [UNKNOWN if r.reason == "not_found" else r.task for r in results]

    async def _claim_one(self, task_id: str) -> Task | _Unknown | None:
        context = self.context
        try:
            return await context.client.claim_task(
                task_id, worker_id=context.worker_id, lease_s=context.lease_s
            )
        except errors.ConflictError:
            logger.debug("task %s is done or held by another attempt: job dropped", task_id)
        except errors.NotFoundError:
            return UNKNOWN
        return None

    # ------------------------------------------------------------ acknowledging

    async def _acknowledge(self, jobs: list[_Job]) -> list[None]:
        """Move the jobs to completed (removed, as their options say) in one round trip."""
        calls = [(self._finish, *self._finish_args(job)) for job in jobs]
        try:
            replies = await run_scripts(self._redis, calls)
        except REDIS_ERRORS as exc:
            # Their locks expire and the stalled check gives them back; the claim then drops them.
            logger.warning("acknowledging %d BullMQ job(s) failed: %s", len(jobs), exc)
            replies = [None] * len(jobs)
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception) or (isinstance(reply, int) and reply < 0):
                logger.info("job %s was not acknowledged (lock lost?): %s", job.job.id, reply)
            self._active.pop(job.job.id, None)
        return [None] * len(jobs)

    def _finish_args(self, job: _Job) -> tuple[list[Any], list[Any]]:
        """moveToFinished's keys and arguments: to completed, or to failed with a poison job's
        reason (kept unless the job says removeOnFail: BullMQ's failed set shows why)."""
        opts = job.job.opts
        if job.poison:
            args = self._scripts.moveToFailedArgs(
                job.job, job.poison, opts.get("removeOnFail", False), job.token, fetchNext=False
            )
        else:
            args = self._scripts.moveToCompletedArgs(
                job.job, None, opts.get("removeOnComplete", False), job.token, fetchNext=False
            )
        return args  # type: ignore[no-any-return]

    def _reject(self, job: _Job, reason: str) -> None:
        """Move a poison job to failed with reason; logged once, by job id alone."""
        logger.warning("BullMQ job %s moved to failed: %s", job.job.id, reason)
        self._drop(_Job(job.job, job.token, poison=reason))

    # ------------------------------------------------------------ broker failures

    def _broker_retry_s(self, what: str, exc: BaseException) -> float:
        """Count a failure of Redis; the delay before the next try (logged at growing gaps)."""
        delay_s = self._backoff.failed()
        if self._backoff.should_log():
            logger.warning(
                "%s (%d time(s) in a row, next try in %.1fs): %s",
                what, self._backoff.failures, delay_s, exc,
            )  # fmt: skip
        return delay_s

    async def _broker_failed(self, what: str, exc: BaseException) -> None:
        """Back off after a failure of Redis; a refused password is asked of the server again."""
        delay_s = self._broker_retry_s(what, exc)
        if isinstance(exc, AuthenticationError):
            await self._refresh_credentials()
        await self.context.pause(delay_s)

    def _broker_ok(self) -> None:
        failures = self._backoff.succeeded()
        if failures:
            logger.info("BullMQ answers again after %d failed attempt(s)", failures)

    async def _refresh_credentials(self) -> None:
        """The server's current Redis credentials (a per-organisation password is rotated),
        unless the client was given its own."""
        client = self.context.client
        if client.options.redis is not None:
            return
        try:
            config = await client.get_config()
        except errors.ForemanError as exc:
            logger.warning("asking the server for Redis credentials failed: %s", exc)
            return
        self._credentials.options = RedisOptions.from_config(config.redis)

    # ------------------------------------------------------------ locks and stalled jobs

    def _raise_failure(self) -> None:
        """A failure other than Redis's (a bug, an incompatible bullmq) in the lock upkeep or
        an acknowledgement ends the worker, loudly, rather than being logged forever."""
        for task in self._background:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self._failure = self._failure or task.exception()
        if self._failure is not None:
            raise self._failure

    def _drop(self, job: _Job) -> None:
        """Acknowledge a job whose task this worker does not run."""
        self._acks.submit(job).add_done_callback(self._ack_done)

    def _ack_done(self, answer: asyncio.Future[None]) -> None:
        if not answer.cancelled() and answer.exception() is not None:
            self._failure = self._failure or answer.exception()

    async def _renew_locks(self) -> None:
        """Extend the locks of the active jobs every half lock duration, in one call."""
        while True:
            await asyncio.sleep(self.lock_ms / 2000)
            jobs = list(self._active.values())
            if not jobs:
                continue
            try:
                lost = await self._scripts.extendJobLocks(
                    [job.job.id for job in jobs], [job.token for job in jobs], self.lock_ms
                )
            except REDIS_ERRORS as exc:
                logger.warning("renewing BullMQ locks failed: %s", exc)
                continue
            if lost:
                logger.warning("lost the BullMQ lock of %d job(s)", len(lost))

    async def _check_stalled(self) -> None:
        """Give back the jobs whose worker stopped renewing their locks (as bullmq's Worker)."""
        while True:
            try:
                stalled = await self._scripts.moveStalledJobsToWait(
                    MAX_STALLED_COUNT, STALLED_INTERVAL_MS
                )
            except REDIS_ERRORS as exc:
                logger.warning("checking for stalled BullMQ jobs failed: %s", exc)
            else:
                if stalled:
                    logger.info("moved %d stalled BullMQ job(s) back to wait", len(stalled))
            await asyncio.sleep(STALLED_INTERVAL_MS / 1000)


def _block_s(block_until_ms: int) -> float:
    """How long to wait on the marker: until a delayed job is due, else DRAIN_DELAY_S."""
    if not block_until_ms:
        return DRAIN_DELAY_S
    delay_s = (block_until_ms - time.time() * 1000) / 1000
    return min(max(delay_s, MIN_BLOCK_S), MAX_BLOCK_S)
