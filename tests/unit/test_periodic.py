"""Periodic (server/periodic.py), the sweeper's and the scheduler's loop: what ends a round, what
ends the loop, and what close() stops and closes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from foreman import errors
from foreman.queue.postgres import PostgresQueue
from foreman.server.periodic import Periodic


class Pool:
    """What Periodic needs of a pool: close()."""

    closed = False

    async def close(self) -> None:
        self.closed = True


class Rounds(Periodic):
    """Raises the given errors in its first rounds, then sets ``steady``."""

    task_name = "test-periodic"
    what = "test round"
    log = logging.getLogger("tests.periodic")

    def __init__(self, *failures: Exception) -> None:
        # What a round publishes to is not used here: the postgres backend publishes nothing.
        super().__init__(Pool(), queue=PostgresQueue(), interval_s=0.001, batch=1)  # type: ignore[arg-type]
        self.failures = list(failures)
        self.rounds = 0
        self.steady = asyncio.Event()

    async def tick(self) -> None:
        self.rounds += 1
        if self.failures:
            raise self.failures.pop(0)
        self.steady.set()


async def test_an_outage_or_a_bug_skips_a_round_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = Rounds(OSError("connection refused"), errors.UnavailableError(), ValueError("a bug"))
    with caplog.at_level(logging.WARNING, logger="tests.periodic"):
        rounds.start()
        await asyncio.wait_for(rounds.steady.wait(), 5)
        await rounds.close()
    assert rounds.rounds >= 4
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages[:3] == [
        ("WARNING", "test round skipped, database unavailable: connection refused"),
        ("WARNING", f"test round skipped, database unavailable: {errors.UnavailableError()}"),
        ("ERROR", "test round failed"),
    ]


async def test_close_stops_the_rounds_and_closes_the_pool() -> None:
    rounds = Rounds()
    rounds.start()
    task = rounds._task
    assert task is not None
    await asyncio.wait_for(rounds.steady.wait(), 5)
    await rounds.close()
    assert task.done()
    assert rounds._task is None
    assert rounds._pool.closed  # type: ignore[attr-defined]
