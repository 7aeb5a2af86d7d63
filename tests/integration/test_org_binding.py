"""How a direct connection is bound to an organisation (store/db.py, session mode): the
organisation is a session setting changed only when the connection changes organisation, in the
round trip of the next statement. These tests take one connection through changes that could
leave it holding another organisation than the one its statements must see."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foreman.store import db
from foreman.store.pool import Pool

ORGS = ("bind-a", "bind-b")


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[Pool[db.Connection]]:
    owner = await asyncpg.connect(db_url)
    try:
        for org in ORGS:
            await owner.execute(
                "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
                " VALUES ($1, $2, '{}', 0, 0)",
                uuid.uuid4(),
                org,
            )
    finally:
        await owner.close()
    pool = await db.create_pool(
        db_url, min_size=1, max_size=1, command_timeout_s=5, connect_timeout_s=3
    )
    try:
        yield pool
    finally:
        await pool.close()


async def seen(conn: asyncpg.Connection) -> tuple[str | None, list[str]]:
    """The organisation the statement ran under and the organisations of the runs it saw."""
    rows = await conn.fetch(
        "SELECT current_setting('app.current_org_id', true) AS bound, org_id FROM run"
        " RIGHT JOIN (SELECT 1) one ON true WHERE $1::int = 1",
        1,
    )
    return rows[0]["bound"], sorted(r["org_id"] for r in rows if r["org_id"] is not None)


async def test_one_connection_serves_each_organisation_in_turn(pool: Pool[db.Connection]) -> None:
    for org in (*ORGS, ORGS[0], ORGS[0], ORGS[1]):
        async with db.org_connection(pool, org) as conn:
            assert await seen(conn) == (org, [org])
            assert await conn.fetchval("SELECT current_user") == db.APP_ROLE
    async with pool.acquire() as conn:  # not bound: sees no organisation's rows
        bound, orgs = await seen(conn)
        assert (bound or "", orgs) == ("", [])


async def test_a_change_rolled_back_with_its_statement_is_made_again(
    pool: Pool[db.Connection],
) -> None:
    async with db.org_connection(pool, ORGS[0]) as conn:
        assert await seen(conn) == (ORGS[0], [ORGS[0]])
    async with db.org_connection(pool, ORGS[1]) as conn:
        # The change travels with this statement, which fails: both roll back.
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("SELECT 1 / $1::int", 0)
        assert await seen(conn) == (ORGS[1], [ORGS[1]])
        assert await conn.execute("SELECT 1 FROM run") == "SELECT 1"  # no arguments: carried too


async def test_a_change_inside_a_transaction_block_holds_for_that_block(
    pool: Pool[db.Connection],
) -> None:
    async with db.org_connection(pool, ORGS[0]) as conn:
        assert await seen(conn) == (ORGS[0], [ORGS[0]])
    async with db.org_connection(pool, ORGS[1]) as conn:
        transaction = conn.transaction()
        await transaction.start()
        assert await seen(conn) == (ORGS[1], [ORGS[1]])
        assert await seen(conn) == (ORGS[1], [ORGS[1]])
        await transaction.rollback()
        assert await seen(conn) == (ORGS[1], [ORGS[1]])
        async with conn.transaction():
            assert await seen(conn) == (ORGS[1], [ORGS[1]])
    async with db.org_connection(pool, ORGS[0]) as conn:
        assert await seen(conn) == (ORGS[0], [ORGS[0]])
