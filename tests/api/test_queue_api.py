"""The queue endpoints (docs/queue-protocol.md) through the real app and a real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from bullmq import Queue

from foreman.queue.naming import org_queue_name
from foreman.server.app import create_app
from foreman.server.notify import APPLICATION_NAME
from tests.api.helpers import (
    API,
    assert_error,
    assert_names_field,
    create_run,
    get_run,
    missing_id,
    now_ms,
    patch_task,
)
from tests.conftest import HEADERS_A, HEADERS_B, ORG_A, make_settings
from tests.queue_helpers import bullmq_queue, redis_settings, running_app, unique_queue_name
from tests.services import free_port


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The poll fallback is 30 s here: only a NOTIFY can wake a long poll quickly."""
    app = create_app(make_settings(db_url, poll_interval_s=30.0, sweep_enabled=False))
    async with running_app(app) as http:
        yield http


async def enqueue(
    client, run_id: str, count: int = 1, *, headers=HEADERS_A, **fields
) -> list[dict]:
    tasks = [
        {"runId": run_id, "type": "work", "inputData": {"i": i}, "enqueue": True, **fields}
        for i in range(count)
    ]
    response = await client.post(f"{API}/tasks/batch", json={"tasks": tasks}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]


async def claim(client, *, headers=HEADERS_A, **body) -> list[dict]:
    body.setdefault("workerId", "w1")
    body.setdefault("limit", 100)
    response = await client.post(f"{API}/tasks/claim", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


MINIMAL_A = {**HEADERS_A, "Prefer": "return=minimal"}


async def post(client, path: str, body: dict, *, headers=HEADERS_A):
    return await client.post(f"{API}/tasks{path}", json=body, headers=headers)


# ---------------------------------------------------------------- batch create


async def test_batch_create_in_order_with_exact_counters(client):
    run = await create_run(client)
    body = {
        "tasks": [
            {"runId": run["id"], "type": f"t{i}", "inputData": [i], "enqueue": i % 2 == 0}
            for i in range(1000)
        ]
    }
    response = await client.post(f"{API}/tasks/batch", json=body, headers=HEADERS_A)
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert [t["type"] for t in data] == [f"t{i}" for i in range(1000)]
    assert {t["status"] for t in data[::2]} == {"queued"}
    assert {t["status"] for t in data[1::2]} == {"pending"}
    assert data[3]["inputData"] == [3]
    assert (await get_run(client, run["id"]))["totalTasks"] == 1000


async def test_batch_create_idempotent_repeat(client):
    run = await create_run(client)
    item = {"runId": run["id"], "type": "x", "inputData": 1, "idempotencyKey": "once"}
    first = await client.post(f"{API}/tasks/batch", json={"tasks": [item, item]}, headers=HEADERS_A)
    again = await client.post(f"{API}/tasks/batch", json={"tasks": [item]}, headers=HEADERS_A)
    ids = {t["id"] for t in first.json()["data"] + again.json()["data"]}
    assert len(ids) == 1
    assert (await get_run(client, run["id"]))["totalTasks"] == 1


async def test_batch_create_answers_ids_only_when_asked_for_minimal(client):
    run = await create_run(client)
    items = [{"runId": run["id"], "type": "x", "inputData": i, "enqueue": True} for i in range(3)]
    keyed = {
        "runId": run["id"],
        "type": "x",
        "inputData": 9,
        "idempotencyKey": "min",
        "enqueue": True,
    }
    minimal = {**HEADERS_A, "Prefer": "return=minimal"}
    response = await client.post(
        f"{API}/tasks/batch", json={"tasks": [*items, keyed]}, headers=minimal
    )
    assert response.status_code == 201
    refs = response.json()["data"]
    assert all(set(ref) == {"id"} for ref in refs)
    listed = await client.get(f"{API}/tasks", params={"runId": run["id"]}, headers=HEADERS_A)
    by_id = {t["id"]: t for t in listed.json()["data"]}
    assert [by_id[ref["id"]]["inputData"] for ref in refs] == [0, 1, 2, 9]
    assert {by_id[ref["id"]]["status"] for ref in refs} == {"queued"}
    again = await client.post(f"{API}/tasks/batch", json={"tasks": [keyed]}, headers=minimal)
    assert again.json()["data"] == [refs[-1]]
    assert (await get_run(client, run["id"]))["totalTasks"] == 4


async def test_batch_of_ids_only_makes_the_tasks_the_full_answer_makes(client):
    """Without keys or dependsOn, Prefer: return=minimal takes a statement of its own (no rows
    back): the tasks it makes are field for field those of the full answer, counted alike."""
    run = await create_run(client)
    parent = (await enqueue(client, run["id"], 1))[0]
    items = [
        {"runId": run["id"], "type": "a", "inputData": {"k": [1, "x"]}, "enqueue": True},
        {"runId": run["id"], "type": "b", "inputData": 2, "delayMs": 60_000, "enqueue": True},
        {"runId": run["id"], "type": "c", "inputData": "s", "parentTaskId": parent["id"]},
        {"runId": run["id"], "type": "d", "inputData": [], "metadata": {"m": 1}, "maxRetries": 0,
         "priority": 7, "ref": "r"},
    ]  # fmt: skip
    full = await client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=HEADERS_A)
    minimal = await client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=MINIMAL_A)
    assert (full.status_code, minimal.status_code) == (201, 201)
    refs = minimal.json()["data"]
    assert all(set(ref) == {"id"} for ref in refs)
    made = [(await client.get(f"{API}/tasks/{r['id']}", headers=HEADERS_A)).json() for r in refs]
    varying = {"id", "createdAt", "updatedAt", "queuedAt", "runAfter"}
    for answered, stored in zip(full.json()["data"], made, strict=True):
        assert {k: v for k, v in stored.items() if k not in varying} == {
            k: v for k, v in answered.items() if k not in varying
        }
        assert stored["updatedAt"] == stored["createdAt"]
        assert ("runAfter" in stored, "queuedAt" in stored) == (
            "runAfter" in answered,
            "queuedAt" in answered,
        )
    assert made[1]["runAfter"] == made[1]["createdAt"] + 60_000
    assert (await get_run(client, run["id"]))["totalTasks"] == 9
    # Two at once: the counters stay exact (one shard each, or one row updated twice).
    await asyncio.gather(*(enqueue(client, run["id"], 50, headers=MINIMAL_A) for _ in range(2)))
    assert (await get_run(client, run["id"]))["totalTasks"] == 109


