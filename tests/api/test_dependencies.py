"""Task dependencies (dependsOn, refs, blocked, release, onParentFailure, parents), issue 13."""

from __future__ import annotations

import asyncio

from foreman import ids
from foreman.queue.postgres import PostgresQueue
from foreman.server.sweeper import Sweeper
from foreman.store import db
from tests.api.helpers import API, assert_error, create_run, create_task, get_run, missing_id
from tests.conftest import HEADERS_A, HEADERS_B


async def batch(client, items: list[dict], headers=HEADERS_A):
    return await client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=headers)


async def claim(client, limit: int = 1000, types=None) -> list[dict]:
    body = {"workerId": "w", "limit": limit}
    if types:
        body["types"] = types
    response = await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def end(client, task: dict, outcome: str = "complete", **body):
    body["leaseToken"] = task["leaseToken"]
    if outcome == "fail":
        body.setdefault("retryable", False)
    response = await client.post(
        f"{API}/tasks/{task['id']}/{outcome}", json=body, headers=HEADERS_A
    )
    assert response.status_code == 200, response.text
    return response.json()


async def status(client, task_id: str) -> str:
    return (await client.get(f"{API}/tasks/{task_id}", headers=HEADERS_A)).json()["status"]


def item(run_id: str, task_type: str = "work", **fields) -> dict:
    return {"runId": run_id, "type": task_type, "inputData": {}, "enqueue": True, **fields}


async def test_a_graph_in_one_batch_runs_in_order(client):
    run = await create_run(client)
    response = await batch(
        client,
        [
            item(run["id"], "split", ref="split"),
            *(item(run["id"], "map", ref=f"m{i}", dependsOn=["split"]) for i in range(3)),
            item(run["id"], "join", dependsOn=["m0", "m1", "m2"]),
        ],
    )
    assert response.status_code == 201, response.text
    split, *maps, join = response.json()["data"]
    assert [split["status"], *(m["status"] for m in maps), join["status"]] == [
        "queued",
        "blocked",
        "blocked",
        "blocked",
        "blocked",
    ]
    (held,) = await claim(client)  # only the split is ready
    assert held["id"] == split["id"]
    await end(client, held, outputData={"parts": 3})
    mapped = await claim(client)
    assert sorted(t["id"] for t in mapped) == sorted(m["id"] for m in maps)
    for i, task in enumerate(mapped):
        await end(client, task, outputData={"part": i})
        expected = "queued" if i == 2 else "blocked"
        assert await status(client, join["id"]) == expected
    page = await client.get(f"{API}/tasks/{join['id']}/parents?limit=2", headers=HEADERS_A)
    body = page.json()
    assert body["pagination"] == {"total": 3, "limit": 2, "offset": 0}
    assert {p["status"] for p in body["data"]} == {"completed"}
    rest = await client.get(f"{API}/tasks/{join['id']}/parents?offset=2", headers=HEADERS_A)
    outputs = [p["outputData"] for p in body["data"] + rest.json()["data"]]
    assert sorted(o["part"] for o in outputs) == [0, 1, 2]
    (joined,) = await claim(client)
    assert joined["id"] == join["id"]


async def test_dependencies_on_existing_tasks_and_ended_parents(client):
    run = await create_run(client)
    done = await create_task(client, run["id"], enqueue=True)
    (held,) = await claim(client)
    await end(client, held)
    open_parent = await create_task(client, run["id"], enqueue=True)
    child = await create_task(
        client, run["id"], enqueue=True, dependsOn=[done["id"], open_parent["id"]]
    )
    assert child["status"] == "blocked"
    ready = await create_task(client, run["id"], enqueue=True, dependsOn=[done["id"]])
    assert ready["status"] == "queued"  # every parent ended already
    pending = await create_task(client, run["id"], dependsOn=[done["id"]])
    assert pending["status"] == "pending"  # not enqueued: released to pending


