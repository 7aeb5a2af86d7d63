"""SQL-injection-shaped text in every text field and query parameter: stored and returned
verbatim, matched literally, never an error, and the schema is untouched afterwards."""

from __future__ import annotations

from urllib.parse import quote

import asyncpg
import pytest

from tests.api.helpers import API, create_data, create_run, create_task
from tests.conftest import HEADERS_A, HEADERS_B

# What a driver or a crash would print; user text may contain SQL words and is echoed verbatim.
DRIVER_MARKERS = ("syntax error", "sqlstate", "asyncpg", "traceback", "psycopg", "relation ")

HOSTILE = [
    "'; DROP TABLE run; --",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(5); --",
    "') UNION SELECT key_hash, org_id FROM api_key --",
    "$1",
    "$$; DROP TABLE task; $$",
    "%",
    "_",
    "%_%",
    "\\",
    "\\%",
    "a*b?c",
    "[abc]",
    "orgb",
    "{}",
    "[]",
    "null",
    "NULL",
    "\u202e\u200b",
    "żółw 🐢",
    "\uff33\uff25\uff2c\uff25\uff23\uff34",  # fullwidth SELECT
    "line\nbreak\ttab",
    "x" * 255,
]


def _ok(response, status: int = 200):
    assert response.status_code == status, response.text
    text = response.text.lower()
    for marker in DRIVER_MARKERS:
        assert marker not in text
    return response.json()


@pytest.mark.parametrize("text", HOSTILE)
async def test_text_fields_are_stored_and_returned_verbatim(client, text):
    payload = {"text": text, text: [text]}
    run = _ok(
        await client.post(
            f"{API}/runs", json={"inputData": payload, "metadata": payload}, headers=HEADERS_A
        ),
        201,
    )
    assert run["inputData"] == payload
    assert run["metadata"] == payload
    task = await create_task(
        client, run["id"], type=text, inputData=text, metadata=payload, idempotencyKey=text
    )
    assert task["type"] == text
    assert task["idempotencyKey"] == text
    updated = _ok(
        await client.patch(
            f"{API}/tasks/{task['id']}",
            json={"queueJobId": text, "outputData": text, "errorData": payload},
            headers=HEADERS_A,
        )
    )
    assert updated["queueJobId"] == text
    assert updated["outputData"] == text
    item = await create_data(client, run["id"], task["id"], text, payload, tags=[text, "plain"])
    assert item["key"] == text
    assert item["tags"] == [text, "plain"]
    assert item["value"] == payload
    fetched = _ok(await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A))
    assert fetched["type"] == text
    assert fetched["errorData"] == payload
    again = await client.post(
        f"{API}/tasks",
        json={"runId": run["id"], "type": text, "inputData": text, "idempotencyKey": text},
        headers=HEADERS_A,
    )
    assert _ok(again)["id"] == task["id"]  # the same key and request find the same task


@pytest.fixture
async def seeded(client):
    """A run with one data row per hostile key (tagged with it), plus a plain one."""
    run = await create_run(client)
    task = await create_task(client, run["id"])
    for text in [*HOSTILE, "plain"]:
        await create_data(client, run["id"], task["id"], text, text, tags=[text])
    return run, task


def _keys(body) -> list[str]:
    return sorted(item["key"] for item in body["data"])


@pytest.mark.parametrize("text", HOSTILE)
async def test_query_parameters_match_literally(client, seeded, text):
    run, _ = seeded
    url = f"{API}/runs/{run['id']}/data"

    async def query(**params) -> list[str]:
        response = await client.get(url, params={**params, "includeAll": "true"}, headers=HEADERS_A)
        return _keys(_ok(response))

    assert await query(key=text) == [text]
    # tags, keyStartsWith and tagStartsWith are comma lists (SPEC section 5): one item each here
    items = [part.strip() for part in text.split(",")]
    assert await query(tags=text) == sorted(k for k in HOSTILE if k in items)
    starts = await query(keyStartsWith=text)
    everything = [*HOSTILE, "plain"]
    assert starts == sorted(k for k in everything if any(k.startswith(i) for i in items))
    tag_starts = await query(tagStartsWith=text)
    assert tag_starts == starts
    pattern = await query(keyPattern=text)
    if "*" not in text and "?" not in text:
        assert pattern == [text]  # no glob characters: the pattern is the key itself


