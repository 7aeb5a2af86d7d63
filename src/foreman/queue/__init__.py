"""Queue backends (SPEC section 7): the task table itself, or BullMQ jobs in Redis."""

from __future__ import annotations

from foreman.queue.base import Message, QueueBackend
from foreman.settings import Settings

__all__ = ["Message", "QueueBackend", "open_queue"]


def open_queue(settings: Settings) -> QueueBackend:
    """The backend settings.queue_backend names; Redis connects on first use."""
    if settings.queue_backend == "bullmq":
        # Imported here: the redis/bullmq packages are the optional ``foreman[redis]`` extra.
        from foreman.queue.bullmq import BullMQQueue

        return BullMQQueue.from_settings(settings)
    from foreman.queue.postgres import PostgresQueue

    return PostgresQueue()
