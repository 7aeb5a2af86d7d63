"""store/db.run_again_on_deadlock against a real deadlock: work that PostgreSQL rolled back to
break one is run again; inside a caller's transaction block the error goes to the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foreman.store import db


@pytest.fixture
async def pair(db_url: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    victim = await asyncpg.connect(db_url)
    other = await asyncpg.connect(db_url)
    await victim.execute(
        "CREATE TABLE IF NOT EXISTS deadlock_probe (id int PRIMARY KEY, n int NOT NULL);"
        "TRUNCATE deadlock_probe; INSERT INTO deadlock_probe VALUES (1, 0), (2, 0)"
    )
    # The waiter that checks first is the one PostgreSQL aborts: make it always the victim.
    await victim.execute("SET deadlock_timeout = '50ms'")
    await other.execute("SET deadlock_timeout = '10s'")
    try:
        yield victim, other
    finally:
        await victim.execute("DROP TABLE deadlock_probe")
        await victim.close()
        await other.close()


async def _lock_in_turn(conn: asyncpg.Connection, first: int, then: int, locked: asyncio.Event,
                        go: asyncio.Event) -> None:  # fmt: skip
    async with conn.transaction():
        await conn.execute("UPDATE deadlock_probe SET n = n + 1 WHERE id = $1", first)
        locked.set()
        await go.wait()
        await conn.execute("UPDATE deadlock_probe SET n = n + 1 WHERE id = $1", then)


async def test_work_rolled_back_by_a_deadlock_is_run_again(pair) -> None:
    victim, other = pair
    calls = 0
    victim_locked, other_locked = asyncio.Event(), asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # the second time round, nothing stands in its way
            victim_locked.set()
            await _lock_in_turn(victim, 1, 2, asyncio.Event(), _set())
            return calls
        await _lock_in_turn(victim, 1, 2, victim_locked, other_locked)
        return calls

    others = asyncio.create_task(_lock_in_turn(other, 2, 1, other_locked, victim_locked))
    assert await db.run_again_on_deadlock(victim, work) == 2
    await others
    rows = await victim.fetch("SELECT n FROM deadlock_probe ORDER BY id")
    assert [r["n"] for r in rows] == [2, 2]  # each transaction once: the victim's first undone


async def test_inside_a_transaction_block_the_deadlock_goes_to_the_caller(pair) -> None:
    victim, other = pair
    calls = 0
    victim_locked, other_locked = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        nonlocal calls
        calls += 1
        await victim.execute("UPDATE deadlock_probe SET n = n + 1 WHERE id = 1")
        victim_locked.set()
        await other_locked.wait()
        await victim.execute("UPDATE deadlock_probe SET n = n + 1 WHERE id = 2")

    others = asyncio.create_task(_lock_in_turn(other, 2, 1, other_locked, victim_locked))
    with pytest.raises(asyncpg.DeadlockDetectedError):
        async with victim.transaction():
            await db.run_again_on_deadlock(victim, work)
    await others
    assert calls == 1


def _set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event
