"""A key or a task id used twice: idempotency keys with another request, duplicates in a batch.

docs/queue-protocol.md: an ``idempotencyKey`` replays only the same request (otherwise 409), and a
task id appears at most once per bulk request (later occurrences are not applied, and say so).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from foreman.server.app import create_app
from tests.api.helpers import API, admin_count, assert_error, create_run, get_run
from tests.conftest import HEADERS_A, make_settings
from tests.queue_helpers import running_app


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(db_url, sweep_enabled=False))
    async with running_app(app) as http:
        yield http


async def post(client, path: str, body: dict):
    return await client.post(f"{API}/tasks{path}", json=body, headers=HEADERS_A)


def item(run_id: str, **fields) -> dict:
    return {"runId": run_id, "type": "t", "inputData": {"n": 1}, "idempotencyKey": "k", **fields}


async def held_tasks(client, count: int) -> list[dict]:
    run = await create_run(client)
    tasks = [
        {"runId": run["id"], "type": "w", "inputData": i, "enqueue": True} for i in range(count)
    ]
    assert (await post(client, "/batch", {"tasks": tasks})).status_code == 201
    response = await post(client, "/claim", {"workerId": "w", "limit": count})
    return response.json()["data"]


# ---------------------------------------------------------------- idempotency keys


async def test_a_key_replayed_with_the_same_request_returns_the_first_task(client):
    run = await create_run(client)
    first = await post(client, "", item(run["id"], priority=2, metadata={"a": 1}))
    assert first.status_code == 201, first.text
    # The same JSON value in another key order is the same request.
    again = await post(
        client, "", {**item(run["id"], priority=2, metadata={"a": 1}), "inputData": {"n": 1}}
    )
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "other"}, "type"),
        ({"inputData": {"n": 2}}, "inputData"),
        ({"maxRetries": 0}, "maxRetries"),
        ({"priority": 5}, "priority"),
    ],
)
async def test_a_key_with_a_different_request_is_409(client, change, field):
    run = await create_run(client)
    first = await post(client, "", item(run["id"]))
    assert first.status_code == 201, first.text
    response = await post(client, "", item(run["id"], **change))
    body = assert_error(response, 409, "idempotency key", field)
    assert body["code"] == "conflict"
    assert body["taskId"] == first.json()["id"]


async def test_a_key_of_a_task_of_another_run_is_409_not_the_other_runs_task(client):
    r1, r2 = await create_run(client), await create_run(client)
    first = await post(client, "", item(r1["id"]))
    response = await post(client, "", item(r2["id"]))
    body = assert_error(response, 409, "idempotency key", "runId")
    assert body["code"] == "conflict"
    assert (await get_run(client, r2["id"]))["totalTasks"] == 0
    # A parent in the other run's request is part of the request too.
    child = item(r1["id"], idempotencyKey="c", parentTaskId=first.json()["id"])
    assert (await post(client, "", child)).status_code == 201
    response = await post(client, "", {**child, "parentTaskId": None})
    assert_error(response, 409, "idempotency key", "parentTaskId")


async def test_a_batch_item_reusing_a_key_of_another_run_is_409_and_creates_nothing(client, db_url):
    r1, r2 = await create_run(client), await create_run(client)
    assert (await post(client, "", item(r1["id"]))).status_code == 201
    batch = {"tasks": [item(r2["id"], idempotencyKey="fresh"), item(r2["id"])]}
    body = assert_error(await post(client, "/batch", batch), 409, "idempotency key", "runId")
    assert (body["code"], body["index"]) == ("conflict", 1)
    assert await admin_count(db_url, "task") == 1
    # The same request again is still a replay: the existing task, in its place.
    replay = await post(
        client, "/batch", {"tasks": [item(r1["id"], idempotencyKey="new"), item(r1["id"])]}
    )
    assert replay.status_code == 201, replay.text
    assert replay.json()["data"][1]["runId"] == r1["id"]


async def test_a_key_repeated_inside_a_batch_with_another_request_is_409(client, db_url):
    run = await create_run(client)
    same = {"tasks": [item(run["id"]), item(run["id"])]}
    response = await post(client, "/batch", same)
    assert response.status_code == 201, response.text
    first, second = response.json()["data"]
    assert first == second
    different = {
        "tasks": [
            item(run["id"], idempotencyKey="x"),
            item(run["id"], idempotencyKey="x", inputData=2),
        ]
    }
    body = assert_error(
        await post(client, "/batch", different), 409, "idempotency key", "inputData"
    )
    assert body["index"] == 1
    assert await admin_count(db_url, "task") == 1


# ---------------------------------------------------------------- a task twice in one bulk request


async def test_a_task_completed_and_failed_in_one_request_reports_which_was_applied(client):
    (held,) = await held_tasks(client, 1)
    results = [
        {"taskId": held["id"], "leaseToken": held["leaseToken"], "status": "completed"},
        {
            "taskId": held["id"],
            "leaseToken": held["leaseToken"],
            "status": "failed",
            "retryable": False,
        },
    ]
    response = await post(client, "/complete", {"results": results})
    assert response.status_code == 200, response.text
    applied, duplicate = response.json()["data"]
    assert [applied["ok"], duplicate["ok"]] == [True, False]
    assert applied == {"taskId": held["id"], "ok": True, "status": "completed", "reason": None}
    assert duplicate == {
        "taskId": held["id"],
        "ok": False,
        "status": "completed",
        "reason": "duplicate",
    }
    task = (await client.get(f"{API}/tasks/{held['id']}", headers=HEADERS_A)).json()
    run = await get_run(client, task["runId"])
    assert (task["status"], run["completedTasks"], run["failedTasks"]) == ("completed", 1, 0)


async def test_a_stale_token_repeated_after_the_live_one_is_not_reported_as_applied(client):
    (held,) = await held_tasks(client, 1)
    stale = str(uuid.uuid4())
    results = [
        {"taskId": held["id"], "leaseToken": stale, "status": "completed", "outputData": "old"},
        {"taskId": held["id"], "leaseToken": held["leaseToken"], "status": "completed"},
    ]
    data = (await post(client, "/complete", {"results": results})).json()["data"]
    assert [d["ok"] for d in data] == [False, False]
    assert [(d["ok"], d["reason"]) for d in data] == [(False, None), (False, "duplicate")]
    task = (await client.get(f"{API}/tasks/{held['id']}", headers=HEADERS_A)).json()
    assert task["status"] == "running"


async def test_a_lease_twice_in_one_release_or_heartbeat_is_applied_once(client):
    a, b = await held_tasks(client, 2)
    stale = {"taskId": b["id"], "leaseToken": str(uuid.uuid4())}
    live_b = {"taskId": b["id"], "leaseToken": b["leaseToken"]}
    beat = await post(client, "/heartbeat", {"leases": [stale, live_b], "leaseMs": 60_000})
    first, second = beat.json()["data"]
    assert [first["ok"], second["ok"]] == [False, False]
    assert (first["ok"], first["reason"]) == (False, None)
    assert (second["ok"], second["reason"], second["leaseExpiresAt"]) == (False, "duplicate", None)
    live_a = {"taskId": a["id"], "leaseToken": a["leaseToken"]}
    released = (await post(client, "/release", {"leases": [live_a, live_a]})).json()["data"]
    assert [r["ok"] for r in released] == [True, False]
    assert released == [
        {"taskId": a["id"], "ok": True, "status": "queued", "reason": None},
        {"taskId": a["id"], "ok": False, "status": "queued", "reason": "duplicate"},
    ]
    task = (await client.get(f"{API}/tasks/{a['id']}", headers=HEADERS_A)).json()
    assert (task["status"], task["attempt"]) == ("queued", 0)  # the attempt undone once


async def test_an_id_twice_in_claim_ids_is_leased_once_and_named_duplicate(client):
    run = await create_run(client)
    made = await post(
        client, "/batch", {"tasks": [{"runId": run["id"], "type": "w", "inputData": 1}]}
    )
    task_id = made.json()["data"][0]["id"]
    body = {"workerId": "w", "taskIds": [task_id, task_id]}
    first, second = (await post(client, "/claim-ids", body)).json()["data"]
    assert (first["ok"], first["reason"], first["task"]["attempt"]) == (True, None, 1)
    assert (second["ok"], second["reason"], second["status"], second["task"]) == (
        False,
        "duplicate",
        "running",
        None,
    )


async def post_text(client, path: str, text: str):
    headers = {**HEADERS_A, "content-type": "application/json"}
    return await client.post(f"{API}/tasks{path}", content=text.encode(), headers=headers)


@pytest.mark.parametrize("path", ["", "/batch"])
async def test_a_replay_compares_numbers_exactly_as_jsonb_stores_them(client, path):
    """1e400 (no float can hold it) replays; numbers a float cannot tell apart are still 409."""
    run = await create_run(client)

    def body(number: str, key: str) -> str:
        task = (
            f'{{"runId":"{run["id"]}","type":"t","idempotencyKey":"{key}",'
            f'"inputData":{{"n":{number}}}}}'
        )
        return task if path == "" else f'{{"tasks":[{task}]}}'

    created = 201
    assert (await post_text(client, path, body("1e400", "big"))).status_code == created
    again = await post_text(client, path, body("1e400", "big"))
    assert again.status_code == (200 if path == "" else 201), again.text
    assert (await post_text(client, path, body("1.0e400", "big"))).status_code in (200, 201)

    first = await post_text(client, path, body("12345678901234567890.123", "exact"))
    assert first.status_code == created, first.text
    other = await post_text(client, path, body("12345678901234567890.124", "exact"))
    assert_error(other, 409, "was used for another request")
    assert other.json()["fields"] == ["inputData"]
