"""A server process's periodic background work over a pool of its own: the sweeper's and the
schedules' firing loop share this lifecycle (start, a jittered interval, outages, close)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any, ClassVar, NotRequired, Self, TypedDict

import asyncpg

from foreman import background, errors
from foreman.store import db
from foreman.store.pool import Pool

if TYPE_CHECKING:
    from foreman.queue.base import QueueBackend
    from foreman.server.metrics import ServerMetrics
    from foreman.settings import Settings

# The errors of a database that is down or restarting: a round is skipped with a warning.
OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,  # a connection left mid-protocol by a server shutting down
    errors.UnavailableError,
)


class LoopOptions(TypedDict):
    """What every periodic loop is made with, beside its pool (Periodic.__init__)."""

    queue: QueueBackend
    interval_s: float
    batch: int
    metrics: NotRequired[ServerMetrics | None]


class Periodic:
    """Runs ``tick()`` every interval in the background, from ``start()`` until ``close()``.

    A database outage skips the round with a warning and anything else is logged with its
    traceback: neither ends the loop (nor fills the log, one line per interval).
    """

    task_name: ClassVar[str]  # the asyncio task's
    what: ClassVar[str]  # the round, in log lines: "sweep", "firing schedules"
    log: ClassVar[logging.Logger]

    def __init__(
        self,
        pool: Pool[db.Connection],
        *,
        queue: QueueBackend,
        interval_s: float,
        batch: int,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._queue = queue  # where the tasks a round makes ready are published
        self._interval_s = interval_s
        self._batch = batch  # rows per statement
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def _jittered(self) -> float:
        # Jitter: replicas started together do not all act at the same instant.
        return self._interval_s * random.uniform(0.8, 1.2)  # noqa: S311

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        database_url: str,
        queue: QueueBackend,
        metrics: ServerMetrics | None = None,
    ) -> Self:
        """One with its own small pool of owner connections, configured by settings."""
        pool = await db.open_owner_pool(settings, database_url)
        return cls(pool, **{"queue": queue, "metrics": metrics, **cls.configured(settings)})

    @classmethod
    def configured(cls, settings: Settings) -> dict[str, Any]:
        """The keyword arguments of the constructor that settings set (interval_s, ...)."""
        raise NotImplementedError

    async def tick(self) -> float | None:
        """One round; how soon (seconds) the next is wanted when sooner than the interval."""
        raise NotImplementedError

    def start(self) -> None:
        """Tick every interval until close()."""
        self._task = asyncio.create_task(self._loop(), name=self.task_name)

    async def close(self) -> None:
        """Stop ticking and close the pool."""
        task, self._task = self._task, None
        await background.cancel_and_wait(task)
        await self._pool.close()

    async def _loop(self) -> None:
        delay = self._jittered()
        while True:
            await asyncio.sleep(delay)
            delay = self._jittered()
            try:
                soon = await self.tick()
                if soon is not None:
                    delay = min(delay, soon)
            except OUTAGES as exc:
                self.log.warning("%s skipped, database unavailable: %s", self.what, exc)
            except Exception:
                self.log.exception("%s failed", self.what)
