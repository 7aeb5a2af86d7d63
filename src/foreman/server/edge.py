"""Around every HTTP request: its id, HEAD, the security headers and the one access-log line.

It wraps all of Litestar (server/app.py's ForemanApp), so answers of no route (404, 405), of
authentication (401, 403, 429) and of the exception handlers are seen, logged and given their
headers like any other. A request the protocol refused (server/protocol.py) is answered or
logged here too, from its REFUSAL_KEY in the scope.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from litestar.types import Message, Receive, Scope, Send

from foreman import errors
from foreman.logs import LineWriter, printable
from foreman.server import params
from foreman.server.context import CONTEXT_KEY, Caller, RequestContext
from foreman.server.errors import error_body
from foreman.server.metrics import UNMATCHED, ServerMetrics

logger = logging.getLogger("foreman.access")
_access_log = LineWriter(logger)

# The protocol's refusal of a request, in the request's ASGI scope: a ForemanError to answer with
# (its headers were too large), or, once it answered it itself (its body was late), to log.
REFUSAL_KEY = "foreman.refusal"
# Logged for a request whose client went away before any answer (nginx's convention).
CLIENT_CLOSED = 499

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

# Request ids made here: a random prefix per process and a counter, unique without a uuid4 (and
# its getrandom system call) per request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)
_VISIBLE_ASCII = bytes(range(0x20, 0x7F))


def new_request_id() -> bytes:
    """A request id of this process."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}".encode()


def client_request_id(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The client's x-request-id when it is 1-128 printable ASCII characters (it is echoed in a
    header and written to the log), else None."""
    for name, value in headers:
        if name == b"x-request-id":
            ok = 0 < len(value) <= 128 and not value.translate(None, _VISIBLE_ASCII)
            return value if ok else None
    return None


def _response_headers(original: Iterable[Any], request_id: bytes, path: str) -> list[Any]:
    headers: list[Any] = list(original)
    headers.append((b"x-request-id", request_id))
    headers.extend(_SECURITY_HEADERS)
    if not path.startswith(_DOCS_PREFIX):
        present = {name.lower() for name, _ in headers}
        headers.extend(h for h in _API_HEADERS if h[0] not in present)
    return headers


async def handle(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
    metrics: ServerMetrics | None = None,
) -> None:
    """Run one HTTP request through app, then log it (one line, the status the client got) and
    count it in metrics (by its route template, never the raw path)."""
    start = time.perf_counter()
    request_id = client_request_id(scope["headers"]) or new_request_id()
    state = scope.setdefault("state", {})
    state[CONTEXT_KEY] = RequestContext(request_id)
    method: str = scope["method"]  # type: ignore[typeddict-item]
    path = scope["path"]
    head = method == "HEAD"
    app_scope = scope
    if head:
        # Answered as its GET, without the body. A copy: the server reads the method of its own
        # scope to leave out the body on the wire too.
        app_scope = {**scope, "method": "GET"}  # type: ignore[assignment]
    status = 0

    async def send_answer(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            message["headers"] = _response_headers(message.get("headers", ()), request_id, path)
        elif head and message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    try:
        refusal: errors.ForemanError | None = scope.get(REFUSAL_KEY)  # type: ignore[assignment]
        if refusal is not None:
            # The rest of the request may still be on the wire: close, do not parse it as a request.
            await send_error(send_answer, refusal, close=True)
        elif (malformed := params.malformed_path(scope.get("raw_path"))) is not None:
            # Before routing: the router would collapse the segment and reach another endpoint.
            await send_error(send_answer, malformed)
        else:
            await app(app_scope, receive, send_answer)
    finally:
        if metrics is not None:
            route: str = app_scope.get("path_template", UNMATCHED)
            caller = state[CONTEXT_KEY].caller
            metrics.request(method, route, status or _unanswered_status(scope), start, caller)
        if logger.isEnabledFor(logging.INFO):
            context: RequestContext = state[CONTEXT_KEY]
            status = status or _unanswered_status(scope)
            log_request(method, path, status, start, request_id, context.caller)


def _unanswered_status(scope: Scope) -> int:
    # The app sent nothing: the protocol answered for it (a late body), or the client left.
    refused: errors.ForemanError | None = scope.get(REFUSAL_KEY)  # type: ignore[assignment]
    return CLIENT_CLOSED if refused is None else refused.status_code


async def send_error(send: Send, error: errors.ForemanError, *, close: bool = False) -> None:
    """Answer error's status with its JSON body, outside Litestar."""
    body = error_body(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def log_request(
    method: str,
    path: str,
    status: int,
    start: float,
    request_id: bytes,
    caller: Caller | None = None,
) -> None:
    """Write the access line of a request (control characters of the request escaped)."""
    elapsed_ms = (time.perf_counter() - start) * 1000
    if not (path.isprintable() and "\\" not in path):  # printable() inline: the usual path is clean
        path = printable(path)
    if not method.isalpha():  # a server's methods are tokens: letters
        method = printable(method)
    message = f"{method} {path} {status} {elapsed_ms:.1f}ms"
    extra: dict[str, Any] = {}
    if caller is not None:
        message = f"{message} org={caller.org_id} key={caller.fingerprint}"
        extra = {"org_id": caller.org_id, "key_fp": caller.fingerprint}
    _access_log.info(message, request_id.decode("ascii"), extra)
