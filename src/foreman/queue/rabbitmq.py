"""The ``rabbitmq`` backend: AMQP messages that carry only a task id (docs/backends.md).

One durable queue per organisation (``naming.org_queue_name``), on the default exchange; its
poison messages go to ``<queue>-dead``. A message's body is the task id; the task type and the
attempt ride as headers (``x-foreman-type``, ``x-foreman-attempt``); it is persistent and
published with publisher confirms, so ``enqueue`` returns once RabbitMQ has it on disk. Foreman's
priority (0 first, then 1 = highest) maps onto AMQP's (higher first) within ``MAX_PRIORITY``
levels. A batch's messages go out in one socket write (``publish_confirmed``), not one each. RabbitMQ has no delayed delivery without a plugin: a delayed message is published by this
process when due (``brokers.DueTimers``), and the task row stays the truth for the sweeper.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import ChannelFrame, FrameType
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from foreman.models import Task
from foreman.queue import brokers, naming
from foreman.queue.base import BackendName, Message
from foreman.settings import Settings

logger = logging.getLogger(__name__)

# AMQP priorities 0..MAX_PRIORITY, higher first; RabbitMQ advises at most 10 (each level costs).
MAX_PRIORITY = 10
HEADER_TYPE = "x-foreman-type"
HEADER_ATTEMPT = "x-foreman-attempt"
DEAD_SUFFIX = "-dead"
# Quorum queues: deliveries of one message before RabbitMQ dead-letters it (a consumer that
# crashes on it every time). Classic queues have no such count; the worker dead-letters
# malformed messages itself.
DELIVERY_LIMIT = 20
# A publish must not hold up the HTTP answer for long: on timeout the sweeper publishes later.
PUBLISH_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 3.0
# After the broker restarts, aio-pika reconnects every RECONNECT_S (its default of 5 s kept
# workers idle that long). Replaces the URL's query parameters (aio-pika reads one or the other).
RECONNECT_S = 1.0
# AMQP errors, and the socket errors of a broker that is down; a channel that died with its
# connection raises ChannelInvalidStateError (a RuntimeError) until aio-pika has re-made it.
AMQP_ERRORS = (
    aio_pika.exceptions.AMQPException,
    aio_pika.exceptions.ChannelInvalidStateError,
    OSError,
    TimeoutError,
)


def amqp_priority(priority: int) -> int:
    """Foreman's order (0 first, then 1 = highest, as BullMQ) as an AMQP priority (higher first)."""
    if priority == 0:
        return MAX_PRIORITY
    return max(0, MAX_PRIORITY - priority)


