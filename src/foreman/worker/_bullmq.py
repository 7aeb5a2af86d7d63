"""The bullmq backend: consume jobs with the ``bullmq`` package, claim each task by its id.

Jobs carry only ``{"taskId"}`` (SPEC section 7), from the server, from ``Client`` with
``queue_backend="bullmq"`` or from the Node foreman-client (whose extra fields are ignored). The
database decides: a claim refused with 409 means another attempt owns the task or it is done, so
the job is acknowledged and dropped. Retries are the server's: a failed attempt goes back to the
database as ``retrying`` and the server publishes its next job, so the BullMQ job is always
acknowledged once the result is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any

from foreman import errors
from foreman.client import AsyncClient, RedisOptions
from foreman.client._base import is_missing_route
from foreman.models import Task

if TYPE_CHECKING:
    from foreman.worker.worker import Worker

logger = logging.getLogger(__name__)

BURST_POLL_S = 0.2
# bullmq waits runRetryDelay after a Redis connection error; its default (15 s) is too slow to
# pick up again after a Redis restart.
RUN_RETRY_DELAY_MS = 1000
# bullmq's own Redis clients retry a lost connection with exponential backoff (1 s doubling, up
# to 20 s): after a Redis restart the worker sat idle for seconds (measured: 4.8-5.8 s after a
# 3-10 s outage, tests/faults). A constant short backoff picks up again within RECONNECT_S.
RECONNECT_S = 0.5
RECONNECT_TRIES = 20
# Jobs the BullMQ Worker hands over together are claimed with one request (one claim request per
# job was half of the worker's CPU, issue 4): while a claim is out, jobs gather for CLAIM_WINDOW_S
# (or CLAIM_BATCH of them); at most CLAIM_IN_FLIGHT requests are out, later jobs wait for a slot
# and join the next, larger batch.
CLAIM_WINDOW_S = 0.002
CLAIM_BATCH = 500
CLAIM_IN_FLIGHT = 2


async def queue_settings(client: AsyncClient) -> tuple[RedisOptions, str]:
    """The Redis connection and queue name: the client's overrides, else the server's config."""
    redis, queue_name = client.options.redis, client.options.task_queue
    if redis is None or queue_name is None:
        config = await client.get_config()
        redis = redis or RedisOptions.from_config(config.redis)
        queue_name = queue_name or config.queues.task_queue
    return redis, queue_name


def _bullmq() -> Any:
    try:
        import bullmq
    except ImportError as exc:
        raise errors.ForemanError(
            "The bullmq backend needs the bullmq package: pip install 'foreman[redis]'"
        ) from exc
    return bullmq


async def consume(worker: Worker, *, burst: bool) -> None:
    """Process jobs until the worker stops (burst: until the queue has no ready job)."""
    redis, queue_name = await queue_settings(worker.client)
    bullmq = _bullmq()
    lease_ms = round(worker.lease_s * 1000)
    options = {
        "connection": redis.connection(),
        "concurrency": worker.concurrency,
        "autorun": False,
        "name": worker.worker_id,
        "runRetryDelay": RUN_RETRY_DELAY_MS,
        "lockDuration": max(lease_ms, 30_000),
    }
    jobs = _JobCount()
    claims = ClaimBatcher(worker)
    consumer = bullmq.Worker(queue_name, functools.partial(process, worker, jobs, claims), options)
    _reconnect_quickly(consumer)
    runner = asyncio.create_task(consumer.run())
    logger.info("consuming BullMQ queue %r on %s:%s", queue_name, redis.host, redis.port)
    try:
        if burst:
            queue = bullmq.Queue(queue_name, {"connection": redis.connection()})
            await _until_drained(worker, jobs, queue)
        else:
            await worker.wait_stopped()
    finally:
        # Stop fetching, give running handlers their grace period, then close for good.
        closing = asyncio.create_task(consumer.close())
        await worker.drain()
        await closing
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def _reconnect_quickly(consumer: Any) -> None:
    """Give the consumer's Redis clients (commands and blocking wait) a short constant backoff."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ConstantBackoff

    for client in (getattr(consumer, "client", None), getattr(consumer, "bclient", None)):
        if client is not None and hasattr(client, "set_retry"):
            client.set_retry(Retry(ConstantBackoff(RECONNECT_S), RECONNECT_TRIES))


