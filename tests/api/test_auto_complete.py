"""Runs that finish themselves (autoComplete): exactly once, from the exact counters, under races."""

from __future__ import annotations

import asyncio

import asyncpg

from foreman import ids
from foreman.store import runs as runs_store
from tests.api.helpers import API, assert_error, create_run, create_task, get_run, patch_task
from tests.conftest import HEADERS_A


async def claim(client, limit: int = 100) -> list[dict]:
    body = {"workerId": "w", "limit": limit}
    response = await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def end(client, task: dict, outcome: str = "complete"):
    body = {"leaseToken": task["leaseToken"]}
    if outcome == "fail":
        body["retryable"] = False
    return await client.post(f"{API}/tasks/{task['id']}/{outcome}", json=body, headers=HEADERS_A)


async def test_running_at_first_claim_then_failed_once_every_task_ended(client):
    run = await create_run(client, autoComplete=True)
    assert (run["status"], run["autoComplete"]) == ("pending", True)
    for _ in range(3):
        await create_task(client, run["id"], enqueue=True)
    assert (await get_run(client, run["id"]))["status"] == "pending"
    first, *others = await claim(client, limit=1) + await claim(client)
    started = await get_run(client, run["id"])
    assert started["status"] == "running"
    assert started["startedAt"] is not None
    assert (await end(client, first, "fail")).json()["status"] == "failed"
    assert (await end(client, others[0])).status_code == 200
    assert (await get_run(client, run["id"]))["status"] == "running"
    assert (await end(client, others[1])).status_code == 200
    ended = await get_run(client, run["id"])
    assert (ended["status"], ended["failedTasks"], ended["completedTasks"]) == ("failed", 1, 2)
    assert ended["durationMs"] == ended["completedAt"] - ended["startedAt"]
    late = await client.post(
        f"{API}/tasks", json={"runId": run["id"], "type": "t", "inputData": 1}, headers=HEADERS_A
    )
    assert_error(late, 409, "has ended", "autoComplete")
    batch = {"tasks": [{"runId": run["id"], "type": "t", "inputData": 1}]}
    late = await client.post(f"{API}/tasks/batch", json=batch, headers=HEADERS_A)
    assert_error(late, 409, "has ended")
    assert (await get_run(client, run["id"]))["totalTasks"] == 3


async def test_plain_runs_are_not_completed(client):
    run = await create_run(client)
    assert "autoComplete" not in run  # the original answer, unchanged
    await create_task(client, run["id"], enqueue=True)
    (held,) = await claim(client)
    await end(client, held)
    final = await get_run(client, run["id"])
    assert (final["status"], final.get("completedAt")) == ("pending", None)


async def test_the_legacy_patch_and_cancel_paths_complete_it_too(client):
    run = await create_run(client, autoComplete=True)
    patched = await create_task(client, run["id"])
    cancelled = await create_task(client, run["id"], enqueue=True)
    await patch_task(client, patched["id"], status="running")
    await patch_task(client, patched["id"], status="completed")
    assert (await get_run(client, run["id"]))["status"] == "pending"
    response = await client.post(f"{API}/tasks/{cancelled['id']}/cancel", headers=HEADERS_A)
    assert response.status_code == 200
    final = await get_run(client, run["id"])
    assert (final["status"], final["cancelledTasks"]) == ("completed", 1)


async def test_last_tasks_ending_concurrently_complete_the_run_once(client, db_url):
    for _ in range(5):
        run = await create_run(client, autoComplete=True)
        for _ in range(24):
            await create_task(client, run["id"], enqueue=True)
        held = await claim(client)
        answers = await asyncio.gather(*(end(client, t) for t in held))
        assert {a.status_code for a in answers} == {200}
        final = await get_run(client, run["id"])
        assert (final["status"], final["completedTasks"]) == ("completed", 24)
        # Exactly once: the run row was updated by one completion (its completedAt stands).
        conn = await asyncpg.connect(db_url)
        try:
            again = await runs_store.complete_due_runs(conn, now=ids.now_ms(), limit=100)
        finally:
            await conn.close()
        assert again == 0
        assert (await get_run(client, run["id"]))["completedAt"] == final["completedAt"]


async def test_a_task_added_while_the_run_completes_is_either_refused_or_counted(backend):
    client = backend.client
    outcomes = []
    for _ in range(12):
        run = await create_run(client, autoComplete=True)
        first = await create_task(client, run["id"], enqueue=True)
        (held,) = await claim(client)
        body = {"runId": run["id"], "type": "late", "inputData": 1, "enqueue": True}
        done, added = await asyncio.gather(
            end(client, held), client.post(f"{API}/tasks", json=body, headers=HEADERS_A)
        )
        assert done.status_code == 200
        state = await get_run(client, run["id"])
        if added.status_code == 201:
            # Counted: the run stays open until the new task ends too.
            assert (state["status"], state["totalTasks"]) == ("running", 2)
            if backend.published is not None:
                await backend.published.assert_published_once(first["id"], added.json()["id"])
            (late,) = await claim(client)
            await end(client, late)
            state = await get_run(client, run["id"])
            assert (state["status"], state["completedTasks"]) == ("completed", 2)
        else:
            assert_error(added, 409, "has ended")
            assert (state["status"], state["totalTasks"]) == ("completed", 1)
            if backend.published is not None:
                await backend.published.assert_published_once(first["id"])
        outcomes.append(added.status_code)
    if backend.published is not None:  # a refused task published nothing
        jobs, duplicated = await backend.published.adds()
        assert (sum(jobs.values()), duplicated) == (12 + outcomes.count(201), {})
    assert outcomes  # both orders are legal; each run ended consistent


async def test_the_sweeper_completes_a_run_a_race_left_open(client, db_url):
    run = await create_run(client, autoComplete=True)
    task = await create_task(client, run["id"])
    conn = await asyncpg.connect(db_url)
    try:
        # What two concurrent last statements can leave: every task counted terminal, run open.
        await conn.execute("UPDATE task SET status = 'completed' WHERE id = $1", task["id"])
        await conn.execute(
            "UPDATE run_counter SET completed_tasks = completed_tasks + 1 WHERE run_id = $1"
            " AND total_tasks = 1",
            run["id"],
        )
        assert (await get_run(client, run["id"]))["status"] == "pending"
        assert await runs_store.complete_due_runs(conn, now=ids.now_ms(), limit=100) == 1
    finally:
        await conn.close()
    assert (await get_run(client, run["id"]))["status"] == "completed"
