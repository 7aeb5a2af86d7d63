"""The sqs backend's source: long-poll the organisation's queue, claim each task by its id.

The queue is the one ``/api/v1/config`` names for the caller's organisation (``queue.taskQueue``);
SQS is reached as the server reaches it (``FOREMAN_SQS_ENDPOINT_URL``, the AWS variables). A
received message stays invisible for the lease; while its task runs, the visibility of every held
message is extended in ``ChangeMessageVisibilityBatch`` calls (10 per call) every third of the
lease, so a worker that dies gives its messages back when its leases expire. Messages are deleted
10 per ``DeleteMessageBatch`` call once their attempt is over or their claim was refused; a poison
message is sent to the dead-letter queue and deleted.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from foreman.models import Task
from foreman.queue import sqs
from foreman.worker import _claims
from foreman.worker._batching import MicroBatcher
from foreman.worker.source import SourceContext

logger = logging.getLogger(__name__)

MAX_POLL_S = 20  # SQS's longest wait per ReceiveMessage
BURST_POLL_S = 0  # a burst run looks once
ACK_WINDOW_S = 0.005
RECONNECT_S = 1.0
CLOSE_SLACK_S = 5.0  # beyond the last poll's wait, for its answer to come back
MAX_RECEIVES = 4  # ReceiveMessage calls at once for a worker with many free slots


@dataclass(frozen=True, slots=True)
class _Received:
    """A message this worker received: its handle, id and body."""

    receipt: str
    message_id: str
    body: str


class SqsSource:
    """Receives for the free slots, claims, keeps held messages invisible, deletes in batches."""

    takes_in_flight = 1  # one receiver: a second long poll would only split the same messages
    acknowledges_when_free = False

    def __init__(self, context: SourceContext, client: sqs.SqsClient, name: str) -> None:
        self.context = context
        self.sqs = client
        self.name = name
        self.visibility_s = max(1, math.ceil(context.lease_s))
        self._held: dict[str, _Received] = {}  # by task id, until acknowledged
        self._deletes: MicroBatcher[_Received, None] = MicroBatcher(
            self._delete, window_s=ACK_WINDOW_S, max_batch=sqs.BATCH, max_in_flight=4
        )
        self._renewing: asyncio.Task[None] | None = None
        # The receive in flight. Never cancelled: SQS may have handed it messages already,
        # which would stay invisible for the lease; close() waits for it and gives them back.
        self._polling: asyncio.Future[list[_Received]] | None = None
        # An idle worker's long poll: the worker's claim wait (whole seconds, 1..20), which also
        # bounds how long a stopping worker waits for its last poll.
        self.poll_s = min(max(1, round(context.claim_wait_s)), MAX_POLL_S)

    @classmethod
    async def open(cls, context: SourceContext) -> SqsSource:
        """The source of the organisation's queue; its visibility upkeep started."""
        name = await _claims.queue_name(context, "sqs")
        client = sqs.SqsClient.from_environment()
        source = cls(context, client, name)
        source._renewing = asyncio.create_task(source._renew())
        logger.info("consuming SQS queue %r", name)
        return source

    async def take(self, limit: int, *, burst: bool) -> list[Task]:
        """Up to limit claimed tasks; [] after a long poll found none or the worker stops."""
        while not self.context.stopped.is_set():
            received = await self._receive(limit, wait_s=BURST_POLL_S if burst else self.poll_s)
            if received is None:
                return []
            tasks = await self._claim(received)
            if tasks:
                return tasks
        return []

    async def _receive(self, limit: int, *, wait_s: int) -> list[_Received] | None:
        """Messages for up to limit slots (maybe none: look again); None: the poll found none."""
        if self._polling is None:
            self._polling = asyncio.ensure_future(self._receive_calls(limit, wait_s))
        polling = self._polling
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self.context.stopped.wait())
        try:
            await asyncio.wait([polling, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not polling.done():
            return None  # stopping: close() gives back what this poll receives
        self._polling = None
        try:
            received = polling.result()
        except sqs.SQS_ERRORS as exc:
            logger.warning("receiving from SQS failed: %s", exc)
            await self.context.pause(RECONNECT_S)
            return []
        return received or None

    async def _receive_calls(self, limit: int, wait_s: int) -> list[_Received]:
        """One long poll; when it comes back full and more slots are free, quick ones beside."""
        received = await self._receive_call(min(limit, sqs.BATCH), wait_s)
        more = min((limit - len(received)) // sqs.BATCH, MAX_RECEIVES)
        if len(received) == sqs.BATCH and more > 0:
            calls = [self._receive_call(sqs.BATCH, 0) for _ in range(more)]
            for batch in await asyncio.gather(*calls):
                received.extend(batch)
        return received

    async def _receive_call(self, count: int, wait_s: int) -> list[_Received]:
        answer = await self.sqs.call(
            self.name,
            "receive_message",
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=self.visibility_s,
        )
        return [
            _Received(m["ReceiptHandle"], m.get("MessageId", ""), m.get("Body", ""))
            for m in answer.get("Messages") or []
        ]

    async def _claim(self, received: list[_Received]) -> list[Task]:
        if self.context.stopped.is_set():
            return []  # never claimed: they reappear after their visibility timeout
        items = [(_claims.task_id_of(m.body.encode()), m) for m in received]
        outcome = await _claims.claim(self.context, items, held=set(self._held))
        for message in outcome.refused:
            self._drop(message)
        for message, reason in outcome.poison:
            await self._dead_letter(message, reason)
        return await _claims.hold_claimed(self.context, outcome, self._held, self._give_back)

    async def _dead_letter(self, message: _Received, reason: str) -> None:
        """Move a poison message to the dead-letter queue, with the reason, and delete it."""
        logger.warning(
            "SQS message %s moved to the dead-letter queue: %s", message.message_id, reason
        )
        try:
            await self.sqs.call(
                self.name + sqs.DEAD_SUFFIX,
                "send_message",
                MessageBody=message.body or "(empty)",
                MessageAttributes={"foreman-reason": {"DataType": "String", "StringValue": reason}},
            )
        except sqs.SQS_ERRORS as exc:  # it stays; SQS's redrive moves it after MAX_RECEIVES
            logger.warning("moving SQS message %s failed: %s", message.message_id, exc)
            return
        self._drop(message)

    async def _give_back(self, messages: list[_Received]) -> None:
        """Make messages visible again at once (the server did not answer their claims)."""
        entries = [
            {"Id": str(i), "ReceiptHandle": m.receipt, "VisibilityTimeout": 0}
            for i, m in enumerate(messages)
        ]
        for chunk in sqs.chunked(entries):
            try:
                await self.sqs.call(self.name, "change_message_visibility_batch", Entries=chunk)
            except sqs.SQS_ERRORS as exc:  # they reappear after their visibility timeout
                logger.info("giving SQS messages back failed: %s", exc)

    def _drop(self, message: _Received) -> None:
        self._deletes.submit(message)

    async def acknowledge(self, task: Task) -> None:
        """Delete the task's message (with others that finished about together)."""
        message = self._held.pop(task.id, None)
        if message is not None:
            await self._deletes.submit(message)

    async def _delete(self, messages: list[_Received]) -> list[None]:
        entries = [{"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(messages)]
        try:
            answer = await self.sqs.call(self.name, "delete_message_batch", Entries=entries)
        except sqs.SQS_ERRORS as exc:
            # They reappear after their visibility timeout; their claims are then refused.
            logger.warning("deleting %d SQS message(s) failed: %s", len(messages), exc)
            return [None] * len(messages)
        if answer.get("Failed"):
            logger.info("SQS did not delete %d message(s)", len(answer["Failed"]))
        return [None] * len(messages)

    async def _renew(self) -> None:
        """Every third of the lease, extend the visibility of every held message to the lease."""
        while True:
            await asyncio.sleep(self.visibility_s / 3)
            held = list(self._held.values())
            entries: list[dict[str, Any]] = [
                {"Id": str(i), "ReceiptHandle": m.receipt, "VisibilityTimeout": self.visibility_s}
                for i, m in enumerate(held)
            ]
            calls = [
                self.sqs.call(self.name, "change_message_visibility_batch", Entries=chunk)
                for chunk in sqs.chunked(entries)
            ]
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(outcome, sqs.SQS_ERRORS):
                    logger.warning("extending SQS visibility failed: %s", outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome

    async def close(self) -> None:
        """Give back what the last poll received, finish the deletes, stop the visibility
        upkeep, close the client."""
        if self._polling is not None:
            try:
                async with asyncio.timeout(self.poll_s + CLOSE_SLACK_S):
                    await self._give_back(await self._polling)
            except (*sqs.SQS_ERRORS, TimeoutError) as exc:
                logger.info("the last SQS poll failed: %s", exc)
        await self._deletes.drain()
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        await self.sqs.close()