def queue_arguments(name: str, queue_type: str) -> dict[str, Any]:
    """The arguments the server and every worker declare the queue name with (they must agree:
    RabbitMQ refuses a declaration that differs)."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": name + DEAD_SUFFIX,
    }
    if queue_type == "quorum":
        arguments |= {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
    else:
        arguments["x-max-priority"] = MAX_PRIORITY
    return arguments


async def declare(
    channel: aio_pika.abc.AbstractChannel, name: str, queue_type: str
) -> aio_pika.abc.AbstractQueue:
    """Declare the queue and its dead-letter queue (idempotent, and it re-makes a deleted one)."""
    dead_arguments: dict[str, Any] | None = None
    if queue_type == "quorum":
        dead_arguments = {"x-queue-type": "quorum"}
    await channel.declare_queue(name + DEAD_SUFFIX, durable=True, arguments=dead_arguments)
    return await channel.declare_queue(
        name, durable=True, arguments=queue_arguments(name, queue_type)
    )


def depth(queue: aio_pika.abc.AbstractQueue) -> int:
    """The messages waiting in a queue (not those delivered and unacknowledged) when declared."""
    result = queue.declaration_result
    return int(result.message_count or 0) if result is not None else 0


def amqp_properties(message: Message, message_id: str) -> Basic.Properties:
    """The AMQP properties of a Foreman message: persistent, its type and attempt in headers."""
    return Basic.Properties(
        content_type="text/plain",
        headers={HEADER_TYPE: message.task_type, HEADER_ATTEMPT: message.attempt},
        delivery_mode=2,  # persistent
        priority=amqp_priority(message.priority),
        message_id=message_id,
    )


async def write_frames(channel: aiormq.Channel, frames: Sequence[FrameType]) -> None:
    """Send frames on channel in one socket write, returning once written.

    aiormq writes each publish or acknowledgement with a write(2) of its own, which on this VM
    costs more than the rest of the message; the frames of a batch together cost one.
    """
    if channel.is_closed:  # its writer is gone: nothing would answer
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    written = channel.create_future()
    frame = ChannelFrame.marshall(channel.number, frames, drain_future=written)
    await channel.write_queue.put(frame)
    await written


async def publish_confirmed(
    channel: AbstractRobustChannel, queue: str, messages: Sequence[Message]
) -> None:
    """Publish messages to queue (mandatory, on the default exchange) in one write, and wait for
    RabbitMQ's confirms of them all; raise if it returned (no such queue) or refused any.

    What aiormq's ``basic_publish`` does per message, for the batch: each gets the channel's
    next delivery tag and a confirmation future under the channel's lock, and its message id
    names its tag for a ``basic.return``.
    """
    underlay = await channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    frames: list[FrameType] = []
    confirms: list[asyncio.Future[Any]] = []
    returnable = underlay.message_id_delivery_tag
    async with underlay.lock:
        for message in messages:
            message_id = f"{message.task_id}:{message.attempt}"
            body = message.task_id.encode()
            underlay.delivery_tag += 1
            tag = underlay.delivery_tag
            confirm = underlay.create_future()
            underlay.confirmations[tag] = confirm
            returnable[message_id] = tag  # finds the confirm of a return
            confirm.add_done_callback(functools.partial(_forget, returnable, message_id, tag))
            confirms.append(confirm)
            frames += (
                Basic.Publish(exchange="", routing_key=queue, mandatory=True),
                ContentHeader(properties=amqp_properties(message, message_id), body_size=len(body)),
                ContentBody(body),
            )
        await write_frames(underlay, frames)
    for answer in await asyncio.gather(*confirms, return_exceptions=True):
        if isinstance(answer, BaseException):
            raise answer
        if not isinstance(answer, Basic.Ack):
            raise aio_pika.exceptions.AMQPError(f"RabbitMQ refused a message: {answer!r}")


def _forget(returnable: dict[str, int], message_id: str, tag: int, _: object) -> None:
    # Only its own: a later publish of the same task and attempt may have taken the id over.
    if returnable.get(message_id) == tag:
        del returnable[message_id]


class RabbitMQQueue:
    """Publishes task ids to each organisation's queue; finds a queue that lost its messages."""

    name: BackendName = "rabbitmq"

    def __init__(self, url: str, *, base: str, queue_type: str = "classic") -> None:
        self.url = url
        self.base = base
        self.queue_type = queue_type
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._connecting = asyncio.Lock()
        self._declared: set[str] = set()
        self._lost = brokers.EmptyQueueCheck(base)
        self._publisher = brokers.Publisher(
            self.enqueue, broker="RabbitMQ", hold_ms=0, timeout_s=PUBLISH_TIMEOUT_S, log=logger
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RabbitMQQueue:
        """The queues under TASK_QUEUE_NAME on FOREMAN_RABBITMQ_URL; connects on first use."""
        return cls(
            settings.rabbitmq_url,
            base=settings.task_queue_name,
            queue_type=settings.rabbitmq_queue_type,
        )

    def queue_name(self, org_id: str) -> str:
        """The queue of an organisation."""
        return naming.org_queue_name(self.base, org_id)

    async def channel(self) -> AbstractRobustChannel:
        """The publishing channel (publisher confirms on); the connection is made on first use
        and re-made by aio-pika after the broker restarts."""
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        async with self._connecting:
            if self._connection is None:
                self._connection = await aio_pika.connect_robust(
                    self.url,
                    timeout=CONNECT_TIMEOUT_S,
                    reconnect_interval=RECONNECT_S,
                    client_properties={"connection_name": "foreman-server"},
                )
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel(  # type: ignore[assignment]
                    publisher_confirms=True, on_return_raises=True
                )
                self._declared.clear()
        assert self._channel is not None
        return self._channel

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Publish the ready tasks due now; hold the delayed ones until due. Never raises."""
        await self._publisher.publish(tasks)

    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Publish the messages, confirmed by RabbitMQ; raise if it refused any."""
        channel = await self.channel()
        for name, group in brokers.by_queue(self.base, messages).items():
            if name not in self._declared:
                await declare(channel, name, self.queue_type)
                self._declared.add(name)
            try:
                await publish_confirmed(channel, name, group)
            except Exception:
                self._declared.discard(name)  # a deleted queue returns them: declare again
                raise

    async def missing(self, messages: Sequence[Message]) -> list[Message]:
        """The messages of organisations whose queue holds none (purged, deleted, lost with a
        broker): RabbitMQ cannot say whether one message is queued (brokers.py)."""
        channel = await self.channel()

        async def waiting(name: str) -> int:
            self._declared.add(name)
            return depth(await declare(channel, name, self.queue_type))

        return await self._lost.missing(messages, waiting)

    async def close(self) -> None:
        """Cancel the timers of delayed tasks, close the connection."""
        await self._publisher.close()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
            self._channel = None
