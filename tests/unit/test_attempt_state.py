"""AttemptState makes its Event only when a flag is raised or a handler waits (worker/context.py)."""

from __future__ import annotations

import asyncio

from foreman.worker.context import AttemptState


async def test_a_flag_raised_before_the_first_wait_is_seen_by_it():
    state = AttemptState()
    state.mark(cancelled=True)
    async with asyncio.timeout(1):
        await state.stop.wait()
    assert state.cancelled


async def test_a_flag_raised_during_a_wait_wakes_it():
    state = AttemptState()
    waiting = asyncio.ensure_future(state.stop.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    state.mark(lease_lost=True)
    async with asyncio.timeout(1):
        await waiting
    assert state.lease_lost
    assert not state.cancelled


def test_no_event_until_marked_or_waited():
    assert AttemptState()._stop is None