async def test_batch_of_ids_only_refuses_as_the_full_answer_does(client):
    run, other = await create_run(client), await create_run(client, headers=HEADERS_B)
    absent = missing_id()
    ok = {"runId": run["id"], "type": "a", "inputData": 1}
    cases = [
        ([ok, {**ok, "runId": absent}], 404, absent, 1),
        ([ok, ok, {**ok, "runId": other["id"]}], 404, other["id"], 2),  # another organisation's
        ([{**ok, "parentTaskId": absent}], 404, absent, 0),
    ]
    for items, status, named, index in cases:
        for headers in (HEADERS_A, MINIMAL_A):
            response = await client.post(
                f"{API}/tasks/batch", json={"tasks": items}, headers=headers
            )
            assert assert_error(response, status, "not found", named)["index"] == index
    # A parent of another run of the same organisation is no parent of this one.
    stranger = (await enqueue(client, (await create_run(client))["id"], 1))[0]
    response = await client.post(
        f"{API}/tasks/batch", json={"tasks": [{**ok, "parentTaskId": stranger["id"]}]},
        headers=MINIMAL_A,
    )  # fmt: skip
    assert_error(response, 404, "parent task not found", stranger["id"])
    assert (await get_run(client, run["id"]))["totalTasks"] == 0
    assert (await get_run(client, other["id"], headers=HEADERS_B))["totalTasks"] == 0
    ended = await create_run(client, autoComplete=True)
    (task,) = await enqueue(client, ended["id"], 1, type="last", headers=MINIMAL_A)  # still open
    (held,) = await claim(client, types=["last"])
    assert held["id"] == task["id"]
    done = await post(client, f"/{held['id']}/complete", {"leaseToken": held["leaseToken"]})
    assert done.status_code == 200
    late = {"tasks": [{**ok, "runId": ended["id"]}]}
    response = await client.post(f"{API}/tasks/batch", json=late, headers=MINIMAL_A)
    assert_error(response, 409, "has ended")
    assert (await get_run(client, ended["id"]))["totalTasks"] == 1


