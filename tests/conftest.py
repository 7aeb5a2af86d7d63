"""Shared fixtures: a fresh migrated database per session, emptied per test, and the app."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from foreman.server.app import create_app
from foreman.settings import Settings
from tests.services import (
    MOTO_AWS_ENV,
    MotoServer,
    OwnRabbitMQ,
    PgBouncer,
    RedisServer,
    admin_postgres_url,
    rabbitmq_url,
    scratch_database,
)

KEY_A = "fmn_test_orga_k1"
KEY_B = "fmn_test_orgb_k2"
ORG_A = "orga"
ORG_B = "orgb"
HEADERS_A = {"Authorization": f"Bearer {KEY_A}"}
HEADERS_B = {"x-api-key": KEY_B}

TABLES = ("task_attempt", "task_dependency", "run_data", "task", "run_counter", "run", "schedule")

# FOREMAN_TEST_VIA_PGBOUNCER=true: every app the tests build (make_settings) reaches its database
# through a PgBouncer in transaction mode (scripts/test.sh runs the API and tenant-isolation
# suites so once more); fixtures and checks still connect directly.
VIA_PGBOUNCER = os.environ.get("FOREMAN_TEST_VIA_PGBOUNCER") == "true"
_bouncer: list[PgBouncer] = []


@pytest.fixture(scope="session")
async def admin_url() -> str:
    return await admin_postgres_url()


@pytest.fixture(scope="session")
async def database_url(admin_url: str) -> AsyncIterator[str]:
    """A new database for this session with every migration applied; dropped at the end."""
    async with scratch_database(admin_url, "foreman_test", migrate=True) as url:
        yield url


async def truncate_all(url: str) -> None:
    """Empty every table. A live server's sweeper or scheduler may hold row locks in another
    order at that moment: PostgreSQL then aborts one side with a deadlock, and this tries again."""
    conn = await asyncpg.connect(url)
    try:
        for attempt in range(5):
            try:
                await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == 4:
                    raise
    finally:
        await conn.close()


@pytest.fixture
async def db_url(database_url: str) -> str:
    """Every table emptied: real commits, many connections, no leftovers."""
    await truncate_all(database_url)
    return database_url


@pytest.fixture(scope="session")
def pgbouncer(admin_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the tests' PostgreSQL."""
    bouncer = PgBouncer(admin_url).start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(scope="session", autouse=VIA_PGBOUNCER)
def _apps_via_pgbouncer(request: pytest.FixtureRequest) -> Iterator[None]:
    if not VIA_PGBOUNCER:
        yield
        return
    _bouncer.append(request.getfixturevalue("pgbouncer"))
    yield
    _bouncer.clear()


def make_settings(url: str, **overrides: object) -> Settings:
    if _bouncer:
        # LISTEN needs a session of its own: straight to PostgreSQL (FOREMAN_DATABASE_LISTEN_URL).
        overrides = {"db_pgbouncer": True, "database_listen_url": url, **overrides}
        url = _bouncer[0].url(url)
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


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[str]:
    """The URL of a running RabbitMQ: the machine's, else a node started for this session when
    rabbitmq-server is installed (about 10 s), else skipped (a failure with CI=true)."""
    url = rabbitmq_url()
    if url is not None:
        yield url
        return
    if not OwnRabbitMQ.installed():
        pytest.skip(
            "no RabbitMQ on 127.0.0.1:5672 and no rabbitmq-server to start one "
            "(apt-get install rabbitmq-server, or set FOREMAN_TEST_RABBITMQ_URL)"
        )
    node = OwnRabbitMQ().start()
    try:
        yield node.url
    finally:
        node.remove()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto's SQS-compatible server for this session, with the AWS variables botocore needs."""
    saved = {name: os.environ.get(name) for name in MOTO_AWS_ENV}
    os.environ.update(MOTO_AWS_ENV)
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
