"""The Node foreman-client adds the BullMQ job first, then PATCHes `{status: queued, queueJobId}`:
by then a worker may have claimed or finished the task. That late PATCH records the job id and
never takes the task back (docs/queue-protocol.md "Creating and queueing"). In process, no Node."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import HEADERS_A

pytestmark = pytest.mark.timeout(60)


async def _create(client: Any) -> tuple[str, dict[str, Any]]:
    run = await client.post("/api/v1/runs", json={"inputData": {}}, headers=HEADERS_A)
    assert run.status_code == 201, run.text
    task = await client.post(
        "/api/v1/tasks",
        json={"runId": run.json()["id"], "type": "t", "inputData": 1, "maxRetries": 0},
        headers=HEADERS_A,
    )
    assert task.status_code == 201, task.text
    return run.json()["id"], task.json()


async def _patch(client: Any, task_id: str, **body: Any) -> Any:
    return await client.patch(f"/api/v1/tasks/{task_id}", json=body, headers=HEADERS_A)


async def _claim(client: Any, task_id: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/tasks/{task_id}/claim",
        json={"workerId": "py-1", "leaseMs": 30000},
        headers=HEADERS_A,
    )
    assert response.status_code == 200, response.text
    claimed: dict[str, Any] = response.json()
    return claimed


async def test_the_confirmation_queues_a_pending_task(client) -> None:
    _, task = await _create(client)
    response = await _patch(client, task["id"], status="queued", queueJobId="42")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"
    assert response.json()["queueJobId"] == "42"
    assert response.json()["queuedAt"] >= task["createdAt"]


async def test_a_late_confirmation_keeps_the_lease_of_a_running_task(client) -> None:
    _, task = await _create(client)
    claimed = await _claim(client, task["id"])  # the Python worker was quicker than the PATCH
    response = await _patch(client, task["id"], status="queued", queueJobId="42")
    assert response.status_code == 200, response.text
    late = response.json()
    assert (late["status"], late["attempt"], late["queueJobId"]) == ("running", 1, "42")
    assert late.get("queuedAt") == claimed.get("queuedAt")
    # The lease still holds: the worker's result is recorded.
    done = await client.post(
        f"/api/v1/tasks/{task['id']}/complete",
        json={"leaseToken": claimed["leaseToken"], "outputData": "ok"},
        headers=HEADERS_A,
    )
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["outputData"]) == ("completed", "ok")


async def test_a_late_confirmation_of_a_finished_task_is_200_and_counts_nothing(client) -> None:
    run_id, task = await _create(client)
    claimed = await _claim(client, task["id"])
    done = await client.post(
        f"/api/v1/tasks/{task['id']}/complete",
        json={"leaseToken": claimed["leaseToken"], "outputData": "ok"},
        headers=HEADERS_A,
    )
    assert done.status_code == 200, done.text
    response = await _patch(client, task["id"], status="queued", queueJobId="42")
    assert response.status_code == 200, response.text
    late = response.json()
    assert (late["status"], late["outputData"], late["queueJobId"]) == ("completed", "ok", "42")
    assert late["completedAt"] == done.json()["completedAt"]
    run = (await client.get(f"/api/v1/runs/{run_id}", headers=HEADERS_A)).json()
    assert (run["totalTasks"], run["completedTasks"], run["failedTasks"]) == (1, 1, 0)


async def test_queued_without_a_job_id_still_cannot_leave_a_terminal_status(client) -> None:
    _, task = await _create(client)
    assert (await _patch(client, task["id"], status="completed")).status_code == 200
    response = await _patch(client, task["id"], status="queued")
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