async def test_batch_create_names_the_first_missing_run_and_creates_nothing(client, db_url):
    run = await create_run(client)
    absent = missing_id()
    body = {
        "tasks": [
            {"runId": run["id"], "type": "a", "inputData": 1},
            {"runId": absent, "type": "b", "inputData": 1},
        ]
    }
    response = await client.post(f"{API}/tasks/batch", json=body, headers=HEADERS_A)
    assert assert_error(response, 404, "run not found", absent)["index"] == 1
    assert (await get_run(client, run["id"]))["totalTasks"] == 0
    parent = missing_id()
    body = {"tasks": [{"runId": run["id"], "type": "a", "inputData": 1, "parentTaskId": parent}]}
    response = await client.post(f"{API}/tasks/batch", json=body, headers=HEADERS_A)
    assert_error(response, 404, "parent task not found", parent)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tasks": []}, "tasks"),
        ({"tasks": [{"type": "a", "inputData": 1}] * 1001}, "tasks"),
        ({"tasks": [{"runId": "00000000-0000-0000-0000-000000000000", "type": "a"}]}, "inputData"),
    ],
)
async def test_batch_create_validation(client, body, field):
    response = await client.post(f"{API}/tasks/batch", json=body, headers=HEADERS_A)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]


# ---------------------------------------------------------------- claim


async def test_claim_leases_tasks_in_priority_order(client):
    run = await create_run(client)
    low = await enqueue(client, run["id"], 1, priority=5)
    high = await enqueue(client, run["id"], 1, priority=1)
    default = await enqueue(client, run["id"], 1)
    other = await enqueue(client, run["id"], 1, type="other")
    got = await claim(client, types=["work"], limit=10, leaseMs=5000)
    assert [t["id"] for t in got] == [default[0]["id"], high[0]["id"], low[0]["id"]]
    first = got[0]
    assert first["status"] == "running"
    assert first["attempt"] == 1
    assert first["workerId"] == "w1"
    assert uuid.UUID(first["leaseToken"])
    assert 4000 <= first["leaseExpiresAt"] - now_ms() <= 5000
    assert [t["id"] for t in await claim(client)] == [other[0]["id"]]
    # The lease token is shown only to the claimer.
    fetched = await client.get(f"{API}/tasks/{first['id']}", headers=HEADERS_A)
    assert "leaseToken" not in fetched.json()


@pytest.mark.parametrize("headers", [HEADERS_A, MINIMAL_A], ids=["tasks", "ids"])
async def test_claim_long_poll_is_woken_by_notify(client, headers):
    run = await create_run(client)
    started = time.monotonic()
    waiting = asyncio.create_task(claim(client, waitMs=20_000))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    created = await enqueue(client, run["id"], 1, headers=headers)
    got = await asyncio.wait_for(waiting, 10)
    # The fallback poll is 30 s here: only the NOTIFY of the insert can have woken it.
    assert [t["id"] for t in got] == [created[0]["id"]]
    assert time.monotonic() - started < 5


async def test_claim_long_poll_times_out_empty(client):
    started = time.monotonic()
    assert await claim(client, waitMs=400) == []
    assert 0.35 <= time.monotonic() - started < 5


async def test_claim_is_per_organisation(client):
    run = await create_run(client)
    await enqueue(client, run["id"], 2)
    assert await claim(client, headers=HEADERS_B) == []
    assert len(await claim(client)) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": 1}, "workerId"),
        ({"workerId": "w", "limit": 0}, "limit"),
        ({"workerId": "w", "limit": 1001}, "limit"),
        ({"workerId": "w", "leaseMs": 999}, "leaseMs"),
        ({"workerId": "w", "waitMs": 60_001}, "waitMs"),
        ({"workerId": "w", "types": "work"}, "types"),
    ],
)
async def test_claim_validation(client, body, field):
    response = await post(client, "/claim", body)
    assert_names_field(assert_error(response, 400), field)


