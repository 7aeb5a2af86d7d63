"""Wire models shared by the server and the client (SPEC section 4), as msgspec structs.

Field names are snake_case in Python and camelCase on the wire. JSON payload fields
(``input_data``, ``value``, ...) are typed ``Any`` in answers: the server fills them with the raw
jsonb text from PostgreSQL (no parse, no re-encode), the client gets decoded Python values. In
requests they are ``JsonText``: the JSON text as sent, never decoded on the server (see JsonText).
Optional fields default to None and are omitted from the JSON when unset (SPEC section 4).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from foreman import triggers

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TaskStatus = Literal[
    "pending", "queued", "running", "completed", "failed", "cancelled", "retrying", "blocked"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

JsonObject = dict[str, Any]
# Limits of the identifier-like strings of bodies and queries, in one place (docs/security.md
# lists where each applies). SPEC section 5 gives 1..255 for a task type and a run-data key; the
# other names, keys and ids a client chooses get the same bound.
MAX_NAME_CHARS = 255
MAX_TAGS = 100  # distinct tags on a run-data entry, and in one tag update list
MAX_LIST_ITEMS = 1000  # items of a comma-list filter, types of a claim
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Tag = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
# No maxItems: duplicates are dropped before the count (_unique_tags), so a list may be longer.
Tags = Annotated[
    list[Tag], Meta(description=f"At most {MAX_TAGS} distinct tags; repeats are dropped")
]
# A JSON value of a request body, kept as the JSON text the client sent (msgspec checks only its
# syntax) and handed to PostgreSQL's jsonb as text: numbers stay exact (jsonb stores numeric, not
# double), and a 10 MiB value costs its bytes, not millions of Python objects (docs/security.md).
# The schema entries only tell the OpenAPI document (Litestar reads "extra" of extra_json_schema).
JsonText = Annotated[msgspec.Raw, Meta(extra_json_schema={"extra": {}})]
# Any JSON value but null (SPEC section 4); the check is _require_value.
JsonValue = Annotated[msgspec.Raw, Meta(extra_json_schema={"extra": {"not": {"type": "null"}}})]
# An object or null (SPEC section 4: metadata); the check is _require_object.
JsonObjectText = Annotated[
    msgspec.Raw, Meta(extra_json_schema={"extra": {"type": ["object", "null"]}})
]
JSON_NULL = msgspec.Raw(b"null")
MaxRetries = Annotated[int, Meta(ge=0, le=10)]
# BullMQ's range: 0 is the default, then 1 (highest) .. 2,097,152 (lowest).
Priority = Annotated[int, Meta(ge=0, le=2_097_152)]
DelayMs = Annotated[int, Meta(ge=0, le=365 * 24 * 3600 * 1000)]
IntervalMs = Annotated[
    int,
    Meta(
        ge=triggers.MIN_INTERVAL_MS,
        le=triggers.MAX_INTERVAL_MS,
        description="Milliseconds between ticks, 1 s to 366 days; the first tick is one interval away",
    ),
]
CronText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="A standard 5-field cron expression: minute hour day-of-month month day-of-week",
        examples=["*/15 9-17 * * MON-FRI"],
    ),
]
TimezoneName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="An IANA timezone name; the cron expression is read in it (DST included)",
        examples=["Europe/Warsaw"],
    ),
]
MAX_PARENTS = 10_000  # dependsOn of one task (issue 13)
DependsOn = Annotated[
    list[Name],
    Meta(
        max_length=MAX_PARENTS,
        description="Parent task ids of the same run (in a batch, also refs of earlier items)",
    ),
]
OnParentFailure = Literal["cancel", "run"]


class _Out(msgspec.Struct, rename="camel", omit_defaults=True):
    pass


class _In(msgspec.Struct, rename="camel"):
    pass


def _require_value(value: msgspec.Raw, field: str) -> None:
    if value == JSON_NULL:
        # msgspec reports a ValueError from __post_init__ as a validation error of the body.
        raise ValueError(f"`{field}` is required and must not be null")


def _unique_tags(tags: list[str], field: str) -> list[str]:
    """tags without repeats (first occurrences, in order); at most MAX_TAGS of them."""
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise ValueError(f"`{field}` holds {len(unique)} distinct tags; the limit is {MAX_TAGS}")
    return unique


# The JSON type of a value's text, by its first byte (msgspec's names, as in its own messages).
_JSON_TYPES = {ord("{"): "object", ord("["): "array", ord('"'): "str", ord("t"): "bool"}
_JSON_TYPES |= {ord("f"): "bool", ord("n"): "null"}


def _require_object(value: msgspec.Raw | UnsetType, field: str) -> None:
    if isinstance(value, msgspec.Raw):
        kind = _JSON_TYPES.get(memoryview(value)[0], "number")
        if kind not in ("object", "null"):
            raise ValueError(f"`{field}` must be an object or null, got {kind}")


def _check_trigger(cron: str | UnsetType | None, timezone: str | UnsetType) -> None:
    """A given cron expression and timezone must be valid (msgspec reports the ValueError)."""
    if isinstance(cron, str):
        try:
            triggers.check_cron(cron)
        except ValueError as exc:
            raise ValueError(f"`cron` {exc}") from exc
    if isinstance(timezone, str):
        try:
            triggers.zone(timezone)
        except ValueError as exc:
            raise ValueError(f"`timezone` {exc}") from exc


def _one_trigger(cron: object, interval_ms: object) -> None:
    """Exactly one of cron and intervalMs (None and UNSET both count as not given)."""
    given = [v for v in (cron, interval_ms) if v is not None and v is not UNSET]
    if len(given) != 1:
        what = "both given" if given else "neither given"
        raise ValueError(f"`cron` or `intervalMs` is required, exactly one of them ({what})")


def stored(value: msgspec.Raw | UnsetType) -> msgspec.Raw | None:
    """A request's JSON value as the store takes it: null or left out is None (SQL NULL)."""
    return value if isinstance(value, msgspec.Raw) and value != JSON_NULL else None


