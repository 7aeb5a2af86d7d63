"""POST /api/v1/tasks/:id/cancel and /runs/:id/cancel: at once, or through the worker's lease."""

from __future__ import annotations

import asyncio

import asyncpg

from foreman import ids
from foreman.store import queue as queue_store
from tests.api.helpers import (
    API,
    assert_error,
    create_run,
    create_task,
    get_run,
    missing_id,
    patch_task,
)
from tests.conftest import HEADERS_A, HEADERS_B


async def cancel(client, kind: str, some_id: str, headers=HEADERS_A):
    return await client.post(f"{API}/{kind}/{some_id}/cancel", headers=headers)


async def claim(client, limit: int = 100, lease_ms: int = 30_000) -> list[dict]:
    body = {"workerId": "w", "limit": limit, "leaseMs": lease_ms}
    response = await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def heartbeat(client, task: dict) -> dict:
    body = {"leases": [{"taskId": task["id"], "leaseToken": task["leaseToken"]}]}
    response = await client.post(f"{API}/tasks/heartbeat", json=body, headers=HEADERS_A)
    return response.json()["data"][0]


async def test_waiting_tasks_are_cancelled_at_once_and_counted_once(client):
    run = await create_run(client)
    pending = await create_task(client, run["id"])
    queued = await create_task(client, run["id"], enqueue=True)
    for task in (pending, queued):
        response = await cancel(client, "tasks", task["id"])
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert response.json()["completedAt"] is not None
        again = await cancel(client, "tasks", task["id"])  # a repeat: the task as it is
        assert (again.status_code, again.json()["status"]) == (200, "cancelled")
    assert await claim(client) == []  # a cancelled task is never claimed
    counts = await get_run(client, run["id"])
    assert (counts["totalTasks"], counts["cancelledTasks"]) == (2, 2)


async def test_bad_targets(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    await patch_task(client, task["id"], status="completed")
    assert_error(await cancel(client, "tasks", task["id"]), 409, "completed", "cannot be cancelled")
    for kind, name in (("tasks", "Task"), ("runs", "Run")):
        assert_error(await cancel(client, kind, missing_id()), 404, f"{name} not found")
        assert_error(await cancel(client, kind, "nope"), 404, f"{name} not found")
    assert_error(await cancel(client, "tasks", task["id"], HEADERS_B), 404, "Task not found")
    assert_error(await cancel(client, "runs", run["id"], HEADERS_B), 404, "Run not found")
    done = await create_run(client)
    await client.patch(f"{API}/runs/{done['id']}", json={"status": "completed"}, headers=HEADERS_A)
    assert_error(await cancel(client, "runs", done["id"]), 409, "completed")


async def test_a_running_task_ends_cancelled_when_its_worker_reports(client):
    run = await create_run(client)
    await create_task(client, run["id"], enqueue=True)
    (held,) = await claim(client)
    marked = (await cancel(client, "tasks", held["id"])).json()
    assert marked["status"] == "running"
    beat = await heartbeat(client, held)
    assert (beat["ok"], beat["cancelled"]) == (True, True)  # still held, told to stop
    body = {"leaseToken": held["leaseToken"], "outputData": {"late": True}}
    done = await client.post(f"{API}/tasks/{held['id']}/complete", json=body, headers=HEADERS_A)
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json().get("outputData")) == ("cancelled", None)
    counts = await get_run(client, run["id"])
    assert (counts["completedTasks"], counts["cancelledTasks"]) == (0, 1)
    attempts = (await client.get(f"{API}/tasks/{held['id']}/attempts", headers=HEADERS_A)).json()
    assert [a["outcome"] for a in attempts["data"]] == ["cancelled"]