async def test_claim_by_id(client):
    run = await create_run(client)
    created = await client.post(
        f"{API}/tasks", json={"runId": run["id"], "type": "x", "inputData": 1}, headers=HEADERS_A
    )
    task_id = created.json()["id"]  # pending: a Node client enqueues without a PATCH
    first = await post(client, f"/{task_id}/claim", {"workerId": "w", "leaseMs": 60_000})
    assert first.status_code == 200, first.text
    assert first.json()["attempt"] == 1
    assert first.json()["leaseToken"]
    assert_error(await post(client, f"/{task_id}/claim", {"workerId": "w2"}), 409, "running")
    assert_error(await post(client, f"/{missing_id()}/claim", {"workerId": "w"}), 404)
    assert_error(await post(client, "/not-a-uuid/claim", {"workerId": "w"}), 404)
    assert_error(await post(client, f"/{task_id}/claim", {"workerId": "w"}, headers=HEADERS_B), 404)
    await post(client, f"/{task_id}/complete", {"leaseToken": first.json()["leaseToken"]})
    assert_error(await post(client, f"/{task_id}/claim", {"workerId": "w"}), 409, "completed")


async def test_claim_ids_claims_each_id_like_claim_by_id(client):
    run = await create_run(client)
    created = await client.post(
        f"{API}/tasks", json={"runId": run["id"], "type": "x", "inputData": 1}, headers=HEADERS_A
    )
    pending_id = created.json()["id"]
    queued, held, done = await enqueue(client, run["id"], 3)
    taken = await post(client, f"/{held['id']}/claim", {"workerId": "other", "leaseMs": 60_000})
    finished = await post(client, f"/{done['id']}/claim", {"workerId": "other"})
    token = finished.json()["leaseToken"]
    await post(client, f"/{done['id']}/complete", {"leaseToken": token})
    other_org = await create_run(client, headers=HEADERS_B)
    foreign = await client.post(
        f"{API}/tasks",
        json={"runId": other_org["id"], "type": "x", "inputData": 1, "enqueue": True},
        headers=HEADERS_B,
    )
    missing = missing_id()
    ids_ = [queued["id"], held["id"], pending_id, done["id"], missing, foreign.json()["id"]]
    ids_.append(queued["id"])  # a repeat: only its first occurrence gets the lease
    response = await post(client, "/claim-ids", {"workerId": "w", "taskIds": ids_, "leaseMs": 9000})
    assert response.status_code == 200, response.text
    results = response.json()["data"]
    assert [r["taskId"] for r in results] == ids_
    assert [(r["ok"], r["reason"], r["status"]) for r in results] == [
        (True, None, "running"),
        (False, "conflict", "running"),
        (True, None, "running"),
        (False, "conflict", "completed"),
        (False, "not_found", None),
        (False, "not_found", None),
        (False, "duplicate", "running"),
    ]
    first, pending = results[0]["task"], results[2]["task"]
    assert first["id"] == queued["id"]
    assert first["attempt"] == 1
    assert first["workerId"] == "w"
    assert first["leaseToken"]
    assert pending["leaseToken"] != first["leaseToken"]
    assert pending["status"] == "running"
    assert pending["queuedAt"]
    assert [r["task"] for r in results[1:2] + results[3:]] == [None] * 5
    # The lease works like one from POST /tasks/{id}/claim, and the held task kept its owner.
    completed = await post(client, f"/{queued['id']}/complete", {"leaseToken": first["leaseToken"]})
    assert completed.status_code == 200, completed.text
    still = await client.get(f"{API}/tasks/{held['id']}", headers=HEADERS_A)
    assert still.json()["workerId"] == "other"
    assert taken.json()["leaseToken"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workerId": "w", "taskIds": []}, "taskIds"),
        ({"workerId": "w", "taskIds": ["not-a-uuid"]}, "taskIds"),
        ({"taskIds": ["00000000-0000-7000-8000-000000000000"]}, "workerId"),
        (
            {"workerId": "w", "taskIds": ["00000000-0000-7000-8000-000000000000"], "leaseMs": 5},
            "leaseMs",
        ),
    ],
)
async def test_claim_ids_validation(client, body, field):
    assert_names_field(assert_error(await post(client, "/claim-ids", body), 400), field)


# ---------------------------------------------------------------- heartbeat


