"""Pure-ASGI pieces: the request log, security headers, the request-body guard, CORS."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable
from typing import Any, cast

import msgspec
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPReceiveMessage,
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from foreman import errors
from foreman.logs import LineWriter
from foreman.server import auth, jsontext
from foreman.settings import Settings

logger = logging.getLogger("foreman.access")
_access_log = LineWriter(logger)

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# API answers are per caller and may carry secrets (the Redis password of /api/v1/config): no
# cache may keep them, and a JSON answer opened in a browser may run or embed nothing. The Swagger
# page under /docs loads its scripts and styles from a CDN, so it keeps its own defaults.
_API_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]
_DOCS_PREFIX = "/docs"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


# Request ids made here: a random prefix per process and a counter, unique without a uuid4 (and
# its getrandom system call) per request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
            return value
    return f"{_ID_PREFIX}{next(_id_counter):016x}".encode()


def _response_headers(original: Iterable[Any], request_id: bytes, path: str) -> list[Any]:
    headers: list[Any] = list(original)
    headers.append((b"x-request-id", request_id))
    headers.extend(_SECURITY_HEADERS)
    if not path.startswith(_DOCS_PREFIX):
        present = {name.lower() for name, _ in headers}
        headers.extend(h for h in _API_HEADERS if h[0] not in present)
    return headers


REQUEST_ID_STATE_KEY = "foreman_request_id"


async def add_response_headers(message: Message, scope: Scope) -> None:
    """before_send hook: x-request-id and the security headers on every HTTP answer.

    A hook rather than middleware, so that answers of no route (404, 405) get them too.
    """
    if message["type"] != "http.response.start":
        return
    state: dict[str, Any] = scope.get("state") or {}
    request_id = state.get(REQUEST_ID_STATE_KEY) or _request_id(scope)
    message["headers"] = _response_headers(message.get("headers", []), request_id, scope["path"])


class RequestLogMiddleware:
    """Echo or assign x-request-id and log one line per request.

    The line names the caller by organisation and key fingerprint, never by key.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        scope["state"][REQUEST_ID_STATE_KEY] = request_id
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            if logger.isEnabledFor(logging.INFO):
                _log_request(scope, status, start, request_id)


def _log_request(scope: Scope, status: int, start: float, request_id: bytes) -> None:
    caller = auth.caller_of(scope)
    elapsed_ms = (time.perf_counter() - start) * 1000
    message = f"{scope['method']} {scope['path']} {status} {elapsed_ms:.1f}ms"  # type: ignore[typeddict-item]
    extra: dict[str, Any] = {}
    if caller is not None:
        message = f"{message} org={caller.org_id} key={caller.fingerprint}"
        extra = {"org_id": caller.org_id, "key_fp": caller.fingerprint}
    _access_log.info(message, request_id.decode(errors="replace"), extra)


# ---------------------------------------------------------------- request bodies

_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


def json_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (a scalar is 0, ``[]`` is 1).

    Linear and in C: the strings are cut out (jsontext.outside_strings, a slice at a time), then
    all but the brackets, whose running sum is the depth. On 10 MB bodies of short strings it
    takes a few MB and 0.25-0.4 s (splitting the whole body at once took 210 MB and 0.5-1.1 s),
    against 1-3 s to store the same body. Text that is not JSON gets some number; the decoder
    rejects it afterwards.
    """
    brackets = _brackets_outside_strings(body)
    if not brackets:
        return 0
    return max(0, max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets))))


def _brackets_outside_strings(body: bytes) -> bytes:
    return b"".join(text.translate(None, _NOT_BRACKETS) for text in jsontext.outside_strings(body))


def too_deep(body: bytes, limit: int) -> bool:
    """Whether the JSON text nests deeper than limit (cheap when it has few brackets)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    return json_depth(body) > limit


class _BodyTooLargeError(Exception):
    pass


class _DisconnectedError(Exception):
    pass