async def test_a_failed_parent_cancels_dependents_transitively_unless_run(client):
    run = await create_run(client)
    response = await batch(
        client,
        [
            item(run["id"], "a", ref="a", maxRetries=0),
            item(run["id"], "ok", ref="ok"),
            item(run["id"], "b", ref="b", dependsOn=["a", "ok"]),
            item(run["id"], "c", ref="c", dependsOn=["b"]),
            item(run["id"], "d", dependsOn=["c"], onParentFailure="run"),
        ],
    )
    a, _ok, b, c, d = response.json()["data"]
    held = {t["type"]: t for t in await claim(client)}
    await end(client, held["ok"])
    failed = await end(client, held["a"], "fail", errorData={"m": "x"})
    assert failed["status"] == "failed"
    got = (await client.get(f"{API}/tasks/{b['id']}", headers=HEADERS_A)).json()
    assert got["status"] == "cancelled"
    assert got["errorData"]["type"] == "ParentFailed"
    assert got["errorData"]["parentTaskId"] == a["id"]
    assert await status(client, c["id"]) == "cancelled"  # transitively
    assert await status(client, d["id"]) == "queued"  # onParentFailure run: every parent ended
    counts = await get_run(client, run["id"])
    assert (counts["totalTasks"], counts["cancelledTasks"], counts["failedTasks"]) == (5, 2, 1)


async def test_cancelling_a_parent_reaches_its_children(client):
    run = await create_run(client)
    parent = await create_task(client, run["id"], enqueue=True)
    child = await create_task(client, run["id"], enqueue=True, dependsOn=[parent["id"]])
    response = await client.patch(
        f"{API}/tasks/{child['id']}", json={"status": "queued"}, headers=HEADERS_A
    )
    assert_error(response, 409, "blocked")
    tolerant = await create_task(
        client, run["id"], enqueue=True, dependsOn=[parent["id"]], onParentFailure="run"
    )
    await client.post(f"{API}/tasks/{parent['id']}/cancel", headers=HEADERS_A)
    assert await status(client, child["id"]) == "cancelled"
    assert await status(client, tolerant["id"]) == "queued"


async def test_bad_dependencies(client):
    run = await create_run(client)
    other_run = await create_run(client)
    foreign_task = await create_task(client, other_run["id"])
    b_run = await create_run(client, headers=HEADERS_B)
    b_task = await create_task(client, b_run["id"], headers=HEADERS_B)
    for parent in (missing_id(), foreign_task["id"], b_task["id"], "not-an-id"):
        response = await client.post(
            f"{API}/tasks", json=item(run["id"], dependsOn=[parent]), headers=HEADERS_A
        )
        assert_error(response, 404, "Task not found")
    for parent in (missing_id(), foreign_task["id"], b_task["id"]):
        # The item is named (the child's id would be rolled back with the batch).
        response = await batch(client, [item(run["id"]), item(run["id"], dependsOn=[parent])])
        body = assert_error(response, 404, "Task not found", parent, "tasks[1].dependsOn")
        assert body["field"] == "tasks[1].dependsOn", body
    response = await batch(client, [item(run["id"], ref="x"), item(run["id"], ref="x")])
    assert_error(response, 400, "tasks[1].ref", "earlier item already")
    response = await batch(client, [item(run["id"], dependsOn=["y"]), item(run["id"], ref="y")])
    assert_error(response, 400, "tasks[0].dependsOn", "not of an earlier item")
    response = await batch(client, [item(run["id"], ref="me", dependsOn=["me"])])
    assert_error(response, 400, "tasks[0].dependsOn")
    response = await batch(client, [item(run["id"], dependsOn=["nothing"])])
    assert_error(response, 400, "neither the ref of an earlier item nor a task id")
    response = await client.post(
        f"{API}/tasks", json=item(run["id"], ref="single"), headers=HEADERS_A
    )
    assert_error(response, 400, "ref")
    many = [missing_id() for _ in range(10_001)]
    response = await client.post(
        f"{API}/tasks", json=item(run["id"], dependsOn=many), headers=HEADERS_A
    )
    assert_error(response, 400, "dependsOn")
    bad_policy = item(run["id"], onParentFailure="ignore")
    response = await client.post(f"{API}/tasks", json=bad_policy, headers=HEADERS_A)
    assert_error(response, 400, "onParentFailure")
    response = await client.patch(
        f"{API}/tasks/{foreign_task['id']}", json={"status": "blocked"}, headers=HEADERS_A
    )
    assert_error(response, 400, "status")
    assert (await get_run(client, run["id"]))["totalTasks"] == 0  # nothing half-made
    response = await client.get(f"{API}/tasks/{b_task['id']}/parents", headers=HEADERS_A)
    assert_error(response, 404, "Task not found")


