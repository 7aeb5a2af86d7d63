"""Factories and assertions shared by the API tests: they go through the API, like a client.

The superuser helpers (``admin_*``) read and write the database directly, across organisations:
to count rows after a rejected request, or to create rows with chosen timestamps.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg

from tests.conftest import HEADERS_A

API = "/api/v1"
# Any JSON value but null is a valid inputData / outputData / errorData / value (SPEC section 4).
JSON_VALUES = (
    {"nested": {"list": [1, "two", None, True]}},
    [1, "two", {"three": 3}],
    "just a string",
    "",
    42,
    -7.25,
    0,
    123456789012345678901234567890,
    True,
    False,
    [],
    {},
    {"unicode": "żółw 🐢", "escaped": 'tab\tquote"backslash\\'},
)
# Words of SQL and of the driver that must never reach a client (SPEC section 2).
LEAK_MARKERS = ("select ", "insert ", "update ", "asyncpg", "postgres", "sqlstate", "violates")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def missing_id() -> str:
    return str(uuid.uuid4())


async def create_run(client, *, headers=HEADERS_A, **body: Any) -> dict[str, Any]:
    body.setdefault("inputData", {"n": 1})
    response = await client.post(f"{API}/runs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def create_task(client, run_id: str, *, headers=HEADERS_A, **body: Any) -> dict[str, Any]:
    body.setdefault("type", "work")
    body.setdefault("inputData", {"n": 1})
    response = await client.post(f"{API}/tasks", json={"runId": run_id, **body}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def create_data(
    client, run_id: str, task_id: str, key: str, value: Any = 1, *, headers=HEADERS_A, **body: Any
) -> dict[str, Any]:
    payload = {"taskId": task_id, "key": key, "value": value, **body}
    response = await client.post(f"{API}/runs/{run_id}/data", json=payload, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def patch_task(client, task_id: str, *, headers=HEADERS_A, **body: Any):
    return await client.patch(f"{API}/tasks/{task_id}", json=body, headers=headers)


async def get_run(client, run_id: str, *, headers=HEADERS_A) -> dict[str, Any]:
    response = await client.get(f"{API}/runs/{run_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status: int, *fragments: str) -> dict[str, Any]:
    """A JSON error answer with this status whose message names each fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    message = body["error"].lower()
    for fragment in fragments:
        assert fragment.lower() in message, (fragment, body)
    text = response.text.lower()
    for marker in LEAK_MARKERS:
        assert marker not in text, (marker, body)
    return body


def assert_names_field(body: dict[str, Any], field: str) -> None:
    """Validation details name the bad field (SPEC section 2)."""
    assert field in body["error"], body
    assert any(field in detail["loc"] for detail in body.get("details", [])), body


async def admin_connect(db_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(db_url)


async def admin_count(db_url: str, table: str) -> int:
    """Rows of table in every organisation (the superuser bypasses row-level security)."""
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def admin_counts(db_url: str) -> dict[str, int]:
    """Rows of run, task and run_data in every organisation."""
    conn = await asyncpg.connect(db_url)
    try:
        record = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM run) AS run, (SELECT count(*) FROM task) AS task,"
            " (SELECT count(*) FROM run_data) AS run_data"
        )
    finally:
        await conn.close()
    return dict(record)


async def admin_insert_runs(db_url: str, *, org_id: str, created_at: int, count: int) -> list[str]:
    """Runs that share one created_at: only their ids can order them."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.executemany(
            "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
            " VALUES ($1, $2, '{}', $3, $3)",
            [(run_id, org_id, created_at) for run_id in ids],
        )
    finally:
        await conn.close()
    return ids


BACK_MS = 1000


async def backdate(
    admin_conn: asyncpg.Connection, table: str, row_id: str, *columns: str, ms: int = BACK_MS
) -> None:
    """Move a row's timestamps (created_at, updated_at by default) ms into the past.

    The test's clock: the server's next write lands strictly later without a sleep that waits for
    its clock (milliseconds) to move on.
    """
    sets = ", ".join(f"{c} = {c} - $2" for c in columns or ("created_at", "updated_at"))
    await admin_conn.execute(f"UPDATE {table} SET {sets} WHERE id = $1", row_id, ms)


async def set_times(admin_conn: asyncpg.Connection, table: str, row_id: str, **times: int) -> None:
    """Give a row chosen timestamps (column=epoch ms), as the superuser."""
    sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(times, start=2))
    await admin_conn.execute(f"UPDATE {table} SET {sets} WHERE id = $1", row_id, *times.values())