def changes(update: RunUpdate | TaskUpdate) -> dict[str, Any]:
    """The fields a PATCH sets (snake_case), JSON values as stored()."""
    fields = msgspec.structs.asdict(update).items()
    return {k: stored(v) if isinstance(v, msgspec.Raw) else v for k, v in fields if v is not UNSET}


# ---------------------------------------------------------------- responses


class Run(_Out):
    """A run: the execution context of a group of tasks."""

    id: str
    org_id: str
    status: RunStatus
    input_data: Any
    metadata: JsonObject | None
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    cancelled_tasks: int
    created_at: int
    updated_at: int
    output_data: Any = None
    error_data: Any = None
    started_at: int | None = None
    completed_at: int | None = None
    duration_ms: int | None = None
    auto_complete: bool = False  # extension: omitted (false) for every run made without it


class Task(_Out):
    """A unit of work inside a run."""

    id: str
    run_id: str
    org_id: str
    type: str
    status: TaskStatus
    input_data: Any
    metadata: JsonObject | None
    retry_count: int
    max_retries: int
    priority: int
    attempt: int
    created_at: int
    updated_at: int
    parent_task_id: str | None = None
    output_data: Any = None
    error_data: Any = None
    queued_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    duration_ms: int | None = None
    queue_job_id: str | None = None
    run_after: int | None = None
    lease_expires_at: int | None = None
    idempotency_key: str | None = None
    worker_id: str | None = None
    lease_token: str | None = None
    # Only in a claim's answer (README "Traces"): the creator's trace context, the handler's span
    # parent.
    traceparent: str | None = None


AttemptOutcome = Literal["running", "completed", "failed", "lease_expired", "released", "cancelled"]


class Attempt(msgspec.Struct, rename="camel"):
    """One attempt of a task (GET /tasks/{id}/attempts): who ran it, when, and how it ended.

    Every key is sent, null while unknown (an attempt still running has no end yet): issue 13
    names the seven keys of an attempt.
    """

    attempt: int
    started_at: int
    outcome: AttemptOutcome
    worker_id: str | None = None
    ended_at: int | None = None
    duration_ms: int | None = None
    error_data: Any = None


RunEventType = Literal[
    "run.created",
    "run.started",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "task.created",
    "task.queued",
    "task.started",
    "task.retrying",
    "task.completed",
    "task.failed",
    "task.cancelled",
]


class RunEvent(_Out):
    """One state change of a run or of one of its tasks (GET /runs/{id}/events, Server-Sent
    Events): ``id`` orders the stream and is what Last-Event-ID resumes after; ``status`` is the
    run's or task's status after the change, ``at`` its time (epoch ms)."""

    id: str
    type: RunEventType
    run_id: str
    status: str
    at: int
    task_id: str | None = None
    task_type: str | None = None
    attempt: int | None = None
    worker_id: str | None = None


