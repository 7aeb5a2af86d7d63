"""What the sync and async clients share without doing I/O: options, parsing and retry rules.

Each API operation is described once as a ``Call`` (built in ``_calls``: method, path, body, how
to decode the answer, whether it may be repeated); ``Client`` and ``AsyncClient`` only send
calls. Bodies are camelCase JSON (SPEC section 1), encoded with msgspec; answers decode into
``foreman.models``; an error answer raises the ``foreman.errors`` class of its status.

Numbers are exact both ways: a ``decimal.Decimal`` is sent as a JSON number (not a string), and a
number in an answer that a float would change (more than 15 significant digits that a double does
not hold, or beyond its range) is read as a Decimal; every other number is a float as it always
was. The server stores numbers exactly (jsonb numeric), so what one client sent another reads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

import httpx
import msgspec
from msgspec import UNSET, UnsetType

from foreman import errors
from foreman.models import (
    RedisConfig,
    RunEvent,
    Task,
)

T = TypeVar("T")
QueueBackend = Literal["postgres", "bullmq", "rabbitmq", "sqs"]

BACKENDS: tuple[QueueBackend, ...] = ("postgres", "bullmq", "rabbitmq", "sqs")
DEFAULT_ENDPOINT = "http://localhost:3000"
API = "/api/v1"
USER_AGENT = "foreman-python"
MAX_BATCH = 1000  # docs/queue-protocol.md: batch create and claim take 1..1000 items
PATCH_CONCURRENCY = 16  # parallel PATCHes when the client publishes BullMQ jobs itself
JSON_HEADERS = {"content-type": "application/json"}
DEFAULT_RETRIES = 3
MAX_RETRY_AFTER_S = 30.0
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
    username: str | None = None  # a Redis 6+ ACL user (FOREMAN_REDIS_ACL=per-org hands one out)

    @classmethod
    def from_url(cls, url: str) -> RedisOptions:
        """Options from ``redis://[[user]:password@]host[:port][/db]``."""
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
            username=unquote(parts.username) if parts.username else None,
        )

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisOptions:
        """Options from the server's ``/api/v1/config``."""
        return cls(
            host=config.host,
            port=config.port,
            db=config.db or 0,
            password=config.password or None,
            username=config.username or None,
        )

    def connection(self) -> dict[str, Any]:
        """redis-py connection arguments (bullmq's ``connection`` option)."""
        return {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
        }

    def url(self) -> str:
        """The equivalent ``redis://`` URL (for bullmq's ``connection`` option)."""
        user = quote(self.username, safe="") if self.username else ""
        auth = f"{user}:{quote(self.password, safe='')}@" if self.password else ""
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
    if queue_backend not in (None, *BACKENDS):
        raise ValueError(f"Unknown queue backend: {queue_backend!r} ({', '.join(BACKENDS)})")
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


def default_headers(options: ClientOptions) -> dict[str, str]:
    """The headers of every request (the key as a Bearer token when there is one)."""
    headers = {"user-agent": USER_AGENT, "accept": "application/json"}
    if options.api_key:
        headers["authorization"] = f"Bearer {options.api_key}"
    return headers


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
    # Dependencies (issue 13): parent task ids, or the refs of earlier specs of the same call.
    ref: str | None = None
    depends_on: Sequence[str] | None = None
    on_parent_failure: str | None = None  # "cancel" (the server's default) or "run"


def resolve_refs(chunk: Sequence[TaskSpec], known: Mapping[str, str]) -> list[TaskSpec]:
    """chunk with dependsOn refs of earlier chunks replaced by their task ids (a ref only names an
    item of the same request on the server; enqueue_tasks sends 1,000 per request)."""
    return [
        dataclasses.replace(spec, depends_on=[known.get(p, p) for p in spec.depends_on])
        if spec.depends_on and any(p in known for p in spec.depends_on)
        else spec
        for spec in chunk
    ]


def remember_refs(
    chunk: Sequence[TaskSpec], task_ids: Sequence[str], known: dict[str, str]
) -> None:
    """Record the ids of the chunk's specs that carry a ref."""
    for spec, task_id in zip(chunk, task_ids, strict=True):
        if spec.ref is not None:
            known[spec.ref] = task_id


