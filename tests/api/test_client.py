"""Client and AsyncClient against the real app (uvicorn on a free port) over real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import aiohttp
import httpx
import pytest
import uvicorn
from bullmq import Queue

from foreman import AsyncClient, Client, errors
from foreman.client import RedisOptions, TaskSpec, _async
from foreman.models import Config, Run, Schedule, ScheduledTask, Task
from foreman.server.app import create_app
from tests.conftest import KEY_A, KEY_B, make_settings
from tests.services import free_port


class LiveApp:
    """The app served by uvicorn in a thread, so blocking and asyncio clients both reach it."""

    def __init__(self, database_url: str, **overrides: object) -> None:
        self.port = free_port()
        app = create_app(make_settings(database_url, **overrides))
        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="on", log_config=None, loop="asyncio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveApp:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn thread died"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveApp]:
    with LiveApp(database_url) as app:
        yield app


@pytest.fixture
def client(live: LiveApp, db_url: str) -> Iterator[Client]:
    with Client(live.url, KEY_A, timeout=10) as sync_client:
        yield sync_client


@pytest.fixture
async def aclient(live: LiveApp, db_url: str):
    async with AsyncClient(live.url, KEY_A, timeout=10) as async_client:
        yield async_client


# ---------------------------------------------------------------- sync client


def test_runs_round_trip(client: Client):
    run = client.create_run({"x": 1}, metadata={"team": "a"})
    assert isinstance(run, Run)
    assert (run.status, run.input_data, run.metadata, run.total_tasks) == (
        "pending",
        {"x": 1},
        {"team": "a"},
        0,
    )
    assert client.get_run(run.id) == run
    done = client.update_run(run.id, status="completed", output_data=["ok"])
    assert (done.status, done.output_data) == ("completed", ["ok"])
    assert done.completed_at is not None
    assert done.duration_ms is not None
    cleared = client.update_run(run.id, metadata=None)
    assert cleared.metadata is None
    assert cleared.output_data == ["ok"]  # fields not given are left alone
    client.create_run("second")
    page = client.list_runs(limit=1, sort_order="asc")
    assert page.pagination.total == 2
    assert [r.id for r in page.data] == [run.id]
    assert client.list_runs(status="completed").pagination.total == 1


def test_tasks_round_trip(client: Client):
    run = client.create_run({})
    parent = client.create_task(run.id, type="parent", input_data="p", max_retries=0)
    child = client.create_task(
        run.id, type="child", input_data=[1], parent_task_id=parent.id, metadata={"k": 1}
    )
    assert isinstance(child, Task)
    assert (child.status, child.max_retries, parent.max_retries) == ("pending", 3, 0)
    assert child.parent_task_id == parent.id
    assert client.get_task(child.id).input_data == [1]
    finished = client.update_task(child.id, status="completed", output_data={"r": 2})
    assert (finished.status, finished.output_data) == ("completed", {"r": 2})
    children = client.list_tasks(run_id=run.id, parent_task_id=parent.id)
    assert [t.id for t in children.data] == [child.id]
    assert client.list_tasks(run_id=run.id, type="parent").pagination.total == 1
    counters = client.get_run(run.id)
    assert (counters.total_tasks, counters.completed_tasks) == (2, 1)


# A float cannot hold these: 23 and 36 significant digits, beyond a double's range.
PRECISE = [Decimal("12345678901234567890.123"), Decimal("0.1000000000000000055511151231257827")]
PRECISE_VALUE = {"p": PRECISE, "tiny": Decimal("1E-400"), "big": 10**30, "f": 0.1, "g": -2.5e-7}


def test_numbers_round_trip_exactly(client: Client, live: LiveApp):
    """Decimals go out as JSON numbers; a number a float would change comes back as a Decimal,
    one a float holds exactly as a float (as before)."""
    run = client.create_run(PRECISE_VALUE, metadata={"m": PRECISE[0]})
    for value in (run.input_data, client.get_run(run.id).input_data):
        assert value == PRECISE_VALUE
        assert [type(v) for v in value["p"]] == [Decimal, Decimal]
        assert (type(value["f"]), type(value["g"]), type(value["big"])) == (float, float, int)
    assert run.metadata == {"m": PRECISE[0]}
    # What another client stored is read exactly too.
    raw = httpx.get(f"{live.url}/api/v1/runs/{run.id}", headers={"x-api-key": KEY_A})
    assert "12345678901234567890.123" in raw.text
    task = client.create_task(run.id, type="t", input_data=PRECISE)
    done = client.update_task(task.id, status="completed", output_data={"r": PRECISE[1]})
    assert done.output_data == {"r": PRECISE[1]}
    data = client.create_run_data(run.id, task_id=task.id, key="k", value=PRECISE)
    assert data.value == PRECISE
    assert client.query_run_data(run.id, key="k").data[0].value == PRECISE


async def test_async_numbers_round_trip_exactly(aclient: AsyncClient):
    run = await aclient.create_run(PRECISE_VALUE)
    assert (await aclient.get_run(run.id)).input_data == PRECISE_VALUE


def test_errors_carry_the_server_class_and_message(client: Client):
    missing = str(uuid.uuid4())
    with pytest.raises(errors.NotFoundError, match=f"Run not found: {missing}") as caught:
        client.get_run(missing)
    assert caught.value.status_code == 404
    run = client.create_run({})
    task = client.create_task(run.id, type="t", input_data=1)
    client.update_task(task.id, status="completed")
    with pytest.raises(errors.ConflictError):
        client.update_task(task.id, status="pending")
    with pytest.raises(errors.ValidationError) as invalid:
        client.create_task(run.id, type="t", input_data=1, max_retries=11)
    assert "maxRetries" in invalid.value.message


def test_other_orgs_rows_do_not_exist(client: Client, live: LiveApp):
    run = client.create_run({})
    with Client(live.url, KEY_B) as other, pytest.raises(errors.NotFoundError):
        other.get_run(run.id)


def test_missing_and_malformed_keys(live: LiveApp, db_url, monkeypatch):
    monkeypatch.delenv("FOREMAN_API_KEY", raising=False)
    with Client(live.url) as anonymous, pytest.raises(errors.UnauthorizedError, match="Missing"):
        anonymous.list_runs()
    with Client(live.url, "nope") as bad, pytest.raises(errors.UnauthorizedError, match="format"):
        bad.list_runs()


def test_run_data(client: Client):
    run = client.create_run({})
    task = client.create_task(run.id, type="t", input_data=1)
    first = client.create_run_data(run.id, task_id=task.id, key="score", value=1, tags=["a"])
    client.create_run_data(run.id, task_id=task.id, key="score", value=2)
    other = client.create_run_data(run.id, task_id=task.id, key="other", value={"v": True})
    latest = client.query_run_data(run.id, key="score")
    assert [d.value for d in latest.data] == [2]
    every = client.query_run_data(run.id, keys=["score", "other"], include_all=True)
    assert every.pagination.total == 3
    tagged = client.update_run_data_tags(run.id, first.id, add=["b", "a"], remove=["a"])
    assert tagged.tags == ["b", "a"]
    assert client.query_run_data(run.id, tags=["b"]).data[0].id == first.id
    # An empty list is no filter (the SDK leaves it out; the server refuses an empty `tags=`).
    assert client.query_run_data(run.id, tags=[], keys=[]).pagination.total == 2
    assert client.delete_run_data(run.id, key="score") == 2
    assert client.delete_run_data(run.id, data_id=other.id) == 1
    with pytest.raises(errors.NotFoundError):
        client.delete_run_data(run.id, key="score")


def test_config(client: Client):
    config = client.get_config()
    assert config.queue.backend in ("postgres", "bullmq")
    assert config.queues.task_queue


def test_enqueue_is_idempotent_with_a_key(client: Client):
    run = client.create_run({})
    first = client.enqueue_task(
        run.id,
        type="mail",
        input_data={"to": "x"},
        priority=3,
        delay_ms=60_000,
        idempotency_key="k1",
    )
    assert first.status == "queued"
    assert first.queued_at is not None
    assert first.priority == 3
    assert first.run_after is not None
    assert first.run_after >= first.created_at + 60_000
    again = client.enqueue_task(
        run.id,
        type="mail",
        input_data={"to": "x"},
        priority=3,
        delay_ms=60_000,
        idempotency_key="k1",
    )
    assert again.id == first.id
    assert client.get_run(run.id).total_tasks == 1


def test_enqueue_tasks_in_one_request(client: Client):
    run = client.create_run({})
    specs = [TaskSpec(run.id, "n", i, idempotency_key=f"n-{i}") for i in range(5)]
    tasks = client.enqueue_tasks([*specs, {"run_id": run.id, "type": "m", "input_data": "dict"}])
    assert [t.input_data for t in tasks] == [0, 1, 2, 3, 4, "dict"]
    assert {t.status for t in tasks} == {"queued"}
    repeated = client.enqueue_tasks(specs[:2])
    assert [t.id for t in repeated] == [t.id for t in tasks[:2]]
    assert client.get_run(run.id).total_tasks == 6


def test_enqueue_task_ids_answers_the_ids_in_order(client: Client):
    run = client.create_run({})
    specs = [TaskSpec(run.id, "n", i, idempotency_key=f"ids-{i}") for i in range(3)]
    task_ids = client.enqueue_task_ids(specs)
    assert [client.get_task(i).input_data for i in task_ids] == [0, 1, 2]
    assert client.enqueue_task_ids(specs[1:]) == task_ids[1:]


async def test_enqueue_task_ids_async(aclient: AsyncClient):
    run = await aclient.create_run({})
    task_ids = await aclient.enqueue_task_ids([TaskSpec(run.id, "n", i) for i in range(1001)])
    assert len(set(task_ids)) == 1001  # two requests: 1,000 tasks each at most
    assert (await aclient.get_task(task_ids[-1])).input_data == 1000
    assert (await aclient.get_run(run.id)).total_tasks == 1001


def test_claim_task_ids_sync(client: Client):
    run = client.create_run({})
    a, b = client.enqueue_tasks([TaskSpec(run.id, "n", i) for i in range(2)])
    missing = str(uuid.uuid4())
    first = client.claim_task_ids([a.id, missing], worker_id="w", lease_s=5)
    assert [(r.task_id, r.ok, r.reason) for r in first] == [
        (a.id, True, None),
        (missing, False, "not_found"),
    ]
    task = first[0].task
    assert task is not None
    assert task.lease_token
    assert task.status == "running"
    again = client.claim_task_ids([a.id, b.id], worker_id="w2")
    assert [(r.ok, r.reason, r.status) for r in again] == [
        (False, "conflict", "running"),
        (True, None, "running"),
    ]
    assert client.complete_task(a.id, lease_token=task.lease_token).status == "completed"


async def test_claim_task_ids_async(aclient: AsyncClient):
    run = await aclient.create_run({})
    task = await aclient.enqueue_task(run.id, type="t", input_data=1)
    (result,) = await aclient.claim_task_ids([task.id], worker_id="w")
    assert result.ok
    assert result.task is not None
    assert result.task.worker_id == "w"
    (refused,) = await aclient.claim_task_ids([task.id], worker_id="w")
    assert (refused.ok, refused.reason, refused.task) == (False, "conflict", None)
    with pytest.raises(errors.ValidationError):
        await aclient.claim_task_ids(["not-a-uuid"], worker_id="w")


def test_wait_for_task_returns_once_terminal(client: Client, live: LiveApp):
    run = client.create_run({})
    task = client.create_task(run.id, type="t", input_data=1)

    def finish_later() -> None:
        time.sleep(0.3)
        with Client(live.url, KEY_A) as other:
            other.update_task(task.id, status="completed", output_data="done")

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    started = time.monotonic()
    done = client.wait_for_task(task.id, timeout=10)
    finisher.join()
    assert (done.status, done.output_data) == ("completed", "done")
    assert time.monotonic() - started < 5


def test_connection_errors(db_url):
    # Nothing listens there: the request never reaches a server, so even a POST is retried.
    with Client(f"http://127.0.0.1:{free_port()}", KEY_A, retries=2, timeout=2) as client:
        started = time.monotonic()
        with pytest.raises(errors.TransportError, match="ConnectError"):
            client.create_run({})
        assert time.monotonic() - started < 5


class FlakyTransport(httpx.HTTPTransport):
    """The real HTTP transport, but the first request of each method dies after being sent."""

    def __init__(self, error: type[httpx.TransportError]) -> None:
        super().__init__()
        self.error = error
        self.calls: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.method)
        if self.calls.count(request.method) == 1:
            raise self.error("connection dropped", request=request)
        return super().handle_request(request)


def test_only_repeatable_calls_are_retried_after_a_dropped_connection(live: LiveApp, db_url):
    transport = FlakyTransport(httpx.RemoteProtocolError)
    with Client(live.url, KEY_A, transport=transport) as client:
        with pytest.raises(errors.TransportError):
            client.create_run({})  # may have been carried out: not sent twice
        assert transport.calls == ["POST"]
        run = client.create_run({})
        assert client.get_run(run.id).id == run.id  # GET: retried, then answered
        assert transport.calls == ["POST", "POST", "GET", "GET"]


def test_client_side_bullmq_publishing(live: LiveApp, db_url, redis_server):
    queue_name = f"foreman-client-test-{uuid.uuid4().hex[:8]}"
    redis = RedisOptions.from_url(redis_server.url)
    with Client(live.url, KEY_A, queue_backend="bullmq", redis=redis, task_queue=queue_name) as c:
        run = c.create_run({})
        task = c.enqueue_task(run.id, type="resize", input_data={"w": 1}, priority=2, max_retries=1)
        more = c.enqueue_tasks([TaskSpec(run.id, "thumb", i) for i in range(3)])
    assert task.status == "queued"
    assert task.queue_job_id == f"{task.id}:1"
    assert {t.status for t in more} == {"queued"}

    async def read_jobs():
        queue = Queue(queue_name, {"connection": redis.connection()})
        try:
            job = await queue.getJob(f"{task.id}:1")
            count = await queue.getJobCountByTypes("wait", "prioritized")
            return job, count
        finally:
            await queue.obliterate(force=True)
            await queue.close()

    job, count = asyncio.run(read_jobs())
    assert count == 4
    assert job.name == "resize"
    assert job.data == {"taskId": task.id}
    assert job.opts["attempts"] == 2
    assert job.opts["priority"] == 2


def test_schedules_round_trip(client: Client, live: LiveApp):
    made = client.create_schedule(
        "hourly-report",
        interval_ms=3_600_000,
        type="report",
        input_data={"kind": "hourly"},
        run_input_data={"source": "sdk"},
        priority=2,
    )
    assert isinstance(made, Schedule)
    assert made.task == ScheduledTask(
        type="report", input_data={"kind": "hourly"}, max_retries=3, priority=2
    )
    assert (made.interval_ms, made.cron, made.timezone) == (3_600_000, None, "UTC")
    assert made.run_input_data == {"source": "sdk"}
    assert made.next_run_at == made.created_at + 3_600_000
    assert client.get_schedule(made.id) == made
    changed = client.update_schedule(
        made.id, cron="0 6 * * MON", timezone="Europe/Warsaw", max_retries=0, enabled=False
    )
    assert (changed.cron, changed.interval_ms, changed.enabled) == ("0 6 * * MON", None, False)
    assert changed.next_run_at is None
    assert changed.task.max_retries == 0
    assert changed.task.priority == 2
    listed = client.list_schedules(limit=5)
    assert [s.id for s in listed.data] == [made.id]
    assert listed.pagination.total == 1
    with pytest.raises(errors.ValidationError, match="timezone"):
        client.create_schedule("x", cron="* * * * *", timezone="Nowhere", type="t", input_data=1)
    with (
        Client(live.url, KEY_B) as other,
        pytest.raises(errors.NotFoundError, match="Schedule not found"),
    ):
        other.get_schedule(made.id)
    assert client.delete_schedule(made.id).id == made.id
    with pytest.raises(errors.NotFoundError):
        client.get_schedule(made.id)


# ---------------------------------------------------------------- async client


async def test_async_client_round_trip(aclient: AsyncClient):
    run = await aclient.create_run({"a": 1})
    task = await aclient.enqueue_task(run.id, type="t", input_data="x", max_retries=0)
    assert (task.status, task.max_retries) == ("queued", 0)
    got = await aclient.get_task(task.id)
    assert got.id == task.id
    listed = await aclient.list_tasks(run_id=run.id, status="queued")
    assert [t.id for t in listed.data] == [task.id]
    await aclient.update_task(task.id, status="cancelled")
    done = await aclient.wait_for_task(task.id, timeout=5)
    assert done.status == "cancelled"
    assert (await aclient.get_run(run.id)).cancelled_tasks == 1
    stored = await aclient.create_run_data(run.id, task_id=task.id, key="k", value=[1])
    page = await aclient.query_run_data(run.id, key_starts_with=["k"])
    assert [d.id for d in page.data] == [stored.id]
    assert (await aclient.get_config()).version


async def test_async_schedules_round_trip(aclient: AsyncClient):
    made = await aclient.create_schedule(
        "nightly", cron="0 2 * * *", timezone="America/New_York", type="t", input_data=[1]
    )
    assert made.task.input_data == [1]
    assert made.next_run_at is not None
    assert await aclient.get_schedule(made.id) == made
    changed = await aclient.update_schedule(made.id, interval_ms=60_000, name="renamed")
    assert (changed.name, changed.cron, changed.interval_ms) == ("renamed", None, 60_000)
    assert [s.id for s in (await aclient.list_schedules()).data] == [made.id]
    assert (await aclient.delete_schedule(made.id)).name == "renamed"
    assert (await aclient.list_schedules()).data == []


async def test_async_wait_times_out(aclient: AsyncClient):
    run = await aclient.create_run({})
    task = await aclient.create_task(run.id, type="t", input_data=1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still pending"):
        await aclient.wait_for_task(task.id, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5


async def test_async_errors(aclient: AsyncClient):
    with pytest.raises(errors.NotFoundError, match="Task not found"):
        await aclient.get_task(str(uuid.uuid4()))
    with pytest.raises(errors.NotFoundError, match="Run not found"):
        await aclient.enqueue_task(str(uuid.uuid4()), type="t", input_data=1)


def answer(status: int, body: object, *, headers: str = "") -> bytes:
    content = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}"
    return f"{head}content-length: {len(content)}\r\nconnection: close\r\n\r\n".encode() + content


HANG_UP = b"hang up"
NOT_FOUND = answer(404, {"error": "Task not found: t1", "code": "not_found"})


class ScriptedServer:
    """A bare HTTP server under a path prefix: records each request, answers from a script."""

    def __init__(self, *replies: bytes, delay_s: float = 0.0) -> None:
        self.replies = list(replies)  # the last one repeats; HANG_UP closes without an answer
        self.delay_s = delay_s  # before each answer
        self.requests: list[bytes] = []

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/foreman/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
             if line.startswith(b"content-length:")),
            0,
        )  # fmt: skip
        self.requests.append(head + await reader.readexactly(length))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        await asyncio.sleep(self.delay_s)
        if reply != HANG_UP:
            writer.write(reply)  # to a client that may have given up: nobody reads it
        writer.close()


async def test_async_requests_carry_prefix_headers_query_and_retry_after_429() -> None:
    limited = answer(
        429, {"error": "Slow down", "code": "rate_limited"}, headers="Retry-After: 0\r\n"
    )
    async with ScriptedServer(limited, NOT_FOUND) as server, AsyncClient(server.url, KEY_A) as c:
        with pytest.raises(errors.NotFoundError, match="Task not found: t1"):
            await c.create_run({"a": 1})  # a POST refused by the rate limit goes again
        with pytest.raises(errors.NotFoundError, match="Task not found: t1"):
            await c.list_tasks(run_id="r1", limit=5)
    post, again, get = (request.decode() for request in server.requests)
    assert post == again
    assert post.startswith("POST /foreman/api/v1/runs HTTP/1.1\r\n")
    assert post.endswith('\r\n\r\n{"inputData":{"a":1}}')
    assert get.startswith("GET /foreman/api/v1/tasks?runId=r1&limit=5 HTTP/1.1\r\n")
    for request, content_type in ((post, True), (get, False)):
        headers = request.lower()
        assert f"authorization: bearer {KEY_A.lower()}\r\n" in headers
        assert "user-agent: foreman-python\r\n" in headers
        assert "accept: application/json\r\n" in headers
        assert ("content-type: application/json\r\n" in headers) is content_type


async def test_async_only_repeatable_calls_are_retried_after_a_dropped_connection() -> None:
    async with ScriptedServer(HANG_UP) as server, AsyncClient(server.url, KEY_A, retries=2) as c:
        with pytest.raises(errors.TransportError, match="POST /api/v1/runs failed: ") as caught:
            await c.create_run({})  # may have been carried out: not sent twice
        assert len(server.requests) == 1
        cause = caught.value.__cause__
        assert isinstance(cause, aiohttp.ServerDisconnectedError)
        assert not _async._not_sent(cause)
        with pytest.raises(errors.TransportError, match="GET /api/v1/runs/r1 failed: "):
            await c.get_run("r1")
        assert len(server.requests) >= 1 + 3  # the first try and 2 retries (aiohttp may add one)


async def test_async_read_timeout_is_per_call_and_retried_only_if_repeatable() -> None:
    slow = ScriptedServer(NOT_FOUND, delay_s=0.5)
    async with slow as server, AsyncClient(server.url, KEY_A, timeout=0.2, retries=1) as c:
        with pytest.raises(errors.TransportError, match=r"POST /api/v1/runs failed: .*Timeout"):
            await c.create_run({})  # no answer within 0.2 s, and a POST is not sent twice
        assert len(server.requests) == 1
        with pytest.raises(errors.NotFoundError):
            await c.claim_tasks(worker_id="w")  # a long poll's own read timeout outlasts 0.5 s
        assert len(server.requests) == 2
        with pytest.raises(errors.TransportError, match=r"GET /api/v1/runs/r1 failed: .*Timeout"):
            await c.get_run("r1")
        assert len(server.requests) == 4  # sent again once


@pytest.mark.parametrize(
    ("exc", "not_sent"),
    [
        (aiohttp.ConnectionTimeoutError("Connection timeout to host x"), True),  # or pool wait
        (aiohttp.ServerTimeoutError("Connection timeout to host x"), True),  # aiohttp < 3.10
        (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), False),
        (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), False),
        (TimeoutError(), False),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), False),
        (aiohttp.ClientPayloadError("Response payload is not completed"), False),
    ],
)
def test_which_aiohttp_errors_surely_came_before_sending(exc: Exception, not_sent: bool) -> None:
    assert _async._not_sent(exc) is not_sent


async def test_async_connection_refused_is_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url, KEY_A, retries=2, timeout=2) as client:
        started = time.monotonic()
        with pytest.raises(errors.TransportError, match="ClientConnectorError") as caught:
            await client.create_run({})  # never sent: retried even though it is a POST
        cause = caught.value.__cause__
        assert isinstance(cause, aiohttp.ClientConnectorError)
        assert _async._not_sent(cause)
        assert time.monotonic() - started < 5


def test_async_client_built_outside_a_loop_is_usable_again_after_aclose(
    live: LiveApp, db_url: str
) -> None:
    client = AsyncClient(live.url, KEY_A)

    async def twice() -> tuple[Config, Config]:
        first = await client.get_config()
        await client.aclose()
        second = await client.get_config()  # a new connection pool
        await client.aclose()
        return first, second

    first, second = asyncio.run(twice())
    assert first.version == second.version


async def test_the_workers_send_reads_answers_in_request_order(aclient: AsyncClient):
    """A task twice in one batch: the first is applied, the repeat is not (reason "duplicate");
    answers keyed by task id made the applied one look refused."""
    from foreman.worker import _results

    run = await aclient.create_run({})
    made = await aclient.enqueue_task(run.id, type="t", input_data=1)
    [task] = await aclient.claim_tasks(worker_id="w", limit=1, lease_s=30)
    assert task.id == made.id
    results = [_results.success(task, 1), _results.success(task, 2)]
    assert await _results.send(aclient, results) == [True, False]
    done = await aclient.get_task(task.id)
    assert (done.status, done.output_data) == ("completed", 1)


def test_retry_task(client: Client):
    run = client.create_run({})
    task = client.create_task(run.id, type="t", input_data=1, max_retries=0)
    with pytest.raises(errors.ConflictError, match="pending"):
        client.retry_task(task.id)
    client.update_task(task.id, status="failed")
    ready = client.retry_task(task.id)
    assert (ready.status, ready.max_retries, ready.retry_count) == ("queued", 0, 1)
    assert client.get_run(run.id).failed_tasks == 0


async def test_async_retry_task(aclient: AsyncClient):
    run = await aclient.create_run({})
    task = await aclient.create_task(run.id, type="t", input_data=1)
    await aclient.update_task(task.id, status="cancelled")
    ready = await aclient.retry_task(task.id)
    assert (ready.status, ready.max_retries) == ("queued", 3)
    with pytest.raises(errors.ConflictError, match="queued"):
        await aclient.retry_task(task.id)
    with pytest.raises(errors.NotFoundError):
        await aclient.retry_task(str(uuid.uuid4()))
