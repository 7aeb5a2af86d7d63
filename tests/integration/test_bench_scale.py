"""The scale figure's own SQL reads what the API answers for the same request.

The bench keeps a copy of the SQL the server sends (it may not import the store): if the
server's queries change what they return, this test says the copy needs the same change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from foreman.bench import scale, scaledata, services
from foreman.bench.defaults import BENCH_API_KEY
from foreman.server.app import create_app
from tests.conftest import make_settings

ROWS = 3 * scaledata.ROWS_PER_RUN  # three runs


@pytest.fixture
async def scale_url(admin_url: str) -> AsyncIterator[str]:
    server = services.BenchDatabase(admin_url=admin_url, source="test")
    loaded = await scaledata.prepare(server, ROWS, reuse=False)
    try:
        yield loaded.url
    finally:
        await services.drop_database(admin_url, loaded.name)


def _page(records: list[object]) -> tuple[int, list[str]]:
    """(total, ids) of a page query's rows: the count first, then the columns of each item."""
    total = records[0][0] if records else 0  # type: ignore[index]
    return total, [r[1] for r in records if r[1] is not None]  # type: ignore[index]


# The API request each scale query stands for.
API_REQUESTS = {
    "list_tasks": "/api/v1/tasks?runId={run}&status=completed&limit=20",
    "run_data_latest": "/api/v1/runs/{run}/data",
    "run_data_tags": "/api/v1/runs/{run}/data?tags=t3",
    "run_data_prefix": "/api/v1/runs/{run}/data?keyStartsWith=metrics/",
}


async def test_scale_queries_read_the_rows_the_api_answers(scale_url: str):
    conn = await scale.connect_as_app(scale_url)
    try:
        # Not scale.load_samples: its TABLESAMPLE can pick no page of a table this small.
        run_ids = [r[0] for r in await conn.fetch("SELECT id FROM run ORDER BY id")]
        task_ids = [r[0] for r in await conn.fetch("SELECT id FROM task ORDER BY random() LIMIT 3")]
        assert len(run_ids) == 3
        samples = scale.Samples(run_ids, task_ids)
        queries = scale.queries(samples)
        app = create_app(make_settings(scale_url))
        headers = {"Authorization": f"Bearer {BENCH_API_KEY}"}
        async with AsyncTestClient(app=app) as client:
            for i in range(3):
                run = samples.run_ids[i]
                for name, path in API_REQUESTS.items():
                    answer = await client.get(path.format(run=run), headers=headers)
                    assert answer.status_code == 200, answer.text
                    body = answer.json()
                    query = queries[name]
                    total, ids = _page(await conn.fetch(query.sql, *query.args(i)))
                    assert ids, name  # every query finds rows in the loaded set
                    assert (total, ids) == (
                        body["pagination"]["total"],
                        [item["id"] for item in body["data"]],
                    ), name
                task = queries["get_task"]
                row = await conn.fetchrow(task.sql, *task.args(i))
                answer = await client.get(f"/api/v1/tasks/{samples.task_ids[i]}", headers=headers)
                assert answer.status_code == 200
                assert row is not None
                assert row["id"] == answer.json()["id"]
    finally:
        await conn.close()


async def test_scale_connection_sees_only_the_bench_organisation(scale_url: str):
    """Row-level security applies: another organisation's connection sees no task."""
    conn = await scale.connect_as_app(scale_url, org_id="someone-else")
    try:
        assert await conn.fetchval("SELECT count(*) FROM task") == 0
        assert await conn.fetchval("SELECT current_user") == "foreman_app"
    finally:
        await conn.close()
    bench = await scale.connect_as_app(scale_url)
    try:
        assert await bench.fetchval("SELECT count(*) FROM task") == ROWS
    finally:
        await bench.close()
