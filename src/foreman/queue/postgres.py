"""The ``postgres`` backend: the task table is the queue (SPEC section 7).

A task is deliverable as soon as its row is ``queued``/``retrying`` with ``runAfter <= now``;
workers take rows with ``FOR UPDATE SKIP LOCKED`` (store/queue.py) and the statements that make
a task ready send ``NOTIFY foreman_task_ready`` themselves. So nothing has to be published after
the commit, and a message cannot go missing: every method here has nothing left to do.
"""

from __future__ import annotations

from collections.abc import Sequence

from foreman.models import Task
from foreman.queue.base import BackendName, Message


class PostgresQueue:
    """The queue that is the task table."""

    name: BackendName = "postgres"

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Nothing to do: the committed row is the message."""

    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Nothing to do: the committed row is the message."""

    async def missing(self, messages: Sequence[Message]) -> list[Message]:
        """Always empty: a ready row is always in the queue."""
        return []

    async def close(self) -> None:
        """No connections of its own."""
