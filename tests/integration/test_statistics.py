"""analyze_new_tables (store/statistics.py) on a database of each test's own, as the table owner.

Each test has a fresh migrated database, so no other test's rows count as changes, and
autovacuum is off on its tables, so only the code under test analyses them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foreman.store import statistics
from foreman.store.statistics import MIN_CHANGES, analyze_new_tables
from tests.services import scratch_database


@pytest.fixture
async def conn(admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with scratch_database(admin_url, "foreman_stats", migrate=True) as url:
        connection = await asyncpg.connect(url)
        try:
            for table in statistics.TABLES:
                await connection.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
            yield connection
        finally:
            await connection.close()


async def add_run(conn: asyncpg.Connection) -> uuid.UUID:
    run_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
        " VALUES ($1, 'orga', '{}', 0, 0)",
        run_id,
    )
    return run_id


async def add_tasks(conn: asyncpg.Connection, run_id: uuid.UUID, count: int) -> None:
    await conn.execute(
        "INSERT INTO task (id, run_id, org_id, type, input_data, created_at, updated_at)"
        " SELECT gen_random_uuid(), $1, 'orga', 't', '{}', 0, 0 FROM generate_series(1, $2)",
        run_id,
        count,
    )
    # This session's counters reach pg_stat_user_tables when it next goes idle; make that now.
    await conn.execute("SELECT pg_stat_force_next_flush()")


async def table_stats(conn: asyncpg.Connection, table: str) -> asyncpg.Record:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT n_mod_since_analyze, last_analyze, last_autoanalyze"
        " FROM pg_stat_user_tables WHERE relname = $1",
        table,
    )
    assert row is not None
    return row


async def wait_for_changes(conn: asyncpg.Connection, table: str, count: int) -> None:
    """Until pg_stat_user_tables counts count changes of table (its counters lag a little)."""
    deadline = time.monotonic() + 5
    while (await table_stats(conn, table))["n_mod_since_analyze"] < count:
        assert time.monotonic() < deadline, f"{table}: changes not counted"
        await asyncio.sleep(0.05)


async def test_a_table_with_min_changes_is_analysed_once(conn):
    run_id = await add_run(conn)
    await add_tasks(conn, run_id, MIN_CHANGES)
    await wait_for_changes(conn, "task", MIN_CHANGES)
    async with conn.transaction():  # as the sweeper calls it
        assert await analyze_new_tables(conn) == ["task"]  # run (1 change), run_data (0): not yet
    task = await table_stats(conn, "task")
    assert task["last_analyze"] is not None
    assert task["n_mod_since_analyze"] == 0
    assert (await table_stats(conn, "run"))["last_analyze"] is None
    assert (await table_stats(conn, "run_data"))["last_analyze"] is None

    assert await analyze_new_tables(conn) == []
    # Analysed once is enough (autovacuum keeps the statistics): more changes change nothing.
    await add_tasks(conn, run_id, MIN_CHANGES)
    await wait_for_changes(conn, "task", MIN_CHANGES)
    assert await analyze_new_tables(conn) == []
    assert (await table_stats(conn, "task"))["last_analyze"] == task["last_analyze"]


async def test_a_table_below_min_changes_is_not_analysed(conn):
    run_id = await add_run(conn)
    await add_tasks(conn, run_id, MIN_CHANGES - 1)
    await wait_for_changes(conn, "task", MIN_CHANGES - 1)
    assert await analyze_new_tables(conn) == []
    assert (await table_stats(conn, "task"))["last_analyze"] is None

    await add_tasks(conn, run_id, 1)  # the one change that reaches MIN_CHANGES
    await wait_for_changes(conn, "task", MIN_CHANGES)
    assert await analyze_new_tables(conn) == ["task"]
    assert (await table_stats(conn, "task"))["last_analyze"] is not None


async def test_every_table_that_qualifies_is_analysed(conn):
    run_ids = [uuid.uuid4() for _ in range(MIN_CHANGES)]
    await conn.execute(
        "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
        " SELECT id, 'orga', '{}', 0, 0 FROM unnest($1::uuid[]) AS id",
        run_ids,
    )
    await add_tasks(conn, run_ids[0], MIN_CHANGES)
    await wait_for_changes(conn, "run", MIN_CHANGES)
    await wait_for_changes(conn, "task", MIN_CHANGES)
    assert sorted(await analyze_new_tables(conn)) == ["run", "task"]
    for table in ("run", "task"):
        assert (await table_stats(conn, table))["last_analyze"] is not None
    assert (await table_stats(conn, "run_data"))["last_analyze"] is None


async def test_a_table_analysed_while_empty_is_analysed_again_once_it_has_rows(conn):
    # A fresh deployment's first VACUUM (ANALYZE) finds the tables empty: analysed, yet without
    # column statistics, which leaves the planner guessing as if never analysed.
    await conn.execute("ANALYZE task")
    empty = await table_stats(conn, "task")
    assert empty["last_analyze"] is not None
    run_id = await add_run(conn)
    await add_tasks(conn, run_id, MIN_CHANGES - 1)
    await wait_for_changes(conn, "task", MIN_CHANGES - 1)
    assert await analyze_new_tables(conn) == []  # below MIN_CHANGES: not yet

    await add_tasks(conn, run_id, 1)
    await wait_for_changes(conn, "task", MIN_CHANGES)
    assert await analyze_new_tables(conn) == ["task"]
    assert (await table_stats(conn, "task"))["last_analyze"] > empty["last_analyze"]
    assert await conn.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = 'task'") > 0
    # It has statistics now: more changes do not analyse it again (autovacuum's part).
    await add_tasks(conn, run_id, MIN_CHANGES)
    await wait_for_changes(conn, "task", MIN_CHANGES)
    assert await analyze_new_tables(conn) == []