async def test_a_running_task_ends_cancelled_when_its_lease_ends_or_is_released(client, db_url):
    run = await create_run(client)
    await create_task(client, run["id"], enqueue=True)
    await create_task(client, run["id"], enqueue=True)
    expiring, released = await claim(client, lease_ms=1000)
    for task in (expiring, released):
        assert (await cancel(client, "tasks", task["id"])).status_code == 200
    # A take-over by id would start a new attempt: a cancel-requested task is not taken over.
    body = {"workerId": "other"}
    taken = await client.post(f"{API}/tasks/{expiring['id']}/claim", json=body, headers=HEADERS_A)
    assert taken.status_code == 409
    leases = [{"taskId": released["id"], "leaseToken": released["leaseToken"]}]
    response = await client.post(f"{API}/tasks/release", json={"leases": leases}, headers=HEADERS_A)
    assert response.json()["data"][0]["status"] == "cancelled"
    admin = await asyncpg.connect(db_url)
    try:
        swept = await queue_store.expire_leases(admin, now=ids.now_ms() + 5_000, limit=10)
    finally:
        await admin.close()
    assert [(str(t.id), t.status) for t in swept] == [(expiring["id"], "cancelled")]
    assert swept[0].error_data is None  # not a LeaseExpired "retrying" message
    rows = (await client.get(f"{API}/tasks/{expiring['id']}/attempts", headers=HEADERS_A)).json()
    assert [(a["outcome"], a["errorData"]) for a in rows["data"]] == [("cancelled", None)]
    counts = await get_run(client, run["id"])
    assert (counts["cancelledTasks"], counts["failedTasks"], counts["totalTasks"]) == (2, 0, 2)


async def test_cancel_run_cancels_every_unfinished_task(client):
    run = await create_run(client)
    done = await create_task(client, run["id"])
    await patch_task(client, done["id"], status="completed")
    for _ in range(3):
        await create_task(client, run["id"], enqueue=True)
    await create_task(client, run["id"])
    (held,) = await claim(client, limit=1)
    response = await cancel(client, "runs", run["id"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["completedAt"] is not None
    assert (body["totalTasks"], body["completedTasks"], body["cancelledTasks"]) == (5, 1, 3)
    assert (await heartbeat(client, held))["cancelled"] is True
    fail = {"leaseToken": held["leaseToken"], "errorData": {"m": 1}}
    ended = await client.post(f"{API}/tasks/{held['id']}/fail", json=fail, headers=HEADERS_A)
    assert ended.json()["status"] == "cancelled"  # not retried
    again = await cancel(client, "runs", run["id"])
    assert again.status_code == 200
    assert again.json()["completedAt"] == body["completedAt"]
    assert (again.json()["cancelledTasks"], again.json()["completedTasks"]) == (4, 1)


async def test_cancel_racing_completion_counts_each_task_once(backend):
    client = backend.client
    run = await create_run(client)
    created = [await create_task(client, run["id"], enqueue=True) for _ in range(60)]
    held = await claim(client)

    async def complete(task):
        body = {"leaseToken": task["leaseToken"]}
        return await client.post(f"{API}/tasks/{task['id']}/complete", json=body, headers=HEADERS_A)

    answers = await asyncio.gather(
        *(complete(t) for t in held[::2]),
        cancel(client, "runs", run["id"]),
        *(cancel(client, "tasks", t["id"]) for t in held[1::2]),
        *(complete(t) for t in held[1::2]),
    )
    assert {a.status_code for a in answers} == {200}
    statuses = {}
    for task in held:
        got = await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)
        statuses[task["id"]] = got.json()["status"]
    assert set(statuses.values()) <= {"completed", "cancelled"}
    counts = await get_run(client, run["id"])
    completed = sum(1 for s in statuses.values() if s == "completed")
    assert (counts["completedTasks"], counts["cancelledTasks"]) == (completed, 60 - completed)
    assert counts["totalTasks"] == 60
    if backend.published is not None:
        # Each task published once, when it was enqueued; neither end published another attempt.
        await backend.published.assert_published_once(*(t["id"] for t in created))
        jobs, _ = await backend.published.adds()
        assert sum(jobs.values()) == 60
