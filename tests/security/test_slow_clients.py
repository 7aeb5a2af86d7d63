"""Slow and malformed clients against the real server process (uvicorn + httptools, raw sockets).

What protects the server (docs/security.md): header block at most FOREMAN_MAX_HEADER_BYTES (431)
and complete within FOREMAN_HEADER_TIMEOUT_S (408, or a silent close), body at most
FOREMAN_MAX_BODY_BYTES (413) and complete within FOREMAN_BODY_TIMEOUT_S (408), idle keep-alive
connections closed by uvicorn after 5 s. The limits are set low here so the tests are quick.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.integration.live_server import ServerProcess, server_env

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_BODY = 65536
KEY = b"x-api-key: test-api-key\r\n"


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = server_env(
        FOREMAN_DATABASE_URL=database_url,
        FOREMAN_AUTO_MIGRATE="false",
        FOREMAN_DB_POOL_MIN="1",
        FOREMAN_DB_POOL_MAX="3",
        FOREMAN_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        FOREMAN_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        FOREMAN_MAX_BODY_BYTES=str(MAX_BODY),
        FOREMAN_LOG_LEVEL="INFO",  # the access lines of refused requests are checked too
    )
    process = ServerProcess(tmp_path_factory.mktemp("slow"), env=env).start()
    try:
        yield process
    finally:
        process.kill()


def _connect(server: ServerProcess, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after the answer ends it too)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _timed_answer(sock: socket.socket) -> tuple[bytes, float]:
    start = time.monotonic()
    return _read_all(sock), time.monotonic() - start


def _send_until_closed(sock: socket.socket, data: bytes, *, times: int) -> int:
    """Send data up to times times; how many went out before the server closed the connection."""
    for sent in range(times):
        try:
            sock.sendall(data)
        except OSError:  # reset: the server answered and closed while we were still sending
            return sent
    return times


def _quick_health(server: ServerProcess) -> float:
    start = time.monotonic()
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    return time.monotonic() - start


def test_a_silent_connection_is_closed(server):
    with _connect(server) as sock:
        answer, waited = _timed_answer(sock)
    assert answer == b""
    assert HEADER_TIMEOUT_S * 0.8 < waited < HEADER_TIMEOUT_S + 2


def test_trickled_headers_get_408(server):
    marker = f"trickled-{uuid.uuid4().hex}"
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-request-id: %s\r\n" % marker.encode())
        time.sleep(HEADER_TIMEOUT_S / 2)
        sock.sendall(b"x-one: 1\r\n")  # still sending, but too slowly in total
        answer, _ = _timed_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error":"Request headers not received within' in answer
    (line,) = _access_lines(server, marker)
    assert " GET /health 408 " in line


def test_endless_headers_get_431_and_memory_stays_flat(server):
    process = psutil.Process(server.pid)
    before = process.memory_info().rss
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent = _send_until_closed(sock, b"a" * (1 << 20), times=64)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert sent < 64
    assert process.memory_info().rss - before < 32 * 1024 * 1024
    assert _quick_health(server) < 1


def _access_lines(server: ServerProcess, marker: str, *, count: int = 1) -> list[str]:
    """The access lines naming marker, once count of them are in the log (written in batches)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [
            line
            for line in server.log().splitlines()
            if "foreman.access" in line and marker in line
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize("size", [66_000, 100_000, 1_000_000])
def test_a_header_block_over_the_limit_in_one_read_gets_431(server, size):
    marker = f"big-{size}-{uuid.uuid4().hex}"
    request = b"GET /health HTTP/1.1\r\nhost: x\r\nx-request-id: %s\r\nx-big: %s\r\n\r\n" % (
        marker.encode(),
        b"a" * size,
    )
    with _connect(server) as sock:
        _send_until_closed(sock, request, times=1)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"Request headers larger than" in answer
    (line,) = _access_lines(server, marker)
    assert re.search(rf" GET /health 431 .* request_id={marker}$", line), line


def test_a_header_block_over_the_limit_after_a_served_request_gets_431(server):
    # Keep-alive: the second request's headers count from their first byte, in whatever reads.
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 60_000)
        time.sleep(0.2)  # its own read
        _send_until_closed(sock, b"a" * 10_000 + b"\r\n\r\n", times=1)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_a_pipelined_header_block_over_the_limit_gets_431(server):
    # The second request begins in the read that ends the first: its block is measured whole.
    with _connect(server) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
            + b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: "
            + b"a" * 60_000
        )
        time.sleep(0.2)  # its own read
        _send_until_closed(sock, b"a" * 10_000 + b"\r\n\r\n", times=1)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    second = answer[answer.index(b"HTTP/1.1 ", 10) :]
    assert second.startswith(b"HTTP/1.1 431 "), second[:200]


def test_headers_within_the_limit_are_fine(server):
    response = httpx.get(f"{server.url}/health", headers={"x-big": "a" * 32_000}, timeout=5)
    assert response.status_code == 200


