"""What the RabbitMQ and SQS backends share: queues per organisation, publishing delayed messages
when due, skipping a repeated publish, and finding lost messages by an empty queue.

Neither broker can answer "is the message of this task still queued?" (BullMQ can: the job is a
Redis hash), nor refuse a second message with the same id, nor (RabbitMQ without a plugin, SQS
past 15 minutes) hold a message back until a time. The task row is the truth, so this process
keeps the timers, and the sweeper repairs what a lost process or broker took with it
(docs/backends.md, "RabbitMQ" and "Amazon SQS").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence

from foreman import ids
from foreman.models import Task
from foreman.queue.base import Message, ready_messages
from foreman.queue.naming import org_queue_name

logger = logging.getLogger(__name__)

# How many recent publishes a process remembers to skip an identical one (a retried request).
RECENT_MAX = 50_000

Send = Callable[[list[Message]], Awaitable[None]]


def by_queue(base: str, messages: Iterable[Message]) -> dict[str, list[Message]]:
    """messages grouped by the queue of their organisation, in their order."""
    groups: dict[str, list[Message]] = {}
    for message in messages:
        groups.setdefault(org_queue_name(base, message.org_id), []).append(message)
    return groups


class RecentPublishes:
    """The tasks this process published lately, by (id, attempt, updatedAt): the same row state
    published twice (a repeated request) makes one message. A release or a retry changes the
    row, so its publish is never taken for a repeat."""

    def __init__(self, capacity: int = RECENT_MAX) -> None:
        self._seen: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._capacity = capacity

    def fresh(self, tasks: Sequence[Task]) -> list[Task]:
        """The tasks not published in this state before; they are remembered from now on."""
        fresh = []
        for task in tasks:
            key = (task.id, task.attempt, task.updated_at)
            if key in self._seen:
                continue
            self._seen[key] = None
            fresh.append(task)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return fresh


class DueTimers:
    """Sends delayed messages once their delay has passed, from this process.

    One timer per distinct due time of a publish (a batch's retries share one). A timer lost with
    its process leaves a ready row without a message: the sweeper finds it (``missing``).
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self._timers: set[asyncio.TimerHandle] = set()
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Timers not fired yet."""
        return len(self._timers)

    def schedule(self, messages: Sequence[Message], *, ready_delay_ms: int = 0) -> None:
        """Send each message when its delay_ms has passed, as a message due now (its delay
        minus ready_delay_ms: what the broker itself can still hold back, SQS's DelaySeconds)."""
        loop = asyncio.get_running_loop()
        groups: dict[int, list[Message]] = {}
        for message in messages:
            groups.setdefault(message.delay_ms - ready_delay_ms, []).append(message)
        for wait_ms, group in groups.items():
            slot: list[asyncio.TimerHandle] = []  # the timer, for _fire to forget it
            slot.append(loop.call_later(wait_ms / 1000, self._fire, group, ready_delay_ms, slot))
            self._timers.add(slot[0])

    def _fire(
        self, group: list[Message], ready_delay_ms: int, slot: list[asyncio.TimerHandle]
    ) -> None:
        self._timers.discard(slot[0])
        due = [dataclasses.replace(m, delay_ms=min(m.delay_ms, ready_delay_ms)) for m in group]
        sending = asyncio.ensure_future(self._send_logged(due))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send_logged(self, messages: list[Message]) -> None:
        try:
            await self._send(messages)
        except Exception as exc:  # the broker is down: the sweeper publishes them later
            logger.warning(
                "publishing %d due task(s) failed; the sweeper will retry: %s",
                len(messages),
                exc,
                extra={"task_id": messages[0].task_id},
            )

    async def close(self) -> None:
        """Cancel the timers (their tasks stay ready rows: another process's sweeper sends
        them) and wait for the sends in flight."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        await asyncio.gather(*self._sending, return_exceptions=True)


def split_due(
    tasks: Sequence[Task], recent: RecentPublishes, *, hold_ms: int
) -> tuple[list[Message], list[Message]]:
    """The messages of the fresh ready tasks: (to send now, to send from a timer). A message
    the broker can hold back itself (delay up to hold_ms) is sent now with its delay."""
    messages = ready_messages(recent.fresh(tasks), now=ids.now_ms())
    now = [m for m in messages if m.delay_ms <= hold_ms]
    later = [m for m in messages if m.delay_ms > hold_ms]
    return now, later


class EmptyQueueCheck:
    """Finds lost messages by an empty queue, the second time a task is seen so.

    The sweeper asks only about tasks ready for its grace period, which a consumer would have
    received from a queue that holds their messages; if the queue is empty (purged, deleted, a
    broker that lost it), they are lost. A queue that lost some messages but not all is repaired
    once its consumers have emptied it. A task is reported on the second sweep that finds it
    ready beside an empty queue: on the first, a worker may hold its message between receiving
    it and its claim's commit (a republish then is only a duplicate, but a needless one).
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self._suspects: set[tuple[str, int]] = set()

    async def missing(
        self, messages: Sequence[Message], depth: Callable[[str], Awaitable[int]]
    ) -> list[Message]:
        """The messages whose queue was empty now and when they were last asked about; depth
        (queue) is the messages waiting in it (0 for a queue that does not exist)."""
        lost: list[Message] = []
        for name, group in by_queue(self.base, messages).items():
            if await depth(name) > 0:
                continue
            for message in group:
                key = (message.task_id, message.attempt)
                if key in self._suspects:
                    self._suspects.discard(key)
                    lost.append(message)
                else:
                    self._suspects.add(key)
        if len(self._suspects) > RECENT_MAX:
            self._suspects.clear()  # tasks claimed since: forgetting costs one sweep's delay
        return lost
