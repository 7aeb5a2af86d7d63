"""Shared fixtures: a fresh migrated database per session, emptied per test, and the app."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from foreman.server.app import create_app
from foreman.settings import Settings
from tests.services import RedisServer, admin_postgres_url, scratch_database

KEY_A = "fmn_test_orga_k1"
KEY_B = "fmn_test_orgb_k2"
ORG_A = "orga"
ORG_B = "orgb"
HEADERS_A = {"Authorization": f"Bearer {KEY_A}"}
HEADERS_B = {"x-api-key": KEY_B}

TABLES = (
    "task_attempt",
    "task_dependency",
    "run_data",
    "task",
    "run_counter",
    "run",
)


@pytest.fixture(scope="session")
async def admin_url() -> str:
    return await admin_postgres_url()


@pytest.fixture(scope="session")
async def database_url(admin_url: str) -> AsyncIterator[str]:
    """A new database for this session with every migration applied; dropped at the end."""
    async with scratch_database(admin_url, "foreman_test", migrate=True) as url:
        yield url


async def truncate_all(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def db_url(database_url: str) -> str:
    """Every table emptied: real commits, many connections, no leftovers."""
    await truncate_all(database_url)
    return database_url


def make_settings(url: str, **overrides: object) -> Settings:
    return Settings(database_url=url, db_pool_min=1, db_pool_max=10, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The real app over the test database, driven in process (lifespan included)."""
    app = create_app(make_settings(db_url))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


# With CI=true nothing may be skipped (a missing service is an error, not a skip): a skip is
# reported as a failure. Expected failures (xfail) stay what they are.
def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped with CI=true, where every test must run: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_skip_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_skip_in_ci(report)
    return report
