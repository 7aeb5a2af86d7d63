"""Faster fixtures for the API tests: one app for the session, tables emptied with DELETE.

A test here leaves a handful of rows. Deleting them takes about 1 ms, where TRUNCATE (an
exclusive lock and new files for each table) took 15-40 ms on a busy 2-core machine, and starting
a new app (pool, lifespan) took another 30 ms: per test, that was most of the suite's time.

The client calls the app in the test's own event loop (httpx's ASGI transport), so requests
gathered together really run concurrently, and the app's pool can be used directly by a test.
Tests that need other settings build their own app with ``tests.conftest.make_settings``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from litestar import Litestar

from foreman.server.app import create_app
from tests.conftest import TABLES, make_settings
from tests.queue_helpers import running_app


@pytest.fixture(scope="session")
async def session_app(database_url: str) -> Litestar:
    # No sweeper and no firing loop: these tests never hold leases, schedules fire only when a
    # test says so (with its own clock), and a background writer would only add noise.
    return create_app(make_settings(database_url, sweep_enabled=False, schedule_enabled=False))


@pytest.fixture(scope="session")
async def session_client(session_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(session_app) as http:
        yield http


@pytest.fixture(scope="session")
async def admin_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection (it sees every organisation's rows)."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def db_url(database_url: str, admin_conn: asyncpg.Connection) -> str:
    """Every table emptied (children first): real commits, many connections, no leftovers."""
    # One table per statement: one transaction holding all of them could deadlock with the app's
    # scheduler, which locks schedules and then writes runs and tasks.
    for table in TABLES:
        await admin_conn.execute(f"DELETE FROM {table}")
    return database_url


@pytest.fixture
async def client(db_url: str, session_client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The real app over the emptied test database, driven in process."""
    return session_client


@pytest.fixture
async def app(client: httpx.AsyncClient, session_app: Litestar) -> Litestar:
    """The app behind ``client`` (its state holds the pool the server's queries use)."""
    return session_app
