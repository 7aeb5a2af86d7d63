"""Micro-batching: items submitted about together go out in one call, each caller gets its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class MicroBatcher(Generic[Item, Answer]):
    """Sends submitted items in batches through ``send`` (one answer per item, in order).

    Idle, a submission goes out at the next loop turn (latency). While a call is out, later
    items gather for ``window_s`` (or ``max_batch`` of them); at most ``max_in_flight`` calls
    are out, later items wait for a slot and join the next, larger batch. If ``send`` raises,
    every item of its batch gets that exception.
    """

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Answer]]],
        *,
        window_s: float,
        max_batch: int,
        max_in_flight: int = 2,
    ) -> None:
        self._send_batch = send
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._sending: set[asyncio.Task[None]] = set()
        # The loop of the first submit, kept: asking for the running loop costs a getpid system
        # call each time, and a worker submits once per task.
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, item: Item) -> asyncio.Future[Answer]:
        """Queue item; the future resolves to its answer."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            delay = self.window_s if self._sending else 0.0
            self._timer = loop.call_later(delay, self._flush)
        return future

    async def drain(self) -> None:
        """Until everything submitted so far has been sent and answered."""
        while self._pending or self._sending:
            if self._pending and not self._sending:
                self._flush()  # now, not after the window
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            sending = asyncio.get_running_loop().create_task(self._send())
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _send(self) -> None:
        async with self._slots:
            # Taken only once a slot is free: items that arrived meanwhile join this call.
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            if not batch:
                return
            try:
                answers = await self._send_batch([item for item, _ in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(f"{len(answers)} answers for a batch of {len(batch)}")
            except Exception as exc:  # each item fails with it, as its own call would have
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            except BaseException:
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        if self._pending and self._timer is None:
            self._flush()  # more items waited for this slot
