"""Fixtures of the fault-injection suite: PostgreSQL, Redis and brokers of its own where a test
stops or restarts them, never the shared ones.

The whole package runs on a PostgreSQL cluster started here (pgserver's binaries, data in a temp
folder) and on a redis-server of its own, because the tests stop, kill, flush and restart them.
The end-to-end fixtures (server and worker processes) are reused from tests/e2e: this conftest
only points their ``database_url`` at the private cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from foreman.store.migrate import apply_migrations_async
from tests.e2e.conftest import (  # noqa: F401 - fixtures reused by the fault tests
    bull_server,
    e2e_dir,
    own_redis,
    pg_server,
    rmq_server,
    server,
    sqs_server,
    workers,
)
from tests.faults.report import FaultReport
from tests.integration.test_operations import OwnPostgres
from tests.services import scratch_database

REPORT_KEY = pytest.StashKey[FaultReport]()


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[OwnPostgres]:
    """A migrated PostgreSQL cluster in a temp folder, stopped and deleted at the end."""
    # Outside pytest's temp tree: as root, pgserver runs PostgreSQL as the user "pgserver",
    # which must reach the data folder (see tests/integration/conftest.py).
    root = Path(tempfile.mkdtemp(prefix="foreman-faults-pg-"))
    postgres = await asyncio.to_thread(OwnPostgres, root)
    try:
        await apply_migrations_async(postgres.url)
        yield postgres
    finally:
        await asyncio.to_thread(postgres.close)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
async def faults_postgres() -> AsyncIterator[OwnPostgres]:
    """The package's own PostgreSQL (the restart test starts another one for itself)."""
    async with private_postgres() as postgres:
        yield postgres


@pytest.fixture(scope="package")
def database_url(faults_postgres: OwnPostgres) -> str:
    """Overrides the session database on the shared server: every fault test uses ours."""
    return str(faults_postgres.url)


@pytest.fixture
async def own_database(faults_postgres: OwnPostgres) -> AsyncIterator[str]:
    """A migrated database of the test's own on the package's cluster: the package-scoped
    servers (whose sweepers work on database_url) never touch it."""
    async with scratch_database(str(faults_postgres.url), "foreman_fault", migrate=True) as url:
        yield url


@pytest.fixture(scope="session")
def fault_report(request: pytest.FixtureRequest) -> Iterator[FaultReport]:
    """Collects each fault's figures; written to the JSON report at the end of the session."""
    report = FaultReport()
    request.config.stash[REPORT_KEY] = report
    yield report
    if report.faults:
        report.write()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is None or not report.faults:
        return
    terminalreporter.section("fault figures")
    for line in report.lines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(merged into {report.path})")