def task_spec(item: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """A TaskSpec from itself or from a mapping with TaskSpec's field names."""
    if isinstance(item, TaskSpec):
        return item
    try:
        return TaskSpec(**item)
    except TypeError as exc:
        raise ValueError(f"Not a task description: {exc}") from None


# ---------------------------------------------------------------- JSON numbers

encode_json = msgspec.json.Encoder(decimal_format="number").encode


def json_number(text: str) -> float | Decimal:
    """A JSON number with a fraction or an exponent: a float when one holds it, else a Decimal."""
    number = float(text)
    # Up to 15 significant digits (16 characters with the point) a double always holds.
    if len(text) <= 16 and "e" not in text and "E" not in text:
        return number
    if repr(number) == text:  # a float's own shortest form, as a client sent it
        return number
    exact = Decimal(text)
    if math.isfinite(number) and Decimal(repr(number)) == exact:
        return number
    return exact


# ---------------------------------------------------------------- a call


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
    headers: Mapping[str, str] | None = None  # instead of the JSON content type alone


# ---------------------------------------------------------------- answers and retries


class Response(Protocol):
    """What parsing and retry rules read of an answer (``httpx.Response`` has it)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # case-insensitive lookups

    @property
    def content(self) -> bytes: ...


def parse(response: Response, call: Call[T]) -> T:
    """The decoded answer, or the ``foreman.errors`` class the server's status stands for."""
    if response.status_code >= 400:
        raise error_of(response)
    try:
        return call.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise errors.ForemanError(
            f"Unexpected answer from {call.method} {call.path}: {exc}"
        ) from None


def error_of(response: Response) -> errors.ForemanError:
    """The exception for an error response (SPEC section 2 body, or plain text from a proxy)."""
    try:
        body: Any = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        text = response.content.decode(errors="replace").strip()[:200]
        body = {"error": f"HTTP {response.status_code}: {text}" if text else None}
    return errors.from_status(response.status_code, body)


# Answers of a proxy or a server whose database is down: the request was not carried out.
_RETRY_STATUSES = frozenset({502, 503, 504})


def error_retry_delay(
    call: Call[Any], *, not_sent: bool, attempt: int, retries: int
) -> float | None:
    """Seconds to wait before sending call again after a connection error; None: give up.

    A request that surely never reached the server may always go again; one that may have been
    carried out only if call is idempotent.
    """
    if attempt >= retries or not (not_sent or call.idempotent):
        return None
    return retry_delay_s(attempt)


class Retries:
    """The sends of one call: after each failed one, whether and when to send it again."""

    def __init__(self, call: Call[Any], retries: int) -> None:
        self.call = call
        self.retries = retries
        self.attempt = 0
        self.delay = 0.0  # seconds to wait before the next send

    def after_error(self, exc: Exception, *, not_sent: bool) -> None:
        """Count a send that got no answer; raise the TransportError when it may not go again."""
        delay = error_retry_delay(
            self.call, not_sent=not_sent, attempt=self.attempt, retries=self.retries
        )
        if delay is None:
            raise transport_error(exc, self.call) from exc
        self.attempt, self.delay = self.attempt + 1, delay

    def answered(self, response: Response) -> bool:
        """Whether response is the call's answer (else it goes again after ``delay``)."""
        delay = response_retry_delay(
            response, self.call, attempt=self.attempt, retries=self.retries
        )
        if delay is None:
            return True
        self.attempt, self.delay = self.attempt + 1, delay
        return False


def response_retry_delay(
    response: Response, call: Call[Any], *, attempt: int, retries: int
) -> float | None:
    """Seconds to wait before sending call again after response; None: this is the answer."""
    status = response.status_code
    if attempt >= retries or status < 429:
        return None
    if status == 429:
        # Refused before it ran (rate limit): any call may go again, after Retry-After.
        return max(retry_after_s(response), retry_delay_s(attempt))
    if status in _RETRY_STATUSES and call.idempotent:
        return retry_delay_s(attempt)
    return None


def retry_after_s(response: Response) -> float:
    """The Retry-After header in seconds (0 when absent or not a number), at most 30."""
    try:
        return min(max(float(response.headers.get("retry-after", "0")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0


def retry_delay_s(attempt: int) -> float:
    """Exponential backoff with jitter before retry number attempt (0-based): 0.1 s .. 2 s."""
    return min(0.1 * 2.0**attempt, 2.0) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter only


def transport_error(exc: Exception, call: Call[Any]) -> errors.TransportError:
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


# ---------------------------------------------------------------- httpx (the sync client)


def http_options(options: ClientOptions) -> dict[str, Any]:
    """Keyword arguments of the sync client's ``httpx.Client``."""
    return {
        "base_url": options.endpoint,
        "headers": default_headers(options),
        "timeout": httpx.Timeout(options.timeout_s, connect=min(options.timeout_s, 5.0)),
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
    }


# Failures that happen before the request reaches the server: always safe to send again.
_HTTPX_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def httpx_not_sent(exc: httpx.TransportError) -> bool:
    """Whether an httpx error surely struck before the request reached the server."""
    return isinstance(exc, _HTTPX_NOT_SENT)


def timeout_of(call: Call[Any]) -> httpx.Timeout | Any:
    """The call's own httpx timeout (long polls), else the client's."""
    if call.timeout_s is None:
        return httpx.USE_CLIENT_DEFAULT
    return httpx.Timeout(call.timeout_s, connect=min(call.timeout_s, 5.0))


# ---------------------------------------------------------------- run events (Server-Sent Events)

# A watch's read timeout: the server sends a comment every FOREMAN_EVENTS_HEARTBEAT_S (15 s by
# default), so a minute of silence is a dead connection, reconnected with Last-Event-ID.
WATCH_READ_TIMEOUT_S = 60.0
_RUN_EVENT = msgspec.json.Decoder(RunEvent)


def watch_headers(last_event_id: str | None) -> dict[str, str]:
    """The headers of a (re)connection of watch_run."""
    headers = {"accept": "text/event-stream"}
    if last_event_id:
        headers["last-event-id"] = last_event_id
    return headers


class SseReader:
    """Lines of a text/event-stream in, events out: a RunEvent per `data:` event, END for the
    stream's `end` event (the run has ended), None while an event is incomplete or a comment."""

    END = "end"

    def __init__(self) -> None:
        self._kind = ""
        self._data: list[str] = []

    def feed(self, line: str) -> RunEvent | str | None:
        line = line.rstrip("\r\n")
        if not line:
            kind, data = self._kind, "\n".join(self._data)
            self._kind, self._data = "", []
            if kind == self.END:
                return self.END
            if not data:
                return None
            try:
                return _RUN_EVENT.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise errors.ForemanError(f"Unexpected run event: {exc}") from None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        return None