async def test_parents_completing_concurrently_release_the_child_exactly_once(backend):
    client = backend.client
    run = await create_run(client)
    parents = (await batch(client, [item(run["id"], "p") for _ in range(200)])).json()["data"]
    ids_ = [p["id"] for p in parents]
    child = await create_task(client, run["id"], type="join", enqueue=True, dependsOn=ids_)
    held = await claim(client, types=["p"])
    assert len(held) == 200

    async def complete_many(chunk):
        body = {
            "results": [
                {"taskId": t["id"], "leaseToken": t["leaseToken"], "status": "completed"}
                for t in chunk
            ]
        }
        response = await client.post(f"{API}/tasks/complete", json=body, headers=HEADERS_A)
        assert response.status_code == 200, response.text

    await asyncio.gather(*(complete_many(held[i::16]) for i in range(16)))
    assert await status(client, child["id"]) == "queued"
    if backend.published is not None:
        # The release published the child's job once (one add, no duplicate), and it is there
        # without a sweeper's repair: neither lost nor doubled by the 16 concurrent batches.
        await backend.published.assert_published_once(child["id"], *ids_)
        created, _ = await backend.published.adds()
        assert sum(created.values()) == 201
    (joined,) = await claim(client)
    assert joined["id"] == child["id"]
    assert await claim(client) == []


async def test_a_parent_failing_while_siblings_complete_cancels_the_child_once(backend):
    client = backend.client
    for policy, expected in (("cancel", "cancelled"), ("run", "queued")):
        run = await create_run(client)
        parents = await batch(client, [item(run["id"], "p", maxRetries=0) for _ in range(40)])
        ids_ = [p["id"] for p in parents.json()["data"]]
        child = await create_task(
            client, run["id"], type="c", enqueue=True, dependsOn=ids_, onParentFailure=policy
        )
        held = await claim(client, types=["p"])

        async def finish(task, index):
            outcome = "fail" if index == 7 else "complete"
            return await end(client, task, outcome)

        await asyncio.gather(*(finish(t, i) for i, t in enumerate(held)))
        assert await status(client, child["id"]) == expected
        counts = await get_run(client, run["id"])
        cancelled = 1 if expected == "cancelled" else 0
        assert (counts["completedTasks"], counts["failedTasks"]) == (39, 1)
        assert counts["cancelledTasks"] == cancelled
        if backend.published is not None:
            await backend.published.assert_published_once(*ids_)
            created, _ = await backend.published.adds()
            if expected == "queued":  # released once, whichever parent ended last
                await backend.published.assert_published_once(child["id"])
            else:  # cancelled with its failed parent: never published
                assert created[f"{child['id']}:1"] == 0
                assert await backend.published.job_data(child["id"]) is None
        if policy == "run":
            (ran,) = await claim(client, types=["c"])
            assert ran["id"] == child["id"]


async def test_a_child_added_while_its_parent_ends_is_never_left_blocked(client):
    for _ in range(15):
        run = await create_run(client)
        parent = await create_task(client, run["id"], type="p", enqueue=True)
        (held,) = await claim(client, types=["p"])
        body = item(run["id"], "c", dependsOn=[parent["id"]])
        completed, added = await asyncio.gather(
            end(client, held), client.post(f"{API}/tasks", json=body, headers=HEADERS_A)
        )
        assert completed["status"] == "completed"
        assert added.status_code == 201, added.text
        assert await status(client, added.json()["id"]) == "queued"


