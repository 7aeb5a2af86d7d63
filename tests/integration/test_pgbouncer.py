"""Foreman behind PgBouncer in transaction pooling mode (issue 16, item 1).

The PgBouncer here keeps a pool of one or two server connections for every client, so that
consecutive transactions of one client run on server connections other clients used just before:
a setting that outlived its transaction would show up in another client's statements. The first
test proves that this set-up does share sessions (a session-level set_config leaks), so that the
others, which find nothing of a request's organisation, role or timeout outside its transaction,
could fail.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from foreman import errors
from foreman.server.app import create_app
from foreman.settings import Settings
from foreman.store import db
from tests.integration.live_server import ServerProcess, server_env
from tests.queue_helpers import running_app
from tests.services import PgBouncer

pytestmark = pytest.mark.timeout(240)

ORGS = ("bounce-a", "bounce-b")
KEYS = {org: {"x-api-key": f"fmn_test_{org}_k1"} for org in ORGS}
REQUESTS = 3000
CONCURRENCY = 24


@pytest.fixture(scope="module")
def bouncer(admin_url: str) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(admin_url, pool_size=1).start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
async def plain(bouncer: PgBouncer, db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Another client of the PgBouncer: it gets the same (single) server connection."""
    conn = await asyncpg.connect(bouncer.url(db_url), statement_cache_size=0)
    try:
        yield conn
    finally:
        await conn.close()


async def test_the_pgbouncer_shares_server_sessions_between_clients(bouncer, db_url, plain):
    other = await asyncpg.connect(bouncer.url(db_url), statement_cache_size=0)
    try:
        await other.execute("SELECT set_config('app.current_org_id', 'leaked', false)")
        assert await plain.fetchval("SELECT current_setting('app.current_org_id', true)") == (
            "leaked"
        )
    finally:
        await other.execute("RESET ALL")
        await other.close()


async def _session_state(conn: asyncpg.Connection) -> tuple[str, str | None, str]:
    record = await conn.fetchrow(
        "SELECT current_user, current_setting('app.current_org_id', true),"
        " current_setting('statement_timeout')"
    )
    assert record is not None
    return record[0], record[1], record[2]


async def test_a_request_s_settings_end_with_its_transaction(bouncer, db_url, plain):
    pool = await db.create_pool(
        bouncer.url(db_url),
        min_size=1,
        max_size=1,
        command_timeout_s=2,
        connect_timeout_s=3,
        pgbouncer=True,
    )
    try:
        for org in ("org-1", "org-2", "org-1"):
            async with db.org_connection(pool, org) as conn:
                assert await _session_state(conn) == ("foreman_app", org, "2s")
                # An explicit transaction: each statement sets them again, for the same one.
                async with conn.transaction():
                    assert await _session_state(conn) == ("foreman_app", org, "2s")
                    assert await conn.execute("SELECT 1 FROM run") == "SELECT 0"
            user, org_seen, timeout = await _session_state(plain)
            assert (user, org_seen or "", timeout) == ("postgres", "", "0")
        async with pool.acquire() as conn:  # not bound to an organisation: sees none
            assert await _session_state(conn) == ("foreman_app", "", "2s")
    finally:
        await pool.close()


async def test_session_settings_are_refused_behind_a_pooler_in_transaction_mode(bouncer, db_url):
    # Without FOREMAN_DB_PGBOUNCER the organisation is a session setting (store/db.py), which
    # this pooler would hand to other clients.
    with pytest.raises(errors.ForemanError, match="FOREMAN_DB_PGBOUNCER=true"):
        await db.create_pool(
            bouncer.url(db_url), min_size=1, max_size=1, command_timeout_s=2, connect_timeout_s=3
        )


async def test_a_statement_timeout_holds_behind_pgbouncer(bouncer, db_url):
    pool = await db.create_pool(
        bouncer.url(db_url),
        min_size=1,
        max_size=1,
        command_timeout_s=0.2,
        connect_timeout_s=3,
        pgbouncer=True,
    )
    try:
        async with db.org_connection(pool, "org-1") as conn:
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.fetchval("SELECT pg_sleep(2)")
    finally:
        await pool.close()


def _server(cwd: Path, url: str, listen_url: str | None) -> ServerProcess:
    variables = {
        "FOREMAN_DATABASE_URL": url,
        "FOREMAN_DB_PGBOUNCER": "true",
        "FOREMAN_AUTO_MIGRATE": "false",
        "FOREMAN_DB_POOL_MIN": "1",
        "FOREMAN_DB_POOL_MAX": "6",
        "FOREMAN_SWEEP_INTERVAL_S": "0.2",
        "FOREMAN_POLL_INTERVAL_S": "0.2",
        "FOREMAN_LOG_LEVEL": "WARNING",
    }
    if listen_url is not None:
        variables["FOREMAN_DATABASE_LISTEN_URL"] = listen_url
    return ServerProcess(cwd, env=server_env(**variables))