async def test_heartbeat_batch_and_single(client):
    run = await create_run(client)
    await enqueue(client, run["id"], 3)
    a, b, c = await claim(client, leaseMs=5000)
    await patch_task(client, c["id"], status="cancelled")
    leases = [
        {"taskId": a["id"], "leaseToken": a["leaseToken"]},
        {"taskId": b["id"], "leaseToken": str(uuid.uuid4())},
        {"taskId": c["id"], "leaseToken": c["leaseToken"]},
    ]
    response = await post(client, "/heartbeat", {"leases": leases, "leaseMs": 120_000})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [(d["taskId"], d["ok"], d["cancelled"]) for d in data] == [
        (a["id"], True, False),
        (b["id"], False, False),
        (c["id"], False, True),
    ]
    assert data[0]["leaseExpiresAt"] >= now_ms() + 110_000
    assert data[1]["leaseExpiresAt"] is None
    one = await post(client, f"/{a['id']}/heartbeat", {"leaseToken": a["leaseToken"]})
    assert one.status_code == 200
    assert one.json()["ok"] is True
    stale = await post(client, f"/{b['id']}/heartbeat", {"leaseToken": str(uuid.uuid4())})
    assert_error(stale, 409, "lease")
    cancelled = await post(client, f"/{c['id']}/heartbeat", {"leaseToken": c["leaseToken"]})
    assert cancelled.status_code == 200
    assert cancelled.json()["cancelled"] is True
    unknown = await post(client, f"/{missing_id()}/heartbeat", {"leaseToken": str(uuid.uuid4())})
    assert_error(unknown, 404)
    bad = await post(client, "/heartbeat", {"leases": [{"taskId": "x", "leaseToken": "y"}]})
    assert bad.status_code == 400


# ---------------------------------------------------------------- complete / fail / release


async def test_complete_fences_stale_tokens_and_counts_once(client):
    run = await create_run(client)
    await enqueue(client, run["id"], 1, maxRetries=1)
    (held,) = await claim(client)
    stale = await post(
        client, f"/{held['id']}/complete", {"leaseToken": str(uuid.uuid4()), "outputData": "x"}
    )
    assert_error(stale, 409, "lease token")
    response = await post(
        client,
        f"/{held['id']}/complete",
        {"leaseToken": held["leaseToken"], "outputData": {"sum": 3}},
    )
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["status"] == "completed"
    assert task["outputData"] == {"sum": 3}
    assert task["completedAt"] >= task["startedAt"]
    assert task["durationMs"] >= 0
    # The same call again (its answer was lost): 200, nothing changes.
    repeat = await post(
        client, f"/{held['id']}/complete", {"leaseToken": held["leaseToken"], "outputData": "other"}
    )
    assert repeat.status_code == 200
    assert repeat.json()["outputData"] == {"sum": 3}
    # A fail of a completed task changes nothing.
    failed = await post(client, f"/{held['id']}/fail", {"leaseToken": held["leaseToken"]})
    assert_error(failed, 409, "completed")
    counts = await get_run(client, run["id"])
    assert (counts["completedTasks"], counts["failedTasks"]) == (1, 0)


async def test_fail_then_retry_then_exhausted(client):
    run = await create_run(client)
    (task,) = await enqueue(client, run["id"], 1, maxRetries=1)
    (held,) = await claim(client)
    error = {"message": "boom", "type": "ValueError", "stack": "..."}
    response = await post(
        client, f"/{task['id']}/fail", {"leaseToken": held["leaseToken"], "errorData": error}
    )
    retrying = response.json()
    assert retrying["status"] == "retrying"
    assert retrying["retryCount"] == 1
    assert 1600 <= retrying["runAfter"] - retrying["updatedAt"] <= 2400
    assert retrying["errorData"] == error
    assert await claim(client) == []  # not before its backoff
    await asyncio.sleep((retrying["runAfter"] - now_ms()) / 1000 + 0.05)
    (again,) = await claim(client)
    assert again["attempt"] == 2
    assert again["id"] == task["id"]
    final = await post(
        client, f"/{task['id']}/fail", {"leaseToken": again["leaseToken"], "errorData": "x"}
    )
    assert final.json()["status"] == "failed"
    assert final.json()["retryCount"] == 1
    assert (await get_run(client, run["id"]))["failedTasks"] == 1


async def test_fail_not_retryable_and_max_retries_zero(client):
    run = await create_run(client)
    await enqueue(client, run["id"], 1, maxRetries=3)
    await enqueue(client, run["id"], 1, maxRetries=0, type="zero")
    a, b = await claim(client)
    no_retry = await post(
        client, f"/{a['id']}/fail", {"leaseToken": a["leaseToken"], "retryable": False}
    )
    zero = await post(client, f"/{b['id']}/fail", {"leaseToken": b["leaseToken"]})
    assert no_retry.json()["status"] == zero.json()["status"] == "failed"
    assert zero.json()["attempt"] == 1
    assert zero.json()["retryCount"] == 0


