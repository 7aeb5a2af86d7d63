"""The ``sqs`` backend: Amazon SQS standard queues whose messages carry only a task id.

One queue per organisation (``naming.org_queue_name``) with a dead-letter queue ``<queue>-dead``
(RedrivePolicy: a message received ``MAX_RECEIVES`` times moves there). A message's body is the
task id; type and attempt are message attributes. Sends go 10 per ``SendMessageBatch`` call, many
calls at once. A delay up to SQS's 15 minutes is the message's ``DelaySeconds`` (rounded up: never
early); a longer one is published by this process when 15 minutes remain (``brokers.DueTimers``).
Credentials and region come from the standard AWS variables and files (botocore's chain),
``FOREMAN_SQS_ENDPOINT_URL`` names a local SQS-compatible server. The worker's side is
``worker/_sqs.py``; both use ``SqsClient`` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from foreman.models import Task
from foreman.queue import brokers, naming
from foreman.queue.base import BackendName, Message
from foreman.settings import Settings

logger = logging.getLogger(__name__)

BATCH = 10  # SQS's limit per SendMessageBatch, ReceiveMessage, DeleteMessageBatch call
MAX_DELAY_MS = 15 * 60 * 1000  # DelaySeconds' limit
MAX_RECEIVES = 10  # receives of one message before SQS moves it to the dead-letter queue
DEAD_SUFFIX = "-dead"
ATTR_TYPE = "foreman-type"
ATTR_ATTEMPT = "foreman-attempt"
# Calls at once: sends of a large publish, receives of a worker with many free slots.
PARALLEL_CALLS = 16
PUBLISH_TIMEOUT_S = 5.0
SQS_ERRORS = (BotoCoreError, ClientError, OSError, TimeoutError)
_NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def is_missing_queue(exc: BaseException) -> bool:
    """Whether exc says the queue does not exist (deleted, or a restarted local server)."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _NO_QUEUE


