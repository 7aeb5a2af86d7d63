"""uvicorn's httptools protocol with the limits it lacks, and one write per response.

It refuses a request header block over ``max_header_bytes`` (431), closes a connection whose
headers are not complete ``header_timeout_s`` after the request began (408), answers 408 to a body
not complete ``body_timeout_s`` after its first incomplete chunk, and writes each response's head
and first body bytes with one write(2). It drives uvicorn's undocumented per-request state
(``cycle``, ``pipeline``, the parser callbacks), so uvicorn is pinned below its next minor release
and tests/unit/test_adapters.py checks what it uses; measurements: benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from foreman import errors
from foreman.server import edge
from foreman.server.errors import HeadersTimeoutError, HeadersTooLargeError, error_body
from foreman.settings import Settings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_CONTINUE = b"HTTP/1.1 100 "


class _CoalescingTransport:
    """One response's view of the connection: its head waits for its first body bytes.

    The head also goes out on ``flush`` (the response ended without body bytes: HEAD, or an
    app that stopped mid-way) and before ``close``. ``100 Continue`` is never held: the client
    waits for it before sending the body.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started and not data.startswith(_CONTINUE):
            self._started = True
            self._head = data
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _flushed_first(transport: _CoalescingTransport, on_response: Callable[[], None]) -> None:
    # A response without body bytes (HEAD) still has its head waiting.
    transport.flush()
    on_response()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds the size and the duration of each request's header block.

    The head of each response waits for its first body bytes (``_CoalescingTransport``).
    """

    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True  # the next bytes are (still) those of a header block
        self._awaiting_body = False  # headers complete, message not yet
        self._header_bytes = 0  # of the header block, in reads before the current one
        self._read_bytes = 0  # of the current read
        self._read_awaiting = True  # whether the current read began in a header block
        self._mid_read = False  # the request began after another in the same read
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_start = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        awaiting = self._read_awaiting = self._awaiting_headers
        self._read_bytes = len(data)
        super().data_received(data)
        # A read that leaves the header block incomplete counts whole; the read that completes it
        # is measured in on_headers_complete (it may carry the body, which the app limits), which
        # sets _read_bytes to 0.
        if (
            awaiting
            and self._awaiting_headers
            and self._read_bytes
            and not self.transport.is_closing()
        ):
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(HeadersTooLargeError(self._too_large_message()))
        elif self._awaiting_body and self._header_timer is None:
            # The chunk ended inside a body: the rest has body_timeout_s to arrive.
            self._arm(self.body_timeout_s, self._body_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        # Part of its header block may be in a read counted for nobody: measured when complete.
        self._mid_read = not (self._read_awaiting and self._read_bytes)
        self._request_start = time.perf_counter()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._awaiting_body = True
        self._disarm()
        # Counted only when this read and those before could hold too much: one sum per large read.
        if (
            self._mid_read or self._header_bytes + self._read_bytes > self.max_header_bytes
        ) and self._header_block_size() > self.max_header_bytes:
            # The app answers it (server/edge.py), in turn after any pipelined request before it.
            self.scope[edge.REFUSAL_KEY] = HeadersTooLargeError(self._too_large_message())  # type: ignore[literal-required]
        self._read_bytes = 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            coalescing = _CoalescingTransport(self.transport)
            cycle.transport = coalescing  # type: ignore[assignment]
            cycle.on_response = functools.partial(_flushed_first, coalescing, cycle.on_response)

    def on_message_complete(self) -> None:
        self._awaiting_body = False
        self._awaiting_headers = True  # the next request's first read counts too
        self._header_bytes = 0
        self._disarm()
        super().on_message_complete()

    def _header_block_size(self) -> int:
        # The request line and each "name: value" line with its CRLF, as received.
        return len(self.url) + 12 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large_message(self) -> str:
        return f"Request headers larger than {self.max_header_bytes} bytes"

    def _arm(
        self, delay_s: float | None = None, callback: Callable[[], None] | None = None
    ) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(
            self.header_timeout_s if delay_s is None else delay_s,
            self._headers_timed_out if callback is None else callback,
        )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self.pipeline:
            # Earlier pipelined requests still run and reading is paused for them: the client is
            # not late, and no answer may go out before theirs.
            self._arm()
            return
        if self._header_bytes or getattr(self, "url", None) or self.headers:
            message = f"Request headers not received within {self.header_timeout_s:g} s"
            self._refuse(HeadersTimeoutError(message))
        else:
            self.transport.close()  # silent connection: nobody to answer

    def _body_timed_out(self) -> None:
        self._header_timer = None
        if self.pipeline and self._awaiting_body:
            self._arm(self.body_timeout_s, self._body_timed_out)  # as in _headers_timed_out
            return
        if self._awaiting_body and not self.transport.is_closing():
            message = f"Request body not received within {self.body_timeout_s:g} s"
            self._refuse(errors.RequestTimeoutError(message), app_waiting=True)

    def _refuse(self, error: errors.ForemanError, *, app_waiting: bool = False) -> None:
        self._disarm()
        cycle = self.cycle
        if app_waiting:
            # The request's app waits for the rest of its body and has answered nothing yet; the
            # close below ends its wait with a disconnect, and the edge logs this answer.
            answer = cycle is not None and not cycle.response_started
            if answer:
                cycle.scope[edge.REFUSAL_KEY] = error  # type: ignore[literal-required]
        else:
            # Between requests: no answer over one the app of the previous request is writing.
            answer = cycle is None or cycle.response_complete
            if answer:
                self._log_refusal(error)
        if answer:
            status = error.status_code
            body = error_body(error)
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\nx-content-type-options: nosniff\r\n"
                b"cache-control: no-store\r\n\r\n"
            ) % (status, _REASONS[status], len(body))
            self.transport.write(head + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a request httptools could not parse: it gets its access line too.
        self._disarm()
        self._log_refusal(errors.ClientError(msg))
        super().send_400_response(msg)

    def _log_refusal(self, error: errors.ForemanError) -> None:
        # No app ran for this request (its headers never completed): its access line is written
        # here, with what of the request line and headers had arrived.
        if not edge.logger.isEnabledFor(logging.INFO):
            return
        try:
            method = self.parser.get_method().decode("ascii", "replace")
        except Exception:  # the request line was not complete
            method = "-"
        url = getattr(self, "url", b"") or b""
        try:
            path = urllib.parse.unquote(httptools.parse_url(url).path.decode("latin-1"))
        except httptools.HttpParserInvalidURLError:
            path = url.decode("latin-1") or "-"
        request_id = edge.client_request_id(self.headers or ()) or edge.new_request_id()
        start = self._request_start or time.perf_counter()
        edge.log_request(method, path, error.status_code, start, request_id)


def limited_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, with the limits of settings."""
    return type(
        "ForemanHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
        },
    )
