"""The postgres backend's source: the task table is the queue, claimed with ``POST /tasks/claim``.

One request takes a batch sized to the worker's free slots; an idle worker long-polls (the server
waits up to claim_wait_s, woken by ``NOTIFY``). Nothing is acknowledged: the result or the release
of a task is all the table needs.
"""

from __future__ import annotations

import logging

from foreman import errors
from foreman.client import retry_delay_s
from foreman.models import Task
from foreman.worker.source import SourceContext

logger = logging.getLogger(__name__)

MAX_CLAIM = 1000  # docs/queue-protocol.md: a claim takes 1..1000 tasks


class PostgresSource:
    """Claims ready tasks of the caller's organisation in batches."""

    # Two claims out at once: one's round trip overlaps the other's (e2e +15-30 %, benchmarks/).
    takes_in_flight = 2
    acknowledges_when_free = False

    def __init__(self, context: SourceContext) -> None:
        self.context = context

    async def take(self, limit: int, *, burst: bool) -> list[Task]:
        """Up to limit claimed tasks; [] after the long poll found none (burst: at once)."""
        context = self.context
        failures = 0
        while not context.stopped.is_set():
            try:
                return await context.client.claim_tasks(
                    worker_id=context.worker_id,
                    limit=min(limit, MAX_CLAIM),
                    lease_s=context.lease_s,
                    wait_s=0.0 if burst else context.claim_wait_s,
                    types=context.types,
                )
            except errors.ForemanError as exc:
                failures += 1
                logger.warning("claim failed (%s): %s", failures, exc)
                await context.pause(retry_delay_s(min(failures + 2, 6)))
        return []

    async def acknowledge(self, task: Task) -> None:
        """Nothing to do: the task's row already says how its attempt ended."""

    async def close(self) -> None:
        """No connections of its own."""
