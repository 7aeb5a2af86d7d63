"""The queue interface: queues carry task ids only, every task's state stays in PostgreSQL.

The server uses a backend to hand ready tasks to workers after the database write (``publish``:
also a failed attempt's retry, after its backoff), and, in the sweeper, to find ready tasks whose
message is gone (``missing``) so it can publish them again. docs/backends.md: adding a backend.
A backend with a service of its own (Redis) also has ``ping()``, which ``/health`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from foreman.models import Task

BackendName = Literal["postgres", "bullmq", "rabbitmq", "sqs"]
READY_STATUSES: frozenset[str] = frozenset({"queued", "retrying"})


@dataclass(frozen=True, slots=True)
class Message:
    """A task id in transit, with what a queue needs to order and deliver it."""

    task_id: str
    task_type: str
    org_id: str = ""  # the task's organisation: with queues per organisation, its queue
    attempt: int = 1  # the attempt this message starts (the task's attempt + 1)
    priority: int = 0  # BullMQ order: 0 = none (first), then 1 = highest
    delay_ms: int = 0
    max_attempts: int = 1  # attempts the job allows: the task's maxRetries + 1
    # Another handle of the same message: the job id a Node client recorded as queueJobId.
    receipt: str = ""


def message_for(task: Task, *, now: int) -> Message:
    """The message that makes task's next attempt deliverable (after its runAfter)."""
    run_after = task.run_after or 0
    return Message(
        task_id=task.id,
        task_type=task.type,
        org_id=task.org_id,
        attempt=task.attempt + 1,
        priority=task.priority,
        delay_ms=max(0, run_after - now),
        max_attempts=task.max_retries + 1,
        receipt=task.queue_job_id or "",
    )


def ready_messages(tasks: Sequence[Task], *, now: int) -> list[Message]:
    """Messages for the tasks that wait in the queue (queued or retrying); others are skipped."""
    return [message_for(t, now=now) for t in tasks if t.status in READY_STATUSES]


class QueueBackend(Protocol):
    """One interface for every backend (SPEC section 7); mypy checks each against it."""

    name: BackendName

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Make queued/retrying tasks deliverable; never raises (the sweeper repairs a miss)."""
        ...

    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Deliver messages; a message already in the queue is not added twice."""
        ...

    async def missing(self, messages: Sequence[Message]) -> list[Message]:
        """The messages that no longer wait in the queue (lost with a flushed Redis, say)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
