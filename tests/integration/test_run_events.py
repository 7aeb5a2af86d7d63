"""GET /api/v1/runs/:id/events (Server-Sent Events) and the SDK's watch_run, against the real app
served by uvicorn (httpx's in-process transport cannot stream) over real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from foreman import AsyncClient, Client, errors
from foreman.models import RunEvent
from foreman.server import events as server_events
from foreman.server.events import EventHub, _Feed
from foreman.store.events import START
from tests.conftest import HEADERS_A, HEADERS_B, KEY_A, ORG_A
from tests.queue_helpers import LiveApp

POLL_S = 0.1


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveApp]:
    settings = {"events_poll_s": POLL_S, "events_settle_ms": 50, "events_heartbeat_s": 0.5}
    with LiveApp(database_url, sweep_enabled=False, schedule_enabled=False, **settings) as app:
        yield app


@pytest.fixture
def client(live: LiveApp, db_url: str) -> Iterator[Client]:
    with Client(live.url, KEY_A, timeout=10) as sync_client:
        yield sync_client


def hub_of(live: LiveApp) -> EventHub:
    hub = live.app.state.foreman.events
    assert hub is not None
    return hub


def read_events(
    live: LiveApp, run_id: str, *, headers: dict[str, str] = HEADERS_A, count: int | None = None
) -> tuple[list[dict[str, str]], bool]:
    """The stream's events (their `id`, `event` and `data` fields) until `end` or count of them;
    and whether it ended."""
    found: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    url = f"{live.url}/api/v1/runs/{run_id}/events"
    with httpx.stream("GET", url, headers=headers, timeout=10) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith((":", "retry:")):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if fields.get("event") == "end":
                return found, True
            if fields:
                found.append(fields)
            fields = {}
            if count is not None and len(found) == count:
                return found, False
    return found, False


@contextlib.contextmanager
def streaming(live: LiveApp, run_id: str) -> Iterator[_Feed]:
    """An open event stream of the run, read up to its first event: the run's feed (the only
    one) while it stays open."""
    url = f"{live.url}/api/v1/runs/{run_id}/events"
    with httpx.stream("GET", url, headers=HEADERS_A, timeout=10) as response:
        lines = response.iter_lines()
        while not next(lines).startswith("data:"):
            pass
        (feed,) = hub_of(live)._feeds.values()
        yield feed


def kinds(events: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(type, subject) of each event: the run's or its task's id."""
    out = []
    for event in events:
        body = json.loads(event["data"])
        out.append((body["type"], body.get("taskId") or body["runId"]))
    return out


def finish_run(client: Client) -> tuple[str, str, str]:
    """An auto-complete run: task a completes, task b fails for good (no retries left)."""
    run = client.create_run({}, auto_complete=True)
    a = client.enqueue_task(run.id, type="t", input_data=1)
    b = client.enqueue_task(run.id, type="t", input_data=2, max_retries=0)
    claimed = {t.id: t for t in client.claim_tasks(worker_id="w1", limit=2)}
    client.complete_task(a.id, lease_token=claimed[a.id].lease_token, output_data=1)
    client.fail_task(b.id, lease_token=claimed[b.id].lease_token, error_data={"m": "x"})
    return run.id, a.id, b.id


def test_a_finished_run_streams_every_change_in_order_then_ends(live: LiveApp, client: Client):
    run_id, a, b = finish_run(client)
    events, ended = read_events(live, run_id)
    assert ended
    seen = kinds(events)
    assert seen[0] == ("run.created", run_id)
    assert [k for k in seen if k[1] == a] == [
        ("task.created", a),
        ("task.started", a),
        ("task.completed", a),
    ]
    assert [k for k in seen if k[1] == b] == [
        ("task.created", b),
        ("task.started", b),
        ("task.failed", b),
    ]
    assert seen[-1] == ("run.failed", run_id)
    assert ("run.started", run_id) in seen
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)
    # Ids order the stream: by time, then by kind.
    keys = [(int(i.split("-")[0]), int(i.split("-")[1])) for i in ids]
    assert keys == sorted(keys)


