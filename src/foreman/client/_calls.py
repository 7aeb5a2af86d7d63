"""Every API operation as a ``Call``: method, path, camelCase body, how to decode the answer.

The twins send these calls; nothing here does I/O. A plan whose arguments are a public method's
is that method (client/_methods.py): its defaults and docstring are the method's. Paths follow
SPEC section 5 and docs/queue-protocol.md; durations are seconds here and milliseconds on the
wire.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
from msgspec import UNSET

from foreman import errors, models, tracing
from foreman.client._base import (
    API,
    JSON_HEADERS,
    Call,
    Lease,
    TaskResult,
    TaskSpec,
    encode_json,
    is_missing_route,
    json_number,
)

T = TypeVar("T")


class _Tasks(msgspec.Struct):
    data: list[models.Task]


class _Leases(msgspec.Struct):
    data: list[models.LeaseStatus]


class _Acks(msgspec.Struct):
    data: list[models.TaskAck]


class _Claims(msgspec.Struct):
    data: list[models.ClaimResult]


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(model: type[T]) -> Callable[[bytes], T]:
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = msgspec.json.Decoder(model, float_hook=json_number)
    return decoder.decode


def _tasks(content: bytes) -> list[models.Task]:
    return _decoder(_Tasks)(content).data


def _task_ids(content: bytes) -> list[str]:
    return [ref.id for ref in _decoder(models.TaskRefs)(content).data]


def _leases(content: bytes) -> list[models.LeaseStatus]:
    return _decoder(_Leases)(content).data


def _acks(content: bytes) -> list[models.TaskAck]:
    return _decoder(_Acks)(content).data


def _claims(content: bytes) -> list[models.ClaimResult]:
    return _decoder(_Claims)(content).data


def _attempts(content: bytes) -> list[models.Attempt]:
    return _decoder(models.AttemptList)(content).data


def _deleted(content: bytes) -> int:
    return _decoder(models.Deleted)(content).deleted


_encode = encode_json


def _body(values: Mapping[str, Any]) -> bytes:
    """JSON of the values that are set (UNSET and, for optional fields, None are left out)."""
    return _encode({k: v for k, v in values.items() if v is not UNSET})


def _query(values: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters of the values that are set; lists become comma lists.

    An empty list is left out, as no filter: what it meant before the server refused an empty
    filter (``tags=`` is a 400 now, docs/security.md).
    """
    params: dict[str, str] = {}
    for name, value in values.items():
        if value is None or (isinstance(value, list | tuple) and not value):
            continue
        if isinstance(value, bool):
            params[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            params[name] = ",".join(str(v) for v in value)
        else:
            params[name] = str(value)
    return params


def _segment(value: str, name: str) -> str:
    """An id as one path segment, whatever it contains.

    Refused before sending: an empty id, or ``.``/``..`` (which httpx resolves away), would make
    the path name another endpoint (``/tasks//claim`` is the server's bulk claim).
    """
    text = str(value)
    if text in ("", ".", ".."):
        raise errors.ValidationError(f"{name} must be an id, got {text!r} (refused before sending)")
    return quote(text, safe="")


def _optional(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# The twins' keywords (snake_case) that a call sends, each with its name on the wire, in the
# order they are sent: what a PATCH may change, and the filters of a list.
_RUN_CHANGES = {
    "status": "status",
    "output_data": "outputData",
    "error_data": "errorData",
    "metadata": "metadata",
}
_TASK_CHANGES = {**_RUN_CHANGES, "queue_job_id": "queueJobId"}
_RUN_FILTERS = {
    "limit": "limit",
    "offset": "offset",
    "status": "status",
    "sort_by": "sortBy",
    "sort_order": "sortOrder",
}
_PAGE = {"limit": "limit", "offset": "offset", "sort_by": "sortBy", "sort_order": "sortOrder"}
_TASK_FILTERS = {
    "run_id": "runId",
    "status": "status",
    "type": "type",
    "parent_task_id": "parentTaskId",
    **_PAGE,
}
_RUN_DATA_FILTERS = {
    "key": "key",
    "keys": "keys",
    "key_starts_with": "keyStartsWith",
    "key_pattern": "keyPattern",
    "tags": "tags",
    "tag_starts_with": "tagStartsWith",
    "tag_mode": "tagMode",
    "include_all": "includeAll",
    **_PAGE,
}


_SCHEDULE_FIELDS = {
    "name": "name",
    "cron": "cron",
    "interval_ms": "intervalMs",
    "timezone": "timezone",
    "enabled": "enabled",
    "run_input_data": "runInputData",
}
_SCHEDULE_TASK_FIELDS = {
    "type": "type",
    "input_data": "inputData",
    "max_retries": "maxRetries",
    "priority": "priority",
}


def _on_wire(values: Mapping[str, Any], fields: Mapping[str, str], absent: Any) -> dict[str, Any]:
    """values under their wire names, in the order of fields; absent for a value not given."""
    return {wire: values.get(name, absent) for name, wire in fields.items()}


# runs


def create_run(
    input_data: Any, *, metadata: models.JsonObject | None = None, auto_complete: bool = False
) -> Call[models.Run]:
    """Create a run (pending, counters at 0).

    ``auto_complete``: the run becomes running at its first claim, and completed (or failed,
    if a task failed) once every task is terminal; then it takes no more tasks (409).
    """
    extension = {"autoComplete": True} if auto_complete else {}
    body = _body({"inputData": input_data, **_optional(metadata=metadata), **extension})
    return Call("POST", f"{API}/runs", _decoder(models.Run), body)


def get_run(run_id: str) -> Call[models.Run]:
    """A run; NotFoundError if it is not in the caller's organisation."""
    return Call(
        "GET", f"{API}/runs/{_segment(run_id, 'run_id')}", _decoder(models.Run), idempotent=True
    )


def run_events_path(run_id: str) -> str:
    """GET: the run's events as Server-Sent Events (read by watch_run, not through a Call)."""
    return f"{API}/runs/{_segment(run_id, 'run_id')}/events"


def update_run(run_id: str, changes: Mapping[str, Any]) -> Call[models.Run]:
    body = _body(_on_wire(changes, _RUN_CHANGES, UNSET))
    # Setting the same fields twice leaves the same run: safe to repeat.
    return Call(
        "PATCH",
        f"{API}/runs/{_segment(run_id, 'run_id')}",
        _decoder(models.Run),
        body,
        idempotent=True,
    )


def list_runs(filters: Mapping[str, Any]) -> Call[models.RunList]:
    params = _query(_on_wire(filters, _RUN_FILTERS, None))
    return Call("GET", f"{API}/runs", _decoder(models.RunList), params=params, idempotent=True)


# tasks


def task_body(spec: TaskSpec, *, enqueue: bool) -> dict[str, Any]:
    """The camelCase body of ``POST /tasks`` for spec."""
    body: dict[str, Any] = {"runId": spec.run_id, "type": spec.type, "inputData": spec.input_data}
    body.update(
        _optional(
            parentTaskId=spec.parent_task_id,
            metadata=spec.metadata,
            maxRetries=spec.max_retries,
            priority=spec.priority,
            delayMs=spec.delay_ms,
            idempotencyKey=spec.idempotency_key,
            ref=spec.ref,
            onParentFailure=spec.on_parent_failure,
        )
    )
    if spec.depends_on is not None:
        body["dependsOn"] = list(spec.depends_on)
    if enqueue:
        body["enqueue"] = True
    return body


def _traced(traceparent: str | None) -> dict[str, str] | None:
    """The headers of a create request that carries its enqueue's trace context (if any)."""
    return None if traceparent is None else {**JSON_HEADERS, tracing.TRACEPARENT: traceparent}


def create_task(
    spec: TaskSpec, *, enqueue: bool, traceparent: str | None = None
) -> Call[models.Task]:
    body = _encode(task_body(spec, enqueue=enqueue))
    # With an idempotency key a repeat returns the first task instead of making a second one.
    idempotent = spec.idempotency_key is not None
    return Call(
        "POST", f"{API}/tasks", _decoder(models.Task), body, idempotent=idempotent,
        headers=_traced(traceparent),
    )  # fmt: skip


def create_tasks(
    specs: Sequence[TaskSpec], *, enqueue: bool, traceparent: str | None = None
) -> Call[list[models.Task]]:
    """``POST /tasks/batch``: one transaction, answers in input order."""
    body = _encode({"tasks": [task_body(spec, enqueue=enqueue) for spec in specs]})
    idempotent = all(spec.idempotency_key is not None for spec in specs)
    return Call(
        "POST", f"{API}/tasks/batch", _tasks, body, idempotent=idempotent,
        headers=_traced(traceparent),
    )  # fmt: skip


def create_task_ids(
    specs: Sequence[TaskSpec], *, traceparent: str | None = None
) -> Call[list[str]]:
    """``POST /tasks/batch`` with ``Prefer: return=minimal``: queued, answered with ids only."""
    call = create_tasks(specs, enqueue=True, traceparent=traceparent)
    return Call(
        call.method, call.path, _task_ids, call.body, idempotent=call.idempotent,
        headers={**(call.headers or JSON_HEADERS), "Prefer": "return=minimal"},
    )  # fmt: skip


def get_task(task_id: str) -> Call[models.Task]:
    """A task; NotFoundError if it is not in the caller's organisation."""
    return Call(
        "GET", f"{API}/tasks/{_segment(task_id, 'task_id')}", _decoder(models.Task), idempotent=True
    )


def cancel_task(task_id: str) -> Call[models.Task]:
    """Cancel a task: at once, or (running) when its worker's next heartbeat sees it."""
    path = f"{API}/tasks/{_segment(task_id, 'task_id')}/cancel"
    return Call("POST", path, _decoder(models.Task), body=b"{}", idempotent=True)


def cancel_run(run_id: str) -> Call[models.Run]:
    """Cancel a run and every task of it that has not ended."""
    path = f"{API}/runs/{_segment(run_id, 'run_id')}/cancel"
    return Call("POST", path, _decoder(models.Run), body=b"{}", idempotent=True)


def list_parents(task_id: str, *, limit: int = 100, offset: int = 0) -> Call[models.TaskList]:
    """A page of a task's parents (dependsOn) with their status and outputData."""
    path = f"{API}/tasks/{_segment(task_id, 'task_id')}/parents"
    params = {"limit": str(limit), "offset": str(offset)}
    return Call("GET", path, _decoder(models.TaskList), params=params, idempotent=True)


def list_attempts(task_id: str) -> Call[list[models.Attempt]]:
    """Every attempt of a task, oldest first (worker, start, end, outcome, errorData)."""
    path = f"{API}/tasks/{_segment(task_id, 'task_id')}/attempts"
    return Call("GET", path, _attempts, idempotent=True)


def update_task(task_id: str, changes: Mapping[str, Any]) -> Call[models.Task]:
    body = _body(_on_wire(changes, _TASK_CHANGES, UNSET))
    # retrying is the one status whose repeat changes the task (retryCount + 1).
    idempotent = changes.get("status") != "retrying"
    path = f"{API}/tasks/{_segment(task_id, 'task_id')}"
    return Call("PATCH", path, _decoder(models.Task), body, idempotent=idempotent)


def retry_task(task_id: str) -> Call[models.Task]:
    """Queue a failed or cancelled task again with one more attempt allowed (ConflictError
    for a task in another status)."""
    # Not repeated on a lost answer: a second retry of the queued task is a 409.
    path = f"{API}/tasks/{_segment(task_id, 'task_id')}/retry"
    return Call("POST", path, _decoder(models.Task))


def list_tasks(filters: Mapping[str, Any]) -> Call[models.TaskList]:
    params = _query(_on_wire(filters, _TASK_FILTERS, None))
    return Call("GET", f"{API}/tasks", _decoder(models.TaskList), params=params, idempotent=True)


# run data


def create_run_data(run_id: str, values: Mapping[str, Any]) -> Call[models.RunData]:
    body = _body(
        {
            "taskId": values["task_id"],
            "key": values["key"],
            "value": values["value"],
            **_optional(tags=values.get("tags"), metadata=values.get("metadata")),
        }
    )
    return Call(
        "POST", f"{API}/runs/{_segment(run_id, 'run_id')}/data", _decoder(models.RunData), body
    )


def query_run_data(run_id: str, filters: Mapping[str, Any]) -> Call[models.RunDataList]:
    params = _query(_on_wire(filters, _RUN_DATA_FILTERS, None))
    path = f"{API}/runs/{_segment(run_id, 'run_id')}/data"
    return Call("GET", path, _decoder(models.RunDataList), params=params, idempotent=True)


def update_run_data_tags(
    run_id: str,
    data_id: str,
    *,
    add: Sequence[str] | None = None,
    remove: Sequence[str] | None = None,
) -> Call[models.RunData]:
    """Remove tags, then add the missing ones (order kept, tags unique)."""
    body = _body(_optional(add=_list(add), remove=_list(remove)))
    path = f"{API}/runs/{_segment(run_id, 'run_id')}/data/{_segment(data_id, 'data_id')}/tags"
    # Remove-then-add-if-missing gives the same tags when repeated.
    return Call("PATCH", path, _decoder(models.RunData), body, idempotent=True)


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def delete_run_data(
    run_id: str, *, key: str | None = None, data_id: str | None = None
) -> Call[int]:
    """Delete the values of a key, or one value by id; the number deleted."""
    if key is None and data_id is None:
        raise ValueError("delete_run_data needs a key or a data_id")
    params = _query({"key": key, "id": data_id})
    path = f"{API}/runs/{_segment(run_id, 'run_id')}/data"
    return Call("DELETE", path, _deleted, params=params)


# schedules


def _schedule_path(schedule_id: str) -> str:
    return f"{API}/schedules/{_segment(schedule_id, 'schedule_id')}"


def create_schedule(values: Mapping[str, Any]) -> Call[models.Schedule]:
    """``POST /schedules``: values by the twins' keywords; None is left out (the default)."""
    task = _optional(**_on_wire(values, _SCHEDULE_TASK_FIELDS, None))
    body = _body({**_optional(**_on_wire(values, _SCHEDULE_FIELDS, None)), "task": task})
    return Call("POST", f"{API}/schedules", _decoder(models.Schedule), body)


def update_schedule(schedule_id: str, changes: Mapping[str, Any]) -> Call[models.Schedule]:
    """``PATCH /schedules/{id}``: only the given fields (UNSET is left out, None is sent)."""
    task = {
        k: v for k, v in _on_wire(changes, _SCHEDULE_TASK_FIELDS, UNSET).items() if v is not UNSET
    }
    body = _body({**_on_wire(changes, _SCHEDULE_FIELDS, UNSET), "task": task or UNSET})
    # Setting the same fields twice leaves the same schedule (nextRunAt aside): safe to repeat.
    path = _schedule_path(schedule_id)
    return Call("PATCH", path, _decoder(models.Schedule), body, idempotent=True)


def get_schedule(schedule_id: str) -> Call[models.Schedule]:
    """A schedule, with next_run_at, last_run_at and last_run_id."""
    path = _schedule_path(schedule_id)
    return Call("GET", path, _decoder(models.Schedule), idempotent=True)


def delete_schedule(schedule_id: str) -> Call[models.Schedule]:
    """Delete a schedule (its runs stay); the schedule as it was."""
    # Not repeated: a repeat after a lost answer would be a 404 for a schedule that was deleted.
    return Call("DELETE", _schedule_path(schedule_id), _decoder(models.Schedule))


def list_schedules(filters: Mapping[str, Any]) -> Call[models.ScheduleList]:
    params = _query(_on_wire(filters, _PAGE, None))
    return Call(
        "GET", f"{API}/schedules", _decoder(models.ScheduleList), params=params, idempotent=True
    )


def get_config() -> Call[models.Config]:
    """The server's version, Redis settings, queue names and queue backend."""
    return Call("GET", f"{API}/config", _decoder(models.Config), idempotent=True)


# queue (docs/queue-protocol.md)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def claim_tasks(
    *,
    worker_id: str,
    limit: int = 1,
    lease_s: float = 30.0,
    wait_s: float = 0.0,
    types: Sequence[str] | None = None,
) -> Call[list[models.Task]]:
    """Lease up to limit ready tasks, waiting up to wait_s for the first (postgres backend)."""
    body = _body(
        {
            "workerId": worker_id,
            "limit": limit,
            "leaseMs": _ms(lease_s),
            "waitMs": _ms(wait_s),
            **_optional(types=_list(types)),
        }
    )
    # The HTTP read must outlast the server's long poll.
    timeout_s = wait_s + 10.0
    return Call("POST", f"{API}/tasks/claim", _tasks, body, timeout_s=timeout_s)


def claim_task(task_id: str, *, worker_id: str, lease_s: float = 30.0) -> Call[models.Task]:
    """Lease one task by id (bullmq backend); ConflictError if done or held by another."""
    body = _body({"workerId": worker_id, "leaseMs": _ms(lease_s)})
    return Call(
        "POST", f"{API}/tasks/{_segment(task_id, 'task_id')}/claim", _decoder(models.Task), body
    )


def claim_task_ids(
    task_ids: Sequence[str], *, worker_id: str, lease_s: float = 30.0
) -> Call[list[models.ClaimResult]]:
    """Lease many tasks by id in one request (bullmq backend); per id, in input order."""
    body = _encode({"workerId": worker_id, "taskIds": list(task_ids), "leaseMs": _ms(lease_s)})
    return Call("POST", f"{API}/tasks/claim-ids", _claims, body)


def heartbeat(leases: Sequence[Lease], *, lease_s: float = 30.0) -> Call[list[models.LeaseStatus]]:
    """Renew leases in one request; each answer says ok (still held) and cancelled."""
    body = _encode({"leases": list(leases), "leaseMs": _ms(lease_s)})
    # Renewing a lease twice only moves its expiry: safe to repeat.
    return Call("POST", f"{API}/tasks/heartbeat", _leases, body, idempotent=True)


def complete_task(task_id: str, *, lease_token: str, output_data: Any = None) -> Call[models.Task]:
    """End the attempt successfully; ConflictError if the lease is stale."""
    body = _encode({"leaseToken": lease_token, "outputData": output_data})
    return Call(
        "POST", f"{API}/tasks/{_segment(task_id, 'task_id')}/complete", _decoder(models.Task), body
    )


def fail_task(
    task_id: str, *, lease_token: str, error_data: Any, retryable: bool = True
) -> Call[models.Task]:
    """End the attempt with an error: retrying while attempts remain, else failed."""
    body = _encode({"leaseToken": lease_token, "errorData": error_data, "retryable": retryable})
    return Call(
        "POST", f"{API}/tasks/{_segment(task_id, 'task_id')}/fail", _decoder(models.Task), body
    )


def release_task(task_id: str, *, lease_token: str) -> Call[models.Task]:
    """Give the task back unrun (queued again, the attempt not counted)."""
    body = _encode({"leaseToken": lease_token})
    return Call(
        "POST", f"{API}/tasks/{_segment(task_id, 'task_id')}/release", _decoder(models.Task), body
    )


def release_tasks(leases: Sequence[Lease]) -> Call[list[models.TaskAck]]:
    """Give many tasks back unrun in one request; each answer says whether it was held."""
    body = _encode({"leases": list(leases)})
    return Call("POST", f"{API}/tasks/release", _acks, body)


def complete_tasks(results: Sequence[TaskResult]) -> Call[list[models.TaskAck]]:
    """End many attempts in one request; each answer says whether it was recorded."""
    body = _encode({"results": list(results)})
    return Call("POST", f"{API}/tasks/complete", _acks, body)


def wait_task(task_id: str, *, wait_s: float) -> Call[models.Task]:
    params = {"timeoutMs": str(_ms(wait_s))}
    path = f"{API}/tasks/{_segment(task_id, 'task_id')}/wait"
    return Call(
        "GET", path, _decoder(models.Task), params=params, idempotent=True, timeout_s=wait_s + 10
    )


# ---------------------------------------------------------------- waiting


class WaitPlan:
    """When ``wait_for_task`` asks again: long polls, or backoff polling on an older server."""

    LONG_POLL_S = 30.0

    def __init__(self, task_id: str, *, timeout: float | None, now: float) -> None:
        self.task_id = task_id
        self.deadline = None if timeout is None else now + timeout
        self.long_poll = True
        self.pause = 0.05

    def call(self, now: float) -> Call[models.Task]:
        """The next request."""
        if not self.long_poll:
            return get_task(self.task_id)
        remaining = self.LONG_POLL_S if self.deadline is None else self.deadline - now
        return wait_task(self.task_id, wait_s=max(0.0, min(self.LONG_POLL_S, remaining)))

    def on_error(self, exc: errors.ForemanError) -> None:
        """Switch to polling when the server has no wait endpoint; re-raise anything else."""
        if not (self.long_poll and is_missing_route(exc)):
            raise exc
        self.long_poll = False

    def finished(self, task: models.Task, now: float) -> bool:
        """True when task is terminal; TimeoutError once the deadline has passed."""
        if task.status in models.TERMINAL_STATUSES:
            return True
        if self.deadline is not None and now >= self.deadline:
            raise TimeoutError(f"Task {self.task_id} is still {task.status}")
        return False

    def pause_s(self, now: float) -> float:
        """How long to sleep before the next request (0 for long polls)."""
        if self.long_poll:
            return 0.0
        pause, self.pause = self.pause, min(self.pause * 2, 1.0)
        return pause if self.deadline is None else max(0.0, min(pause, self.deadline - now))