class AttemptList(_Out):
    """``{"data": [Attempt, ...]}``, oldest first."""

    data: list[Attempt]


class RunData(_Out):
    """One value stored under a key of a run."""

    id: str
    run_id: str
    task_id: str
    org_id: str
    key: str
    value: Any
    tags: list[str]
    metadata: JsonObject | None
    created_at: int
    updated_at: int


class ScheduledTask(_Out):
    """The task each firing of a schedule creates (queued at once)."""

    type: str
    input_data: Any
    max_retries: int
    priority: int


class Schedule(_Out):
    """A schedule: every tick of its cron expression or interval creates a run with one task.

    ``nextRunAt`` is absent while the schedule is disabled; ``lastRunAt`` (when it last fired)
    and ``lastRunId`` (the run it created) until it first fires.
    """

    id: str
    org_id: str
    name: str
    enabled: bool
    timezone: str
    run_input_data: Any
    task: ScheduledTask
    created_at: int
    updated_at: int
    cron: str | None = None
    interval_ms: int | None = None
    next_run_at: int | None = None
    last_run_at: int | None = None
    last_run_id: str | None = None


class Pagination(_Out):
    total: int
    limit: int
    offset: int


class RunList(_Out):
    data: list[Run]
    pagination: Pagination


class TaskList(_Out):
    data: list[Task]
    pagination: Pagination


class ScheduleList(_Out):
    data: list[Schedule]
    pagination: Pagination


class RunDataList(_Out):
    data: list[RunData]
    pagination: Pagination


class Deleted(_Out):
    deleted: int


class ErrorDetail(_Out):
    loc: list[str | int]
    msg: str


class ErrorBody(_Out):
    """SPEC section 2: every error answer."""

    error: str
    code: str | None = None
    details: list[ErrorDetail] | None = None


class HealthServices(_Out):
    database: str
    redis: str


class Health(_Out):
    status: Literal["healthy", "unhealthy"]
    timestamp: str
    environment: str
    services: HealthServices


class RedisConfig(_Out):
    host: str
    port: int
    db: int | None = None
    # Extension: with FOREMAN_REDIS_ACL=per-org, the organisation's own Redis user.
    username: str | None = None
    password: str | None = None


class QueuesConfig(_Out):
    task_queue: str
    result_queue: str


class QueueBackendConfig(_Out):
    backend: Literal["postgres", "bullmq", "rabbitmq", "sqs"]
    # rabbitmq and sqs: the caller's organisation's queue (docs/backends.md), what its workers
    # consume; absent for the other backends.
    task_queue: str | None = None


class Config(_Out):
    version: str
    environment: str
    redis: RedisConfig
    queues: QueuesConfig
    queue: QueueBackendConfig


# ---------------------------------------------------------------- requests


class RunCreate(_In):
    input_data: JsonValue
    metadata: JsonObjectText | UnsetType = UNSET
    # Extension (issue 13): the run becomes running at its first claim and completed or failed
    # when every task is terminal.
    auto_complete: bool = False

    def __post_init__(self) -> None:
        _require_value(self.input_data, "inputData")
        _require_object(self.metadata, "metadata")


class RunUpdate(_In):
    status: RunStatus | UnsetType = UNSET
    output_data: JsonText | UnsetType = UNSET
    error_data: JsonText | UnsetType = UNSET
    metadata: JsonObjectText | UnsetType = UNSET

    def __post_init__(self) -> None:
        _require_object(self.metadata, "metadata")


class TaskCreate(_In):
    run_id: uuid.UUID
    type: Name
    input_data: JsonValue
    parent_task_id: uuid.UUID | None = None
    metadata: JsonObjectText | UnsetType = UNSET
    max_retries: MaxRetries = 3
    # Extensions (SPEC section 5): queue order, a delay, idempotent creation, and queueing at once.
    priority: Priority = 0
    delay_ms: DelayMs = 0
    idempotency_key: Name | None = None
    enqueue: bool = False
    # Extensions (issue 13): dependencies. The task is `blocked` until every parent has ended;
    # `ref` names an item of POST /tasks/batch for the dependsOn of later items.
    depends_on: DependsOn | None = None
    on_parent_failure: OnParentFailure = "cancel"
    ref: Name | None = None
    # Extension (README "Traces"): this task's W3C trace context, instead of the request's
    # traceparent header; an invalid one is ignored, like the header.
    traceparent: str | None = None

    def __post_init__(self) -> None:
        _require_value(self.input_data, "inputData")
        _require_object(self.metadata, "metadata")