def test_a_slow_body_gets_408(server):
    marker = f"slow-body-{uuid.uuid4().hex}"
    with _connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/runs HTTP/1.1\r\nhost: x\r\n"
            + KEY
            + b"x-request-id: %s\r\n" % marker.encode()
            + b"content-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{"
        )
        answer, waited = _timed_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"Request body not received within" in answer
    assert waited < BODY_TIMEOUT_S + 2
    (line,) = _access_lines(server, marker)
    assert " POST /api/v1/runs 408 " in line


def test_a_body_in_pieces_within_the_timeout_is_served(server):
    # The body clock runs from the first incomplete chunk to the last byte, not per chunk.
    body = b'{"inputData": {"pieces": 3}}'
    with _connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/runs HTTP/1.1\r\nhost: x\r\n"
            + KEY
            + b"content-type: application/json\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body[:5]
        )
        for start in (5, 15):
            time.sleep(BODY_TIMEOUT_S * 0.3)
            sock.sendall(body[start : start + 10] if start == 5 else body[start:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
    assert b'"pieces"' in answer  # the whole body arrived


def test_a_slow_body_after_a_served_request_gets_408(server):
    # Keep-alive: the second request's body is late; the first answer is not repeated or cut.
    body = b'{"inputData": 1}'
    head = (
        b"POST /api/v1/runs HTTP/1.1\r\nhost: x\r\n" + KEY + b"content-type: application/json\r\n"
    )
    with _connect(server) as sock:
        sock.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 201 ")
        sock.sendall(head + b"content-length: 100\r\n\r\n{")
        answer, waited = _timed_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request_timeout" in answer
    assert waited < BODY_TIMEOUT_S + 2


def test_a_late_pipelined_body_waits_for_the_answers_before_it(server):
    # A long poll runs past the body timeout while a pipelined POST waits behind it with part of
    # its body: the long poll's answer comes first, then the POST's 408.
    with httpx.Client(base_url=server.url, headers={"x-api-key": "test-api-key"}) as client:
        run = client.post("/api/v1/runs", json={"inputData": 1}).json()
        task = client.post(
            "/api/v1/tasks", json={"runId": run["id"], "type": "t", "inputData": 1}
        ).json()
    wait_ms = int(BODY_TIMEOUT_S * 2500)
    with _connect(server) as sock:
        sock.sendall(
            b"GET /api/v1/tasks/%s/wait?timeoutMs=%d HTTP/1.1\r\nhost: x\r\n%s\r\n"
            % (task["id"].encode(), wait_ms, KEY)
            + b"POST /api/v1/runs HTTP/1.1\r\nhost: x\r\n"
            + KEY
            + b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{"
        )
        answer, _ = _timed_answer(sock)
    first, _, rest = answer.partition(b"\r\n")
    assert first == b"HTTP/1.1 200 OK", answer[:300]
    assert b"HTTP/1.1 408 " in rest
    assert b"request_timeout" in rest


def test_a_chunked_body_over_the_limit_gets_413(server):
    with _connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/runs HTTP/1.1\r\nhost: x\r\n"
            + KEY
            + b"content-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 16384
        _send_until_closed(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk), times=64)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"payload_too_large" in answer


def test_malformed_requests_get_400(server):
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/9.9\r\n\r\n"):
        with _connect(server) as sock:
            sock.sendall(garbage)
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 400 ")
    assert _quick_health(server) < 1


def test_a_malformed_request_gets_its_access_line(server):
    path = f"/malformed-{uuid.uuid4().hex}"
    with _connect(server) as sock:
        sock.sendall(b"GET %s HTTP/9.9\r\nhost: x\r\n\r\n" % path.encode())
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    (line,) = _access_lines(server, path)
    assert f" GET {path} 400 " in line


def test_keep_alive_pauses_longer_than_the_header_timeout_still_work(server):
    # The header clock starts with a request, not after the previous answer.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(HEADER_TIMEOUT_S * 1.5)
        assert client.get("/health").status_code == 200


def test_a_long_request_is_not_cut_by_the_header_timeout(server):
    headers = {"x-api-key": "test-api-key"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        run = client.post("/api/v1/runs", json={"inputData": 1}).json()
        task = client.post(
            "/api/v1/tasks", json={"runId": run["id"], "type": "t", "inputData": 1}
        ).json()
        start = time.monotonic()
        waited = client.get(f"/api/v1/tasks/{task['id']}/wait", params={"timeoutMs": 2000})
    assert waited.status_code == 200
    assert time.monotonic() - start >= 1.9


def test_many_idle_and_trickling_clients_do_not_block_others(server):
    idle = [_connect(server) for _ in range(200)]
    trickling = [_connect(server) for _ in range(20)]
    try:
        for sock in trickling:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert _quick_health(server) < 1
        # after the header timeout every one of them is gone
        time.sleep(HEADER_TIMEOUT_S + 1)
        connections = psutil.Process(server.pid).net_connections(kind="tcp")
        established = [c for c in connections if c.status == psutil.CONN_ESTABLISHED]
        assert len(established) < 20
    finally:
        for sock in idle + trickling:
            sock.close()