async def test_a_join_whose_worker_died_is_retried_not_duplicated(backend, db_url):
    """In process: the worker that claimed the join stops answering; its lease runs out and the
    server's sweeper (run by hand, its clock moved past the lease) retries the join. A worker
    really killed mid-join: tests/faults/test_worker_kill.py."""
    client = backend.client
    run = await create_run(client)
    parent = await create_task(client, run["id"], type="p", enqueue=True)
    join = await create_task(client, run["id"], type="j", enqueue=True, dependsOn=[parent["id"]])
    (held,) = await claim(client, types=["p"])
    await end(client, held)
    body = {"workerId": "dies", "limit": 1, "leaseMs": 1000}
    response = await client.post(f"{API}/tasks/claim", json=body, headers=HEADERS_A)
    (first,) = response.json()["data"]
    assert first["id"] == join["id"]
    # The worker died: its lease expires and the sweeper puts the join back, publishing its next
    # attempt on the app's own queue backend (a BullMQ job on bullmq).
    pool = await db.create_pool(
        db_url, min_size=1, max_size=1, command_timeout_s=10, connect_timeout_s=3, app_role=False
    )
    try:
        queue = backend.app.state.foreman.queue or PostgresQueue()
        swept = Sweeper(pool, queue=queue, interval_s=1.0, batch=10, grace_s=0.0)
        result = await swept.sweep(now=ids.now_ms() + 5_000)
        assert (result.locked, result.retried, result.failed) == (True, 1, 0)
        async with pool.acquire() as conn:
            await conn.execute("UPDATE task SET run_after = 0 WHERE id = $1", join["id"])
    finally:
        await pool.close()
    if backend.published is not None:
        # Each attempt of the join published once: at its release, then by the sweep.
        await backend.published.assert_published_once(join["id"], attempt=1)
        await backend.published.assert_published_once(join["id"], attempt=2)
    (second,) = await claim(client)
    assert (second["id"], second["attempt"]) == (join["id"], 2)
    await end(client, second, outputData={"joined": True})
    stale = await client.post(
        f"{API}/tasks/{join['id']}/complete",
        json={"leaseToken": first["leaseToken"]},
        headers=HEADERS_A,
    )
    assert stale.status_code == 409  # the dead worker's late result is refused
    attempts = await client.get(f"{API}/tasks/{join['id']}/attempts", headers=HEADERS_A)
    assert [a["outcome"] for a in attempts.json()["data"]] == ["lease_expired", "completed"]
    counts = await get_run(client, run["id"])
    assert (counts["completedTasks"], counts["totalTasks"]) == (2, 2)
    assert await claim(client) == []


async def test_a_join_added_while_its_parents_complete(client):
    """The join's statement locks the parents in id order, as finish batches do: no deadlock."""
    import random

    run = await create_run(client)
    parents = (await batch(client, [item(run["id"], "p") for _ in range(300)])).json()["data"]
    held = await claim(client, types=["p"])
    random.shuffle(held)

    async def complete_many(chunk):
        body = {
            "results": [
                {"taskId": t["id"], "leaseToken": t["leaseToken"], "status": "completed"}
                for t in chunk
            ]
        }
        response = await client.post(f"{API}/tasks/complete", json=body, headers=HEADERS_A)
        assert response.status_code == 200, response.text

    body = item(run["id"], "join", dependsOn=[p["id"] for p in parents])
    *_, added = await asyncio.gather(
        *(complete_many(held[i::16]) for i in range(16)),
        client.post(f"{API}/tasks", json=body, headers=HEADERS_A),
    )
    assert added.status_code == 201, added.text
    assert await status(client, added.json()["id"]) == "queued"
