"""The leases a worker holds, renewed together: one heartbeat request per beat, not per task."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from foreman import errors
from foreman.client import AsyncClient, Lease, chunks
from foreman.models import Task
from foreman.worker.context import AttemptState

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Held:
    """A claimed task, from its claim until the server has its result (or it is released)."""

    task: Task
    state: AttemptState
    handle: asyncio.Task[None] | None = None
    executing: bool = True  # the handler has not returned yet

    @property
    def lease(self) -> Lease:
        assert self.task.lease_token is not None
        return Lease(self.task.id, self.task.lease_token)


class LeaseKeeper:
    """Renews every held lease each interval_s and records lost leases and cancellations."""

    def __init__(self, client: AsyncClient, *, lease_s: float, interval_s: float) -> None:
        self.client = client
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.held: dict[str, Held] = {}

    def add(self, held: Held) -> None:
        """Start renewing held's lease."""
        self.held[held.task.id] = held

    def remove(self, task_id: str) -> None:
        """Stop renewing a lease (its result was recorded, dropped or released)."""
        self.held.pop(task_id, None)

    async def run(self) -> None:
        """Beat forever (cancelled by the worker when it stops)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
            except errors.ForemanError as exc:
                # The next beat tries again; the lease outlives a few missed beats.
                logger.warning("heartbeat failed: %s", exc)

    async def beat(self) -> None:
        """Renew all live leases now."""
        live = [held.lease for held in self.held.values() if not held.state.lease_lost]
        for chunk in chunks(live):
            for state in await self.client.heartbeat(chunk, lease_s=self.lease_s):
                held = self.held.get(state.task_id)
                if held is None:
                    continue
                if state.cancelled and not held.state.cancelled:
                    held.state.mark(cancelled=True)
                    logger.info("task %s was cancelled", state.task_id)
                # A handler that returned has its result on the way (or recorded already: the
                # task is no longer running); the result's own answer says whether it counted.
                # Flagging it here only logged false "lease lost" warnings (issue 4).
                if not held.executing:
                    continue
                if not state.ok and not state.cancelled and not held.state.lease_lost:
                    held.state.mark(lease_lost=True)
                    logger.warning(
                        "lease of task %s lost: its result will be dropped",
                        state.task_id,
                        extra={"task_id": state.task_id},
                    )