def message_entry(index: int, message: Message) -> dict[str, Any]:
    """A SendMessageBatch entry: body = task id, DelaySeconds rounded up (never early)."""
    entry: dict[str, Any] = {
        "Id": str(index),
        "MessageBody": message.task_id,
        "MessageAttributes": {
            ATTR_TYPE: {"DataType": "String", "StringValue": message.task_type},
            ATTR_ATTEMPT: {"DataType": "Number", "StringValue": str(message.attempt)},
        },
    }
    if message.delay_ms > 0:
        entry["DelaySeconds"] = min(math.ceil(message.delay_ms / 1000), MAX_DELAY_MS // 1000)
    return entry


def chunked(items: Sequence[Any], size: int = BATCH) -> list[Sequence[Any]]:
    """items in chunks of size."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class SqsClient:
    """An aiobotocore SQS client opened on first use, and the URLs of the queues it made."""

    def __init__(
        self, *, endpoint_url: str | None, region: str | None, visibility_s: int = 30
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.visibility_s = visibility_s
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._opening = asyncio.Lock()
        self._urls: dict[str, str] = {}
        self._finding = asyncio.Lock()

    @classmethod
    def from_environment(cls, **kwargs: Any) -> SqsClient:
        """FOREMAN_SQS_ENDPOINT_URL, and the region of FOREMAN_SQS_REGION / the AWS variables."""
        region = (
            os.environ.get("FOREMAN_SQS_REGION")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        return cls(
            endpoint_url=os.environ.get("FOREMAN_SQS_ENDPOINT_URL") or None, region=region, **kwargs
        )

    async def client(self) -> Any:
        """The aiobotocore client (its connection pool sized for PARALLEL_CALLS)."""
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    config = BotoConfig(
                        max_pool_connections=PARALLEL_CALLS * 2,
                        retries={"max_attempts": 2, "mode": "standard"},
                        connect_timeout=3,
                        read_timeout=30,  # above the 20 s long poll
                    )
                    self._client = await self._stack.enter_async_context(
                        get_session().create_client(
                            "sqs",
                            endpoint_url=self.endpoint_url,
                            region_name=self.region or "us-east-1",
                            config=config,
                        )
                    )
        return self._client

    async def queue_url(self, name: str) -> str:
        """The URL of queue name, made (with its dead-letter queue) if it does not exist."""
        url = self._urls.get(name)
        if url is not None:
            return url
        async with self._finding:  # many sends at once ask once
            return self._urls.get(name) or await self._find_or_make(name)

    async def _find_or_make(self, name: str) -> str:
        client = await self.client()
        try:
            found = await client.get_queue_url(QueueName=name)
        except ClientError as exc:
            if not is_missing_queue(exc):
                raise
        else:
            url = self._urls[name] = str(found["QueueUrl"])
            return url
        dead = await client.create_queue(QueueName=name + DEAD_SUFFIX)
        attributes = await client.get_queue_attributes(
            QueueUrl=dead["QueueUrl"], AttributeNames=["QueueArn"]
        )
        redrive = {
            "deadLetterTargetArn": attributes["Attributes"]["QueueArn"],
            "maxReceiveCount": str(MAX_RECEIVES),
        }
        made = await client.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(self.visibility_s),
                "RedrivePolicy": json.dumps(redrive),
            },
        )
        url = self._urls[name] = str(made["QueueUrl"])
        return url

    def forget(self, name: str) -> None:
        """Forget a queue's URL: the queue is gone, the next use makes it again."""
        self._urls.pop(name, None)

    async def call(self, name: str, operation: str, **arguments: Any) -> Any:
        """client.<operation>(QueueUrl=<name's>, ...), making the queue again if it is gone."""
        for attempt in range(2):
            url = await self.queue_url(name)
            try:
                return await getattr(await self.client(), operation)(QueueUrl=url, **arguments)
            except ClientError as exc:
                if attempt or not is_missing_queue(exc):
                    raise
                self.forget(name)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close the client's connections."""
        await self._stack.aclose()
        self._client = None


class SqsQueue:
    """Sends task ids to each organisation's queue; finds a queue that lost its messages."""

    name: BackendName = "sqs"

    def __init__(self, sqs: SqsClient, *, base: str) -> None:
        self.sqs = sqs
        self.base = base
        self._recent = brokers.RecentPublishes()
        self._lost = brokers.EmptyQueueCheck(base)
        self._timers = brokers.DueTimers(self.enqueue)
        self._calls = asyncio.Semaphore(PARALLEL_CALLS)

    @classmethod
    def from_settings(cls, settings: Settings) -> SqsQueue:
        """The queues under TASK_QUEUE_NAME on FOREMAN_SQS_ENDPOINT_URL, else AWS's SQS."""
        sqs = SqsClient(endpoint_url=settings.sqs_endpoint_url, region=settings.sqs_region)
        return cls(sqs, base=settings.task_queue_name)

    def queue_name(self, org_id: str) -> str:
        """The queue of an organisation."""
        return naming.org_queue_name(self.base, org_id)

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Send the ready tasks (delayed up to 15 minutes by SQS, longer ones from a timer)."""
        now, later = brokers.split_due(tasks, self._recent, hold_ms=MAX_DELAY_MS)
        if later:
            self._timers.schedule(later, ready_delay_ms=MAX_DELAY_MS)
        if not now:
            return
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.enqueue(now)
        except Exception as exc:  # publish never raises (QueueBackend)
            # Any failure (aio-pika raises RuntimeError while reconnecting, say): the rows are
            # committed, the sweeper finds these tasks missing and publishes them.
            logger.warning(
                "publishing %d task(s) to SQS failed; the sweeper will retry: %s",
                len(now),
                exc,
                extra={"task_id": now[0].task_id},
            )

    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Send the messages 10 per call, PARALLEL_CALLS calls at once; raise if SQS refused any."""
        sends = [
            self._send(name, chunk)
            for name, group in brokers.by_queue(self.base, messages).items()
            for chunk in chunked(group)
        ]
        for outcome in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _send(self, name: str, chunk: Sequence[Message]) -> None:
        entries = [message_entry(i, m) for i, m in enumerate(chunk)]
        async with self._calls:
            answer = await self.sqs.call(name, "send_message_batch", Entries=entries)
        failed = answer.get("Failed") or []
        if failed:
            raise RuntimeError(f"SQS refused {len(failed)} message(s): {failed[0]}")

    async def missing(self, messages: Sequence[Message]) -> list[Message]:
        """The messages of organisations whose queue holds none (purged, deleted, expired after
        the retention period, lost with a local server): SQS cannot say whether one message is
        queued (brokers.py). Its counts are approximate, and on AWS a minute late."""

        async def waiting(name: str) -> int:
            answer = await self.sqs.call(
                name,
                "get_queue_attributes",
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
            counts = answer.get("Attributes", {})
            return int(counts.get("ApproximateNumberOfMessages", 0)) + int(
                counts.get("ApproximateNumberOfMessagesDelayed", 0)
            )

        return await self._lost.missing(messages, waiting)

    async def close(self) -> None:
        """Cancel the timers of delayed tasks, close the client."""
        await self._timers.close()
        await self.sqs.close()
