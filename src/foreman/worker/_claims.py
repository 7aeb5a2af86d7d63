"""Claiming the tasks that broker messages name: what the rabbitmq and sqs sources share.

A batch of received messages becomes one claim request (``claim_task_ids``; ``claim_task`` for a
lone one) and four kinds of message: claimed (run it, acknowledge when its attempt is over),
refused (the task is done or held by another attempt: acknowledge now), poison (no task id, or a
task unknown to this organisation: out of the way to the dead-letter queue, logged once by
message id, never with the message's content) and unclaimed (the server did not answer: give
them back to the broker at once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from foreman import errors, ids
from foreman.models import Task
from foreman.worker.source import SourceContext

logger = logging.getLogger(__name__)

M = TypeVar("M")

NO_TASK_ID = "the message carries no task id"
UNKNOWN_TASK = "the message names no task of this organisation"


@dataclass(slots=True)
class Claimed(Generic[M]):
    """The outcome of claiming the tasks of a batch of messages."""

    claimed: list[tuple[Task, M]] = field(default_factory=list)
    refused: list[M] = field(default_factory=list)
    poison: list[tuple[M, str]] = field(default_factory=list)  # with the reason
    unclaimed: list[M] = field(default_factory=list)


def task_id_of(body: bytes) -> str | None:
    """The task id a message body holds (exactly a UUID), else None."""
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return ids.canonical_id(text) if ids.is_uuid(text) else None


async def claim(
    context: SourceContext, messages: Sequence[tuple[str | None, M]], *, held: set[str]
) -> Claimed[M]:
    """Claim the task of each (task id, message); held: the tasks this worker runs already."""
    outcome: Claimed[M] = Claimed()
    by_task: dict[str, M] = {}
    for task_id, message in messages:
        if task_id is None:
            outcome.poison.append((message, NO_TASK_ID))
        elif task_id in by_task or task_id in held:
            outcome.refused.append(message)  # a second message for a task: one runs it
        else:
            by_task[task_id] = message
    if not by_task:
        return outcome
    try:
        results = await _claim_ids(context, list(by_task))
    except errors.ForemanError as exc:
        logger.warning("claiming %d task(s) failed: %s", len(by_task), exc)
        outcome.unclaimed.extend(by_task.values())
        return outcome
    for (task_id, message), (task, reason) in zip(by_task.items(), results, strict=True):
        if task is not None:
            outcome.claimed.append((task, message))
        elif reason == "not_found":
            outcome.poison.append((message, UNKNOWN_TASK))
        else:
            logger.debug("task %s is done or held by another attempt: message dropped", task_id)
            outcome.refused.append(message)
    return outcome


async def _claim_ids(context: SourceContext, task_ids: list[str]) -> list[tuple[Task | None, str]]:
    """Per id: the leased task, or None and why not (``conflict``, ``not_found``)."""
    client = context.client
    if len(task_ids) == 1:
        # A lone message (an idle worker's pickup): the single-task statement is cheaper.
        try:
            task = await client.claim_task(
                task_ids[0], worker_id=context.worker_id, lease_s=context.lease_s
            )
        except errors.ConflictError:
            return [(None, "conflict")]
        except errors.NotFoundError:
            return [(None, "not_found")]
        return [(task, "")]
    results = await client.claim_task_ids(
        task_ids, worker_id=context.worker_id, lease_s=context.lease_s
    )
    return [(r.task, r.reason or "") for r in results]
