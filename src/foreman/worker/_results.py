"""Ending attempts: handler outcomes become results, sent to the server in batches (``send``)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import traceback
from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from foreman import errors
from foreman.client import AsyncClient, TaskResult, encode_json, retry_delay_s
from foreman.models import Task

logger = logging.getLogger(__name__)

_encode = encode_json  # a Decimal in a handler's result is a JSON number
SEND_ATTEMPTS = 6  # a server restart takes a few seconds; the lease outlives them
MAX_STACK_CHARS = 20_000
_NULL = msgspec.Raw(b"null")


def error_data(exc: BaseException) -> dict[str, Any]:
    """SPEC section 7: an exception becomes ``{message, type, stack}``."""
    stack = "".join(traceback.format_exception(exc))
    return {
        "message": str(exc) or type(exc).__name__,
        "type": type(exc).__name__,
        "stack": stack[-MAX_STACK_CHARS:],
    }


def input_error(exc: errors.InputValidationError) -> dict[str, Any]:
    """The errorData of input that does not fit the handler's model: names the field."""
    return {"type": "InputValidationError", "message": exc.message, **exc.details}


def success(task: Task, value: Any) -> TaskResult:
    """A completed attempt; a value that is not JSON fails the attempt instead (not retryable)."""
    if value is None:  # most handlers return nothing
        return TaskResult(task.id, _token(task), "completed", output_data=_NULL)
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


async def send(client: AsyncClient, results: Sequence[TaskResult]) -> list[bool]:
    """Send results in one request (a MicroBatcher's batch); per result, whether it was recorded.

    A server restarting is waited out (the leases outlive it); a result the server refused (its
    lease was lost, its task cancelled) or could not get is logged and answered False.
    """
    try:
        recorded = await _deliver(client, results)
    except errors.ForemanError as exc:
        logger.error("could not send %s task result(s): %s", len(results), exc)
        recorded = [False] * len(results)
    answers = []
    for result, ok in zip(results, recorded, strict=True):
        if not ok:
            logger.warning(
                "result of task %s not recorded (lease lost or task cancelled)",
                result.task_id,
                extra={"task_id": result.task_id},
            )
        answers.append(ok)
    return answers


async def _deliver(client: AsyncClient, results: Sequence[TaskResult]) -> list[bool]:
    # Per result in request order (docs/queue-protocol.md), not by task id: a task sent twice in
    # one request is applied once, and its repeat is answered ok=false (reason "duplicate").
    for attempt in itertools.count():
        try:
            acks = await client.complete_tasks(results)
        except (errors.TransportError, errors.UnavailableError):
            if attempt >= SEND_ATTEMPTS - 1:
                raise
            await asyncio.sleep(retry_delay_s(attempt + 2))
        else:
            return [ack.ok for ack in acks]
    raise AssertionError("unreachable")