def test_last_event_id_resumes_after_it_without_repeats(live: LiveApp, client: Client):
    run_id, _, _ = finish_run(client)
    everything, _ = read_events(live, run_id)
    for cut in (1, 3, len(everything) - 1):
        headers = {**HEADERS_A, "Last-Event-ID": everything[cut - 1]["id"]}
        rest, ended = read_events(live, run_id, headers=headers)
        assert ended
        assert rest == everything[cut:]
    headers = {**HEADERS_A, "Last-Event-ID": everything[-1]["id"]}
    assert read_events(live, run_id, headers=headers) == ([], True)


def test_another_organisation_unknown_runs_and_bad_ids_are_refused(live: LiveApp, client: Client):
    run_id, _, _ = finish_run(client)
    url = f"{live.url}/api/v1/runs/{run_id}/events"
    other = httpx.get(url, headers=HEADERS_B, timeout=10)
    assert other.status_code == 404
    assert "Run not found" in other.json()["error"]
    unknown = httpx.get(
        f"{live.url}/api/v1/runs/0193a000-0000-7000-8000-000000000000/events",
        headers=HEADERS_A,
        timeout=10,
    )
    assert unknown.status_code == 404
    bad = httpx.get(url, headers={**HEADERS_A, "Last-Event-ID": "yesterday"}, timeout=10)
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["error"]
    assert httpx.get(url, timeout=10).status_code == 401


def test_an_open_stream_shows_a_completion_as_it_happens(live: LiveApp, client: Client):
    run = client.create_run({})
    task = client.enqueue_task(run.id, type="t", input_data=1)
    (claimed,) = client.claim_tasks(worker_id="w1")
    started = time.monotonic()
    watched: list[RunEvent] = []
    with Client(live.url, KEY_A, timeout=10) as watcher:
        for event in watcher.watch_run(run.id):
            watched.append(event)
            if event.type == "task.started":
                client.complete_task(task.id, lease_token=claimed.lease_token)
            if event.type == "task.completed":
                break
    assert [e.type for e in watched] == [
        "run.created",
        "task.created",
        "task.started",
        "task.completed",
    ]
    assert watched[-1].task_id == task.id
    assert watched[-1].status == "completed"
    assert time.monotonic() - started < 5


def test_retries_releases_and_blocked_children_have_their_events(live: LiveApp, client: Client):
    run = client.create_run({}, auto_complete=True)
    parent = client.enqueue_task(run.id, type="p", input_data=1, max_retries=1)
    child = client.enqueue_task(run.id, type="c", input_data=2, depends_on=[parent.id])
    (first,) = client.claim_tasks(worker_id="w1", types=["p"])
    client.release_task(parent.id, lease_token=first.lease_token)
    (second,) = client.claim_tasks(worker_id="w1", types=["p"])
    client.fail_task(parent.id, lease_token=second.lease_token, error_data={"m": "x"})
    time.sleep(2.6)  # the backoff of the first failure (2 s, +-20 %)
    (third,) = client.claim_tasks(worker_id="w1", types=["p"])
    client.complete_task(parent.id, lease_token=third.lease_token)
    (fourth,) = client.claim_tasks(worker_id="w2", types=["c"])
    client.complete_task(child.id, lease_token=fourth.lease_token)
    events, ended = read_events(live, run.id)
    assert ended
    seen = kinds(events)
    assert [k for k, s in seen if s == parent.id] == [
        "task.created",
        "task.started",
        "task.queued",  # released
        "task.started",
        "task.retrying",
        "task.started",
        "task.completed",
    ]
    assert [k for k, s in seen if s == child.id] == [
        "task.created",
        "task.queued",  # blocked -> queued when the parent completed
        "task.started",
        "task.completed",
    ]
    created = json.loads(events[seen.index(("task.created", child.id))]["data"])
    assert created["status"] == "blocked"


