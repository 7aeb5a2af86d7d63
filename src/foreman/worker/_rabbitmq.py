"""The rabbitmq backend's source: consume the organisation's queue, claim each task by its id.

The queue is the one ``/api/v1/config`` names for the caller's organisation (``queue.taskQueue``);
the broker is ``FOREMAN_RABBITMQ_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``). Prefetch
is the worker's concurrency and a message stays unacknowledged until its task's handler has
ended (``acknowledges_when_free``: its result is sent after), so RabbitMQ hands this worker at
most as many messages as it has free slots, and a worker that dies gives its messages back at
once (their claims are refused until the lease expires; the sweeper then publishes the retry;
it does the same for a task whose message was acknowledged before its result was recorded).
A message is acknowledged only after its claim was answered.
The acknowledgements asked for about together (handlers that ended in one turn of the event
loop) go out in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from pamqp.commands import Basic

from foreman.models import Task
from foreman.queue import rabbitmq
from foreman.worker import _claims
from foreman.worker._batching import MicroBatcher
from foreman.worker.source import SourceContext

logger = logging.getLogger(__name__)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
BURST_WAIT_S = 0.2
RECONNECT_S = 0.5
ACK_BATCH = 1000


def broker_url() -> str:
    """FOREMAN_RABBITMQ_URL, else the local broker."""
    return os.environ.get("FOREMAN_RABBITMQ_URL") or DEFAULT_URL


class RabbitMQSource:
    """Buffers the deliveries of one consumer; take claims them, acknowledge acks them."""

    takes_in_flight = 1  # one consumer of the queue (its prefetch is the worker's free slots)
    acknowledges_when_free = True  # prefetch counts unacknowledged messages

    def __init__(self, context: SourceContext, connection: AbstractRobustConnection) -> None:
        self.context = context
        self._connection = connection
        self._deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._held: dict[str, AbstractIncomingMessage] = {}  # by task id, until acknowledged
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._consumer_tag: str | None = None
        # One turn of the event loop's acks in one write; while it is out, the next gather.
        self._acks: MicroBatcher[AbstractIncomingMessage, None] = MicroBatcher(
            send_acks, window_s=0.0, max_batch=ACK_BATCH, max_in_flight=1
        )

    @classmethod
    async def open(cls, context: SourceContext) -> RabbitMQSource:
        """Connect, declare the organisation's queue as the server does, start consuming."""
        name = await _claims.queue_name(context, "rabbitmq")
        queue_type = os.environ.get("FOREMAN_RABBITMQ_QUEUE_TYPE") or "classic"
        connection = await aio_pika.connect_robust(
            broker_url(),
            timeout=rabbitmq.CONNECT_TIMEOUT_S,
            reconnect_interval=rabbitmq.RECONNECT_S,
            client_properties={"connection_name": f"foreman-worker {context.worker_id}"},
        )
        source = cls(context, connection)
        channel = await connection.channel(publisher_confirms=False)
        # Unacknowledged messages = running tasks + deliveries not taken yet <= concurrency.
        await channel.set_qos(prefetch_count=context.concurrency)
        source._queue = await rabbitmq.declare(channel, name, queue_type)
        source._consumer_tag = await source._queue.consume(source._deliveries.put)
        logger.info("consuming RabbitMQ queue %r", name)
        return source

    async def take(self, limit: int, *, burst: bool) -> list[Task]:
        """Up to limit claimed tasks; [] after a wait found no message or the worker stops."""
        while not self.context.stopped.is_set():
            wait_s = BURST_WAIT_S if burst else self.context.claim_wait_s
            first = await self._next(wait_s)
            if first is None:
                return []
            messages = [first]
            while len(messages) < limit and not self._deliveries.empty():
                messages.append(self._deliveries.get_nowait())
            tasks = await self._claim(messages)
            if tasks:
                return tasks
        return []

    async def _next(self, wait_s: float) -> AbstractIncomingMessage | None:
        """The next delivery, waiting up to wait_s (less if the worker stops)."""
        if not self._deliveries.empty():
            return self._deliveries.get_nowait()
        getting = asyncio.ensure_future(self._deliveries.get())
        stopped = asyncio.ensure_future(self.context.stopped.wait())
        try:
            await asyncio.wait({getting, stopped}, timeout=wait_s, return_when="FIRST_COMPLETED")
        finally:
            stopped.cancel()
            if not getting.done():
                getting.cancel()
        if getting.done() and not getting.cancelled():
            return getting.result()
        return None

    async def _claim(self, messages: list[AbstractIncomingMessage]) -> list[Task]:
        if self.context.stopped.is_set():
            await self._give_back(messages)
            return []
        items = [(_claims.task_id_of(m.body), m) for m in messages]
        outcome = await _claims.claim(self.context, items, held=set(self._held))
        for message in outcome.refused:
            await self._settle(self._acks.submit(message))
        for message, reason in outcome.poison:
            # By the broker's delivery tag: a message id is the sender's text, and a hostile
            # sender's could carry another organisation's data into this log.
            logger.warning(
                "RabbitMQ delivery %s moved to the dead-letter queue: %s",
                message.delivery_tag,
                reason,
            )
            await self._settle(message.reject(requeue=False))
        return await _claims.hold_claimed(self.context, outcome, self._held, self._give_back)

    async def _give_back(self, messages: list[AbstractIncomingMessage]) -> None:
        for message in messages:
            await self._settle(message.nack(requeue=True))

    async def _settle(self, answer: Awaitable[None]) -> None:
        """Await an ack/nack/reject; a channel lost meanwhile already gave the message back."""
        try:
            await answer
        except (*rabbitmq.AMQP_ERRORS, aio_pika.exceptions.MessageProcessError) as exc:
            logger.info("settling a RabbitMQ message failed (it is redelivered): %s", exc)

    async def acknowledge(self, task: Task) -> None:
        """Ack the message of the task whose attempt is over."""
        message = self._held.pop(task.id, None)
        if message is not None:
            await self._settle(self._acks.submit(message))

    async def close(self) -> None:
        """Stop consuming, give back the deliveries not taken, close the connection."""
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(*rabbitmq.AMQP_ERRORS):
                await self._queue.cancel(self._consumer_tag)
        leftover = []
        while not self._deliveries.empty():
            leftover.append(self._deliveries.get_nowait())
        await self._give_back(leftover)
        await self._acks.drain()
        await self._connection.close()


async def send_acks(messages: list[AbstractIncomingMessage]) -> list[None]:
    """Acknowledge messages in one write per channel they came on. A channel lost meanwhile
    gave its messages back already (its acks fail; the one aio-pika re-made delivers anew)."""
    by_channel: dict[aiormq.Channel, list[int]] = {}
    for message in messages:
        channel = message.channel
        assert isinstance(channel, aiormq.Channel)
        assert message.delivery_tag is not None
        by_channel.setdefault(channel, []).append(message.delivery_tag)
    for channel, tags in by_channel.items():
        try:
            await rabbitmq.write_frames(channel, [Basic.Ack(delivery_tag=tag) for tag in tags])
        except rabbitmq.AMQP_ERRORS as exc:
            logger.info(
                "acknowledging %d RabbitMQ message(s) failed (redelivered): %s", len(tags), exc
            )
    return [None] * len(messages)
