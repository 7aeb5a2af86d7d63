"""Ending attempts: handler outcomes become results, sent to the server in batches."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from foreman import errors
from foreman.client import AsyncClient, TaskResult
from foreman.client._base import encode_json, is_missing_route, retry_delay_s
from foreman.models import Task

logger = logging.getLogger(__name__)

_encode = encode_json  # a Decimal in a handler's result is a JSON number
SEND_ATTEMPTS = 6  # a server restart takes a few seconds; the lease outlives them
MAX_STACK_CHARS = 20_000


def error_data(exc: BaseException) -> dict[str, Any]:
    """SPEC section 7: an exception becomes ``{message, type, stack}``."""
    stack = "".join(traceback.format_exception(exc))
    return {
        "message": str(exc) or type(exc).__name__,
        "type": type(exc).__name__,
        "stack": stack[-MAX_STACK_CHARS:],
    }


def success(task: Task, value: Any) -> TaskResult:
    """A completed attempt; a value that is not JSON fails the attempt instead (not retryable)."""
    try:
        # Encoded once here: a bad value fails only its own task, not the whole batch.
        output = msgspec.Raw(_encode(value))
    except (TypeError, ValueError, OverflowError) as exc:
        data = {
            "message": f"Handler output is not JSON serializable: {exc}",
            "type": "OutputNotSerializable",
        }
        return failure(task, data, retryable=False)
    return TaskResult(task.id, _token(task), "completed", output_data=output)


def failure(task: Task, data: Any, *, retryable: bool = True) -> TaskResult:
    """A failed attempt: retried while attempts remain (if retryable)."""
    return TaskResult(task.id, _token(task), "failed", error_data=data, retryable=retryable)


def unknown_type(task: Task, known: Collection[str]) -> TaskResult:
    """The clear failure of a task no handler exists for (never silently dropped)."""
    handled = ", ".join(sorted(known)) or "none"
    data = {
        "message": f"No handler for task type {task.type!r} (this worker handles: {handled})",
        "type": "UnknownTaskType",
    }
    return failure(task, data, retryable=False)


def _token(task: Task) -> str:
    assert task.lease_token is not None, "a claimed task carries its lease token"
    return task.lease_token


class ResultBatcher:
    """Collects results and sends them every flush_s or max_batch results, one request each.

    Each ``add`` returns a future that resolves to whether the server recorded the result
    (False: the lease was stale, the result was dropped).
    """

    def __init__(
        self, client: AsyncClient, *, max_batch: int, flush_s: float, max_in_flight: int = 2
    ) -> None:
        self.client = client
        self.max_batch = max_batch
        self.flush_s = flush_s
        self._pending: list[tuple[TaskResult, asyncio.Future[bool]]] = []
        self._ready = asyncio.Event()
        self._closing = False
        self._slots = asyncio.Semaphore(max_in_flight)
        self._sending: set[asyncio.Task[None]] = set()
        self._batch_endpoint = True

    def add(self, result: TaskResult) -> asyncio.Future[bool]:
        """Queue result for the next flush."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((result, future))
        self._ready.set()
        return future

    async def run(self) -> None:
        """Flush until closed and empty."""
        while True:
            await self._ready.wait()
            if not self._pending:
                if self._closing:
                    return
                self._ready.clear()
                continue
            if len(self._pending) < self.max_batch and not self._closing:
                await asyncio.sleep(self.flush_s)  # let more results join this request
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            await self._slots.acquire()
            sending = asyncio.create_task(self._send(batch))
            self._sending.add(sending)
            sending.add_done_callback(self._sent)

    def _sent(self, sending: asyncio.Task[None]) -> None:
        self._sending.discard(sending)
        self._slots.release()

    async def close(self, runner: asyncio.Task[None]) -> None:
        """Send what is left, then stop runner."""
        self._closing = True
        self._ready.set()
        await runner
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _send(self, batch: Sequence[tuple[TaskResult, asyncio.Future[bool]]]) -> None:
        results = [result for result, _ in batch]
        try:
            recorded = await self._deliver(results)
        except errors.ForemanError as exc:
            logger.error("could not send %s task result(s): %s", len(results), exc)
            recorded = {}
        for result, future in batch:
            ok = recorded.get(result.task_id, False)
            if not ok:
                logger.warning(
                    "result of task %s not recorded (lease lost or task cancelled)",
                    result.task_id,
                    extra={"task_id": result.task_id},
                )
            if not future.done():
                future.set_result(ok)

    async def _deliver(self, results: Sequence[TaskResult]) -> dict[str, bool]:
        for attempt in range(SEND_ATTEMPTS):
            try:
                if self._batch_endpoint:
                    acks = await self.client.complete_tasks(results)
                    return {ack.task_id: ack.ok for ack in acks}
                return await self._deliver_each(results)
            except (errors.TransportError, errors.UnavailableError):
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(retry_delay_s(attempt + 2))
            except errors.ForemanError as exc:
                if not (self._batch_endpoint and is_missing_route(exc)):
                    raise
                logger.info("server has no batch completion endpoint: completing one by one")
                self._batch_endpoint = False
        return {}

    async def _deliver_each(self, results: Sequence[TaskResult]) -> dict[str, bool]:
        outcomes = await asyncio.gather(*(self._deliver_one(r) for r in results))
        return dict(zip((r.task_id for r in results), outcomes, strict=True))

    async def _deliver_one(self, result: TaskResult) -> bool:
        try:
            if result.status == "completed":
                await self.client.complete_task(
                    result.task_id, lease_token=result.lease_token, output_data=result.output_data
                )
            else:
                await self.client.fail_task(
                    result.task_id,
                    lease_token=result.lease_token,
                    error_data=result.error_data,
                    retryable=result.retryable is not False,
                )
        except errors.ConflictError:
            return False
        return True