async def _one_request(http: httpx.AsyncClient, url: str, org: str, i: int) -> list[dict]:
    """One write and one read of org at url; the rows the org was shown."""
    headers = KEYS[org]
    kind = i % 3
    if kind == 0:
        made = await http.post(
            f"{url}/api/v1/runs", json={"inputData": {"org": org, "i": i}}, headers=headers
        )
        assert made.status_code == 201, made.text
        listed = await http.get(f"{url}/api/v1/runs?limit=50", headers=headers)
        assert listed.status_code == 200, listed.text
        return [made.json(), *listed.json()["data"]]
    if kind == 1:
        listed = await http.get(f"{url}/api/v1/tasks?limit=50", headers=headers)
        assert listed.status_code == 200, listed.text
        return list(listed.json()["data"])
    claimed = await http.post(
        f"{url}/api/v1/tasks/claim",
        json={"workerId": f"w-{org}", "types": ["work"], "limit": 2, "waitMs": 0},
        headers=headers,
    )
    assert claimed.status_code == 200, claimed.text
    tasks = claimed.json()["data"]
    for task in tasks:
        done = await http.post(
            f"{url}/api/v1/tasks/{task['id']}/complete",
            json={"leaseToken": task["leaseToken"], "outputData": {"org": org}},
            headers=headers,
        )
        assert done.status_code == 200, done.text
    return list(tasks)


async def _seed(http: httpx.AsyncClient, url: str) -> None:
    for org in ORGS:
        run = await http.post(
            f"{url}/api/v1/runs", json={"inputData": {"org": org}}, headers=KEYS[org]
        )
        assert run.status_code == 201, run.text
        batch = await http.post(
            f"{url}/api/v1/tasks/batch",
            json={
                "tasks": [
                    {
                        "runId": run.json()["id"],
                        "type": "work",
                        "inputData": {"org": org},
                        "enqueue": True,
                    }
                    for _ in range(300)
                ]
            },
            headers=KEYS[org],
        )
        assert batch.status_code in (200, 201), batch.text


async def test_three_servers_two_orgs_thousands_of_alternating_requests(
    bouncer: PgBouncer, db_url: str, tmp_path: Path
) -> None:
    bounced = bouncer.url(db_url)
    servers = [_server(tmp_path, bounced, db_url if n < 2 else None) for n in range(3)]
    try:
        for server in servers:
            server.start()
        async with httpx.AsyncClient(timeout=30) as http:
            await _seed(http, servers[0].url)
            seen: Counter[str] = Counter()
            wrong: list[tuple[str, dict]] = []
            queue = list(range(REQUESTS))
            random.Random(16).shuffle(queue)

            async def client() -> None:
                while queue:
                    i = queue.pop()
                    org = ORGS[i % 2]
                    for row in await _one_request(http, servers[i % 3].url, org, i):
                        seen[org] += 1
                        if row["orgId"] != org:
                            wrong.append((org, row))

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        assert wrong == []
        assert seen[ORGS[0]] > REQUESTS  # rows were really shown
        assert seen[ORGS[1]] > REQUESTS
        admin = await asyncpg.connect(db_url)
        try:
            rows = await admin.fetch(
                "SELECT org_id, input_data->>'org' AS org, count(*) FROM run GROUP BY 1, 2"
            )
            mixed = await admin.fetchval(
                "SELECT count(*) FROM task WHERE output_data IS NOT NULL"
                " AND output_data->>'org' <> org_id"
            )
        finally:
            await admin.close()
        assert {r["org_id"]: r["org"] for r in rows} == {org: org for org in ORGS}
        assert mixed == 0
        for server in servers:
            assert " ERROR " not in server.log(), server.log()
            assert "Traceback" not in server.log(), server.log()
        assert "long polls fall back to polling" in servers[2].log()
        assert "long polls fall back to polling" not in servers[0].log()
    finally:
        for server in servers:
            server.kill()


async def test_without_a_listen_url_long_polls_poll_and_the_server_says_so(bouncer, db_url, caplog):
    settings = Settings(
        database_url=bouncer.url(db_url),
        db_pgbouncer=True,
        db_pool_min=1,
        db_pool_max=4,
        sweep_enabled=False,
        poll_interval_s=0.2,
    )
    with caplog.at_level(logging.WARNING, logger="foreman.server.notify"):
        async with running_app(create_app(settings)) as http:
            assert "long polls fall back to polling" in caplog.text
            run = await http.post("/api/v1/runs", json={"inputData": 1}, headers=KEYS[ORGS[0]])
            claim = asyncio.create_task(
                http.post(
                    "/api/v1/tasks/claim",
                    json={"workerId": "w", "types": ["late"], "waitMs": 10_000},
                    headers=KEYS[ORGS[0]],
                )
            )
            await asyncio.sleep(0.3)  # the claim is waiting
            made = await http.post(
                "/api/v1/tasks",
                json={"runId": run.json()["id"], "type": "late", "inputData": 1, "enqueue": True},
                headers=KEYS[ORGS[0]],
            )
            began = time.monotonic()
            claimed = await claim
            waited_s = time.monotonic() - began
    assert claimed.status_code == 200, claimed.text
    assert [t["id"] for t in claimed.json()["data"]] == [made.json()["id"]]
    assert waited_s < 2  # found by the 0.2 s poll, not at the end of the 10 s wait
