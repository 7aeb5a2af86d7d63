"""Pure-ASGI pieces: the request-body guard and CORS (the rest of the edge is server/edge.py)."""

from __future__ import annotations

import itertools
from typing import cast

from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPReceiveMessage,
    HTTPRequestEvent,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from foreman import errors
from foreman.server import jsontext
from foreman.server.context import CONTEXT_KEY, RequestContext
from foreman.server.edge import send_error
from foreman.settings import Settings

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
UI_PREFIX = "/ui/"
FORM = b"application/x-www-form-urlencoded"


# ---------------------------------------------------------------- request bodies

_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


def json_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (a scalar is 0, ``[]`` is 1).

    Linear and in C: the strings are cut out (jsontext.outside_strings, a slice at a time), then
    all but the brackets, whose running sum is the depth: cheaper than decoding the body
    (benchmarks/README.md, "Notes moved from server/"). Text that is not JSON gets some number;
    the decoder rejects it afterwards anyway.
    """
    brackets = _brackets_outside_strings(body)
    if not brackets:
        return 0
    return max(0, max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets))))


def _brackets_outside_strings(body: bytes) -> bytes:
    if len(body) <= jsontext.KEPT_MAX:  # kept for the numbers' check of the same body
        return jsontext.text_outside_strings(body).translate(None, _NOT_BRACKETS)
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


def _body_headers(scope: Scope) -> tuple[int | None, bytes | None]:
    """Content-Length (None when absent or not a number) and Content-Type, in one pass."""
    length = content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif name == b"content-type":
            content_type = value
    return length, content_type


# Content-Types of nearly every request, accepted without parsing them.
_PLAIN_JSON = frozenset({None, b"application/json"})


def is_json(content_type: bytes | None) -> bool:
    """Whether a request's Content-Type is JSON: application/json or application/*+json, any
    parameters; a missing one counts as JSON, as the original API took such bodies."""
    if not content_type:
        return True
    media_type = content_type.partition(b";")[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


class BodyLimitMiddleware:
    """Receive a request body whole before the app does, within limits of size and depth.

    - more than FOREMAN_MAX_BODY_BYTES (announced or actually sent, chunked too) -> 413
    - JSON nested deeper than FOREMAN_MAX_JSON_DEPTH -> 400, when the app reads the body
    - a Content-Type that is not JSON -> 415, when the app reads the body
    - not received within FOREMAN_BODY_TIMEOUT_S -> 408, from the server's protocol
      (server/protocol.py), which sees the bytes arrive
    The app then reads the same bytes from memory: JsonRequest.body() takes them from the request
    context (server/context.py, with the refusal to raise instead, if any); a reader of receive()
    gets them replayed.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.max_depth = settings.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        length, content_type = _body_headers(scope)
        if length is not None and length > self.max_body_bytes:
            await send_error(send, self._too_large(), close=True)
            return
        try:
            body = await _read_body(receive, limit=self.max_body_bytes)
        except _DisconnectedError:
            return  # nobody left to answer (or the protocol answered 408 and closed)
        except _BodyTooLargeError:
            await send_error(send, self._too_large(), close=True)
            return
        # Not JSON (415) and too deep (400) are refusals of the body, raised when the app reads
        # it: after authentication, so a caller without a key still gets 401 first (SPEC 3).
        refusal = None
        if content_type not in _PLAIN_JSON or too_deep(body, self.max_depth):
            refusal = self._refusal(content_type, body, scope["path"])
        state = scope["state"]
        state[CONTEXT_KEY] = state[CONTEXT_KEY].with_body(body, refusal)
        await self.app(scope, _replay(body, receive, refusal=refusal), send)

    def _refusal(
        self, content_type: bytes | None, body: bytes, path: str
    ) -> errors.ClientError | None:
        if path.startswith(UI_PREFIX) and content_type == FORM:
            return None  # the dashboard's forms (server/ui/pages.py)
        if not is_json(content_type):
            shown = (content_type or b"").decode("latin-1")[:100]
            return errors.UnsupportedMediaTypeError(
                f"Unsupported content-type {shown!r}: the body must be JSON (application/json)"
            )
        return self._too_deep() if too_deep(body, self.max_depth) else None

    def _too_large(self) -> errors.PayloadTooLargeError:
        return errors.PayloadTooLargeError(
            f"Request body too large (limit {self.max_body_bytes} bytes)"
        )

    def _too_deep(self) -> errors.ValidationError:
        return errors.ValidationError(
            f"Validation failed: body: JSON nested deeper than {self.max_depth} levels",
            details=[{"loc": ["body"], "msg": f"nested deeper than {self.max_depth} levels"}],
        )


def received_body(scope: Scope) -> bytes | None:
    """The body BodyLimitMiddleware received for this request (None when it did not run)."""
    found: RequestContext = scope["state"][CONTEXT_KEY]
    if found.body_error is not None:
        raise found.body_error
    return found.body


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
CORS_HEADERS = [
    "authorization",
    "content-type",
    "x-api-key",
    "x-org-id",
    "x-request-id",
    "traceparent",
]


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