async def test_batch_complete(client):
    run = await create_run(client)
    await enqueue(client, run["id"], 200)
    held = await claim(client, limit=200)
    results = [
        {"taskId": t["id"], "leaseToken": t["leaseToken"], "status": "completed", "outputData": i}
        for i, t in enumerate(held[:150])
    ]
    results += [
        {
            "taskId": t["id"],
            "leaseToken": t["leaseToken"],
            "status": "failed",
            "errorData": "e",
            "retryable": False,
        }
        for t in held[150:199]
    ]
    results.append(
        {"taskId": held[199]["id"], "leaseToken": str(uuid.uuid4()), "status": "completed"}
    )
    response = await post(client, "/complete", {"results": results})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["taskId"] for d in data] == [r["taskId"] for r in results]
    assert all(d["ok"] for d in data[:199])
    assert data[199] == {
        "taskId": held[199]["id"],
        "ok": False,
        "status": "running",
        "reason": None,
    }
    counts = await get_run(client, run["id"])
    assert (counts["completedTasks"], counts["failedTasks"]) == (150, 49)
    assert (
        await post(client, "/complete", {"results": [{"taskId": "1", "status": "done"}]})
    ).status_code == 400


async def test_release(client):
    run = await create_run(client)
    await enqueue(client, run["id"], 2)
    a, b = await claim(client)
    response = await post(client, f"/{a['id']}/release", {"leaseToken": a["leaseToken"]})
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert response.json()["attempt"] == 0
    assert_error(await post(client, f"/{a['id']}/release", {"leaseToken": a["leaseToken"]}), 409)
    batch = await post(
        client, "/release", {"leases": [{"taskId": b["id"], "leaseToken": b["leaseToken"]}]}
    )
    assert batch.json()["data"] == [
        {"taskId": b["id"], "ok": True, "status": "queued", "reason": None}
    ]
    assert {t["id"] for t in await claim(client)} == {a["id"], b["id"]}


# ---------------------------------------------------------------- wait


