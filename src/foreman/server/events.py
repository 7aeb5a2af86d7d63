"""Live run events (GET /api/v1/runs/:id/events): one shared feed per watched run per process.

A feed polls its run's events (store/events.py, derived from stored rows: claims and finishes
write nothing for it) once per interval, however many clients watch the run, and hands each page
to every watcher. NOTIFY wakes it early when a task of the organisation became ready or any task
ended (server/notify.py); claims send no notification, so the poll is what shows them, and the
only source behind PgBouncer. A feed reads only events older than the settle time: a statement's
timestamp is taken before it commits, so a younger event could still appear behind the cursor.

A watcher that starts behind the feed (a new client, or one resuming with Last-Event-ID) first
reads its own backlog up to the feed's position, then takes the feed's pages; events are keyed,
so it sends each once, in key order. The feed stops when its last watcher leaves, and ends its
watchers' streams once the run and all its tasks have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import msgspec
from litestar.response import Stream

from foreman import background, errors
from foreman.models import RunEvent
from foreman.server import notify
from foreman.store import db
from foreman.store import events as events_store
from foreman.store import runs as runs_store
from foreman.store.events import START, EventKey
from foreman.store.pool import Pool

logger = logging.getLogger(__name__)

PAGE = 10_000  # events per statement: a statement re-reads its tasks, so a tick is one
# Each feed rests at least this many times its last tick's time between ticks: a run so large that
# its tick is slow is polled less often (the database spends at most 1/(1+REST) of a connection).
REST = 1
END = None  # what a feed hands its watchers when the run has ended: nothing can follow
# What the hub hands every watcher when the process begins to shut down: the stream closes
# without `event: end`, so its client reconnects (Last-Event-ID) to a replica still serving.
DRAIN: list[tuple[EventKey, bytes]] = []
# Pages a watcher may have waiting: a client that reads slower than its run changes (its socket
# full, so its stream stops pulling) would otherwise hold every page in memory for as long as it
# stays connected. Past this its pages are dropped and it reads them again from the database.
WATCHER_PAGES = 64


@dataclass(eq=False)
class _Watcher:
    pages: asyncio.Queue[list[tuple[EventKey, bytes]] | None] = field(
        default_factory=lambda: asyncio.Queue(WATCHER_PAGES)
    )
    behind: bool = False  # pages were dropped: the next one taken is read from the database

    def give(self, pages: list[tuple[EventKey, bytes]] | None) -> None:
        if self.pages.full():
            self.behind = True
            while not self.pages.empty():
                self.pages.get_nowait()
        self.pages.put_nowait(pages)


class EventHub:
    """The feeds of the runs watched in this process (server/app.py opens one)."""

    def __init__(
        self,
        pool: Pool[db.Connection],
        notifier: notify.Notifier | None,
        *,
        poll_s: float,
        settle_ms: int,
        heartbeat_s: float,
    ) -> None:
        self._pool = pool
        self._notifier = notifier
        self.poll_s = poll_s
        self.settle_ms = settle_ms
        self.heartbeat_s = heartbeat_s
        self._feeds: dict[tuple[str, str], _Feed] = {}
        self.draining = False
        self.statements = 0  # sent by feeds and backlogs (tests: N watchers, one per tick)

    async def stream(self, org_id: str, run_id: str, after: EventKey) -> Stream:
        """The run's event stream for org_id (the API's and the dashboard's); 404 before it
        starts."""
        async with db.org_connection(self._pool, org_id) as conn:
            if await runs_store.get_run(conn, org_id=org_id, run_id=run_id) is None:
                raise errors.NotFoundError(f"Run not found: {run_id}")
        stream = sse(self, org_id, run_id, after, heartbeat_s=self.heartbeat_s)
        # X-Accel-Buffering: nginx passes each event on at once instead of filling its buffer.
        return Stream(stream, media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def fetch(
        self, org_id: str, run_id: str, after: EventKey, upto: EventKey
    ) -> events_store.EventPage:
        """One page of the run's events after `after`, up to `upto`."""
        self.statements += 1
        async with db.org_connection(self._pool, org_id) as conn:
            return await events_store.run_events(
                conn, org_id=org_id, run_id=run_id, after=after, upto=upto, limit=PAGE
            )

    async def watch(
        self, org_id: str, run_id: str, after: EventKey, *, heartbeat_s: float
    ) -> AsyncIterator[bytes | None]:
        """The run's events after `after` as text/event-stream events (encoded once per page,
        whatever the watchers), in key order; b"" when nothing happened for heartbeat_s; None,
        last, when the run has ended."""
        if self.draining:
            return  # shutting down: the client reconnects elsewhere
        feed = self._feeds.get((org_id, run_id))
        if feed is None or feed.closed:
            feed = _Feed(self, org_id, run_id)
            self._feeds[(org_id, run_id)] = feed
            feed.start()
        with feed.attached() as watcher:
            upto = feed.position  # read where the watcher joined: later pages reach its queue
            async for text in self._backlog(org_id, run_id, after, upto):
                yield text
            last = max(after, upto)
            while True:
                try:
                    async with asyncio.timeout(heartbeat_s):
                        pages = await watcher.pages.get()
                except TimeoutError:
                    yield b""
                    continue
                if watcher.behind:  # pages before this one were dropped: read them all again
                    watcher.behind = False
                    upto = feed.position
                    async for text in self._backlog(org_id, run_id, last, upto):
                        yield text
                    last = max(last, upto)
                if pages is DRAIN:
                    return
                if pages is END:
                    yield END
                    return
                fresh = [(key, chunk) for key, chunk in pages if key > last]
                if fresh:
                    last = fresh[-1][0]
                    yield b"".join(chunk for _, chunk in fresh)

    async def _backlog(
        self, org_id: str, run_id: str, after: EventKey, upto: EventKey
    ) -> AsyncIterator[bytes]:
        """The run's events after `after` up to `upto` from the database, encoded a page at a
        time."""
        while after < upto:
            page = await self.fetch(org_id, run_id, after, upto)
            if not page.found:
                # Deleted while streaming (retention): nothing more to read; the feed's next tick
                # finds it gone too and ends the stream.
                return
            if page.events:
                after = page.events[-1][0]
                yield b"".join(chunk for _, chunk in encoded(page.events))
            if len(page.events) < PAGE:
                return

    def drain(self) -> None:
        """End every open stream now (without `event: end`: their clients reconnect elsewhere),
        and any opened from now on: the process is shutting down, and a stream would otherwise
        hold it open until the server's graceful-shutdown timeout."""
        self.draining = True
        for feed in self._feeds.values():
            feed._hand(DRAIN)

    async def close(self) -> None:
        """Stop every feed (the lifespan's end)."""
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            await feed.stop()

    def _forget(self, feed: _Feed) -> None:
        if self._feeds.get((feed.org_id, feed.run_id)) is feed:
            del self._feeds[(feed.org_id, feed.run_id)]


