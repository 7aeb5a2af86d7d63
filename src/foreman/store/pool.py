"""The connection pool of the server: idle connections lent last-in first-out, nothing per lease
but a slot.

It replaces asyncpg's pool on the request path, whose per-lease bookkeeping cost a quarter of the
app's instructions per request (benchmarks/README.md, "Notes moved from store/pool.py"). At most
``max_size`` connections; a closed one is dropped, one in doubt is terminated rather than reset;
idle ones are closed after ``max_idle_s``, down to ``min_size``. Leases hand out the connection
itself, not a proxy: code must not keep it past its lease.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import asyncpg

CLOSE_TIMEOUT_S = 5.0
# Errors that leave a connection's protocol state unknown (asyncpg cancels a timed-out query in the
# background; the next query would wait for that first).
_IN_DOUBT = (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)

C = TypeVar("C", bound=asyncpg.Connection)


class Pool(Generic[C]):
    """Connections made by ``connect``, lent through ``acquire()``; ``open()`` before use."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[C]],
        *,
        max_size: int,
        min_size: int = 0,
        max_idle_s: float = 60.0,
    ) -> None:
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        self._connect = connect
        self.max_size = max_size
        self.min_size = min_size
        self.max_idle_s = max_idle_s
        self._lent = 0  # slots taken: connections lent or being opened, at most max_size
        self._waiters: collections.deque[asyncio.Future[C | None]] = collections.deque()
        self._idle: list[tuple[C, float]] = []  # (connection, given back at): most recent last
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False

    async def open(self) -> None:
        """Open min_size connections (so that a wrong address fails now, not on a request)."""
        results = await asyncio.gather(
            *(self._connect() for _ in range(self.min_size)), return_exceptions=True
        )
        opened = [r for r in results if not isinstance(r, BaseException)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for conn in opened:
                conn.terminate()
            raise failure
        now = time.monotonic()
        self._idle.extend((conn, now) for conn in opened)
        self._schedule_reaper()

    def acquire(self, timeout: float | None = None) -> Lease[C]:
        """``async with pool.acquire() as conn``: a connection, waiting at most timeout for one."""
        return Lease(self, timeout)

    def size(self) -> int:
        """Connections open or being opened (lent and idle)."""
        return self._lent + len(self._idle)

    def stats(self) -> tuple[int, int, int]:
        """Connections lent (or being opened), idle, and callers waiting for one (for /metrics)."""
        return self._lent, len(self._idle), len(self._waiters)

    async def take(self, wait_s: float | None) -> C:
        """A connection for the caller alone, until it is given back (prefer acquire())."""
        if self._closed:
            raise asyncpg.InterfaceError("the pool is closed")
        if self._lent < self.max_size:
            self._lent += 1  # a free slot
            return await self._fill_slot()
        # Every slot is taken: wait for a connection given back, or for a slot a broken one
        # freed (None). A future and a timer handle, not a Semaphore and a timeout context: under
        # load most requests wait here.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[C | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if wait_s is None else loop.call_later(wait_s, _expire, waiter)
        try:
            conn = await waiter
        except BaseException:
            if not waiter.done():
                self._waiters.remove(waiter)
            elif not waiter.cancelled() and waiter.exception() is None:
                # Served, then cancelled before it could run: pass the slot on.
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    self.give_back(handed)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return await self._fill_slot() if conn is None else conn

    async def _fill_slot(self) -> C:
        # The caller holds a slot: lend an idle connection, or open one.
        try:
            if self._closed:
                raise asyncpg.InterfaceError("the pool is closed")
            while self._idle:
                conn = self._idle.pop()[0]
                if not conn.is_closed():
                    return conn
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    def give_back(self, conn: C, *, in_doubt: bool = False) -> None:
        """Return a connection taken with take(); in_doubt when its lease ended abnormally."""
        if conn.is_closed():
            self._free_slot()
        elif in_doubt or conn.is_in_transaction():
            conn.terminate()
            self._free_slot()
        elif self._closed:
            self._close_later(conn)
            self._free_slot()
        elif waiter := self._next_waiter():
            waiter.set_result(conn)  # straight to the caller waiting longest, slot and all
        else:
            self._idle.append((conn, time.monotonic()))
            self._lent -= 1

    def _free_slot(self) -> None:
        if waiter := self._next_waiter():
            waiter.set_result(None)  # its caller opens a connection in the slot
        else:
            self._lent -= 1

    def _next_waiter(self) -> asyncio.Future[C | None] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # timed out ones are left behind
                return waiter
        return None

    async def close(self) -> None:
        """Close the idle connections now, lent ones when they come back; refuse new leases."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        while waiter := self._next_waiter():
            waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._close_later(conn)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, conn: C) -> None:
        async def close() -> None:
            try:
                await conn.close(timeout=CLOSE_TIMEOUT_S)
            except Exception:  # already gone, or too slow: the socket goes either way
                conn.terminate()

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _schedule_reaper(self) -> None:
        if not self._closed and self.max_idle_s > 0:
            period = max(self.max_idle_s / 2, 0.05)
            self._reaper = asyncio.get_running_loop().call_later(period, self._reap)

    def _reap(self) -> None:
        # The front of the idle list waited longest: close from there, keeping min_size open.
        deadline = time.monotonic() - self.max_idle_s
        while self._idle and self.size() > self.min_size and self._idle[0][1] < deadline:
            conn = self._idle.pop(0)[0]
            self._close_later(conn)
        self._schedule_reaper()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Lease(Generic[C]):
    """The context manager of Pool.acquire()."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool[C], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: C | None = None

    async def __aenter__(self) -> C:
        self._conn = await self._pool.take(self._timeout)
        return self._conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Cancelled (or interrupted) mid-lease, or a query timed out or lost the server: a
            # query may still be running, or being cancelled, on it.
            in_doubt = exc is not None and (
                not isinstance(exc, Exception) or isinstance(exc, _IN_DOUBT)
            )
            self._pool.give_back(conn, in_doubt=in_doubt)
