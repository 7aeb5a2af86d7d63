"""Fixtures of the security tests: apps with chosen security settings, registered keys."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from foreman import ids
from foreman.server.app import create_app
from foreman.store import api_keys
from tests.conftest import make_settings

AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[AsyncTestClient]]  # type: ignore[type-arg]


@pytest.fixture
def app_with(db_url: str) -> AppFactory:
    """A client of the real app over the test database, with settings overridden."""

    @contextlib.asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
        app = create_app(make_settings(db_url, **overrides))
        async with AsyncTestClient(app=app) as test_client:
            yield test_client

    return factory


@pytest.fixture
async def owner(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the database owner (what `foreman keys` uses); no keys at the start."""
    conn = await asyncpg.connect(db_url)
    await conn.execute("TRUNCATE api_key")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def make_key(owner: asyncpg.Connection) -> Callable[..., Any]:
    """Register a new key for an organisation; returns the NewKey (with the key in clear)."""

    async def factory(org_id: str, *, name: str | None = None) -> api_keys.NewKey:
        new = api_keys.new_key(org_id, environment="test")
        await api_keys.insert_api_key(owner, new, name=name, now=ids.now_ms())
        return new

    return factory


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
