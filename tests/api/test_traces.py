"""The trace context a task is created with (README "Traces"): kept when valid, ignored when not,
and handed to the claimer by each claim. No OpenTelemetry here: the server keeps it either way."""

from __future__ import annotations

import pytest

from tests.api.helpers import API, create_run, create_task
from tests.conftest import HEADERS_A

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"
OTHER = f"00-{'1' * 32}-{'2' * 16}-00"
INVALID = (
    "nonsense",
    "",
    VALID.upper(),  # hex is lowercase
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is forbidden
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE_ID}-{PARENT_ID}-01-more",  # version 00 has four fields
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # a short trace id
    f"01-{TRACE_ID}-{PARENT_ID}-01-{'x' * 600}",  # longer than any header worth keeping
)


async def stored(admin_conn, task_id: str) -> str | None:
    return await admin_conn.fetchval("SELECT traceparent FROM task WHERE id = $1::uuid", task_id)


async def test_a_valid_traceparent_is_kept_and_only_a_claim_answers_it(client, admin_conn):
    run = await create_run(client)
    task = await create_task(
        client, run["id"], enqueue=True, headers={**HEADERS_A, "traceparent": VALID}
    )
    assert "traceparent" not in task  # the creator knows it; only the claimer needs it
    assert await stored(admin_conn, task["id"]) == VALID
    response = await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)
    assert "traceparent" not in response.json()

    body = {"workerId": "w1", "limit": 10}
    response = await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)
    assert [t["traceparent"] for t in response.json()["data"]] == [VALID]


@pytest.mark.parametrize("value", INVALID)
async def test_an_invalid_traceparent_is_ignored_not_refused(client, admin_conn, value):
    run = await create_run(client)
    task = await create_task(client, run["id"], headers={**HEADERS_A, "traceparent": value})
    assert await stored(admin_conn, task["id"]) is None


async def test_a_later_version_is_kept_as_version_00(client, admin_conn):
    run = await create_run(client)
    headers = {**HEADERS_A, "traceparent": f"cc-{TRACE_ID}-{PARENT_ID}-09-what-comes-next"}
    task = await create_task(client, run["id"], headers=headers)
    assert await stored(admin_conn, task["id"]) == VALID  # the sampled flag only


async def test_batch_items_take_the_header_unless_they_carry_a_valid_one(client, admin_conn):
    run = await create_run(client)
    items = [
        {"runId": run["id"], "type": "work", "inputData": 1, "enqueue": True},
        {"runId": run["id"], "type": "work", "inputData": 2, "traceparent": OTHER},
        {"runId": run["id"], "type": "work", "inputData": 3, "traceparent": "nonsense"},
    ]
    response = await client.post(
        f"{API}/tasks/batch", json={"tasks": items}, headers={**HEADERS_A, "traceparent": VALID}
    )
    assert response.status_code == 201, response.text
    task_ids = [t["id"] for t in response.json()["data"]]
    assert [await stored(admin_conn, i) for i in task_ids] == [VALID, OTHER, VALID]

    response = await client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=HEADERS_A)
    task_ids = [t["id"] for t in response.json()["data"]]
    assert [await stored(admin_conn, i) for i in task_ids] == [None, OTHER, None]


async def test_each_claim_by_id_answers_the_traceparent(client):
    run = await create_run(client)
    headers = {**HEADERS_A, "traceparent": VALID}
    first, second = [await create_task(client, run["id"], headers=headers) for _ in range(2)]
    plain = await create_task(client, run["id"])
    body = {"workerId": "w1"}
    response = await client.post(f"{API}/tasks/{first['id']}/claim", json=body, headers=HEADERS_A)
    assert response.json()["traceparent"] == VALID
    body = {"workerId": "w1", "taskIds": [second["id"], plain["id"]]}
    response = await client.post(f"{API}/tasks/claim-ids", json=body, headers=HEADERS_A)
    answers = [result["task"] for result in response.json()["data"]]
    assert [a.get("traceparent") for a in answers] == [VALID, None]


async def test_a_single_create_takes_its_body_field_over_the_header(client, admin_conn):
    run = await create_run(client)
    headers = {**HEADERS_A, "traceparent": VALID}
    task = await create_task(client, run["id"], traceparent=OTHER, headers=headers)
    assert await stored(admin_conn, task["id"]) == OTHER


async def test_a_minimal_batch_keeps_the_traceparent(client, admin_conn):
    # enqueue_task_ids' request: ids only (a faster insert may serve it, with the same columns).
    run = await create_run(client)
    items = [
        {"runId": run["id"], "type": "work", "inputData": i, "enqueue": True} for i in range(3)
    ]
    headers = {**HEADERS_A, "traceparent": VALID, "prefer": "return=minimal"}
    response = await client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=headers)
    assert response.status_code == 201, response.text
    task_ids = [t["id"] for t in response.json()["data"]]
    assert [await stored(admin_conn, i) for i in task_ids] == [VALID] * 3