async def test_comma_lists_and_filters_with_hostile_values(client, seeded):
    run, _ = seeded
    url = f"{API}/runs/{run['id']}/data"
    response = await client.get(
        url, params={"keys": "%,_,'; DROP TABLE run; --", "includeAll": "true"}, headers=HEADERS_A
    )
    assert _keys(_ok(response)) == sorted(["%", "_", "'; DROP TABLE run; --"])
    for text in HOSTILE:
        listed = _ok(await client.get(f"{API}/tasks", params={"type": text}, headers=HEADERS_A))
        assert listed["data"] == []
        for name in ("runId", "parentTaskId"):
            listed = _ok(await client.get(f"{API}/tasks", params={name: text}, headers=HEADERS_A))
            assert listed["data"] == []


@pytest.mark.parametrize("text", HOSTILE)
async def test_enum_and_sort_parameters_are_400_not_500(client, seeded, text):
    run, _ = seeded
    for url, params in (
        (f"{API}/runs", {"sortBy": text}),
        (f"{API}/runs", {"sortOrder": text}),
        (f"{API}/runs", {"status": text}),
        (f"{API}/tasks", {"status": text}),
        (f"{API}/runs/{run['id']}/data", {"sortBy": text}),
        (f"{API}/runs/{run['id']}/data", {"tagMode": text}),
        (f"{API}/runs", {"limit": text}),
    ):
        response = await client.get(url, params=params, headers=HEADERS_A)
        # ?status=null too: Litestar alone read it as "no status filter" (server/params.py).
        assert response.status_code == 400, (url, params, response.text)
        assert response.json()["error"]
        for marker in DRIVER_MARKERS:  # the message may echo the value, never driver text
            assert marker not in response.text.lower()


@pytest.mark.parametrize("text", HOSTILE)
async def test_hostile_path_ids_are_404(client, text):
    segment = quote(text, safe="")
    for url in (f"{API}/runs/{segment}", f"{API}/tasks/{segment}", f"{API}/runs/{segment}/data"):
        response = await client.get(url, headers=HEADERS_A)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"]


async def test_delete_by_hostile_key_deletes_only_that_key(client, seeded):
    run, _ = seeded
    url = f"{API}/runs/{run['id']}/data"
    for text in ("%", "_", "' OR '1'='1"):
        deleted = _ok(await client.delete(url, params={"key": text}, headers=HEADERS_A))
        assert deleted == {"deleted": 1}
    rest = _ok(await client.get(url, params={"includeAll": "true"}, headers=HEADERS_A))
    assert len(rest["data"]) == len(HOSTILE) + 1 - 3
    missing = await client.delete(url, params={"id": "' OR 1=1 --"}, headers=HEADERS_A)
    assert missing.status_code == 404


async def test_hostile_organisations_stay_apart(client):
    # The org is the key's third part: SQL and LIKE text there is just a name.
    for org in ("%", "' OR '1'='1", "orgb' --"):
        headers = {"x-api-key": f"fmn_test_{org}_k"}
        run = _ok(await client.post(f"{API}/runs", json={"inputData": 1}, headers=headers), 201)
        assert run["orgId"] == org
        listed = _ok(await client.get(f"{API}/runs", headers=headers))
        assert [r["id"] for r in listed["data"]] == [run["id"]]
    b_runs = _ok(await client.get(f"{API}/runs", headers=HEADERS_B))
    assert b_runs["data"] == []


async def test_schema_is_intact_after_all_of_it(client, db_url):
    for text in HOSTILE:
        await client.post(f"{API}/runs", json={"inputData": text}, headers=HEADERS_A)
    conn = await asyncpg.connect(db_url)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"run", "task", "run_data", "run_counter", "api_key"} <= tables
        assert await conn.fetchval("SELECT count(*) FROM run") == len(HOSTILE)
    finally:
        await conn.close()
