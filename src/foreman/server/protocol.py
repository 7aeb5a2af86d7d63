"""uvicorn's httptools protocol with the two limits it lacks, and one write per response.

Measured on uvicorn 0.54 + httptools 0.9 (docs/security.md): a client may send request headers
without end (200 MiB of one header grew the server process by 290 MB), and a connection that sends
nothing, or trickles its headers, is never closed (uvicorn's keep-alive timer runs only after a
response). This subclass refuses headers over ``max_header_bytes`` with 431 and closes a
connection whose request headers are not complete ``header_timeout_s`` after the request (or the
connection) began. A request body not complete ``body_timeout_s`` after its first incomplete chunk
gets 408 here too: a timer armed only when a body is actually still on its way costs nothing on
the usual request, whose body arrives with its headers, where a timeout around the app's body
read cost every POST an asyncio timeout context. Body sizes are bounded by the app
(server/middleware.py).

uvicorn writes a response's head and its body with two write(2) calls. System calls are this
kind of machine's biggest cost per request (py-spy --native on `foreman bench`: 38 % of a server
process's samples in write), so each response cycle writes through a ``_CoalescingTransport``
that holds the head until the first body bytes and sends both at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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
    """HttpToolsProtocol that bounds the size and the duration of each request's header block."""

    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._awaiting_body = False  # headers complete, message not yet
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        awaiting = self._awaiting_headers
        super().data_received(data)
        # Only bytes of a header block that is still incomplete count: a chunk that completes the
        # headers may carry the body, which the app limits.
        if awaiting and self._awaiting_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"Request headers larger than {self.max_header_bytes} bytes")
        elif self._awaiting_body and self._header_timer is None:
            # The chunk ended inside a body: the rest has body_timeout_s to arrive.
            self._arm(self.body_timeout_s, self._body_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._awaiting_body = True
        self._disarm()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            coalescing = _CoalescingTransport(self.transport)
            cycle.transport = coalescing  # type: ignore[assignment]
            cycle.on_response = functools.partial(_flushed_first, coalescing, cycle.on_response)

    def on_message_complete(self) -> None:
        self._awaiting_body = False
        self._disarm()
        super().on_message_complete()

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
            self._refuse(408, f"Request headers not received within {self.header_timeout_s:g} s")
        else:
            self.transport.close()  # silent connection: nobody to answer

    def _body_timed_out(self) -> None:
        self._header_timer = None
        if self.pipeline and self._awaiting_body:
            self._arm(self.body_timeout_s, self._body_timed_out)  # as in _headers_timed_out
            return
        if self._awaiting_body and not self.transport.is_closing():
            message = f"Request body not received within {self.body_timeout_s:g} s"
            self._refuse(408, message, code="request_timeout", app_waiting=True)

    def _refuse(
        self, status: int, message: str, *, code: str = "bad_request", app_waiting: bool = False
    ) -> None:
        self._disarm()
        cycle = self.cycle
        if app_waiting:
            # The request's app waits for the rest of its body and has answered nothing yet; the
            # close below ends its wait with a disconnect.
            answer = cycle is not None and not cycle.response_started
        else:
            # Between requests: no answer over one the app of the previous request is writing.
            answer = cycle is None or cycle.response_complete
        if answer:
            body = msgspec.json.encode({"error": message, "code": code})
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\nx-content-type-options: nosniff\r\n"
                b"cache-control: no-store\r\n\r\n"
            ) % (status, _REASONS[status], len(body))
            self.transport.write(head + body)
        self.transport.close()


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