def test_many_watchers_of_a_run_cost_one_query_per_tick(live: LiveApp, client: Client):
    run = client.create_run({})
    client.enqueue_task(run.id, type="t", input_data=1)
    hub = hub_of(live)
    watchers = 8

    async def watch_all() -> tuple[int, int]:
        async with AsyncClient(live.url, KEY_A, timeout=10) as aclient:

            async def one() -> None:
                async for _ in aclient.watch_run(run.id):
                    pass

            tasks = [asyncio.create_task(one()) for _ in range(watchers)]
            await asyncio.sleep(0.5)  # all connected and caught up
            before = hub.statements
            await asyncio.sleep(2.0)
            during = hub.statements - before
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return during, len(hub._feeds)

    during, feeds = asyncio.run(watch_all())
    ticks = 2.0 / POLL_S
    assert 1 <= during <= ticks * 1.5 + 2, during  # one feed's ticks, not one per watcher
    assert feeds == 1


def test_a_client_that_goes_away_stops_its_feed(live: LiveApp, client: Client):
    run = client.create_run({})
    hub = hub_of(live)
    with streaming(live, run.id) as feed:
        task = feed._task
        assert task is not None
        assert not task.done()
    # The connection is closed: the watcher leaves, its feed stops polling.
    deadline = time.monotonic() + 5
    while not task.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert task.done()
    assert not hub._feeds


def test_a_watcher_that_falls_behind_reads_its_dropped_pages_from_the_database(
    live: LiveApp, client: Client, monkeypatch: pytest.MonkeyPatch
):
    # A stream that stops pulling (its client's socket full) while its run changes: its waiting
    # pages stay bounded, and when it reads again it gets every event once, in order.
    monkeypatch.setattr(server_events, "WATCHER_PAGES", 2)
    run = client.create_run({})
    client.enqueue_task(run.id, type="t", input_data=0)
    hub = hub_of(live)
    with streaming(live, run.id) as feed:
        assert feed._task is not None
        loop = feed._task.get_loop()  # the server's: the hub and its pool live there

        def on_server(coro):  # type: ignore[no-untyped-def]
            return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

        others = set(feed._watchers)
        stream = hub.watch(ORG_A, run.id, START, heartbeat_s=0.2)
        first = on_server(anext(stream))  # its backlog: the first task
        assert b"task.created" in first
        (watcher,) = feed._watchers - others
        made = []
        for i in range(6):  # six ticks apart: six pages handed, two kept
            made.append(client.enqueue_task(run.id, type="t", input_data=i + 1).id)
            time.sleep(POLL_S * 3)
        assert watcher.behind
        assert watcher.pages.qsize() <= 2
        seen: list[str] = []
        for _ in range(100):  # a heartbeat every 0.2 s: 20 s at most
            if len(seen) >= len(made):
                break
            text = on_server(anext(stream))
            seen += [
                json.loads(line[6:])["taskId"]
                for line in text.decode().splitlines()
                if line.startswith("data: ") and '"task.created"' in line
            ]
        assert seen == made
        on_server(stream.aclose())


