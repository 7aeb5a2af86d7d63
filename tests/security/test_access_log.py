"""The access log: one line per request with the status the client received, nothing raw from
the request (docs/security.md, "Request log")."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from foreman.logs import configure_logging
from tests.api.helpers import API
from tests.conftest import HEADERS_A, KEY_A

ACCESS = "foreman.access"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ACCESS]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", f"{API}/runs", HEADERS_A, 200),
        ("GET", f"{API}/runs", {}, 401),
        ("GET", f"{API}/runs", {"x-api-key": "garbage"}, 401),
        ("GET", f"{API}/runs", {**HEADERS_A, "x-org-id": "other"}, 403),
        ("GET", f"{API}/runs/nope", HEADERS_A, 404),
        ("GET", f"{API}/no-such-route", HEADERS_A, 404),
        ("GET", "/nowhere", {}, 404),
        ("DELETE", f"{API}/runs", HEADERS_A, 405),
        ("HEAD", "/health", {}, 200),
        ("HEAD", f"{API}/runs", HEADERS_A, 200),
        ("HEAD", f"{API}/runs", {}, 401),
    ],
)
async def test_one_line_per_request_with_the_status_sent(
    app_with, caplog, method, path, headers, status
):
    caplog.set_level(logging.INFO, logger=ACCESS)
    async with app_with() as client:
        caplog.clear()
        response = await client.request(method, path, headers=headers)
        assert response.status_code == status
        lines = access_lines(caplog)
    assert len(lines) == 1, lines
    assert re.match(rf"{method} {re.escape(path)} {status} \d+\.\dms", lines[0]), lines[0]


async def test_a_413_before_the_app_is_logged_once_as_413(app_with, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    async with app_with(max_body_bytes=2048) as client:
        caplog.clear()
        response = await client.post(
            f"{API}/runs", json={"inputData": "x" * 4096}, headers=HEADERS_A
        )
        assert response.status_code == 413
        lines = access_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"POST {API}/runs 413 ")


# ---------------------------------------------------------------- nothing raw from the request


@contextlib.contextmanager
def configured(*, json_lines: bool) -> Iterator[io.StringIO]:
    """configure_logging's real set-up on a stream of the test's own; pytest's handlers kept."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level, saved_stderr = root.handlers[:], root.level, sys.stderr
    root.handlers[:] = []
    sys.stderr = stream
    try:
        configure_logging("INFO", json_lines=json_lines)
        yield stream
    finally:
        for handler in root.handlers:
            handler.close()
        sys.stderr = saved_stderr
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


FORGED = "FORGED 200 0.1ms org=victim"
HOSTILE = [
    # (path as sent, percent-encoded; what the path must look like in the line)
    (f"{API}/runs/x%0a2026-01-01 00:00:00,000 INFO foreman.access: {FORGED}", "\\n"),
    (f"{API}/runs/x%0d%0a{FORGED}", "\\r\\n"),
    (f"{API}/runs/x%00y", "\\x00"),
    (f"{API}/runs/x%1b[2Jy", "\\x1b"),
    (f"{API}/runs/x%5cny", "\\\\n"),  # a real backslash stays distinguishable from an escape
]


@pytest.mark.parametrize("json_lines", [False, True])
@pytest.mark.parametrize(("path", "shown"), HOSTILE)
async def test_control_characters_of_the_path_are_escaped(app_with, json_lines, path, shown):
    async with app_with() as client:
        with configured(json_lines=json_lines) as stream:
            response = await client.get(path, headers=HEADERS_A)
            logging.getLogger().handlers[0].flush()
    assert response.status_code == 404
    lines = [line for line in stream.getvalue().splitlines() if ACCESS in line]
    assert len(lines) == 1, stream.getvalue()
    message = json.loads(lines[0])["message"] if json_lines else lines[0]
    assert message.isprintable(), message
    assert shown in message, message
    assert "\r" not in stream.getvalue()
    assert len(stream.getvalue().splitlines()) == 1


@pytest.mark.parametrize("json_lines", [False, True])
@pytest.mark.parametrize("request_id", ["a\x1b[2Jb", "a\x00b", "a\x7fb"])
async def test_a_request_id_with_control_characters_is_not_echoed(app_with, json_lines, request_id):
    async with app_with() as client:
        with configured(json_lines=json_lines) as stream:
            response = await client.get(
                f"{API}/runs", headers={"x-api-key": KEY_A, "x-request-id": request_id}
            )
            logging.getLogger().handlers[0].flush()
    assert response.status_code == 200
    assigned = response.headers["x-request-id"]
    assert assigned != request_id
    assert assigned.isprintable()
    (line,) = stream.getvalue().splitlines()
    assert line.isprintable(), line
    logged = json.loads(line)["request_id"] if json_lines else line.rsplit("request_id=", 1)[1]
    assert logged == assigned


async def test_a_printable_request_id_is_echoed_and_logged(app_with):
    async with app_with() as client:
        with configured(json_lines=False) as stream:
            response = await client.get(
                f"{API}/runs", headers={"x-api-key": KEY_A, "x-request-id": "abc-123"}
            )
            logging.getLogger().handlers[0].flush()
    assert response.headers["x-request-id"] == "abc-123"
    assert stream.getvalue().rstrip("\n").endswith(" request_id=abc-123")


def test_other_loggers_escape_request_data_too():
    # An error log that names the request (server/errors.py) goes through the same formatter.
    with configured(json_lines=False) as stream:
        logging.getLogger("foreman.server.errors").error("unhandled error on %s", "/x\nFORGED")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("unhandled error on /x\\nFORGED")


async def test_a_client_gone_before_any_answer_is_logged_499(app_with, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}  # gone while its body was awaited

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{API}/runs",
        "raw_path": f"{API}/runs".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"x-api-key", KEY_A.encode()), (b"content-length", b"100")],
        "server": ("127.0.0.1", 3000),
        "client": ("127.0.0.1", 50000),
        "state": {},
    }
    async with app_with() as client:
        caplog.clear()
        await client.app(scope, receive, send)
        lines = access_lines(caplog)
    assert sent == []
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"POST {API}/runs 499 ")
