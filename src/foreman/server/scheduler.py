"""The firing loop of schedules: each tick of a schedule creates exactly one run.

Every ``schedule_interval_s`` each server process claims the due schedules of every organisation
with ``FOR UPDATE SKIP LOCKED``, and in the same transaction creates each one's run and queued
task and moves its ``next_run_at`` past now (store/schedules.py). Replicas firing at once split
the due schedules between them, and a schedule fired and committed by one is no longer due for
the others: a tick fires once however many replicas run. Like the sweeper, its connection is the
table owner's (no ``SET ROLE foreman_app``), which row-level security does not bind.
"""

from __future__ import annotations

import logging
from typing import Any

from foreman import ids
from foreman.models import Schedule
from foreman.server.periodic import OUTAGES, Periodic
from foreman.settings import Settings
from foreman.store import db
from foreman.store import schedules as schedules_store

logger = logging.getLogger(__name__)


class Scheduler(Periodic):
    """Runs fire_all() periodically in the background of a server process."""

    task_name = "foreman-scheduler"
    what = "firing schedules"
    log = logger

    @classmethod
    def configured(cls, settings: Settings) -> dict[str, Any]:
        return {"interval_s": settings.schedule_interval_s, "batch": settings.schedule_batch}

    async def tick(self) -> float | None:
        """Fire every schedule due now; the seconds until the next tick of any schedule.

        The loop wakes at that tick rather than up to an interval after it: a schedule of a
        1-second interval would otherwise lose the ticks that a late wake-up leaves behind (only
        the latest overdue tick fires, triggers.Trigger.due). A tick that came due while this round
        fired is wanted at once; None when nothing is due later, or when what is due was due
        before this round and could not fire (it waits for the next round: no busy loop).
        """
        began = ids.now_ms()
        await self.fire_all(now=began)
        async with self._pool.acquire() as conn:
            due = await schedules_store.next_due(conn)
        if due is None or due <= began:
            return None
        return max(due - ids.now_ms() + 1, 0) / 1000

    async def fire_all(self, *, now: int) -> int:
        """Fire every schedule due at now, a batch per transaction; the runs created."""
        fired = 0
        while True:
            count = await self.fire(now=now)
            fired += count
            # A full batch: more may be due. One that could not fire stays due, so a batch with
            # a failure ends the round (no busy loop over it): the next round tries again.
            if count < self._batch:
                return fired

    async def fire(self, *, now: int) -> int:
        """One batch as of now (epoch ms): the runs created."""
        firings: list[schedules_store.Firing] = []
        async with self._pool.acquire() as conn, conn.transaction():
            due = await schedules_store.claim_due_schedules(conn, now=now, limit=self._batch)
            for schedule in due:
                firing = await self._fire_one(conn, schedule, now=now)
                if firing is not None:
                    firings.append(firing)
        # After the commit, like every publish: a job must never name an uncommitted task. A
        # publish lost here is repaired by the sweeper (broker backends), as after any create.
        created = [f.task for f in firings]
        if self._metrics is not None:
            self._metrics.tasks_created(created)  # counted like the tasks the API creates
        await self._queue.publish(created)
        for firing in firings:
            logger.info(
                "schedule %s fired: run %s",
                firing.schedule_id,
                firing.run_id,
                extra={"schedule_id": firing.schedule_id, "run_id": firing.run_id},
            )
        return len(firings)

    async def _fire_one(
        self, conn: db.Connection, schedule: Schedule, *, now: int
    ) -> schedules_store.Firing | None:
        try:
            # A savepoint: a schedule that cannot fire (a bug) leaves the others' firings.
            async with conn.transaction():
                return await schedules_store.fire_schedule(conn, schedule, now=now)
        except OUTAGES:
            raise
        except Exception:
            logger.exception("schedule %s could not fire", schedule.id)
            return None
