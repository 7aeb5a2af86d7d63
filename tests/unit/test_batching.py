"""MicroBatcher (worker/_batching.py): what goes out in which call, and what each caller gets back."""

from __future__ import annotations

import asyncio

import pytest

from foreman.worker._batching import MicroBatcher


class Sender:
    """A ``send`` that records its calls; it waits for ``gate`` when given, and fails on "bad"."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate
        self.calls: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, items: list[str]) -> list[str]:
        self.calls.append(list(items))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if "bad" in items:
                raise ValueError(f"refused {items}")
            return [f"answer-{item}" for item in items]
        finally:
            self.in_flight -= 1


async def settle(turns: int = 5) -> None:
    """Let the loop run a few turns: scheduled flushes and send tasks start."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def test_items_of_one_loop_turn_go_out_in_one_call():
    sender = Sender()
    batcher = MicroBatcher(sender, window_s=5.0, max_batch=100)
    futures = [batcher.submit(str(i)) for i in range(5)]
    async with asyncio.timeout(2):  # idle: the call goes out at once, not after window_s
        answers = await asyncio.gather(*futures)
    assert sender.calls == [["0", "1", "2", "3", "4"]]
    assert answers == [f"answer-{i}" for i in range(5)]


async def test_each_caller_gets_the_answer_at_its_position():
    async def send(items: list[int]) -> list[str]:
        return [f"{item}x{len(items)}" for item in items]

    batcher: MicroBatcher[int, str] = MicroBatcher(send, window_s=0.01, max_batch=100)
    futures = {item: batcher.submit(item) for item in (7, 3, 9, 1)}
    async with asyncio.timeout(2):
        await batcher.drain()
    assert {item: f.result() for item, f in futures.items()} == {
        7: "7x4",
        3: "3x4",
        9: "9x4",
        1: "1x4",
    }


async def test_an_error_of_send_reaches_every_item_of_its_batch_only():
    sender = Sender()
    batcher = MicroBatcher(sender, window_s=0.01, max_batch=100)
    failing = [batcher.submit(item) for item in ("a", "bad", "c")]
    async with asyncio.timeout(2):
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    assert len({id(outcome) for outcome in outcomes}) == 1  # the one exception send raised
    assert str(outcomes[0]) == "refused ['a', 'bad', 'c']"
    # The batcher is still usable: the next batch is answered normally.
    async with asyncio.timeout(2):
        assert await batcher.submit("d") == "answer-d"
    assert sender.calls == [["a", "bad", "c"], ["d"]]


async def test_max_batch_splits_a_burst():
    sender = Sender()
    batcher = MicroBatcher(sender, window_s=0.01, max_batch=3)
    futures = [batcher.submit(str(i)) for i in range(7)]
    async with asyncio.timeout(2):
        answers = await asyncio.gather(*futures)
        await batcher.drain()
    assert sender.calls == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert answers == [f"answer-{i}" for i in range(7)]


async def test_max_in_flight_bounds_the_calls_that_are_out():
    gate = asyncio.Event()
    sender = Sender(gate)
    batcher = MicroBatcher(sender, window_s=0.001, max_batch=2, max_in_flight=2)
    futures = [batcher.submit(str(i)) for i in range(10)]
    await asyncio.sleep(0.05)
    assert sender.in_flight == 2
    assert len(sender.calls) == 2
    assert not any(f.done() for f in futures)
    gate.set()
    async with asyncio.timeout(2):
        answers = await asyncio.gather(*futures)
        await batcher.drain()
    assert sender.most_in_flight == 2
    assert [item for call in sender.calls for item in call] == [str(i) for i in range(10)]
    assert answers == [f"answer-{i}" for i in range(10)]


async def test_items_that_wait_for_a_slot_join_the_next_larger_batch():
    gate = asyncio.Event()
    sender = Sender(gate)
    batcher = MicroBatcher(sender, window_s=0.005, max_batch=100, max_in_flight=1)
    first = batcher.submit("0")
    await settle()
    assert sender.calls == [["0"]]
    later = []
    for i in range(1, 4):  # over several windows: each would have made a call of its own
        later.append(batcher.submit(str(i)))
        await asyncio.sleep(0.02)
    assert sender.calls == [["0"]]  # the one slot is taken: nothing else went out
    gate.set()
    async with asyncio.timeout(2):
        await asyncio.gather(first, *later)
        await batcher.drain()
    assert sender.calls == [["0"], ["1", "2", "3"]]
    assert sender.most_in_flight == 1
    assert [f.result() for f in later] == ["answer-1", "answer-2", "answer-3"]


async def test_drain_returns_once_everything_submitted_is_answered():
    gate = asyncio.Event()
    sender = Sender(gate)
    # A long window: the second batch would wait 60 s for it, drain sends it at once.
    batcher = MicroBatcher(sender, window_s=60.0, max_batch=100, max_in_flight=1)
    first = batcher.submit("0")
    await settle()
    later = [batcher.submit(str(i)) for i in range(1, 4)]
    draining = asyncio.create_task(batcher.drain())
    await asyncio.sleep(0.05)
    assert not draining.done()  # the first call is still out
    gate.set()
    async with asyncio.timeout(2):
        await draining
    assert all(f.done() for f in [first, *later])
    assert [f.result() for f in later] == ["answer-1", "answer-2", "answer-3"]
    assert sender.calls == [["0"], ["1", "2", "3"]]


async def test_drain_waits_for_failing_calls_without_raising():
    sender = Sender()
    batcher = MicroBatcher(sender, window_s=60.0, max_batch=100)
    futures = [batcher.submit(item) for item in ("bad", "x")]
    async with asyncio.timeout(2):
        await batcher.drain()
    for future in futures:
        with pytest.raises(ValueError, match="refused"):
            future.result()
