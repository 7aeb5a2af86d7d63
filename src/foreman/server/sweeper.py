"""The sweeper: nothing is lost (SPEC section 7).

Every ``sweep_interval_s`` each server process tries to take a transaction-level advisory lock;
the one that gets it (one per moment, however many replicas run) turns expired leases into
``retrying`` (or ``failed`` when the attempts ran out) and, for the ``bullmq`` backend, publishes
again the ready tasks whose job is no longer in Redis. With FOREMAN_RETENTION_DAYS, each sweep
is followed by one batch of retention (store/retention.py: its own transaction and lock). Its connections work across
organisations, so they are the table owner's (role ``none`` in each transaction, not
``foreman_app``): row-level security does not apply to the owner because it is not FORCEd.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Unpack

from foreman import ids
from foreman.models import Task
from foreman.queue.base import Message, ready_messages
from foreman.server.periodic import LoopOptions, Periodic
from foreman.settings import Settings
from foreman.store import db, dependencies, retention, statistics
from foreman.store import queue as queue_store
from foreman.store import runs as runs_store
from foreman.store.pool import Pool

logger = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: "foreman\x01" as a big-endian int64.
SWEEP_LOCK_KEY = int.from_bytes(b"foreman\x01", "big", signed=True)
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did (``locked`` False: another process was sweeping)."""

    locked: bool
    retried: int = 0
    failed: int = 0
    republished: int = 0


class Sweeper(Periodic):
    """Runs sweep() and prune() periodically in the background of a server process."""

    task_name = "foreman-sweeper"
    what = "sweep"
    log = logger

    def __init__(
        self,
        pool: Pool[db.Connection],
        *,
        grace_s: float,
        retention_s: float | None = None,
        retention_batch: int = retention.DEFAULT_BATCH_ROWS,
        **loop: Unpack[LoopOptions],
    ) -> None:
        super().__init__(pool, **loop)
        self._retention_ms = None if retention_s is None else round(retention_s * 1000)
        self._retention_batch = retention_batch
        self._grace_ms = round(grace_s * 1000)
        self._cursor = queue_store.ReadyCursor()

    @classmethod
    def configured(cls, settings: Settings) -> dict[str, Any]:
        days = settings.retention_days
        return {
            "interval_s": settings.sweep_interval_s,
            "batch": settings.sweep_batch,
            "grace_s": settings.sweep_publish_grace_s,
            "retention_s": None if days is None else days * 86400,
            "retention_batch": settings.retention_batch,
        }

    async def tick(self) -> None:
        """One sweep, then one batch of retention; what they did is logged."""
        result = await self.sweep(now=ids.now_ms())
        pruned = await self.prune(now=ids.now_ms())
        if result.retried or result.failed or result.republished:
            logger.info(
                "sweep: %d lease(s) expired and retried, %d failed, %d task(s) republished",
                result.retried,
                result.failed,
                result.republished,
            )
        if pruned.rows:
            logger.info(
                "retention: deleted %d run(s), %d task(s), %d run data row(s)",
                pruned.runs,
                pruned.tasks,
                pruned.run_data,
            )

    async def sweep(self, *, now: int) -> SweepResult:
        """One sweep as of now (epoch ms), if no other process is sweeping right now."""
        check_queue = self._queue.name != "postgres"
        ready: list[Task] = []
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_TRY_LOCK, SWEEP_LOCK_KEY):
                return SweepResult(locked=False)
            released: list[str] = []  # blocked children the ends released
            expired = await queue_store.expire_leases(
                conn, now=now, limit=self._batch, released=released
            )
            # Auto-complete runs left open by races (store/sql/queue.sql): a statement of its own,
            # so its snapshot sees the expiry above and every commit before it.
            await runs_store.complete_due_runs(conn, now=now, limit=self._batch)
            released += await dependencies.repair(conn, now=now, limit=self._batch)
            children = await dependencies.get_tasks(conn, org_id=None, task_ids=released)
            analyzed = await statistics.analyze_new_tables(conn)
            if analyzed:
                logger.info("analysed new table(s) %s for the planner", ", ".join(analyzed))
            if check_queue:
                ready, self._cursor = await queue_store.ready_tasks(
                    conn, ready_before=now - self._grace_ms, cursor=self._cursor, limit=self._batch
                )
        if self._metrics is not None:
            self._metrics.swept(expired)
        # After the commit, like every publish: a job must never name an uncommitted state.
        await self._queue.publish(expired + children)
        lost = await self._republish(ready_messages(ready, now=now)) if ready else 0
        failed = sum(t.status == "failed" for t in expired)
        return SweepResult(True, len(expired) - failed, failed, lost)

    async def prune(self, *, now: int) -> retention.Pruned:
        """One retention batch as of now (epoch ms), if retention is on and no one else prunes."""
        if self._retention_ms is None:
            return retention.Pruned(locked=False)
        async with self._pool.acquire() as conn:
            return await retention.prune_batch(
                conn, ended_before=now - self._retention_ms, limit=self._retention_batch
            )

    async def _republish(self, messages: list[Message]) -> int:
        """Publish again the messages the queue lost; a queue outage is logged (next sweep)."""
        try:
            lost = await self._queue.missing(messages)
            if lost:
                await self._queue.enqueue(lost)
        except Exception as exc:  # Redis down: the same tasks are checked again later
            logger.warning("checking the queue for lost tasks failed: %s", exc)
            return 0
        if lost:
            logger.warning(
                "republished %d ready task(s) missing from the queue",
                len(lost),
                extra={"task_id": lost[0].task_id},
            )
        return len(lost)