class _Feed:
    """The one poll of a run in this process, and the watchers it hands pages to."""

    def __init__(self, hub: EventHub, org_id: str, run_id: str) -> None:
        self._hub = hub
        self.org_id = org_id
        self.run_id = run_id
        self.position = events_store.horizon(hub.settle_ms)
        self.closed = False
        self._watchers: set[_Watcher] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"foreman-events-{self.run_id}")

    async def stop(self) -> None:
        self.closed = True
        self._hub._forget(self)
        task, self._task = self._task, None
        await background.cancel_and_wait(task)

    @contextlib.contextmanager
    def attached(self) -> Iterator[_Watcher]:
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
            if not self._watchers and not self.closed:
                # The last watcher left (its client went away): no poll for nobody.
                self.closed = True
                self._hub._forget(self)
                if self._task is not None:
                    self._task.cancel()

    async def _run(self) -> None:
        with self._wake() as wake:
            while True:
                woken = await notify.sleep_until(wake, self._hub.poll_s)
                if woken:
                    wake.clear()
                    # What woke it is younger than the settle time: let it pass the horizon.
                    await asyncio.sleep(self._hub.settle_ms / 1000)
                began = time.perf_counter()
                try:
                    ended = await self._tick()
                except errors.ForemanError as exc:  # the database is away: try again later
                    logger.warning("run events of %s: %s", self.run_id, exc)
                    continue
                except Exception:
                    # Never let a feed die: its watchers would only get heartbeats from now on.
                    logger.exception("run events of %s failed unexpectedly", self.run_id)
                    continue
                await asyncio.sleep(REST * (time.perf_counter() - began))
                if ended:
                    self.closed = True
                    self._hub._forget(self)
                    self._hand(END)
                    return

    @contextlib.contextmanager
    def _wake(self) -> Iterator[asyncio.Event]:
        notifier = self._hub._notifier
        if notifier is None:
            yield asyncio.Event()  # never set: polling only
            return
        with notifier.watch_changes(self.org_id) as event:
            yield event

    async def _tick(self) -> bool:
        """Hand the events up to the horizon to the watchers; True when the run has ended."""
        upto = events_store.horizon(self._hub.settle_ms)
        while True:
            page = await self._hub.fetch(self.org_id, self.run_id, self.position, upto)
            if page.events:
                self.position = page.events[-1][0]
                self._hand(encoded(page.events))
            if len(page.events) < PAGE:
                return page.ended or not page.found

    def _hand(self, pages: list[tuple[EventKey, bytes]] | None) -> None:
        for watcher in self._watchers:
            watcher.give(pages)


_ENCODER = msgspec.json.Encoder()
RETRY_MS = 2000  # how long an EventSource waits before it reconnects


def last_event_id(value: str | None) -> EventKey:
    """Where a stream starts: after the Last-Event-ID a client sent, else at the run's start."""
    if value is None or not value.strip():
        return START
    key = events_store.parse_event_id(value)
    if key is None:
        raise errors.ValidationError(
            "Validation failed: Last-Event-ID is not an event id of this stream",
            details=[{"loc": ["header", "Last-Event-ID"], "msg": "not an event id"}],
        )
    return key


def encoded(events: list[tuple[EventKey, RunEvent]]) -> list[tuple[EventKey, bytes]]:
    """Each event as its text/event-stream lines: `id:` and one JSON `data:` line."""
    return [
        (key, b"id: " + event.id.encode() + b"\ndata: " + _ENCODER.encode(event) + b"\n\n")
        for key, event in events
    ]


async def sse(
    hub: EventHub, org_id: str, run_id: str, after: EventKey, *, heartbeat_s: float
) -> AsyncIterator[bytes]:
    """The run's events as a text/event-stream: `id:` and a JSON `data:` line per event, a
    comment line when idle, and an `end` event when the run has ended (then the stream closes)."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    async for chunk in hub.watch(org_id, run_id, after, heartbeat_s=heartbeat_s):
        if chunk is END:
            yield b"event: end\ndata: " + _ENCODER.encode({"runId": run_id}) + b"\n\n"
            return
        yield chunk or b": keep-alive\n\n"
