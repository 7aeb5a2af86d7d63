"""Contract tests of the adapters over other libraries' internals: each fails loudly, naming what
changed, when a new Litestar, uvicorn or Python no longer has what the adapter relies on.

- server/responses.py overrides ``Response.__init__`` and ``Response.to_asgi_response`` (Litestar 2;
  Litestar 3 changes the latter's signature).
- server/protocol.py subclasses uvicorn's ``HttpToolsProtocol`` and drives its per-request state.
- server/runner.py overrides uvicorn's ``Server.shutdown`` to tell the app first (tests/
  integration/test_run_events.py proves the whole: a shutdown ends open streams at once).
- server/deps.py and server/errors.py read a route handler's parsed signature.
- logs.py turns off the caller lookup with ``logging._srcfile`` (the logging HOWTO's advice).
- store/db.py overrides asyncpg's ``Connection._do_execute`` (wrapping its executor) and calls
  ``Connection._execute``; it writes to ``Connection._transport`` (tests/integration/
  test_pgbouncer.py proves the whole against PostgreSQL and PgBouncer).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Annotated, Any

import asyncpg
import msgspec
import pytest
import uvicorn
from litestar import Litestar, Response, get, post
from litestar.params import JSONBody, QueryParameter
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from foreman.logs import PlainFormatter
from foreman.server.edge import REFUSAL_KEY
from foreman.server.protocol import LimitedHttpToolsProtocol, _CoalescingTransport
from foreman.server.responses import JsonResponse


def parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


# ---------------------------------------------------------------- Litestar Response


def test_response_init_takes_what_json_response_takes():
    assert parameters(JsonResponse.__init__) == parameters(Response.__init__)


def test_response_to_asgi_response_takes_what_the_override_takes():
    # Litestar 3 drops ``app`` and renames the encoded headers: the override must be redone then.
    assert parameters(JsonResponse.to_asgi_response) == parameters(Response.to_asgi_response)


def test_response_init_sets_the_attributes_the_short_path_sets():
    # JsonResponse.__init__ sets these itself instead of calling Response.__init__.
    assert set(Response.__slots__) == {
        "background",
        "content",
        "cookies",
        "encoding",
        "headers",
        "media_type",
        "response_type_encoders",
        "status_code",
    }
    ours, theirs = JsonResponse({"a": 1}, status_code=201), Response({"a": 1}, status_code=201)
    for name in Response.__slots__:
        assert getattr(ours, name) == getattr(theirs, name), name


# ---------------------------------------------------------------- Litestar handler signatures


def test_a_handlers_parsed_signature_names_its_body_and_parameter_aliases():
    # JsonRequest.json() finds the body type, server/errors.py the wire name of a parameter.
    @post("/x")
    async def handler(
        data: JSONBody[dict[str, int]],
        include_all: Annotated[bool, QueryParameter(name="includeAll")] = False,
    ) -> None:
        return None

    Litestar([handler])  # resolves the signature
    found = handler.parsed_fn_signature.parameters
    assert msgspec.json.Decoder(found["data"].annotation).decode(b'{"a": 1}') == {"a": 1}
    assert found["include_all"].kwarg_definition.name == "includeAll"  # type: ignore[union-attr]


def test_litestar_from_scope_returns_the_app():
    @get("/")
    async def root() -> None:
        return None

    app = Litestar([root])
    assert Litestar.from_scope({"litestar_app": app}) is app  # type: ignore[typeddict-item]


# ---------------------------------------------------------------- uvicorn's httptools protocol

# What LimitedHttpToolsProtocol overrides and calls on its base class.
PROTOCOL_METHODS = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "on_message_begin": ["self"],
    "on_headers_complete": ["self"],
    "on_message_complete": ["self"],
    "send_400_response": ["self", "msg"],
}


def test_server_shutdown_is_the_coroutine_the_runner_overrides():
    shutdown = uvicorn.Server.shutdown
    assert inspect.iscoroutinefunction(shutdown)
    assert [p.name for p in inspect.signature(shutdown).parameters.values()] == ["self", "sockets"]


@pytest.mark.parametrize(("name", "expected"), PROTOCOL_METHODS.items())
def test_protocol_methods_have_the_signatures_we_override(name, expected):
    method = getattr(httptools_impl.HttpToolsProtocol, name)
    assert [p.name for p in inspect.signature(method).parameters.values()] == expected


def test_the_cycle_takes_a_transport_and_an_on_response_callback():
    names = inspect.signature(httptools_impl.RequestResponseCycle.__init__).parameters
    assert {"scope", "transport", "on_response"} <= set(names)


class Transport(asyncio.Transport):
    """A connection's transport in memory: what the server writes, and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _served(app: Any, *requests: bytes) -> tuple[LimitedHttpToolsProtocol, Transport]:
    config = Config(app=app, lifespan="off", log_config=None)
    config.load()
    protocol = LimitedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    for request in requests:
        protocol.data_received(request)
        for _ in range(20):  # the app runs in tasks of this loop
            await asyncio.sleep(0)
    protocol.connection_lost(None)
    return protocol, transport