# A PATCH may not make a task blocked: only its dependencies do (and release it).
SettableTaskStatus = Literal[
    "pending", "queued", "running", "completed", "failed", "cancelled", "retrying"
]


class TaskUpdate(_In):
    status: SettableTaskStatus | UnsetType = UNSET
    output_data: JsonText | UnsetType = UNSET
    error_data: JsonText | UnsetType = UNSET
    metadata: JsonObjectText | UnsetType = UNSET
    queue_job_id: Name | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        _require_object(self.metadata, "metadata")


class ScheduleTask(_In):
    """The task a schedule creates at each firing: as in POST /tasks, queued at once."""

    type: Name
    input_data: JsonValue
    max_retries: MaxRetries = 3
    priority: Priority = 0

    def __post_init__(self) -> None:
        _require_value(self.input_data, "inputData")


class ScheduleCreate(_In):
    """POST /schedules: exactly one of ``cron`` and ``intervalMs``."""

    name: Name
    task: ScheduleTask
    cron: CronText | None = None
    interval_ms: IntervalMs | None = None
    timezone: TimezoneName = triggers.DEFAULT_TIMEZONE
    enabled: bool = True
    # The inputData of each run the schedule creates ({} when left out).
    run_input_data: JsonValue | UnsetType = UNSET

    def __post_init__(self) -> None:
        _one_trigger(self.cron, self.interval_ms)
        _check_trigger(self.cron, self.timezone)
        if isinstance(self.run_input_data, msgspec.Raw):
            _require_value(self.run_input_data, "runInputData")


class ScheduleTaskUpdate(_In):
    """The fields of a schedule's task to change; the others stay."""

    type: Name | UnsetType = UNSET
    input_data: JsonValue | UnsetType = UNSET
    max_retries: MaxRetries | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET

    def __post_init__(self) -> None:
        if isinstance(self.input_data, msgspec.Raw):
            _require_value(self.input_data, "inputData")


class ScheduleUpdate(_In):
    """PATCH /schedules/{id}: ``cron`` or ``intervalMs`` replaces the trigger (the other one is
    cleared); a changed trigger, timezone or ``enabled`` sets ``nextRunAt`` anew from now."""

    name: Name | UnsetType = UNSET
    cron: CronText | UnsetType | None = UNSET
    interval_ms: IntervalMs | UnsetType | None = UNSET
    timezone: TimezoneName | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    run_input_data: JsonValue | UnsetType = UNSET
    task: ScheduleTaskUpdate | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.cron is not UNSET or self.interval_ms is not UNSET:
            _one_trigger(self.cron, self.interval_ms)
        _check_trigger(self.cron, self.timezone)
        if isinstance(self.run_input_data, msgspec.Raw):
            _require_value(self.run_input_data, "runInputData")


class RunDataCreate(_In):
    task_id: uuid.UUID
    key: Name
    value: JsonValue
    tags: Tags = msgspec.field(default_factory=list)
    metadata: JsonObjectText | UnsetType = UNSET

    def __post_init__(self) -> None:
        _require_value(self.value, "value")
        self.tags = _unique_tags(self.tags, "tags")
        _require_object(self.metadata, "metadata")


class TagsUpdate(_In):
    add: Tags | None = None
    remove: Tags | None = None

    def __post_init__(self) -> None:
        if self.add is not None:
            self.add = _unique_tags(self.add, "add")
        if self.remove is not None:
            self.remove = _unique_tags(self.remove, "remove")


# ---------------------------------------------------------------- queue (docs/queue-protocol.md)

BatchSize = Meta(min_length=1, max_length=1000)
ClaimLimit = Annotated[int, Meta(ge=1, le=1000)]
LeaseMs = Annotated[int, Meta(ge=1000, le=3_600_000)]
WaitMs = Annotated[int, Meta(ge=0, le=60_000)]
DEFAULT_LEASE_MS = 30_000


class TaskBatchCreate(_In):
    """POST /tasks/batch: 1..1000 tasks, created in one transaction."""

    tasks: Annotated[list[TaskCreate], BatchSize]


