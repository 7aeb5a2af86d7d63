"""Responses through the coalescing transport (server/protocol.py), on raw sockets to a live server.

Each response's head waits for its first body bytes so both go out in one write(2). What must
still hold: a response without body bytes (HEAD) or one that closes the connection sends its
head at once, ``100 Continue`` is never held back, and every response arrives complete.
A HEAD is answered as its GET would be, without the body.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.integration.live_server import ServerProcess, server_env

KEY = b"x-api-key: test-api-key\r\n"
PROMPTLY_S = 2.0


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = server_env(
        FOREMAN_DATABASE_URL=database_url,
        FOREMAN_AUTO_MIGRATE="false",
        FOREMAN_DB_POOL_MIN="1",
        FOREMAN_DB_POOL_MAX="3",
        FOREMAN_LOG_LEVEL="WARNING",
        FOREMAN_SWEEP_INTERVAL_S="60",  # no sweeper writes while a test counts the server's
    )
    process = ServerProcess(tmp_path_factory.mktemp("protocol"), env=env).start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def sock(server: ServerProcess) -> Iterator[socket.socket]:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=PROMPTLY_S)
    connection.settimeout(PROMPTLY_S)
    try:
        yield connection
    finally:
        connection.close()


class Reader:
    """HTTP/1.1 responses off one connection; a recv that times out fails the test."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed; received so far: {self.buffer!r}"
        self.buffer += chunk

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines)
        return int(status_line.split(" ")[1]), headers

    def body(self, headers: dict[str, str]) -> bytes:
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        return status, headers, self.body(headers)


def test_a_head_request_gets_its_head_at_once_and_the_connection_goes_on(sock):
    reader = Reader(sock)
    sock.sendall(b"HEAD /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
    started = time.monotonic()
    status, headers = reader.head()  # no body bytes follow: the head must not wait for any
    assert time.monotonic() - started < PROMPTLY_S
    assert status == 200
    assert int(headers["content-length"]) > 0  # the length of the GET body, not sent
    assert headers["content-type"] == "application/json"
    assert "close" not in headers.get("connection", "")

    sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
    status, _, body = reader.response()
    assert status == 200
    assert json.loads(body)["status"] == "healthy"
    assert reader.buffer == b""  # the HEAD answer carried no body bytes


def test_a_head_request_that_closes_the_connection_gets_its_head(sock):
    reader = Reader(sock)
    sock.sendall(b"HEAD /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    status, headers = reader.head()
    assert status == 200
    assert headers["connection"] == "close"
    assert sock.recv(65536) == b""  # then the server closed, with nothing more


def test_expect_100_continue_is_answered_before_the_body_is_sent(sock):
    reader = Reader(sock)
    body = json.dumps({"inputData": {"n": 1}}).encode()
    sock.sendall(
        b"POST /api/v1/runs HTTP/1.1\r\nhost: x\r\n" + KEY + b"content-type: application/json\r\n"
        b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    sock.settimeout(1.0)
    status, _ = reader.head()  # a held 100 would time out here: the server waits for the body
    assert status == 100
    sock.settimeout(PROMPTLY_S)
    sock.sendall(body)
    status, _, answer = reader.response()
    assert status == 201
    assert json.loads(answer)["inputData"] == {"n": 1}


def test_responses_arrive_complete_one_after_another(sock):
    reader = Reader(sock)
    # Pipelined: three requests in one packet, three complete answers in order.
    sock.sendall(
        b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /no/such/route HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    status, _, health = reader.response()
    assert (status, json.loads(health)["status"]) == (200, "healthy")
    status, _, spec = reader.response()
    assert status == 200
    assert "/api/v1/runs" in json.loads(spec)["paths"]
    status, _, missing = reader.response()
    assert status == 404
    assert json.loads(missing)["error"]
    assert reader.buffer == b""


def test_a_response_costs_one_write(server, sock):
    # /proc/<pid>/io counts the server's write(2) calls (uvloop writes sockets with write(2)).
    # A 404 touches no database: one write per response, where head and body took two.
    reader = Reader(sock)
    process = psutil.Process(server.pid)
    requests = 100
    before = process.io_counters().write_count
    for _ in range(requests):
        sock.sendall(b"GET /no/such/route HTTP/1.1\r\nhost: x\r\n\r\n")
        assert reader.response()[0] == 404
    writes = process.io_counters().write_count - before
    assert requests <= writes < requests * 1.5
