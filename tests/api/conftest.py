"""Faster fixtures for the API tests: one app for the session, tables emptied with DELETE.

A test here leaves a handful of rows. Deleting them takes about 1 ms, where TRUNCATE (an
exclusive lock and new files for each table) took 15-40 ms on a busy 2-core machine, and starting
a new app (pool, lifespan) took another 30 ms: per test, that was most of the suite's time.

The client calls the app in the test's own event loop (httpx's ASGI transport), so requests
gathered together really run concurrently, and the app's pool can be used directly by a test.
Tests that need other settings build their own app with ``tests.conftest.make_settings``.

The race tests of issue 13 must hold on both queue backends: they take ``backend`` (the postgres
app above, then a second session app on the bullmq backend with a queue of its own in Redis)
instead of ``client``, and on bullmq also check what reached Redis (``Published``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis
import redis.asyncio as redis_asyncio
from litestar import Litestar

from foreman.queue.bullmq import KEY_PREFIX, job_id
from foreman.queue.naming import org_queue_name
from foreman.server.app import create_app
from tests.conftest import ORG_A, TABLES, make_settings
from tests.queue_helpers import obliterate, redis_settings, running_app, unique_queue_name
from tests.services import RedisServer


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


# ---------------------------------------------------------------- both queue backends


class Published:
    """What the bullmq app published for organisation A, read back from Redis.

    BullMQ's add scripts write one ``added`` event to the queue's events stream for each job they
    create and one ``duplicated`` event for each add of a job id that exists already (the server's
    job ids are ``<taskId>:<attempt>``): so the stream says how many times each task's attempt
    was published, not only whether its job is there.
    """

    def __init__(self, server: RedisServer, queue_name: str) -> None:
        self.server = server
        self.queue_name = queue_name
        self.prefix = f"{KEY_PREFIX}:{queue_name}:"

    def clear(self) -> None:
        """Delete the queue's keys (the database was emptied: its jobs name tasks now gone)."""
        with redis.Redis(host=self.server.host, port=self.server.port) as client:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)

    async def _events(self) -> list[Any]:
        async with redis_asyncio.Redis(
            host=self.server.host, port=self.server.port, decode_responses=True
        ) as client:
            entries = await client.xrange(f"{self.prefix}events")
        return [fields for _, fields in entries or []]

    async def adds(self) -> tuple[Counter[str], Counter[str]]:
        """(jobs created, adds refused as duplicates): each a count by job id."""
        events = await self._events()
        created = Counter(e["jobId"] for e in events if e.get("event") == "added")
        duplicated = Counter(e["jobId"] for e in events if e.get("event") == "duplicated")
        return created, duplicated

    async def assert_published_once(self, *task_ids: str, attempt: int = 1) -> None:
        """Each task's job of this attempt was added exactly once, carries exactly its id, and
        is still in Redis (never lost); no add was a duplicate."""
        created, duplicated = await self.adds()
        for task_id in task_ids:
            job = job_id(task_id, attempt)
            assert created[job] == 1, f"job {job} added {created[job]} time(s)"
            assert await self.job_data(task_id, attempt) == {"taskId": task_id}, f"job {job} lost"
        assert not duplicated, f"jobs added again: {dict(duplicated)}"

    async def job_data(self, task_id: str, attempt: int = 1) -> Any:
        """The data of a task attempt's job, or None when Redis has no such job."""
        async with redis_asyncio.Redis(
            host=self.server.host, port=self.server.port, decode_responses=True
        ) as client:
            data = await client.hget(f"{self.prefix}{job_id(task_id, attempt)}", "data")
        return None if data is None else msgspec.json.decode(data)


@dataclass(frozen=True)
class Backend:
    """One queue backend's app and client for a test; ``published`` is None on postgres."""

    name: str
    app: Litestar
    client: httpx.AsyncClient
    published: Published | None


@pytest.fixture(scope="session")
async def session_bullmq(
    database_url: str, redis_server: RedisServer
) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient, Published]]:
    """The app on the bullmq backend (queues of their own in Redis), as ``session_app`` is on
    postgres: no sweeper, so a job that was never published stays missing (no repair hides it)."""
    name = unique_queue_name()
    settings = make_settings(
        database_url,
        sweep_enabled=False,
        schedule_enabled=False,
        **redis_settings(redis_server, name),
    )
    app = create_app(settings)
    published = Published(redis_server, org_queue_name(name, ORG_A))
    try:
        async with running_app(app) as http:
            yield app, http, published
    finally:
        await obliterate(redis_server, published.queue_name)


@pytest.fixture(params=["postgres", "bullmq"])
def backend(
    request: pytest.FixtureRequest,
    db_url: str,
    session_app: Litestar,
    session_client: httpx.AsyncClient,
) -> Backend:
    """The emptied database behind each backend's app in turn (the bullmq app and its Redis
    only start when a test asks for them). Sync, so that the bullmq session fixture (async) can be
    set up from here on demand."""
    if request.param == "postgres":
        return Backend("postgres", session_app, session_client, None)
    app, http, published = request.getfixturevalue("session_bullmq")
    published.clear()
    return Backend("bullmq", app, http, published)