class TaskItems(_Out):
    """``{"data": [Task, ...]}`` in request order (batch create, claim)."""

    data: list[Task]


class TaskRef(_Out):
    """A task named by its id only."""

    id: str


class TaskRefs(_Out):
    """``{"data": [{"id": ...}, ...]}``: a batch create asked for ``Prefer: return=minimal``."""

    data: list[TaskRef]


class TaskClaim(_In):
    """POST /tasks/claim: lease up to ``limit`` ready tasks, long-polling up to ``waitMs``."""

    worker_id: Name
    types: Annotated[list[Name], Meta(max_length=MAX_LIST_ITEMS)] | None = None
    limit: ClaimLimit = 1
    lease_ms: LeaseMs = DEFAULT_LEASE_MS
    wait_ms: WaitMs = 0


class TaskClaimOne(_In):
    """POST /tasks/{id}/claim."""

    worker_id: Name
    lease_ms: LeaseMs = DEFAULT_LEASE_MS


class TaskClaimIds(_In):
    """POST /tasks/claim-ids: lease 1..1000 tasks by id (jobs a bullmq worker received)."""

    worker_id: Name
    task_ids: Annotated[list[uuid.UUID], BatchSize]
    lease_ms: LeaseMs = DEFAULT_LEASE_MS


class ClaimResult(msgspec.Struct, rename="camel"):
    """One id of a batch claim; every field always present.

    ``ok``: ``task`` is leased (with its ``leaseToken``). Else ``reason`` is ``"conflict"`` (terminal,
    or held by a live lease; ``status`` says which), ``"not_found"``, or ``"duplicate"`` (a later
    occurrence of an id in the same request).
    """

    task_id: str
    ok: bool
    reason: str | None
    status: str | None
    task: Task | None


class ClaimResultList(_Out):
    data: list[ClaimResult]


class LeaseRef(_In):
    """A held task and the fencing token of its attempt."""

    task_id: uuid.UUID
    lease_token: uuid.UUID


class Heartbeat(_In):
    """POST /tasks/heartbeat: renew many leases at once."""

    leases: Annotated[list[LeaseRef], Meta(max_length=1000)]
    lease_ms: LeaseMs = DEFAULT_LEASE_MS


class HeartbeatOne(_In):
    """POST /tasks/{id}/heartbeat."""

    lease_token: uuid.UUID
    lease_ms: LeaseMs = DEFAULT_LEASE_MS


class LeaseStatus(msgspec.Struct, rename="camel"):
    """A lease after a heartbeat; every field is always present (``leaseExpiresAt`` may be null).

    ``reason`` is ``"duplicate"`` for a later occurrence of a task id in the same request (not
    applied), else null.
    """

    task_id: str
    ok: bool
    cancelled: bool
    lease_expires_at: int | None
    reason: str | None = None


class LeaseStatusList(_Out):
    data: list[LeaseStatus]


class TaskComplete(_In):
    """POST /tasks/{id}/complete."""

    lease_token: uuid.UUID
    output_data: JsonText | UnsetType = UNSET


class TaskFail(_In):
    """POST /tasks/{id}/fail: retried after a backoff while attempts remain and retryable."""

    lease_token: uuid.UUID
    error_data: JsonText | UnsetType = UNSET
    retryable: bool = True


class TaskRelease(_In):
    """POST /tasks/{id}/release: back to the queue, the attempt not counted."""

    lease_token: uuid.UUID


class TaskResult(_In):
    """One ended attempt in POST /tasks/complete."""

    task_id: uuid.UUID
    lease_token: uuid.UUID
    status: Literal["completed", "failed"]
    output_data: JsonText | UnsetType = UNSET
    error_data: JsonText | UnsetType = UNSET
    retryable: bool = True


class TaskResults(_In):
    """POST /tasks/complete: 1..1000 ended attempts."""

    results: Annotated[list[TaskResult], BatchSize]


class LeaseRefs(_In):
    """POST /tasks/release: 1..1000 leases to give back."""

    leases: Annotated[list[LeaseRef], BatchSize]


class TaskAck(msgspec.Struct, rename="camel"):
    """The answer for one item of a batch: ok = recorded; status = the task's status now.

    ``reason`` is ``"duplicate"`` for a later occurrence of a task id in the same request (not
    applied), else null.
    """

    task_id: str
    ok: bool
    status: str | None
    reason: str | None = None


class TaskAckList(_Out):
    data: list[TaskAck]
