"""Threads for sync handlers: daemon threads, so a handler stuck past the grace period cannot keep
the process alive (``concurrent.futures`` joins its threads at exit, whatever they are doing)."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]


class DaemonThreads:
    """At most max_threads daemon threads, started as calls need them, running calls in order."""

    def __init__(self, max_threads: int, *, name: str) -> None:
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a thread with the caller's context variables, awaited."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()
        self._jobs.put((loop, future, lambda: context.run(fn, *args)))
        self._grow()
        return await future

    def _grow(self) -> None:
        with self._lock:
            # Idle threads are blocked in get(): they take the waiting calls first.
            if self._jobs.qsize() <= self._idle or len(self._threads) >= self.max_threads:
                return
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                return
            loop, future, call = job
            try:
                result = call()
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def shutdown(self) -> None:
        """Let idle threads end; busy ones end after their call (they never block exit)."""
        for _ in self._threads:
            self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
