"""What the sync and async clients share without doing I/O: options, calls, bodies and parsing.

Each API operation is described once here as a ``Call`` (method, path, body, how to decode the
answer, whether it may be repeated); ``Client`` and ``AsyncClient`` only send calls. Bodies are
camelCase JSON (SPEC section 1), encoded with msgspec; answers decode into ``foreman.models``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit

import httpx
import msgspec
from msgspec import UNSET, UnsetType

from foreman import errors
from foreman.models import (
    TERMINAL_STATUSES,
    Config,
    Deleted,
    LeaseStatus,
    RedisConfig,
    Run,
    RunData,
    RunDataList,
    RunList,
    Task,
    TaskAck,
    TaskList,
)

T = TypeVar("T")
QueueBackend = Literal["postgres", "bullmq"]

DEFAULT_ENDPOINT = "http://localhost:3000"
API = "/api/v1"
USER_AGENT = "foreman-python"
MAX_BATCH = 1000  # docs/queue-protocol.md: batch create and claim take 1..1000 items
PATCH_CONCURRENCY = 16  # parallel PATCHes when the client publishes BullMQ jobs itself
JSON_HEADERS = {"content-type": "application/json"}
DEFAULT_RETRIES = 3
# SPEC section 7: a job retried by BullMQ itself backs off exponentially from 2 s.
JOB_BACKOFF = {"type": "exponential", "delay": 2000}


# ---------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Where the BullMQ queue lives (only used when the client publishes jobs itself)."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisOptions:
        """Options from ``redis://[:password@]host[:port][/db]``."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", ""):
            raise ValueError(f"Unsupported Redis URL scheme: {parts.scheme}")
        db = parts.path.strip("/")
        password = unquote(parts.password) if parts.password else None
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            db=int(db) if db else 0,
            password=password,
        )

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisOptions:
        """Options from the server's ``/api/v1/config``."""
        return cls(
            host=config.host, port=config.port, db=config.db or 0, password=config.password or None
        )

    def connection(self) -> dict[str, Any]:
        """redis-py connection arguments (bullmq's ``connection`` option)."""
        return {"host": self.host, "port": self.port, "db": self.db, "password": self.password}

    def url(self) -> str:
        """The equivalent ``redis://`` URL (for bullmq's ``connection`` option)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """A client's configuration, resolved from arguments and the environment."""

    endpoint: str
    api_key: str | None
    timeout_s: float
    retries: int
    queue_backend: QueueBackend | None = None  # None: whatever the server advertises
    redis: RedisOptions | None = None  # None: the server's /api/v1/config
    task_queue: str | None = None  # None: the server's TASK_QUEUE_NAME

    @property
    def publishes_jobs(self) -> bool:
        """Whether enqueue publishes BullMQ jobs from the client (like the Node foreman-client)."""
        return self.queue_backend == "bullmq"


def client_options(
    endpoint: str | None,
    api_key: str | None,
    *,
    timeout: float,
    retries: int = DEFAULT_RETRIES,
    queue_backend: QueueBackend | None = None,
    redis: RedisOptions | str | None = None,
    task_queue: str | None = None,
) -> ClientOptions:
    """Options from the arguments, falling back to FOREMAN_ENDPOINT and FOREMAN_API_KEY."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if queue_backend not in (None, "postgres", "bullmq"):
        raise ValueError(f"Unknown queue backend: {queue_backend!r} (postgres or bullmq)")
    return ClientOptions(
        endpoint=normalize_endpoint(endpoint or os.environ.get("FOREMAN_ENDPOINT") or ""),
        api_key=api_key or os.environ.get("FOREMAN_API_KEY") or None,
        timeout_s=timeout,
        retries=retries,
        queue_backend=queue_backend,
        redis=RedisOptions.from_url(redis) if isinstance(redis, str) else redis,
        task_queue=task_queue,
    )


def normalize_endpoint(endpoint: str) -> str:
    """The server's root URL; a trailing ``/`` or ``/api/v1`` is accepted and dropped."""
    root = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
    if root.endswith(API):
        root = root[: -len(API)]
    if not root.startswith(("http://", "https://")):
        raise ValueError(f"The endpoint must be an http(s) URL, got {endpoint!r}")
    return root