async def test_wait_returns_when_the_task_ends(client):
    run = await create_run(client)
    (task,) = await enqueue(client, run["id"], 1)
    started = time.monotonic()
    waiting = asyncio.create_task(
        client.get(f"{API}/tasks/{task['id']}/wait?timeoutMs=20000", headers=HEADERS_A)
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    (held,) = await claim(client)
    await post(
        client, f"/{task['id']}/complete", {"leaseToken": held["leaseToken"], "outputData": 7}
    )
    response = await asyncio.wait_for(waiting, 10)
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.json()["outputData"] == 7
    assert time.monotonic() - started < 5  # the 30 s poll fallback did not do it: NOTIFY did


async def test_wait_is_woken_by_the_legacy_patch(client):
    run = await create_run(client)
    (task,) = await enqueue(client, run["id"], 1)
    waiting = asyncio.create_task(
        client.get(f"{API}/tasks/{task['id']}/wait?timeoutMs=20000", headers=HEADERS_A)
    )
    await asyncio.sleep(0.3)
    await patch_task(client, task["id"], status="cancelled")
    response = await asyncio.wait_for(waiting, 5)
    assert response.json()["status"] == "cancelled"


async def test_wait_timeout_and_errors(client):
    run = await create_run(client)
    (task,) = await enqueue(client, run["id"], 1)
    started = time.monotonic()
    response = await client.get(f"{API}/tasks/{task['id']}/wait?timeoutMs=300", headers=HEADERS_A)
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.25
    assert_error(await client.get(f"{API}/tasks/{missing_id()}/wait", headers=HEADERS_A), 404)
    assert_error(await client.get(f"{API}/tasks/{task['id']}/wait", headers=HEADERS_B), 404)
    too_long = await client.get(f"{API}/tasks/{task['id']}/wait?timeoutMs=60001", headers=HEADERS_A)
    assert too_long.status_code == 400


async def test_queue_endpoints_need_a_key(client):
    response = await client.post(f"{API}/tasks/claim", json={"workerId": "w"})
    assert_error(response, 401)


# ---------------------------------------------------------------- bullmq backend


@pytest.fixture
async def bullmq_app(db_url, redis_server) -> AsyncIterator[tuple[httpx.AsyncClient, Queue]]:
    """The app on the bullmq backend with a queue of this test alone, and that queue."""
    name = unique_queue_name()
    settings = make_settings(db_url, sweep_enabled=False, **redis_settings(redis_server, name))
    queue = bullmq_queue(redis_server, org_queue_name(name, ORG_A))  # org A's own queue
    try:
        async with running_app(create_app(settings)) as http:
            yield http, queue
    finally:
        await queue.obliterate(force=True)
        await queue.close()


async def test_bullmq_publishes_the_wire_format(bullmq_app):
    client, queue = bullmq_app
    run = await create_run(client)
    body = {"runId": run["id"], "type": "resize", "inputData": 1, "enqueue": True, "maxRetries": 2}
    single = await client.post(f"{API}/tasks", json={**body, "priority": 7}, headers=HEADERS_A)
    batch = await enqueue(client, run["id"], 3, delayMs=60_000)
    pending = await client.post(f"{API}/tasks", json={**body, "enqueue": False}, headers=HEADERS_A)
    task = single.json()
    job = await queue.getJob(f"{task['id']}:1")
    # SPEC section 7: name = type, data exactly {"taskId"}, Node foreman-client's options.
    assert (job.name, job.data) == ("resize", {"taskId": task["id"]})
    assert job.opts["attempts"] == 3
    assert job.opts["priority"] == 7
    assert job.opts["backoff"] == {"type": "exponential", "delay": 2000}
    assert (job.opts["removeOnComplete"], job.opts["removeOnFail"]) == (True, False)
    delayed = await queue.getJob(f"{batch[0]['id']}:1")
    assert 55_000 <= delayed.opts["delay"] <= 60_000
    counts = await queue.getJobCounts()
    assert (counts["prioritized"], counts["delayed"], counts["waiting"]) == (1, 3, 0)
    assert await queue.getJob(f"{pending.json()['id']}:1") is None


async def test_bullmq_fail_publishes_the_next_attempt_after_its_backoff(bullmq_app):
    client, queue = bullmq_app
    run = await create_run(client)
    (task,) = await enqueue(client, run["id"], 1, maxRetries=1)
    held = await post(client, f"/{task['id']}/claim", {"workerId": "w"})
    failed = await post(client, f"/{task['id']}/fail", {"leaseToken": held.json()["leaseToken"]})
    assert failed.json()["status"] == "retrying"
    retry = await queue.getJob(f"{task['id']}:2")
    assert retry is not None
    assert retry.data == {"taskId": task["id"]}
    assert 1000 <= retry.opts["delay"] <= 2400
    assert retry.opts["attempts"] == 1  # the attempts left
    assert (await queue.getJobCounts())["delayed"] == 1


async def test_bullmq_health_and_config(bullmq_app):
    client, _ = bullmq_app
    health = await client.get("/health")
    assert health.json()["services"]["redis"] == "connected"
    config = await client.get(f"{API}/config", headers=HEADERS_A)
    assert config.json()["queue"] == {"backend": "bullmq"}


async def test_bullmq_redis_down_reports_disconnected_and_still_creates(db_url):
    closed_port = free_port()
    settings = make_settings(
        db_url,
        sweep_enabled=False,
        queue_backend="bullmq",
        redis_host="127.0.0.1",
        redis_port=closed_port,
        task_queue_name=unique_queue_name(),
    )
    async with running_app(create_app(settings)) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["services"]["redis"] == "disconnected"
        run = await create_run(client)
        # The row is committed; the failed publish is logged and left to the sweeper.
        (task,) = await enqueue(client, run["id"], 1)
        assert task["status"] == "queued"


async def test_long_polls_survive_a_lost_listen_connection(client, db_url):
    admin = await asyncpg.connect(db_url)
    try:
        # The LISTEN connections of this test database only (other tests share the server);
        # an app of another test may still be listening here too.
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        assert killed >= 1
        await asyncio.sleep(1.5)  # the notifier reconnects (0.5 s back-off)
        run = await create_run(client)
        started = time.monotonic()
        waiting = asyncio.create_task(claim(client, waitMs=20_000))
        await asyncio.sleep(0.3)
        created = await enqueue(client, run["id"], 1)
        got = await asyncio.wait_for(waiting, 10)
        assert [t["id"] for t in got] == [created[0]["id"]]
        assert time.monotonic() - started < 5  # woken by NOTIFY, not the 30 s poll
        listening = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        assert listening >= 1
    finally:
        await admin.close()
