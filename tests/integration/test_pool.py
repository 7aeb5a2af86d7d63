"""The connection pool of store/pool.py against the real PostgreSQL.

Connections are told apart by their server process id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foreman import errors
from foreman.store import db
from foreman.store.pool import Pool


async def make_pool(url: str, *, min_size: int = 0, max_size: int = 2) -> Pool[db.Connection]:
    return await db.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout_s=5, connect_timeout_s=3
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool[db.Connection]]:
    pool = await make_pool(database_url)
    try:
        yield pool
    finally:
        await pool.close()


async def pid_of(pool: Pool[db.Connection]) -> int:
    async with pool.acquire() as conn:
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        return pid


async def test_the_last_connection_given_back_is_lent_next(pool: Pool[db.Connection]) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        pids = (first.get_server_pid(), second.get_server_pid())
    assert pids[0] != pids[1]
    assert pool.size() == 2
    # LIFO: the warmest connection (given back last: first) is lent again, twice in a row.
    assert await pid_of(pool) == pids[0]
    assert await pid_of(pool) == pids[0]
    assert pool.size() == 2


async def test_no_more_than_max_size_are_lent(pool: Pool[db.Connection]) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        assert pool.size() == 2
        with pytest.raises(TimeoutError):
            async with pool.acquire(timeout=0.2):
                pass
        waiter = asyncio.ensure_future(pid_of(pool))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        pids = {first.get_server_pid(), second.get_server_pid()}
    # Giving both back let the waiter in, on one of them: no third connection was opened.
    assert await asyncio.wait_for(waiter, 5) in pids
    assert pool.size() == 2


async def test_a_waiter_is_served_by_the_connection_given_back(
    pool: Pool[db.Connection],
) -> None:
    held = await pool.take(None)
    other = await pool.take(None)
    waiter = asyncio.ensure_future(pid_of(pool))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    pool.give_back(held)
    assert await asyncio.wait_for(waiter, 5) == held.get_server_pid()
    pool.give_back(other)
    assert pool.size() == 2


async def test_waiters_that_gave_up_cost_no_slot(pool: Pool[db.Connection]) -> None:
    held = [await pool.take(None), await pool.take(None)]
    cancelled = asyncio.ensure_future(pool.take(None))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    with pytest.raises(TimeoutError):
        await pool.take(0.05)
    for conn in held:
        pool.give_back(conn)
    # Both connections went back to the idle list, none to a caller who left.
    assert pool.size() == 2
    async with pool.acquire(timeout=1) as first, pool.acquire(timeout=1) as second:
        assert {first.get_server_pid(), second.get_server_pid()} == {
            c.get_server_pid() for c in held
        }


async def test_a_slot_freed_by_a_broken_connection_lets_a_waiter_open_one(
    pool: Pool[db.Connection],
) -> None:
    held = [await pool.take(None), await pool.take(None)]
    held_pids = {c.get_server_pid() for c in held}
    waiter = asyncio.ensure_future(pid_of(pool))
    await asyncio.sleep(0.05)
    pool.give_back(held[0], in_doubt=True)  # terminated: its slot goes to the waiter
    pid = await asyncio.wait_for(waiter, 5)
    assert pid not in held_pids
    pool.give_back(held[1])
    assert pool.size() == 2


async def test_closing_the_pool_fails_its_waiters(database_url: str) -> None:
    pool = await make_pool(database_url, max_size=1)
    held = await pool.take(None)
    waiter = asyncio.ensure_future(pool.take(None))
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(pool.close())
    with pytest.raises(asyncpg.InterfaceError):
        await asyncio.wait_for(waiter, 5)
    await asyncio.wait_for(closing, 5)
    pool.give_back(held)
    await pool.close()  # waits for the connection given back to close
    assert held.is_closed()


async def test_a_connection_closed_by_the_server_while_idle_is_not_lent(
    pool: Pool[db.Connection], admin_url: str
) -> None:
    victim = await pid_of(pool)
    admin = await asyncpg.connect(admin_url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", victim)
    finally:
        await admin.close()
    for _ in range(50):  # the client notices the closed socket on its next loop turn
        await asyncio.sleep(0.02)
        async with pool.acquire() as conn:
            if conn.get_server_pid() != victim:
                assert await conn.fetchval("SELECT 1") == 1
                break
    else:
        pytest.fail("the terminated connection kept being lent")


async def test_an_ordinary_error_keeps_the_connection(pool: Pool[db.Connection]) -> None:
    before = await pid_of(pool)
    with pytest.raises(asyncpg.UndefinedTableError):
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT * FROM no_such_table")
    assert await pid_of(pool) == before


async def test_a_cancelled_lease_ends_its_connection(pool: Pool[db.Connection]) -> None:
    before = await pid_of(pool)
    started = asyncio.Event()

    async def sleep_in_the_database() -> None:
        async with pool.acquire() as conn:
            started.set()
            await conn.execute("SELECT pg_sleep(10)")

    task = asyncio.ensure_future(sleep_in_the_database())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await pid_of(pool)
    assert after != before  # the connection with the query still running was not reused
    assert pool.size() == 1


async def test_a_timed_out_query_ends_its_connection(database_url: str) -> None:
    pool = await db.create_pool(
        database_url, min_size=0, max_size=1, command_timeout_s=0.2, connect_timeout_s=3
    )
    pids: list[int] = []

    async def sleep_too_long() -> None:
        async with pool.acquire() as conn:
            pids.append(conn.get_server_pid())
            # As if PostgreSQL stopped answering: its own statement_timeout does not stop this
            # one, asyncpg's timeout (a moment later) does. (A simple query of asyncpg's own: it
            # carries no per-transaction statement_timeout.)
            await asyncpg.Connection.execute(conn, "SET statement_timeout = 0; SELECT pg_sleep(3)")

    try:
        with pytest.raises(TimeoutError):
            await sleep_too_long()
        # Not the connection still cancelling its query: the next lease answers at once.
        async with pool.acquire() as conn:
            assert conn.get_server_pid() != pids[0]
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_slow_statement_is_cancelled_by_postgresql_and_keeps_its_connection(
    database_url: str,
) -> None:
    pool = await db.create_pool(
        database_url, min_size=0, max_size=1, command_timeout_s=0.2, connect_timeout_s=3
    )
    pids: list[int] = []

    async def sleep_too_long() -> None:
        async with db.org_connection(pool, "org") as conn:
            pids.append(conn.get_server_pid())
            await conn.execute("SELECT pg_sleep(3)")

    try:
        with pytest.raises(errors.StatementTimeoutError) as caught:
            await sleep_too_long()
        assert caught.value.status_code == 504
        async with db.org_connection(pool, "org") as conn:
            assert conn.get_server_pid() == pids[0]
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_no_free_connection_in_time_is_server_busy(pool: Pool[db.Connection]) -> None:
    async with pool.acquire(), pool.acquire():
        with pytest.raises(errors.UnavailableError, match="Server busy") as caught:
            async with db.org_connection(pool, "org", timeout_s=0.05):
                pass
    assert caught.value.status_code == 503


async def test_a_transaction_left_open_ends_its_connection(pool: Pool[db.Connection]) -> None:
    async with pool.acquire() as conn:
        before = conn.get_server_pid()
        await conn.execute("BEGIN")
        await conn.execute("CREATE TEMP TABLE leftover (x int)")
    async with pool.acquire() as conn:
        assert conn.get_server_pid() != before
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('pg_temp.leftover')") is None


async def test_connections_idle_too_long_are_closed_down_to_min_size(database_url: str) -> None:
    pool = Pool(
        lambda: asyncpg.connect(database_url),
        min_size=1,
        max_size=3,
        max_idle_s=0.2,
    )
    await pool.open()
    try:
        assert pool.size() == 1
        leases = [await pool.take(None) for _ in range(3)]
        for conn in leases:
            pool.give_back(conn)
        assert pool.size() == 3
        for _ in range(50):
            await asyncio.sleep(0.05)
            if pool.size() == 1:
                break
        assert pool.size() == 1
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_close_closes_idle_connections_now_and_lent_ones_when_back(
    database_url: str, admin_url: str
) -> None:
    pool = await make_pool(database_url, min_size=2, max_size=2)
    idle_pid = await pid_of(pool)
    lent = await pool.take(None)
    await pool.close()
    assert not lent.is_closed()  # still the caller's until given back
    with pytest.raises(asyncpg.InterfaceError):
        await pool.take(None)
    pool.give_back(lent)
    await pool.close()  # waits for the connection given back to close
    assert lent.is_closed()
    admin = await asyncpg.connect(admin_url)
    try:
        alive = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
            [idle_pid, lent.get_server_pid()],
        )
    finally:
        await admin.close()
    assert alive == 0


async def test_a_database_that_cannot_be_reached_fails_the_open() -> None:
    with pytest.raises(errors.UnavailableError):
        await make_pool("postgresql://postgres@127.0.0.1:1/foreman", min_size=2, max_size=2)


def test_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="min_size"):
        Pool(lambda: asyncpg.connect(), min_size=3, max_size=2)