async def json_app(scope: Any, receive: Any, send: Any) -> None:
    body = msgspec.json.encode({"method": scope["method"]})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def test_the_protocol_state_we_drive_is_there_per_request():
    protocol, transport = await _served(json_app, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    # Attributes read or replaced by LimitedHttpToolsProtocol.
    assert isinstance(protocol.cycle, httptools_impl.RequestResponseCycle)
    assert isinstance(protocol.cycle.transport, _CoalescingTransport)
    assert protocol.cycle.response_started
    assert protocol.cycle.response_complete
    assert protocol.cycle.scope["method"] == "GET"
    assert protocol.pipeline is not None
    assert protocol.url == b"/"
    assert protocol.headers == [(b"host", b"x")]
    # One write for head and body: the head waited for the body.
    (written,) = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b'{"method":"GET"}')


async def test_a_head_response_is_written_at_once_without_its_body():
    _, transport = await _served(json_app, b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n")
    (written,) = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b"\r\n\r\n")  # uvicorn leaves out the body of a HEAD


async def test_a_header_block_over_the_limit_in_one_read_is_refused():
    request = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
    protocol, _ = await _served(json_app, request)
    # The protocol hands the refusal to the app in the scope (the app is the edge in the server).
    assert protocol.cycle.scope[REFUSAL_KEY].status_code == 431  # type: ignore[literal-required]


# ---------------------------------------------------------------- logging


def test_logging_srcfile_turns_off_the_caller_lookup():
    saved = logging._srcfile  # type: ignore[attr-defined]
    records: list[logging.LogRecord] = []
    log = logging.getLogger("test-adapters-srcfile")
    log.propagate = False
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        logging._srcfile = None  # type: ignore[attr-defined]
        log.warning("x")
    finally:
        logging._srcfile = saved  # type: ignore[attr-defined]
        log.removeHandler(handler)
    assert records[0].funcName != "test_logging_srcfile_turns_off_the_caller_lookup"


def test_plain_formatter_knows_its_format():
    formatter = PlainFormatter("%(message)s")
    assert formatter.fmt == "%(message)s"
    assert formatter.datefmt is None


# ---------------------------------------------------------------- asyncpg Connection


def test_asyncpg_do_execute_takes_an_executor_of_statement_and_timeout():
    assert [p[0] for p in parameters(asyncpg.Connection._do_execute)] == [
        "self",
        "query",
        "executor",
        "timeout",
        "retry",
        "ignore_custom_codec",
        "record_class",
    ]
    source = inspect.getsource(asyncpg.Connection._do_execute)
    assert "await executor(stmt, None)" in source
    assert "await executor(stmt, timeout)" in source


def test_asyncpg_execute_without_arguments_and_execute_with_a_status():
    assert [p[0] for p in parameters(asyncpg.Connection._execute)][:5] == [
        "self",
        "query",
        "args",
        "limit",
        "timeout",
    ]
    assert "return_status" in inspect.signature(asyncpg.Connection._execute).parameters
    assert "self._transport = transport" in inspect.getsource(asyncpg.Connection.__init__)
