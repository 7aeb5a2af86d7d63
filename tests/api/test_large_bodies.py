"""Large valid bodies are stored at a bounded cost, and a slow statement is not an outage.

Time is the benchmark's business (``foreman bench``: api_large_body_*); here the memory a body
costs in Python allocations is counted, and a statement is made slow with a row lock, not a load.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from foreman.bench.largebody import nested, repeated
from foreman.server.app import create_app
from tests.api.helpers import API, assert_error, create_run, create_task
from tests.conftest import HEADERS_A, make_settings
from tests.queue_helpers import running_app

JSON_HEADERS = {**HEADERS_A, "content-type": "application/json"}
MIB = 1024 * 1024


@pytest.fixture
async def slow_client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose statements may run 0.3 s (FOREMAN_DB_COMMAND_TIMEOUT_S)."""
    app = create_app(make_settings(db_url, db_command_timeout_s=0.3, sweep_enabled=False))
    async with running_app(app) as http:
        yield http


async def test_a_statement_timeout_is_504_not_database_unavailable(slow_client, db_url):
    run = await create_run(slow_client)
    task = await create_task(slow_client, run["id"])
    admin = await asyncpg.connect(db_url)
    try:
        async with admin.transaction():
            # Holds the task's row: the PATCH's UPDATE waits for it past the statement timeout.
            await admin.execute("SELECT 1 FROM task WHERE id = $1 FOR UPDATE", task["id"])
            patch = slow_client.patch(
                f"{API}/tasks/{task['id']}", json={"status": "running"}, headers=HEADERS_A
            )
            response = await asyncio.wait_for(patch, timeout=30)
    finally:
        await admin.close()
    body = assert_error(response, 504, "did not finish", "in time")
    assert body["code"] == "statement_timeout"
    assert "unavailable" not in body["error"].lower()
    # The database is fine, and the cancelled statement changed nothing.
    health = await slow_client.get("/health")
    assert health.status_code == 200, health.text
    again = await slow_client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)
    assert again.json()["status"] == "pending"


def _bodies(run_id: str, task_id: str, size: int) -> list[tuple[str, bytes]]:
    return [
        (f"{API}/runs", b'{"inputData":%s}' % repeated(b"1", size)),
        (f"{API}/runs", b'{"inputData":%s}' % repeated(nested(40), size)),
        (
            f"{API}/runs/{run_id}/data",
            b'{"taskId":"%s","key":"k","value":%s}'
            % (task_id.encode(), repeated(b'{"k":1}', size)),
        ),
    ]


async def test_large_values_cost_a_few_times_their_size(client):
    """A 1 MiB body of small values: Python allocations stay within 12 times its size.

    Decoded into Python objects, the same bodies took 25-60 times their size (a dict per
    ``{"k":1}``, a float per number), and the depth check 20 times (a piece per string).
    """
    run = await create_run(client)
    task = await create_task(client, run["id"])
    for path, body in _bodies(run["id"], task["id"], MIB):
        await asyncio.sleep(0)
        tracemalloc.start()
        try:
            response = await client.post(path, content=body, headers=JSON_HEADERS)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 201, response.text[:300]
        assert len(response.content) > len(body) - 1000  # the value came back whole
        assert peak < 12 * len(body), (path, body[:40], peak / MIB)
