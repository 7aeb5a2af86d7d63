"""The worker's side of a queue backend: where claimed tasks come from (docs/backends.md).

``Worker`` owns the lifecycle (slots, handlers, leases, results, stopping); a source only takes
ready tasks and acknowledges them once their attempt is over. One implementation per backend
module (``_postgres.py``, ``_bullmq.py``, ``_rabbitmq.py``, ``_sqs.py``), chosen in
``worker.open_source``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from foreman.client import AsyncClient
from foreman.models import Task


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source gets from its worker."""

    client: AsyncClient
    worker_id: str
    lease_s: float  # the lease of each claimed task
    claim_wait_s: float  # how long an idle take may wait for a ready task
    types: Sequence[str] | None  # the task types to take (None: every type)
    stopped: asyncio.Event  # set by Worker.stop(): a take in progress returns soon
    concurrency: int = 1  # the worker's handler slots (a broker's prefetch)

    async def pause(self, seconds: float) -> None:
        """Sleep seconds, or less if the worker stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), seconds)


class TaskSource(Protocol):
    """Claimed tasks for one worker, from one queue backend."""

    # How many take() calls the worker may have out at once, each for its share of the slots.
    takes_in_flight: int
    # Whether a task is acknowledged as soon as its handler ends (its slot is free), before its
    # result is sent: a broker that delivers only as many messages as there are unacknowledged
    # slots (RabbitMQ's prefetch) then sends the next while the result is on its way.
    acknowledges_when_free: bool

    async def take(self, limit: int, *, burst: bool) -> list[Task]:
        """Up to limit tasks leased to this worker (SPEC section 7), at least one if any is ready.

        Waits a while for a ready task while there is none (burst: briefly); ``[]`` means none
        came (or the worker is stopping). Errors of the service are logged and retried here,
        never raised: a worker keeps running while its server or Redis restarts.
        """
        ...

    async def acknowledge(self, task: Task) -> None:
        """task's attempt is over (its result was sent, or it was released): drop its message."""
        ...

    async def close(self) -> None:
        """After the worker drained: finish the acknowledgements, release connections."""
        ...
