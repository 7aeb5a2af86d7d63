"""POST /api/v1/tasks/:id/retry: a failed or cancelled task is ready again, one more attempt."""

from __future__ import annotations

import asyncio

import pytest

from tests.api.helpers import API, assert_error, create_run, get_run, missing_id, patch_task
from tests.conftest import HEADERS_A, HEADERS_B


async def enqueue(client, run_id: str, **fields) -> dict:
    body = {"runId": run_id, "type": "work", "inputData": {}, "enqueue": True, **fields}
    response = await client.post(f"{API}/tasks", json=body, headers=HEADERS_A)
    assert response.status_code == 201, response.text
    return response.json()


async def claim(client) -> list[dict]:
    body = {"workerId": "w1", "limit": 10}
    response = await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def fail(client, task: dict) -> dict:
    body = {"leaseToken": task["leaseToken"], "errorData": {"message": "boom"}}
    response = await client.post(f"{API}/tasks/{task['id']}/fail", json=body, headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()


async def retry(client, task_id: str, *, headers=HEADERS_A):
    return await client.post(f"{API}/tasks/{task_id}/retry", headers=headers)


async def test_failed_task_gets_exactly_one_more_attempt(client):
    run = await create_run(client)
    task = await enqueue(client, run["id"], maxRetries=0)
    (held,) = await claim(client)
    assert (await fail(client, held))["status"] == "failed"
    assert (await get_run(client, run["id"]))["failedTasks"] == 1

    response = await retry(client, task["id"])
    assert response.status_code == 200, response.text
    ready = response.json()
    assert (ready["status"], ready["attempt"], ready["maxRetries"]) == ("queued", 1, 1)
    assert ready["retryCount"] == 1
    assert "completedAt" not in ready
    assert "durationMs" not in ready
    assert ready["errorData"] == {"message": "boom"}  # the last attempt's error stays readable
    counts = await get_run(client, run["id"])
    assert (counts["totalTasks"], counts["failedTasks"]) == (1, 0)

    (again,) = await claim(client)
    assert again["attempt"] == 2
    # The one more attempt fails too: the task fails for good, no further retry.
    assert (await fail(client, again))["status"] == "failed"
    assert (await get_run(client, run["id"]))["failedTasks"] == 1


async def test_cancelled_task_is_retried_and_completes(client):
    run = await create_run(client)
    task = await enqueue(client, run["id"], maxRetries=2)
    await patch_task(client, task["id"], status="cancelled")
    assert (await get_run(client, run["id"]))["cancelledTasks"] == 1
    ready = (await retry(client, task["id"])).json()
    # attempt 0 < maxRetries 2: the task keeps the attempts it had.
    assert (ready["status"], ready["maxRetries"]) == ("queued", 2)
    (held,) = await claim(client)
    body = {"leaseToken": held["leaseToken"], "outputData": 1}
    done = await client.post(f"{API}/tasks/{task['id']}/complete", json=body, headers=HEADERS_A)
    assert done.json()["status"] == "completed"
    counts = await get_run(client, run["id"])
    assert (counts["cancelledTasks"], counts["completedTasks"]) == (0, 1)


@pytest.mark.parametrize("status", ["pending", "queued", "running", "completed", "retrying"])
async def test_other_statuses_are_409(client, status):
    run = await create_run(client)
    task = await enqueue(client, run["id"])
    await patch_task(client, task["id"], status=status)
    response = await retry(client, task["id"])
    assert_error(response, 409, status)
    assert response.json()["status"] == status


async def test_unknown_and_other_organisation_are_404(client):
    run = await create_run(client)
    task = await enqueue(client, run["id"], maxRetries=0)
    await patch_task(client, task["id"], status="failed")
    assert_error(await retry(client, missing_id()), 404, "Task not found")
    assert_error(await retry(client, "not-an-id"), 404, "Task not found")
    assert_error(await retry(client, task["id"], headers=HEADERS_B), 404, "Task not found")
    assert (await get_run(client, run["id"]))["failedTasks"] == 1


async def test_concurrent_retries_move_the_task_once(client):
    run = await create_run(client)
    task = await enqueue(client, run["id"], maxRetries=0)
    await patch_task(client, task["id"], status="failed")
    answers = await asyncio.gather(*(retry(client, task["id"]) for _ in range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [409] * 7
    counts = await get_run(client, run["id"])
    assert (counts["failedTasks"], counts["totalTasks"]) == (0, 1)