class _JobCount:
    """Jobs being processed (fetched from Redis, result not yet reported)."""

    def __init__(self) -> None:
        self.active = 0


class ClaimBatcher:
    """Claims the tasks of jobs handed over together with one ``claim_task_ids`` request.

    ``claim`` answers per job: the leased task, or None when the job must be dropped (the task
    is done, held by another attempt, or unknown). A server without the batch endpoint gets one
    ``claim_task`` per job.
    """

    def __init__(
        self,
        worker: Worker,
        *,
        window_s: float = CLAIM_WINDOW_S,
        max_batch: int = CLAIM_BATCH,
        max_in_flight: int = CLAIM_IN_FLIGHT,
    ) -> None:
        self.worker = worker
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[Task | None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._sending: set[asyncio.Task[None]] = set()
        self._batch_endpoint = True

    async def claim(self, task_id: str) -> Task | None:
        """The task leased for this job, or None (drop the job)."""
        future: asyncio.Future[Task | None] = asyncio.get_running_loop().create_future()
        self._pending.append((task_id, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            # Idle: send at the next loop turn (pickup latency). Busy: jobs arriving while a
            # claim is out gather for window_s, or until a request slot frees.
            delay = self.window_s if self._sending else 0.0
            self._timer = asyncio.get_running_loop().call_later(delay, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            sending = asyncio.create_task(self._send())
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _send(self) -> None:
        async with self._slots:
            # Taken only once a slot is free: jobs that arrived meanwhile join this request.
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            if not batch:
                return
            try:
                tasks = await self._claim([task_id for task_id, _ in batch])
            except Exception as exc:  # each job fails with it, as its own claim would have
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            except BaseException:
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), task in zip(batch, tasks, strict=True):
                if not future.done():
                    future.set_result(task)
        if self._pending and self._timer is None:
            self._flush()  # more jobs waited for this slot

    async def _claim(self, task_ids: list[str]) -> list[Task | None]:
        worker = self.worker
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


async def process(
    worker: Worker, jobs: _JobCount, claims: ClaimBatcher, job: Any, token: str
) -> None:
    """Claim the job's task, run it and report the result; the job is then acknowledged."""
    jobs.active += 1
    try:
        await _process(worker, claims, job)
    finally:
        jobs.active -= 1


async def _process(worker: Worker, claims: ClaimBatcher, job: Any) -> None:
    data = job.data if isinstance(job.data, dict) else {}
    task_id = data.get("taskId")
    if not isinstance(task_id, str) or not _is_uuid(task_id):
        logger.warning("job %s of queue has no valid taskId: dropped", job.id)
        return
    if worker.stopping:
        return  # never claimed: the server's sweeper publishes the task again
    task = await claims.claim(task_id)
    if task is None:
        return  # done, held by another attempt or unknown: the job is acknowledged
    held = worker.start(task)
    await worker.wait_reported(held)


def _is_uuid(value: str) -> bool:
    # One malformed id must not make the server refuse the whole batch (400).
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _until_drained(worker: Worker, jobs: _JobCount, queue: Any) -> None:
    """Until no ready job is left and no handler runs (seen twice, BURST_POLL_S apart)."""
    idle_checks = 0
    try:
        while idle_checks < 2 and not worker.stopping:
            await asyncio.sleep(BURST_POLL_S)
            counts = await queue.getJobCounts("wait", "prioritized", "paused")
            busy = sum(counts.values()) > 0 or jobs.active > 0
            idle_checks = 0 if busy else idle_checks + 1
    finally:
        await queue.close()