def http_options(options: ClientOptions) -> dict[str, Any]:
    """Keyword arguments shared by ``httpx.Client`` and ``httpx.AsyncClient``."""
    headers = {"user-agent": USER_AGENT, "accept": "application/json"}
    if options.api_key:
        headers["authorization"] = f"Bearer {options.api_key}"
    return {
        "base_url": options.endpoint,
        "headers": headers,
        "timeout": httpx.Timeout(options.timeout_s, connect=min(options.timeout_s, 5.0)),
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
    }


# ---------------------------------------------------------------- wire structs of the queue


class _Camel(msgspec.Struct, rename="camel", omit_defaults=True):
    pass


class Lease(_Camel):
    """A held task: its id and the fencing token of the current attempt."""

    task_id: str
    lease_token: str


class TaskResult(_Camel):
    """The end of one attempt, sent in a batch to ``POST /tasks/complete``."""

    task_id: str
    lease_token: str
    status: Literal["completed", "failed"]
    output_data: Any = UNSET
    error_data: Any = UNSET
    retryable: bool | UnsetType = UNSET


class _Tasks(msgspec.Struct):
    data: list[Task]


class _Leases(msgspec.Struct):
    data: list[LeaseStatus]


class _Acks(msgspec.Struct):
    data: list[TaskAck]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task to create: what ``enqueue_tasks`` takes (snake_case mappings are accepted too)."""

    run_id: str
    type: str
    input_data: Any
    parent_task_id: str | None = None
    metadata: dict[str, Any] | None = None
    max_retries: int | None = None
    priority: int | None = None
    delay_ms: int | None = None
    idempotency_key: str | None = None


def task_spec(item: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """A TaskSpec from itself or from a mapping with TaskSpec's field names."""
    if isinstance(item, TaskSpec):
        return item
    try:
        return TaskSpec(**item)
    except TypeError as exc:
        raise ValueError(f"Not a task description: {exc}") from None


# ---------------------------------------------------------------- calls


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    decode: Callable[[bytes], T]
    body: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    # Safe to send again after a connection error that may have reached the server.
    idempotent: bool = False
    timeout_s: float | None = None  # overrides the client's read timeout (long polls)


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(model: type[T]) -> Callable[[bytes], T]:
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = msgspec.json.Decoder(model)
    return decoder.decode


def _tasks(content: bytes) -> list[Task]:
    return _decoder(_Tasks)(content).data


def _leases(content: bytes) -> list[LeaseStatus]:
    return _decoder(_Leases)(content).data


def _acks(content: bytes) -> list[TaskAck]:
    return _decoder(_Acks)(content).data


def _deleted(content: bytes) -> int:
    return _decoder(Deleted)(content).deleted


_encode = msgspec.json.Encoder().encode


def _body(values: Mapping[str, Any]) -> bytes:
    """JSON of the values that are set (UNSET and, for optional fields, None are left out)."""
    return _encode({k: v for k, v in values.items() if v is not UNSET})