async def _read_body(receive: Receive, *, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = cast("HTTPReceiveMessage", await receive())
        if message["type"] == "http.disconnect":
            raise _DisconnectedError
        chunk = message["body"]
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, status: int, body: dict[str, Any]) -> None:
    # The rest of the request may still be on the wire: close rather than parse it as a request.
    content = msgspec.json.encode(body)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"connection", b"close"),
        ],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": content, "more_body": False}
    await send(end)


BODY_STATE_KEY = "foreman_body"


class BodyLimitMiddleware:
    """Receive a request body whole before the app does, within limits of size and depth.

    - more than FOREMAN_MAX_BODY_BYTES (announced or actually sent, chunked too) -> 413
    - JSON nested deeper than FOREMAN_MAX_JSON_DEPTH -> 400, when the app reads the body
    - not received within FOREMAN_BODY_TIMEOUT_S -> 408, from the server's protocol
      (server/protocol.py), which sees the bytes arrive
    The app then reads the same bytes from memory: JsonRequest.body() takes them from the scope's
    state (BODY_STATE_KEY, with the refusal to raise instead, if any); a reader of receive() gets
    them replayed.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.max_depth = settings.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await _send_error(send, 413, self._too_large())
            return
        try:
            body = await _read_body(receive, limit=self.max_body_bytes)
        except _DisconnectedError:
            return  # nobody left to answer (or the protocol answered 408 and closed)
        except _BodyTooLargeError:
            await _send_error(send, 413, self._too_large())
            return
        # Too deep is a 400 of the body, raised when the app reads it: after authentication, so
        # a caller without a key still gets 401 first (SPEC section 3).
        refusal = self._too_deep() if too_deep(body, self.max_depth) else None
        scope["state"][BODY_STATE_KEY] = (body, refusal)
        await self.app(scope, _replay(body, receive, refusal=refusal), send)

    def _too_large(self) -> dict[str, Any]:
        message = f"Request body too large (limit {self.max_body_bytes} bytes)"
        return {"error": message, "code": "payload_too_large"}

    def _too_deep(self) -> errors.ValidationError:
        return errors.ValidationError(
            f"Validation failed: body: JSON nested deeper than {self.max_depth} levels",
            details=[{"loc": ["body"], "msg": f"nested deeper than {self.max_depth} levels"}],
        )


def received_body(scope: Scope) -> bytes | None:
    """The body BodyLimitMiddleware received for this request (None when it did not run)."""
    found: tuple[bytes, Exception | None] | None = scope["state"].get(BODY_STATE_KEY)
    if found is None:
        return None
    body, refusal = found
    if refusal is not None:
        raise refusal
    return body


def _replay(body: bytes, receive: Receive, *, refusal: Exception | None) -> Receive:
    """A receive that hands over the body read already (or raises refusal), then the disconnect."""
    pending = True

    async def replay() -> ReceiveMessage:
        nonlocal pending
        if pending:
            if refusal is not None:
                raise refusal
            pending = False
            event: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return event
        return await receive()

    return replay


# ---------------------------------------------------------------- CORS

CORS_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]
CORS_HEADERS = ["authorization", "content-type", "x-api-key", "x-org-id", "x-request-id"]


def cors_config(settings: Settings) -> CORSConfig | None:
    """CORS for the origins of CORS_ORIGIN (a comma list) only; none when it is unset.

    Keys travel in headers, never in cookies, so credentials are not allowed; "*" lets any
    origin call with a key it holds. Only the headers a client needs may be sent.
    """
    if not settings.cors_origin:
        return None
    origins = [o.strip() for o in settings.cors_origin.split(",") if o.strip()]
    return CORSConfig(
        allow_origins=origins,
        allow_methods=CORS_METHODS,  # type: ignore[arg-type]
        allow_headers=CORS_HEADERS,
        allow_credentials=False,
        expose_headers=["x-request-id", "retry-after"],
        max_age=600,
    )
