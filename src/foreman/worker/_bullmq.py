"""The bullmq backend: take BullMQ jobs in batches, claim each task by its id.

Jobs carry only ``{"taskId"}`` (SPEC section 7), from the server, from ``Client`` with
``queue_backend="bullmq"`` or from the Node foreman-client (whose extra fields are ignored). The
database decides: a claim refused with 409 means another attempt owns the task or it is done, so
the job is acknowledged and dropped. Retries are the server's: a failed attempt goes back to the
database as ``retrying`` and the server publishes its next job, so a job is always acknowledged
(completed) once its result is reported.

The consumer speaks BullMQ's own protocol with the ``bullmq`` package's Lua scripts: a job is
taken with ``moveToActive`` (which locks it under a token), its lock is renewed with
``extendLocks``, it is acknowledged with ``moveToFinished``, and ``moveStalledJobsToWait`` gives
back the jobs of a worker that died; an idle consumer blocks on the queue's marker. So Node and
Python workers share one queue. Unlike bullmq's ``Worker``, which makes a round trip per job and
per state change (measured: ≈470 jobs/s here, issue 4), it pipelines them: up to FETCH_MAX
``moveToActive`` calls per round trip while jobs wait, and the acknowledgements of jobs that
finished together in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import msgpack
import redis.asyncio as redis_asyncio
from bullmq import Job
from bullmq.redis_connection import RedisConnection
from bullmq.scripts import Scripts, raw2NextJobData
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff, NoBackoff

from foreman import errors
from foreman.client import AsyncClient, RedisOptions
from foreman.client._base import is_missing_route, retry_delay_s
from foreman.models import Task
from foreman.queue.bullmq import KEY_PREFIX, run_scripts, task_id_of
from foreman.worker._batching import MicroBatcher

if TYPE_CHECKING:
    from foreman.worker.worker import Worker

logger = logging.getLogger(__name__)

# Jobs moved to active per round trip: after an idle spell 1, doubling while every call of the
# round trip found a job (a short queue wastes few empty calls), at most FETCH_MAX.
FETCH_MAX = 128
# Finished jobs are acknowledged together: while an acknowledgement is out, others gather for
# ACK_WINDOW_S (or ACK_BATCH of them).
ACK_WINDOW_S = 0.002
ACK_BATCH = 500
# Claims of jobs taken together go in one claim_task_ids request (one per job was half of the
# worker's CPU, issue 4).
CLAIM_WINDOW_S = 0.002
CLAIM_BATCH = 500
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
# A job taken by the move queued behind a marker wait carries the wait's start as processedOn;
# past this much it is set again, to when the job was taken, in the next wait's round trip.
PROCESSED_ON_SLACK_MS = 1
_SET_PROCESSED_ON = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then"
    " return redis.call('HSET', KEYS[1], 'processedOn', ARGV[1]) end return 0"
)


async def queue_settings(client: AsyncClient) -> tuple[RedisOptions, str]:
    """The Redis connection and queue name: the client's overrides, else the server's config."""
    redis, queue_name = client.options.redis, client.options.task_queue
    if redis is None or queue_name is None:
        config = await client.get_config()
        redis = redis or RedisOptions.from_config(config.redis)
        queue_name = queue_name or config.queues.task_queue
    return redis, queue_name


async def consume(worker: Worker, *, burst: bool) -> None:
    """Process jobs until the worker stops (burst: until the queue has no ready job)."""
    redis, queue_name = await queue_settings(worker.client)
    consumer = JobConsumer(worker, redis, queue_name)
    logger.info("consuming BullMQ queue %r on %s:%s", queue_name, redis.host, redis.port)
    await consumer.run(burst=burst)


def _redis(options: RedisOptions, *, blocking: bool = False) -> redis_asyncio.Redis:
    """A client for commands; blocking: for the marker wait, whose reads may block up to
    MAX_BLOCK_S and which redis-py never retries (a retry would run the queued moveToActive again
    and strand the job the first one took; a failed wait is the consumer's to handle)."""
    if blocking:
        # redis-py's default timeout of 5 s cut every wait of 5 s or more short and retried it:
        # an idle worker reconnected every 5 s, and a job delayed past 5 s started ~110 s late.
        timeouts: dict[str, Any] = {
            "socket_timeout": MAX_BLOCK_S + BLOCK_TIMEOUT_MARGIN_S,
            "retry": Retry(NoBackoff(), 0),
        }
    else:
        timeouts = {"retry": Retry(ConstantBackoff(RECONNECT_S), RECONNECT_TRIES)}
    return redis_asyncio.Redis(
        **options.connection(),
        **timeouts,
        decode_responses=True,  # what bullmq's scripts and Job expect
        health_check_interval=30,
    )


@dataclass(slots=True)
class _Job:
    """A job this consumer moved to active: held until acknowledged."""

    job: Any  # bullmq.Job
    token: str


@dataclass(frozen=True, slots=True)
class _Woken:
    """How a wait on the marker ended."""

    marker: int | None  # 0: a job is ready; else a delayed job's due time (ms); None: timed out
    took: bool  # the move queued behind the wait took a job (started)
    due: int | None  # the move's next delayed job (ms, 0: none); None: the move did not run
    more: bool  # jobs still wait after the move


class JobConsumer:
    """Takes jobs while handler slots are free, claims their tasks, acknowledges them when done."""

    def __init__(self, worker: Worker, redis: RedisOptions, queue_name: str) -> None:
        self.worker = worker
        self.queue_name = queue_name
        self.lock_ms = max(round(worker.lease_s * 1000), MIN_LOCK_MS)
        self._redis = _redis(redis)
        self._blocking = _redis(redis, blocking=True)  # the wait holds up no other command
        self._scripts = Scripts(KEY_PREFIX, queue_name, RedisConnection(self._redis))
        self._commands = self._scripts.commands
        self._marker: str = self._scripts.keys["marker"]
        self._waiting_keys: tuple[str, str] = (
            self._scripts.keys["wait"],
            self._scripts.keys["prioritized"],
        )
        self._stale: list[tuple[str, int]] = []  # (job key, when taken) of stale processedOn
        self._move_keys = self._scripts.getKeys(
            ["wait", "active", "prioritized", "events", "stalled", "limiter", "delayed",
             "paused", "meta", "pc", "marker"]
        )  # fmt: skip
        # What bullmq.Job and the scripts' argument builders read of their queue.
        self._queue = SimpleNamespace(
            opts={"lockDuration": self.lock_ms},
            backend=None,  # never used: this consumer runs the scripts itself
            qualifiedName=f"{KEY_PREFIX}:{queue_name}",
        )
        self._active: dict[str, _Job] = {}
        self._slot_freed = asyncio.Event()
        self._tokens = (f"{uuid.uuid4()}:{n}" for n in itertools.count(1))
        self._claims = ClaimBatcher(worker)
        self._acks: MicroBatcher[_Job, None] = MicroBatcher(
            self._acknowledge, window_s=ACK_WINDOW_S, max_batch=ACK_BATCH
        )
        self._jobs: set[asyncio.Task[None]] = set()
        self._fetch_size = 1
        self._pause_until = 0.0

    async def run(self, *, burst: bool) -> None:
        """Take jobs until the worker stops (burst: until none is ready and none runs)."""
        background = [
            asyncio.create_task(self._renew_locks()),
            asyncio.create_task(self._check_stalled()),
        ]
        fetching = asyncio.create_task(self._fetch(burst=burst))
        stopped = asyncio.create_task(self.worker.wait_stopped())
        try:
            await asyncio.wait({fetching, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetching
            # Running handlers get their grace period; then every job is acknowledged.
            await self.worker.drain()
            if self._jobs:
                await asyncio.gather(*self._jobs, return_exceptions=True)
            await self._acks.drain()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._redis.aclose()
            await self._blocking.aclose()

    # ------------------------------------------------------------ taking jobs

    async def _fetch(self, *, burst: bool) -> None:
        block_until = 0  # epoch ms of the next delayed job, once drained
        drained = False
        while not self.worker.stopping:
            free = self.worker.concurrency - len(self._active)
            if free <= 0 or time.monotonic() < self._pause_until:
                await self._until_slot_freed()
                continue
            if drained:
                if burst and self._active:
                    await self._until_slot_freed(BURST_WAIT_S)
                else:
                    woke = await self._wait_for_marker(
                        BURST_WAIT_S if burst else _block_s(block_until)
                    )
                    if woke.took:
                        # A backlog is taken in batches; else the next wait (at once: BullMQ
                        # leaves a marker behind every job it moves) finds what came meanwhile.
                        drained = not woke.more
                        continue
                    if burst and woke.marker is None:
                        return  # nothing ready, nothing running: the burst is over
                    now_ms = time.time() * 1000
                    if woke.due is None:  # the move did not run: as the marker says
                        block_until = woke.marker or 0
                        if block_until > now_ms:
                            continue  # a delayed job, not due yet: wait for it
                    else:
                        # The move ran after the wait and found no job (BullMQ leaves a marker
                        # behind every job it moves: most wakes after a job find nothing). Only a
                        # delayed job due by now, which its stale timestamp missed, needs a take.
                        block_until = woke.due
                        if not 0 < block_until <= now_ms:
                            continue
            try:
                drained, block_until = await self._take(min(self._fetch_size, free))
            except Exception as exc:  # Redis down or restarting: retry shortly
                logger.warning("taking jobs from BullMQ failed: %s", exc)
                await asyncio.sleep(RECONNECT_S)
                drained = False

    async def _take(self, count: int) -> tuple[bool, int]:
        """Move up to count jobs to active and start them; (drained, next delayed job's ms)."""
        tokens = [next(self._tokens) for _ in range(count)]
        move = self._commands["moveToActive"]
        replies = await run_scripts(
            self._redis,
            [(move, self._move_keys, self._move_to_active_args(token)) for token in tokens],
        )
        taken, delay_until, failure = 0, 0, None
        for token, reply in zip(tokens, replies, strict=True):
            if isinstance(reply, Exception):
                failure = reply
                continue
            took, delay = self._start_moved(reply, token)
            taken += took
            delay_until = delay or delay_until
        if failure is not None:
            raise failure
        drained = taken < count
        self._fetch_size = 1 if drained else min(self._fetch_size * 2, FETCH_MAX)
        return drained, delay_until

    def _start_moved(self, reply: Any, token: str, *, moved_at_ms: int = 0) -> tuple[bool, int]:
        """Start the job a moveToActive reply holds; (whether it held one, next delayed job's ms).

        moved_at_ms: the timestamp the move ran with, when it may be stale (the move queued behind
        a marker wait): the job's processedOn is then set to the time it was taken.
        """
        job_data, job_id, _limit_until, delay = raw2NextJobData(reply) or (None,) * 4
        if not (job_data and job_id):
            return False, int(delay or 0)
        job = _Job(Job.fromJSON(self._queue, job_data, job_id), token)
        now_ms = round(time.time() * 1000)
        if moved_at_ms and now_ms - moved_at_ms > PROCESSED_ON_SLACK_MS:
            self._stale.append((self._scripts.toKey(job_id), now_ms))
        self._start(job)
        return True, int(delay or 0)

    def _move_to_active_args(self, token: str) -> list[Any]:
        opts = {"token": token, "lockDuration": self.lock_ms, "limiter": None}
        return [
            self._scripts.keys[""],
            round(time.time() * 1000),
            msgpack.packb(opts, use_bin_type=True),
        ]

    async def _wait_for_marker(self, timeout_s: float) -> _Woken:
        """Block until a job may be ready (or timeout_s passes) and take one if there is.

        A moveToActive is queued behind the wait on the same connection: Redis runs it as soon
        as the wait ends, so an idle worker takes a new job in one round trip, not two (issue 4:
        pickup latency).
        """
        token = next(self._tokens)
        move = self._commands["moveToActive"]
        args = self._move_to_active_args(token)
        stale, self._stale = self._stale, []
        try:
            async with self._blocking.pipeline(transaction=False) as pipe:
                for key, taken_ms in stale:  # cosmetic: lost with a failed round trip
                    pipe.eval(_SET_PROCESSED_ON, 1, key, taken_ms)
                pipe.bzpopmin(self._marker, timeout_s)
                pipe.evalsha(move.sha, len(self._move_keys), *self._move_keys, *args)
                pipe.llen(self._waiting_keys[0])
                pipe.zcard(self._waiting_keys[1])
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: nothing is known to have run
            logger.warning("waiting for BullMQ jobs failed: %s", exc)
            await asyncio.sleep(RECONNECT_S)
            return _Woken(marker=0, took=False, due=None, more=False)  # look again
        popped, moved, *waiting = replies[len(stale) :]
        # The move's reply first: whatever became of the wait, a job it took is ours to run.
        took, due = False, None
        if not isinstance(moved, Exception):  # refused: its script not loaded (Redis restarted)
            try:
                took, due = self._start_moved(moved, token, moved_at_ms=args[1])
            except Exception as exc:  # as in _take: logged, looked at again
                logger.warning("taking a BullMQ job failed: %s", exc)
        if isinstance(popped, Exception):
            logger.warning("waiting for BullMQ jobs failed: %s", popped)
            await asyncio.sleep(RECONNECT_S)
            return _Woken(marker=0, took=took, due=None, more=False)
        marker = None
        if popped:
            _key, member, score = popped
            marker = int(score) if member else 0
        more = any(isinstance(n, int) and n > 0 for n in waiting)
        return _Woken(marker, took, due, more)

    async def _until_slot_freed(self, timeout_s: float | None = None) -> None:
        self._slot_freed.clear()
        wait = max(0.0, self._pause_until - time.monotonic()) or timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slot_freed.wait(), wait)

    # ------------------------------------------------------------ running jobs

    def _start(self, job: _Job) -> None:
        self._active[job.job.id] = job
        running = asyncio.create_task(self._run(job))
        self._jobs.add(running)
        running.add_done_callback(self._jobs.discard)

    async def _run(self, job: _Job) -> None:
        """Claim the job's task, run it, report the result; then acknowledge the job."""
        try:
            task_id = task_id_of(job.job.data)
            if task_id is None:
                logger.warning("job %s has no valid taskId: dropped", job.job.id)
            elif not self.worker.stopping:  # else never claimed: the sweeper publishes it again
                task = await self._claims.claim(task_id)
                if task is not None:
                    await self.worker.wait_reported(self.worker.start(task))
        except errors.ForemanError as exc:
            # The task stays queued in the database: the server's sweeper publishes it again.
            self._claim_failed(exc)
        finally:
            await self._acks.submit(job)

    def _claim_failed(self, exc: errors.ForemanError) -> None:
        now = time.monotonic()
        if now >= self._pause_until:
            logger.warning("claiming tasks failed, pausing: %s", exc)
        self._pause_until = now + retry_delay_s(3)

    async def _acknowledge(self, jobs: list[_Job]) -> list[None]:
        """Move the jobs to completed (removed, as their options say) in one round trip."""
        finish = self._commands["moveToFinished"]
        calls = [
            (finish, *self._scripts.moveToCompletedArgs(
                job.job, None, job.job.opts.get("removeOnComplete", False), job.token,
                fetchNext=False,
            ))
            for job in jobs
        ]  # fmt: skip
        try:
            replies = await run_scripts(self._redis, calls)
        except Exception as exc:
            # Their locks expire and the stalled check gives them back; the claim then drops them.
            logger.warning("acknowledging %d BullMQ job(s) failed: %s", len(jobs), exc)
            replies = [None] * len(jobs)
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception) or (isinstance(reply, int) and reply < 0):
                logger.info("job %s was not acknowledged (lock lost?): %s", job.job.id, reply)
            self._active.pop(job.job.id, None)
        self._slot_freed.set()
        return [None] * len(jobs)

    # ------------------------------------------------------------ locks and stalled jobs

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
            except Exception as exc:
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
            except Exception as exc:
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


class ClaimBatcher:
    """Claims the tasks of jobs taken together with one ``claim_task_ids`` request.

    ``claim`` answers per job: the leased task, or None when the job must be dropped (the task
    is done, held by another attempt, or unknown). A server without the batch endpoint gets one
    ``claim_task`` per job.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._batcher: MicroBatcher[str, Task | None] = MicroBatcher(
            self._claim, window_s=CLAIM_WINDOW_S, max_batch=CLAIM_BATCH
        )
        self._batch_endpoint = True

    async def claim(self, task_id: str) -> Task | None:
        """The task leased for this job, or None (drop the job)."""
        return await self._batcher.submit(task_id)

    async def _claim(self, task_ids: list[str]) -> list[Task | None]:
        worker = self.worker
        if len(task_ids) == 1:
            # A lone job (an idle worker's pickup): the single-task statement is cheaper
            # (measured 0.2 against 0.6 ms in PostgreSQL).
            return [await self._claim_one(task_ids[0])]
        if self._batch_endpoint:
            try:
                results = await worker.client.claim_task_ids(
                    task_ids, worker_id=worker.worker_id, lease_s=worker.lease_s
                )
            except errors.ForemanError as exc:
                if not is_missing_route(exc):
                    raise
                logger.info("server has no batch claim endpoint: claiming one job at a time")
                self._batch_endpoint = False
            else:
                for result in results:
                    if result.reason == "not_found":
                        logger.warning("a job names unknown task %s: dropped", result.task_id)
                    elif not result.ok:
                        logger.debug("task %s is %s: job dropped", result.task_id, result.status)
                return [result.task for result in results]
        return list(await asyncio.gather(*(self._claim_one(task_id) for task_id in task_ids)))

    async def _claim_one(self, task_id: str) -> Task | None:
        worker = self.worker
        try:
            return await worker.client.claim_task(
                task_id, worker_id=worker.worker_id, lease_s=worker.lease_s
            )
        except errors.ConflictError:
            logger.debug("task %s is done or held by another attempt: job dropped", task_id)
        except errors.NotFoundError:
            logger.warning("a job names unknown task %s: dropped", task_id)
        return None
