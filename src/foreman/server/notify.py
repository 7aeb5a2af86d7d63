"""One LISTEN connection per server process that wakes long polls (claim and wait).

The statements that make a task ready send ``NOTIFY foreman_task_ready`` (payload: the org id),
the ones that end a task send ``NOTIFY foreman_task_done`` (payload: comma-separated task ids).
A waiting request holds no pool connection: it registers an event here, releases its connection
and sleeps until a notification sets the event or its poll interval passes. The poll is the
fallback that keeps long polls correct while this connection is down or reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg

from foreman import background

logger = logging.getLogger(__name__)

READY_CHANNEL = "foreman_task_ready"
DONE_CHANNEL = "foreman_task_done"
APPLICATION_NAME = "foreman-listen"
CONNECT_TIMEOUT_S = 5.0
RECONNECT_MAX_S = 10.0
# A LISTEN connection that only receives cannot see a half-open TCP connection; a query can.
KEEPALIVE_S = 30.0


class Notifier:
    """Routes NOTIFY payloads to the events of the requests that wait for them."""

    def __init__(self, dsn: str | None) -> None:
        self._dsn = dsn
        self._ready: dict[str, set[asyncio.Event]] = {}
        self._done: dict[str, set[asyncio.Event]] = {}
        self._any_done: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()

    def start(self) -> None:
        """Connect and listen in the background (and reconnect whenever the connection drops).

        Without a URL (behind PgBouncer, which cannot keep a LISTEN: docs/deployment.md) nothing
        listens and every long poll re-checks every FOREMAN_POLL_INTERVAL_S: said once, here.
        """
        if self._dsn is None:
            logger.warning(
                "no LISTEN connection (FOREMAN_DB_PGBOUNCER without FOREMAN_DATABASE_LISTEN_URL):"
                " long polls fall back to polling every FOREMAN_POLL_INTERVAL_S"
            )
            return
        self._task = asyncio.create_task(self._run(), name="foreman-notify")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        await background.cancel_and_wait(task)

    @contextlib.contextmanager
    def watch_ready(self, org_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever a task of org_id may have become ready."""
        with _watch(self._ready, org_id) as event:
            yield event

    @contextlib.contextmanager
    def watch_done(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set when task_id may have ended."""
        with _watch(self._done, task_id) as event:
            yield event

    @contextlib.contextmanager
    def watch_changes(self, org_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever a task of org_id may have become ready or any task may have
        ended (a done payload names tasks, not their organisation): the run events' early wake."""
        with _watch(self._ready, org_id) as event:
            self._any_done.add(event)
            try:
                yield event
            finally:
                self._any_done.discard(event)

    async def _run(self) -> None:
        assert self._dsn is not None  # start() listens only with a URL
        delay_s = 0.5
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=CONNECT_TIMEOUT_S,
                    server_settings={"application_name": APPLICATION_NAME},
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                logger.warning("LISTEN connection failed, retrying in %.1fs: %s", delay_s, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                continue
            delay_s = 0.5
            try:
                await self._listen(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                logger.warning("LISTEN connection lost: %s", exc)
            except Exception:
                # Never let the listener die: long polls would fall back to polling for good.
                logger.exception("LISTEN connection failed unexpectedly")
                await asyncio.sleep(delay_s)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=1))

    async def _listen(self, conn: asyncpg.Connection[Any]) -> None:
        self._lost.clear()
        conn.add_termination_listener(lambda _: self._lost.set())
        await conn.add_listener(READY_CHANNEL, self._on_ready)
        await conn.add_listener(DONE_CHANNEL, self._on_done)
        # Notifications may have been missed while disconnected: every waiter looks again.
        _wake_all(self._ready)
        _wake_all(self._done)
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), KEEPALIVE_S)
            if self._lost.is_set():
                return
            await conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT_S)

    def _on_ready(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        for event in self._ready.get(str(payload), ()):
            event.set()

    def _on_done(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        for event in self._any_done:
            event.set()
        if not self._done:
            return
        for task_id in str(payload).split(","):
            for event in self._done.get(task_id, ()):
                event.set()


@contextlib.contextmanager
def _watch(waiters: dict[str, set[asyncio.Event]], key: str) -> Iterator[asyncio.Event]:
    event = asyncio.Event()
    waiters.setdefault(key, set()).add(event)
    try:
        yield event
    finally:
        events = waiters.get(key)
        if events is not None:
            events.discard(event)
            if not events:
                del waiters[key]


def _wake_all(waiters: dict[str, set[asyncio.Event]]) -> None:
    for events in waiters.values():
        for event in events:
            event.set()


async def sleep_until(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for event at most timeout_s; True if it was set."""
    if timeout_s <= 0:
        return event.is_set()
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
