"""Run counters stay exact when many connections change the same tasks at once (SPEC section 5).

The client calls the app in the test's event loop, so gathered requests really overlap and
reach PostgreSQL over several pooled connections; the direct tests use a pool of their own.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from foreman import ids
from foreman.store import db
from foreman.store import tasks as tasks_store
from tests.api.helpers import API, create_data, create_run, create_task, get_run
from tests.conftest import HEADERS_A, ORG_A

TERMINAL = ("completed", "failed", "cancelled")
COUNTER_OF = {"completed": "completedTasks", "failed": "failedTasks", "cancelled": "cancelledTasks"}


async def final_statuses(client, task_ids) -> Counter[str]:
    statuses: Counter[str] = Counter()
    for task_id in task_ids:
        task = (await client.get(f"{API}/tasks/{task_id}", headers=HEADERS_A)).json()
        statuses[task["status"]] += 1
    return statuses


def assert_counters_match(run, statuses: Counter[str], total: int) -> None:
    assert run["totalTasks"] == total
    for status, counter in COUNTER_OF.items():
        assert run[counter] == statuses[status], (status, run, statuses)


async def test_concurrent_terminal_patches_count_each_task_once(client):
    run = await create_run(client)
    tasks = [await create_task(client, run["id"]) for _ in range(10)]
    rng = random.Random(7)
    requests = [
        (task["id"], rng.choice(TERMINAL)) for task in tasks for _ in range(20)
    ]  # 200 PATCHes, 20 per task, with conflicting terminal statuses
    rng.shuffle(requests)

    async def patch(task_id, status):
        response = await client.patch(
            f"{API}/tasks/{task_id}", json={"status": status}, headers=HEADERS_A
        )
        return task_id, status, response.status_code, response.json()

    results = await asyncio.gather(*(patch(t, s) for t, s in requests))

    final = {}
    for task_id, status, code, body in results:
        assert code in (200, 409), body
        if code == 200:
            # Whoever got 200 asked for the status the task ended in.
            assert body["status"] == status
            assert final.setdefault(task_id, status) == status
    assert set(final) == {task["id"] for task in tasks}
    statuses = await final_statuses(client, final)
    assert statuses == Counter(final.values())
    assert_counters_match(await get_run(client, run["id"]), statuses, total=10)
    # The first completion time is kept by every later no-op.
    for task_id in final:
        task = (await client.get(f"{API}/tasks/{task_id}", headers=HEADERS_A)).json()
        assert task["durationMs"] == task["completedAt"] - task["createdAt"]


async def test_concurrent_same_status_completions_count_once(client):
    run = await create_run(client)
    tasks = [await create_task(client, run["id"]) for _ in range(5)]
    for task in tasks:
        await client.patch(
            f"{API}/tasks/{task['id']}", json={"status": "running"}, headers=HEADERS_A
        )
    responses = await asyncio.gather(
        *(
            client.patch(
                f"{API}/tasks/{task['id']}",
                json={"status": "completed", "outputData": {"by": n}},
                headers=HEADERS_A,
            )
            for task in tasks
            for n in range(20)
        )
    )
    assert {r.status_code for r in responses} == {200}
    fetched = await get_run(client, run["id"])
    assert fetched["completedTasks"] == 5
    assert fetched["failedTasks"] == fetched["cancelledTasks"] == 0


async def test_direct_connections_completing_the_same_tasks(client, db_url):
    """20 connections of their own, each trying to finish every task, in its own order."""
    run = await create_run(client)
    task_ids = [(await create_task(client, run["id"]))["id"] for _ in range(15)]
    pool = await db.create_pool(
        db_url, min_size=20, max_size=20, command_timeout_s=30, connect_timeout_s=10
    )

    async def worker(seed: int) -> None:
        order = list(task_ids)
        random.Random(seed).shuffle(order)
        async with db.org_connection(pool, ORG_A) as conn:
            for task_id in order:
                status = TERMINAL[(seed + len(task_id)) % 3] if seed % 2 else "completed"
                result = await tasks_store.update_task(
                    conn,
                    org_id=ORG_A,
                    task_id=task_id,
                    changes={"status": status},
                    now=ids.now_ms(),
                )
                assert result.found
                assert result.task is not None
                # A refused change leaves the task in the terminal status another worker set.
                assert result.task.status in TERMINAL
                assert result.conflict == (result.task.status != status)

    try:
        await asyncio.gather(*(worker(seed) for seed in range(20)))
        async with db.org_connection(pool, ORG_A) as conn:
            rows = await conn.fetch(
                "SELECT status, count(*) FROM task WHERE run_id = $1 GROUP BY status", run["id"]
            )
            shards = await conn.fetchval(
                "SELECT count(*) FROM run_counter WHERE run_id = $1", run["id"]
            )
    finally:
        await pool.close()
    statuses = Counter({row["status"]: row["count"] for row in rows})
    assert sum(statuses.values()) == 15
    assert set(statuses) <= set(TERMINAL)
    assert shards >= 1
    assert_counters_match(await get_run(client, run["id"]), statuses, total=15)


async def test_concurrent_creates_keep_total_tasks_exact(client):
    runs = [await create_run(client) for _ in range(3)]
    plan = [runs[n % 3]["id"] for n in range(60)]
    responses = await asyncio.gather(
        *(
            client.post(
                f"{API}/tasks",
                json={"runId": run_id, "type": "t", "inputData": n},
                headers=HEADERS_A,
            )
            for n, run_id in enumerate(plan)
        )
    )
    assert [r.status_code for r in responses] == [201] * 60
    assert len({r.json()["id"] for r in responses}) == 60
    for run in runs:
        fetched = await get_run(client, run["id"])
        assert fetched["totalTasks"] == 20
        listed = await client.get(f"{API}/tasks?runId={run['id']}&limit=1", headers=HEADERS_A)
        assert listed.json()["pagination"]["total"] == 20


async def test_concurrent_creates_and_completions_of_one_run(client):
    run = await create_run(client)

    async def lifecycle(n: int) -> str:
        task = await create_task(client, run["id"], inputData=n)
        await client.patch(
            f"{API}/tasks/{task['id']}", json={"status": "running"}, headers=HEADERS_A
        )
        status = TERMINAL[n % 3]
        response = await client.patch(
            f"{API}/tasks/{task['id']}", json={"status": status}, headers=HEADERS_A
        )
        assert response.status_code == 200, response.text
        return status

    ended = Counter(await asyncio.gather(*(lifecycle(n) for n in range(30))))
    assert_counters_match(await get_run(client, run["id"]), ended, total=30)


async def test_concurrent_idempotent_creates_make_one_task(client):
    run = await create_run(client)
    body = {"runId": run["id"], "type": "t", "inputData": 1, "idempotencyKey": "once"}
    responses = await asyncio.gather(
        *(client.post(f"{API}/tasks", json=body, headers=HEADERS_A) for _ in range(20))
    )
    codes = Counter(r.status_code for r in responses)
    assert codes == Counter({201: 1, 200: 19})
    assert len({r.json()["id"] for r in responses}) == 1
    assert (await get_run(client, run["id"]))["totalTasks"] == 1


async def test_concurrent_retries_are_all_counted(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    responses = await asyncio.gather(
        *(
            client.patch(
                f"{API}/tasks/{task['id']}", json={"status": "retrying"}, headers=HEADERS_A
            )
            for _ in range(20)
        )
    )
    assert {r.status_code for r in responses} == {200}
    fetched = (await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)).json()
    assert fetched["retryCount"] == 20


async def test_concurrent_tag_updates_lose_nothing(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    item = await create_data(client, run["id"], task["id"], "k", tags=["base"])
    url = f"{API}/runs/{run['id']}/data/{item['id']}/tags"
    responses = await asyncio.gather(
        *(
            client.patch(url, json={"add": [f"t{n}", "shared"]}, headers=HEADERS_A)
            for n in range(20)
        )
    )
    assert {r.status_code for r in responses} == {200}
    page = await client.get(f"{API}/runs/{run['id']}/data", headers=HEADERS_A)
    tags = page.json()["data"][0]["tags"]
    assert sorted(tags) == sorted(["base", "shared", *(f"t{n}" for n in range(20))])
    assert tags[0] == "base"


async def test_counters_read_during_updates_are_consistent(client):
    run = await create_run(client)
    tasks = [await create_task(client, run["id"]) for _ in range(20)]
    stop = asyncio.Event()
    seen: list[dict] = []

    async def read() -> None:
        while not stop.is_set():
            seen.append(await get_run(client, run["id"]))

    async def finish() -> None:
        await asyncio.gather(
            *(
                client.patch(
                    f"{API}/tasks/{t['id']}", json={"status": "completed"}, headers=HEADERS_A
                )
                for t in tasks
            )
        )
        stop.set()

    await asyncio.gather(finish(), *(read() for _ in range(5)))
    assert seen
    for snapshot in seen:
        assert snapshot["totalTasks"] == 20
        assert 0 <= snapshot["completedTasks"] <= 20
    assert (await get_run(client, run["id"]))["completedTasks"] == 20
