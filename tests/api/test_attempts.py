"""GET /api/v1/tasks/:id/attempts, over the queue and the legacy PATCH path."""

from __future__ import annotations

from tests.api.helpers import API, assert_error, create_run, create_task, missing_id, patch_task
from tests.conftest import HEADERS_A, HEADERS_B


async def attempts(client, task_id: str, headers=HEADERS_A):
    response = await client.get(f"{API}/tasks/{task_id}/attempts", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_claimed_and_completed_attempts(client):
    run = await create_run(client)
    task = await create_task(client, run["id"], enqueue=True, maxRetries=1)
    assert await attempts(client, task["id"]) == []
    body = {"workerId": "w-1", "limit": 1}
    (held,) = (await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)).json()["data"]
    (running,) = await attempts(client, task["id"])
    assert running == {
        "attempt": 1,
        "workerId": "w-1",
        "startedAt": running["startedAt"],
        "endedAt": None,
        "durationMs": None,
        "outcome": "running",
        "errorData": None,
    }
    fail = {"leaseToken": held["leaseToken"], "errorData": {"message": "no", "type": "E"}}
    response = await client.post(f"{API}/tasks/{task['id']}/fail", json=fail, headers=HEADERS_A)
    assert response.json()["status"] == "retrying"
    claim = {"workerId": "w-2"}
    again = await client.post(f"{API}/tasks/{task['id']}/claim", json=claim, headers=HEADERS_A)
    token = again.json()["leaseToken"]
    await client.post(
        f"{API}/tasks/{task['id']}/complete", json={"leaseToken": token}, headers=HEADERS_A
    )
    first, second = await attempts(client, task["id"])
    assert (first["attempt"], first["workerId"], first["outcome"]) == (1, "w-1", "failed")
    assert first["errorData"] == {"message": "no", "type": "E"}
    assert first["durationMs"] == first["endedAt"] - first["startedAt"]
    assert (second["attempt"], second["workerId"], second["outcome"]) == (2, "w-2", "completed")
    assert second["errorData"] is None  # every key of an attempt is sent, null when unknown


async def test_the_legacy_patch_path_keeps_attempts(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    await patch_task(client, task["id"], status="running")
    await patch_task(client, task["id"], status="running")  # a repeat opens no second attempt
    await patch_task(client, task["id"], status="retrying", errorData={"why": 1})
    await patch_task(client, task["id"], status="running")
    await patch_task(client, task["id"], status="completed", outputData=[1])
    await patch_task(client, task["id"], status="completed")  # a no-op repeat
    rows = await attempts(client, task["id"])
    assert [(a["attempt"], a["outcome"]) for a in rows] == [(1, "failed"), (2, "completed")]
    assert rows[0]["errorData"] == {"why": 1}


async def test_unknown_foreign_and_malformed_tasks_are_404(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    for task_id, headers in ((missing_id(), HEADERS_A), (task["id"], HEADERS_B), ("x", HEADERS_A)):
        response = await client.get(f"{API}/tasks/{task_id}/attempts", headers=headers)
        assert_error(response, 404, "Task not found")