def test_a_shutdown_closes_open_streams_and_long_polls_at_once(database_url: str):
    # uvicorn waits for open connections before the app's shutdown: an event stream (or a long
    # poll) would hold a stopping process for the whole graceful-shutdown timeout (30 s).
    settings = {"events_poll_s": POLL_S, "events_settle_ms": 50, "events_heartbeat_s": 0.5}
    app = LiveApp(database_url, sweep_enabled=False, schedule_enabled=False, **settings)
    with app, Client(app.url, KEY_A, timeout=10) as client:
        run = client.create_run({})
        client_task = client.enqueue_task(run.id, type="t", input_data=1).id
        got: dict[str, object] = {}

        def stream() -> None:
            got["events"] = read_events(app, run.id)

        def long_poll() -> None:
            body = {"workerId": "w", "types": ["nothing"], "waitMs": 60_000}
            got["claim"] = httpx.post(
                f"{app.url}/api/v1/tasks/claim", json=body, headers=HEADERS_A, timeout=70
            )

        threads = [threading.Thread(target=stream), threading.Thread(target=long_poll)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # both connected and waiting
        began = time.monotonic()
    took = time.monotonic() - began  # LiveApp's exit: should_exit, then the server's shutdown
    for thread in threads:
        thread.join(5)
    assert took < 5, took
    events, ended = got["events"]  # type: ignore[misc]
    assert not ended  # no `event: end`: the run goes on, the client reconnects elsewhere
    assert ("task.created", client_task) in kinds(events)  # it was streaming
    claim = got["claim"]
    assert isinstance(claim, httpx.Response)
    assert claim.status_code == 200
    assert claim.json()["data"] == []


def test_watch_run_async_and_an_unknown_run(live: LiveApp, client: Client):
    run_id, a, _ = finish_run(client)

    async def collect() -> list[RunEvent]:
        async with AsyncClient(live.url, KEY_A, timeout=10) as aclient:
            return [event async for event in aclient.watch_run(run_id)]

    got = asyncio.run(collect())
    assert next(e.type for e in got) == "run.created"
    assert got[-1].type == "run.failed"
    assert [e.id for e in got] == [e.id for e in client.watch_run(run_id)]
    after = list(client.watch_run(run_id, last_event_id=got[2].id))
    assert [e.id for e in after] == [e.id for e in got[3:]]
    with pytest.raises(errors.NotFoundError):
        list(client.watch_run("0193a000-0000-7000-8000-000000000000"))
    with pytest.raises(errors.ValidationError):
        list(client.watch_run(run_id, last_event_id="nonsense"))
    assert a in {e.task_id for e in got}


def test_behind_pgbouncer_without_listen_the_poll_feeds_the_stream(database_url, db_url, pgbouncer):
    settings = {"events_poll_s": POLL_S, "events_settle_ms": 50, "database_listen_url": None}
    url = pgbouncer.url(database_url)
    with (
        LiveApp(
            url, db_pgbouncer=True, sweep_enabled=False, schedule_enabled=False, **settings
        ) as bounced,
        Client(bounced.url, KEY_A, timeout=10) as api,
    ):
        assert bounced.app.state.foreman.events._notifier is None  # nothing listens: polls only
        run = api.create_run({}, auto_complete=True)
        task = api.enqueue_task(run.id, type="t", input_data=1)
        (claimed,) = api.claim_tasks(worker_id="w1")
        got = []
        for event in api.watch_run(run.id):  # ends with the run
            got.append(event.type)
            if event.type == "task.started":  # then the rest can only come from the poll
                api.complete_task(task.id, lease_token=claimed.lease_token)
    assert got == [
        "run.created",
        "task.created",
        "task.started",
        "run.started",
        "task.completed",
        "run.completed",
    ]


class _CutAfterEvents(httpx.SyncByteStream):
    """A response body that breaks, as a dropped connection does, after its first events."""

    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            yield chunk
            if b"data:" in chunk:
                raise httpx.ReadError("connection dropped")

    def close(self) -> None:
        self.inner.close()


class _DropFirstStream(httpx.HTTPTransport):
    """The real network to the real server, but the first event stream's connection drops."""

    def __init__(self) -> None:
        super().__init__()
        self.resumed_after: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/events"):
            self.resumed_after.append(request.headers.get("last-event-id"))
            if len(self.resumed_after) == 1:
                assert isinstance(response.stream, httpx.SyncByteStream)
                response.stream = _CutAfterEvents(response.stream)
        return response


def test_watch_run_reconnects_after_the_last_event_it_got(live: LiveApp, client: Client):
    run_id, _, _ = finish_run(client)
    everything = [e.id for e in client.watch_run(run_id)]
    transport = _DropFirstStream()
    with Client(live.url, KEY_A, timeout=10, transport=transport) as dropped:
        got = [e.id for e in dropped.watch_run(run_id)]
    assert got == everything  # nothing lost, nothing twice
    assert len(transport.resumed_after) == 2
    assert transport.resumed_after[0] is None
    assert transport.resumed_after[1] in everything
