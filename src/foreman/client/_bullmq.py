"""Publishing BullMQ jobs from the client, the way the Node ``foreman-client`` does.

Only used with ``queue_backend="bullmq"`` on the client; by default the server queues tasks itself.
The ``bullmq`` package is the optional ``foreman[redis]`` extra, so it is imported on first use.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from foreman import errors
from foreman.client._base import RedisOptions

T = TypeVar("T")


def _queue_class() -> Any:
    try:
        from bullmq import Queue
    except ImportError as exc:
        raise errors.ForemanError(
            "queue_backend='bullmq' needs the bullmq package: pip install 'foreman[redis]'"
        ) from exc
    return Queue


class AsyncPublisher:
    """Adds jobs to one BullMQ queue; the Redis connection opens on first use."""

    def __init__(self, redis: RedisOptions, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._queue: Any = None

    async def publish(self, jobs: Sequence[dict[str, Any]]) -> None:
        """Add jobs ({"name", "data", "opts"}) in one Redis transaction."""
        if not jobs:
            return
        if self._queue is None:
            self._queue = _queue_class()(self.queue_name, {"connection": self.redis.connection()})
        await self._queue.addBulk(list(jobs))

    async def close(self) -> None:
        """Close the Redis connection."""
        queue, self._queue = self._queue, None
        if queue is not None:
            await queue.close()


class SyncPublisher:
    """An AsyncPublisher driven from synchronous code through a private event-loop thread."""

    def __init__(self, redis: RedisOptions, queue_name: str) -> None:
        self._publisher = AsyncPublisher(redis, queue_name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="foreman-bullmq", daemon=True
            )
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def publish(self, jobs: Sequence[dict[str, Any]]) -> None:
        """Add jobs in one Redis transaction."""
        if jobs:
            self._run(self._publisher.publish(jobs))

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        if self._loop is None:
            return
        self._run(self._publisher.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop.close()
        self._loop = None