def _query(values: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters of the values that are set; lists become comma lists."""
    params: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            params[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            params[name] = ",".join(str(v) for v in value)
        else:
            params[name] = str(value)
    return params


def _segment(value: str) -> str:
    # An id goes into the path as one segment whatever it contains.
    return quote(str(value), safe="")


def _optional(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# runs


def create_run(input_data: Any, *, metadata: dict[str, Any] | None) -> Call[Run]:
    body = _body({"inputData": input_data, **_optional(metadata=metadata)})
    return Call("POST", f"{API}/runs", _decoder(Run), body)


def get_run(run_id: str) -> Call[Run]:
    return Call("GET", f"{API}/runs/{_segment(run_id)}", _decoder(Run), idempotent=True)


def update_run(run_id: str, changes: Mapping[str, Any]) -> Call[Run]:
    body = _body(
        {
            "status": changes.get("status", UNSET),
            "outputData": changes.get("output_data", UNSET),
            "errorData": changes.get("error_data", UNSET),
            "metadata": changes.get("metadata", UNSET),
        }
    )
    # Setting the same fields twice leaves the same run: safe to repeat.
    return Call("PATCH", f"{API}/runs/{_segment(run_id)}", _decoder(Run), body, idempotent=True)


def list_runs(filters: Mapping[str, Any]) -> Call[RunList]:
    params = _query(
        {
            "limit": filters.get("limit"),
            "offset": filters.get("offset"),
            "status": filters.get("status"),
            "sortBy": filters.get("sort_by"),
            "sortOrder": filters.get("sort_order"),
        }
    )
    return Call("GET", f"{API}/runs", _decoder(RunList), params=params, idempotent=True)


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
        )
    )
    if enqueue:
        body["enqueue"] = True
    return body


def create_task(spec: TaskSpec, *, enqueue: bool) -> Call[Task]:
    body = _encode(task_body(spec, enqueue=enqueue))
    # With an idempotency key a repeat returns the first task instead of making a second one.
    idempotent = spec.idempotency_key is not None
    return Call("POST", f"{API}/tasks", _decoder(Task), body, idempotent=idempotent)


def create_tasks(specs: Sequence[TaskSpec], *, enqueue: bool) -> Call[list[Task]]:
    """``POST /tasks/batch``: one transaction, answers in input order."""
    body = _encode({"tasks": [task_body(spec, enqueue=enqueue) for spec in specs]})
    idempotent = all(spec.idempotency_key is not None for spec in specs)
    return Call("POST", f"{API}/tasks/batch", _tasks, body, idempotent=idempotent)


def get_task(task_id: str) -> Call[Task]:
    return Call("GET", f"{API}/tasks/{_segment(task_id)}", _decoder(Task), idempotent=True)


def update_task(task_id: str, changes: Mapping[str, Any]) -> Call[Task]:
    body = _body(
        {
            "status": changes.get("status", UNSET),
            "outputData": changes.get("output_data", UNSET),
            "errorData": changes.get("error_data", UNSET),
            "metadata": changes.get("metadata", UNSET),
            "queueJobId": changes.get("queue_job_id", UNSET),
        }
    )
    # retrying is the one status whose repeat changes the task (retryCount + 1).
    idempotent = changes.get("status") != "retrying"
    path = f"{API}/tasks/{_segment(task_id)}"
    return Call("PATCH", path, _decoder(Task), body, idempotent=idempotent)


def list_tasks(filters: Mapping[str, Any]) -> Call[TaskList]:
    params = _query(
        {
            "runId": filters.get("run_id"),
            "status": filters.get("status"),
            "type": filters.get("type"),
            "parentTaskId": filters.get("parent_task_id"),
            "limit": filters.get("limit"),
            "offset": filters.get("offset"),
            "sortBy": filters.get("sort_by"),
            "sortOrder": filters.get("sort_order"),
        }
    )
    return Call("GET", f"{API}/tasks", _decoder(TaskList), params=params, idempotent=True)


# run data


def create_run_data(run_id: str, values: Mapping[str, Any]) -> Call[RunData]:
    body = _body(
        {
            "taskId": values["task_id"],
            "key": values["key"],
            "value": values["value"],
            **_optional(tags=values.get("tags"), metadata=values.get("metadata")),
        }
    )
    return Call("POST", f"{API}/runs/{_segment(run_id)}/data", _decoder(RunData), body)


def query_run_data(run_id: str, filters: Mapping[str, Any]) -> Call[RunDataList]:
    params = _query(
        {
            "key": filters.get("key"),
            "keys": filters.get("keys"),
            "keyStartsWith": filters.get("key_starts_with"),
            "keyPattern": filters.get("key_pattern"),
            "tags": filters.get("tags"),
            "tagStartsWith": filters.get("tag_starts_with"),
            "tagMode": filters.get("tag_mode"),
            "includeAll": filters.get("include_all"),
            "limit": filters.get("limit"),
            "offset": filters.get("offset"),
            "sortBy": filters.get("sort_by"),
            "sortOrder": filters.get("sort_order"),
        }
    )
    path = f"{API}/runs/{_segment(run_id)}/data"
    return Call("GET", path, _decoder(RunDataList), params=params, idempotent=True)


def update_run_data_tags(
    run_id: str, data_id: str, *, add: Sequence[str] | None, remove: Sequence[str] | None
) -> Call[RunData]:
    body = _body(_optional(add=_list(add), remove=_list(remove)))
    path = f"{API}/runs/{_segment(run_id)}/data/{_segment(data_id)}/tags"
    # Remove-then-add-if-missing gives the same tags when repeated.
    return Call("PATCH", path, _decoder(RunData), body, idempotent=True)


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def delete_run_data(run_id: str, *, key: str | None, data_id: str | None) -> Call[int]:
    if key is None and data_id is None:
        raise ValueError("delete_run_data needs a key or a data_id")
    params = _query({"key": key, "id": data_id})
    path = f"{API}/runs/{_segment(run_id)}/data"
    return Call("DELETE", path, _deleted, params=params)


def get_config() -> Call[Config]:
    return Call("GET", f"{API}/config", _decoder(Config), idempotent=True)


# queue (docs/queue-protocol.md)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def claim_tasks(
    *, worker_id: str, limit: int, lease_s: float, wait_s: float, types: Sequence[str] | None
) -> Call[list[Task]]:
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


def claim_task(task_id: str, *, worker_id: str, lease_s: float) -> Call[Task]:
    body = _body({"workerId": worker_id, "leaseMs": _ms(lease_s)})
    return Call("POST", f"{API}/tasks/{_segment(task_id)}/claim", _decoder(Task), body)


def heartbeat(leases: Sequence[Lease], *, lease_s: float) -> Call[list[LeaseStatus]]:
    body = _encode({"leases": list(leases), "leaseMs": _ms(lease_s)})
    # Renewing a lease twice only moves its expiry: safe to repeat.
    return Call("POST", f"{API}/tasks/heartbeat", _leases, body, idempotent=True)


def complete_task(task_id: str, *, lease_token: str, output_data: Any) -> Call[Task]:
    body = _encode({"leaseToken": lease_token, "outputData": output_data})
    return Call("POST", f"{API}/tasks/{_segment(task_id)}/complete", _decoder(Task), body)


def fail_task(task_id: str, *, lease_token: str, error_data: Any, retryable: bool) -> Call[Task]:
    body = _encode({"leaseToken": lease_token, "errorData": error_data, "retryable": retryable})
    return Call("POST", f"{API}/tasks/{_segment(task_id)}/fail", _decoder(Task), body)


def release_task(task_id: str, *, lease_token: str) -> Call[Task]:
    body = _encode({"leaseToken": lease_token})
    return Call("POST", f"{API}/tasks/{_segment(task_id)}/release", _decoder(Task), body)


def release_tasks(leases: Sequence[Lease]) -> Call[list[TaskAck]]:
    body = _encode({"leases": list(leases)})
    return Call("POST", f"{API}/tasks/release", _acks, body)


def complete_tasks(results: Sequence[TaskResult]) -> Call[list[TaskAck]]:
    body = _encode({"results": list(results)})
    return Call("POST", f"{API}/tasks/complete", _acks, body)


def wait_task(task_id: str, *, wait_s: float) -> Call[Task]:
    params = {"timeoutMs": str(_ms(wait_s))}
    path = f"{API}/tasks/{_segment(task_id)}/wait"
    return Call("GET", path, _decoder(Task), params=params, idempotent=True, timeout_s=wait_s + 10)


# ---------------------------------------------------------------- answers and retries


def timeout_of(call: Call[Any]) -> httpx.Timeout | Any:
    """The call's own timeout (long polls), else the client's."""
    if call.timeout_s is None:
        return httpx.USE_CLIENT_DEFAULT
    return httpx.Timeout(call.timeout_s, connect=min(call.timeout_s, 5.0))


def parse(response: httpx.Response, call: Call[T]) -> T:
    """The decoded answer, or the ``foreman.errors`` class the server's status stands for."""
    if response.status_code >= 400:
        raise error_of(response)
    try:
        return call.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise errors.ForemanError(
            f"Unexpected answer from {call.method} {call.path}: {exc}"
        ) from None


def error_of(response: httpx.Response) -> errors.ForemanError:
    """The exception for an error response (SPEC section 2 body, or plain text from a proxy)."""
    try:
        body: Any = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        text = response.text.strip()[:200]
        body = {"error": f"HTTP {response.status_code}: {text}" if text else None}
    return errors.from_status(response.status_code, body)


# Failures that happen before the request reaches the server: always safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Answers of a proxy or a server whose database is down: the request was not carried out.
_RETRY_STATUSES = frozenset({502, 503, 504})


def may_retry_error(exc: httpx.TransportError, call: Call[Any]) -> bool:
    """Whether a connection error allows sending call again."""
    return isinstance(exc, _NOT_SENT) or call.idempotent


def may_retry_status(status_code: int, call: Call[Any]) -> bool:
    """Whether an error status allows sending call again."""
    return status_code in _RETRY_STATUSES and call.idempotent


def retry_delay_s(attempt: int) -> float:
    """Exponential backoff with jitter before retry number attempt (0-based): 0.1 s .. 2 s."""
    return min(0.1 * 2.0**attempt, 2.0) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter only


def transport_error(exc: httpx.TransportError, call: Call[Any]) -> errors.TransportError:
    """The Foreman error for a request that got no answer."""
    return errors.TransportError(f"{call.method} {call.path} failed: {type(exc).__name__}: {exc}")


def is_missing_route(exc: errors.ForemanError) -> bool:
    """Whether the server lacks the endpoint (an older server), not the resource."""
    if isinstance(exc, errors.MethodNotAllowedError):
        return True
    # The server words an unknown route "Not found: <METHOD> <path>" (server/errors.py).
    return isinstance(exc, errors.NotFoundError) and exc.message.startswith("Not found:")


def chunks(items: Sequence[T], size: int = MAX_BATCH) -> Iterable[Sequence[T]]:
    """items in slices of at most size."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- waiting


class WaitPlan:
    """When ``wait_for_task`` asks again: long polls, or backoff polling on an older server."""

    LONG_POLL_S = 30.0

    def __init__(self, task_id: str, *, timeout: float | None, now: float) -> None:
        self.task_id = task_id
        self.deadline = None if timeout is None else now + timeout
        self.long_poll = True
        self.pause = 0.05

    def call(self, now: float) -> Call[Task]:
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

    def finished(self, task: Task, now: float) -> bool:
        """True when task is terminal; TimeoutError once the deadline has passed."""
        if task.status in TERMINAL_STATUSES:
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


# ---------------------------------------------------------------- BullMQ jobs published by the client


def job_id(task: Task) -> str:
    """The id of the job that starts task's next attempt: the server publishes the same id
    (``<taskId>:<attempt>``), so a re-publish by its sweeper never makes a second live job."""
    return f"{task.id}:{task.attempt + 1}"


def bullmq_job(task: Task, *, now_ms: int) -> dict[str, Any]:
    """SPEC section 7: name = type, data exactly {"taskId"}, Node foreman-client options."""
    opts: dict[str, Any] = {
        "jobId": job_id(task),
        "attempts": max(1, task.max_retries + 1 - task.attempt),  # the attempts left
        "backoff": dict(JOB_BACKOFF),
        "removeOnComplete": True,
        "removeOnFail": False,
    }
    if task.priority > 0:
        opts["priority"] = task.priority
    if task.run_after is not None and task.run_after > now_ms:
        opts["delay"] = task.run_after - now_ms
    return {"name": task.type, "data": {"taskId": task.id}, "opts": opts}
