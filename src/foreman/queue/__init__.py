"""Queue backends (SPEC section 7): the task table itself, BullMQ jobs in Redis, RabbitMQ, SQS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foreman.queue.base import Message, QueueBackend
from foreman.settings import Settings

if TYPE_CHECKING:
    from foreman.queue.redis_acl import RedisAcl

__all__ = ["Message", "QueueBackend", "open_queue", "open_redis_acl"]


def open_queue(settings: Settings) -> QueueBackend:
    """The backend settings.queue_backend names; its broker connects on first use."""
    if settings.queue_backend == "bullmq":
        # Imported here: the redis/bullmq packages are the optional ``foreman[redis]`` extra.
        from foreman.queue.bullmq import BullMQQueue

        return BullMQQueue.from_settings(settings)
    if settings.queue_backend == "rabbitmq":
        # The aio-pika package is the optional ``foreman[rabbitmq]`` extra.
        from foreman.queue.rabbitmq import RabbitMQQueue

        return RabbitMQQueue.from_settings(settings)
    if settings.queue_backend == "sqs":
        # The aiobotocore package is the optional ``foreman[sqs]`` extra.
        from foreman.queue.sqs import SqsQueue

        return SqsQueue.from_settings(settings)
    from foreman.queue.postgres import PostgresQueue

    return PostgresQueue()


def open_redis_acl(settings: Settings) -> RedisAcl | None:
    """With FOREMAN_REDIS_ACL=per-org, the manager of the organisations' Redis users, rotating."""
    if settings.redis_acl != "per-org":
        return None
    from foreman.queue.redis_acl import RedisAcl

    acl = RedisAcl.from_settings(settings)
    acl.start()
    return acl
