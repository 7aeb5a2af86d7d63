"""The aiormq internals that queue/rabbitmq.py drives to publish a batch in one write
(`publish_confirmed`, `write_frames`): a contract test that fails loudly when aiormq changes them
under us (pyproject bounds aiormq below 7). Against a real RabbitMQ channel."""

from __future__ import annotations

import asyncio
import inspect

import aio_pika
import aiormq
from aiormq.abc import ChannelFrame

# The members publish_confirmed and write_frames read or write, and what each must be.
CHANNEL_MEMBERS = {
    "delivery_tag": int,
    "confirmations": dict,
    "message_id_delivery_tag": dict,
    "lock": asyncio.Lock,
    "write_queue": asyncio.Queue,
    "number": int,
}


async def test_a_channel_has_what_the_batch_publisher_uses(rabbitmq: str) -> None:
    connection = await aio_pika.connect_robust(rabbitmq)
    try:
        channel = await connection.channel(publisher_confirms=True)
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        for name, kind in CHANNEL_MEMBERS.items():
            assert isinstance(getattr(underlay, name), kind), name
        assert underlay.is_closed is False
        assert asyncio.isfuture(underlay.create_future())
        assert "drain_future" in inspect.signature(ChannelFrame.marshall).parameters
    finally:
        await connection.close()
