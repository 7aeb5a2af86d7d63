"""Migrations from an empty database: schema, row-level security, the app role, idempotence."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from importlib import resources

import asyncpg
import pytest

from foreman.store.migrate import apply_migrations, apply_migrations_async
from tests.integration.live_server import run_foreman, server_env
from tests.services import scratch_database

TABLES = ("run", "run_counter", "task", "run_data", "task_attempt", "task_dependency", "schedule")


def _migration_ids() -> list[str]:
    directory = resources.files("foreman.store") / "migrations"
    return sorted(
        p.name.removesuffix(".sql") for p in directory.iterdir() if p.name.endswith(".sql")
    )


@pytest.fixture
async def empty_db(admin_url: str) -> AsyncIterator[str]:
    """A brand-new database with nothing in it, dropped afterwards."""
    async with scratch_database(admin_url, "foreman_migrate", migrate=False) as url:
        yield url


async def _public_tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


async def test_migrations_apply_once_to_an_empty_database(empty_db):
    assert "0001_initial" in _migration_ids()
    assert await apply_migrations_async(empty_db) == _migration_ids()
    assert await apply_migrations_async(empty_db) == []  # idempotent: nothing left to apply
    assert set(TABLES) <= await _public_tables(empty_db)

    conn = await asyncpg.connect(empty_db)
    try:
        recorded = await conn.fetch("SELECT migration_id FROM _yoyo_migration")
        assert sorted(r["migration_id"] for r in recorded) == _migration_ids()
        rls = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relname = ANY($1::text[]) AND relkind = 'r'",
            list(TABLES),
        )
        # Enabled, not forced: the owner (the sweeper, migrations) works across organisations,
        # and the server's requests run as foreman_app, which the policies do bind.
        flags = {r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"]) for r in rls}
        assert flags == dict.fromkeys(TABLES, (True, False))
        policies = await conn.fetch(
            "SELECT tablename, qual, with_check FROM pg_policies WHERE schemaname = 'public'"
        )
        by_table = {p["tablename"]: p for p in policies}
        assert set(TABLES) <= set(by_table)
        for table in TABLES:
            assert "app.current_org_id" in by_table[table]["qual"]
            assert "app.current_org_id" in by_table[table]["with_check"]
    finally:
        await conn.close()


async def test_a_migrated_database_does_not_jit_compile(empty_db):
    """Migration 0020: JIT took 1-2 s per batch insert whose estimate passed jit_above_cost."""
    before = await asyncpg.connect(empty_db)
    try:
        assert await before.fetchval("SHOW jit") == "on"  # PostgreSQL's default: the test can fail
    finally:
        await before.close()
    await apply_migrations_async(empty_db)
    after = await asyncpg.connect(empty_db)
    try:
        assert await after.fetchval("SHOW jit") == "off"
    finally:
        await after.close()


async def test_the_app_role_is_bound_by_row_level_security(empty_db):
    await apply_migrations_async(empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        role = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'foreman_app'"
        )
        assert role is not None
        assert dict(role) == {"rolsuper": False, "rolbypassrls": False, "rolcanlogin": False}
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE tableowner = 'foreman_app'"
        )
        assert owned == 0  # an owner would not be subject to its own table's policies
        for table in TABLES:
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                assert await conn.fetchval(
                    "SELECT has_table_privilege('foreman_app', $1, $2)", table, privilege
                )

        insert = (
            "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
            " VALUES ($1, $2, '{}'::jsonb, 0, 0)"
        )
        for org in ("org-a", "org-a", "org-b"):
            await conn.execute(insert, uuid.uuid4(), org)

        # The server's connections: SET ROLE foreman_app, then the organisation setting.
        await conn.execute("SET ROLE foreman_app")
        assert await conn.fetchval("SELECT count(*) FROM run") == 0  # no organisation: nothing
        await conn.execute("SELECT set_config('app.current_org_id', 'org-a', false)")
        assert await conn.fetchval("SELECT count(*) FROM run") == 2  # a query with no org filter
        assert await conn.fetchval("SELECT count(*) FROM run WHERE org_id = 'org-b'") == 0
        assert await conn.execute("UPDATE run SET status = 'running'") == "UPDATE 2"
        assert await conn.execute("DELETE FROM run WHERE org_id = 'org-b'") == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(insert, uuid.uuid4(), "org-b")
        await conn.execute("RESET ROLE")
        assert await conn.fetchval("SELECT count(*) FROM run WHERE status = 'pending'") == 1
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_each_migration_exactly_once(empty_db):
    # Several servers starting at once all migrate: yoyo's lock must serialise them.
    results = await asyncio.gather(
        *(asyncio.to_thread(apply_migrations, empty_db) for _ in range(3))
    )
    assert sorted(results, key=len) == [[], [], _migration_ids()]
    assert set(TABLES) <= await _public_tables(empty_db)


async def test_foreman_migrate_command(empty_db, tmp_path):
    env = server_env(FOREMAN_DATABASE_URL=empty_db)
    first = await asyncio.to_thread(run_foreman, ["migrate"], env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ids = _migration_ids()
    assert first.stdout.strip() == f"applied {len(ids)} migration(s): {', '.join(ids)}"
    assert set(TABLES) <= await _public_tables(empty_db)

    again = await asyncio.to_thread(run_foreman, ["migrate"], env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "applied 0 migration(s)"


async def test_foreman_migrate_reports_an_unreachable_database(tmp_path):
    # A closed port: a clear error and a non-zero exit, not a hang.
    from tests.services import free_port

    env = server_env(FOREMAN_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    result = await asyncio.to_thread(run_foreman, ["migrate"], env=env, cwd=tmp_path, timeout_s=60)
    assert result.returncode != 0
    assert "applied" not in result.stdout
