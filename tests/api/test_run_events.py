"""Run events as derived from the stored rows (store/events.py), and the answers the events
endpoint gives before a stream starts. The streams themselves: tests/integration/test_run_events.py
(httpx's in-process transport cannot stream)."""

from __future__ import annotations

import httpx
from litestar import Litestar

from foreman.store import db
from foreman.store import events as events_store
from tests.api.helpers import API, assert_error, create_run, create_task, patch_task
from tests.conftest import HEADERS_A, HEADERS_B, ORG_A, ORG_B

UNKNOWN = "0193a000-0000-7000-8000-000000000000"


async def events_of(app: Litestar, run_id: str, *, org_id: str = ORG_A, after=None):
    async with db.org_connection(app.state.foreman.pool, org_id) as conn:
        return await events_store.run_events(
            conn,
            org_id=org_id,
            run_id=run_id,
            after=after or events_store.START,
            upto=events_store.until(2**45),
            limit=1000,
        )


async def post(client: httpx.AsyncClient, path: str, body: dict | None = None) -> dict:
    response = await client.post(f"{API}{path}", json=body or {}, headers=HEADERS_A)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def test_a_task_cancelled_while_queued_then_retried_by_hand(client, app):
    run = await create_run(client)
    body = {"runId": run["id"], "type": "t", "inputData": 1, "enqueue": True}
    task = await post(client, "/tasks", body)
    await post(client, f"/tasks/{task['id']}/cancel")
    page = await events_of(app, run["id"])
    seen = [(e.type, e.status) for _, e in page.events if e.task_id == task["id"]]
    assert seen == [("task.created", "queued"), ("task.cancelled", "cancelled")]
    await post(client, f"/tasks/{task['id']}/retry")
    claimed = (await post(client, "/tasks/claim", {"workerId": "w9"}))["data"][0]
    await post(client, f"/tasks/{task['id']}/complete", {"leaseToken": claimed["leaseToken"]})
    page = await events_of(app, run["id"])
    seen = [(e.type, e.status) for _, e in page.events if e.task_id == task["id"]]
    # The retry moved the row past its cancel (no attempt kept it): a derived stream's limit.
    assert seen == [
        ("task.created", "queued"),
        ("task.queued", "queued"),  # the retry by hand
        ("task.started", "running"),
        ("task.completed", "completed"),
    ]
    started = next(e for _, e in page.events if e.type == "task.started")
    assert (started.attempt, started.worker_id, started.task_type) == (1, "w9", "t")
    keys = [key for key, _ in page.events]
    assert keys == sorted(keys)
    assert not page.ended  # the run itself is still pending


async def test_legacy_patches_and_a_run_completed_by_patch(client, app):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    assert (await patch_task(client, task["id"], status="running")).status_code == 200
    assert (await patch_task(client, task["id"], status="completed")).status_code == 200
    response = await client.patch(
        f"{API}/runs/{run['id']}", json={"status": "completed"}, headers=HEADERS_A
    )
    assert response.status_code == 200
    page = await events_of(app, run["id"])
    assert [e.type for _, e in page.events] == [
        "run.created",
        "task.created",
        "task.started",
        "task.completed",
        "run.completed",
    ]
    assert page.ended
    # After the last event: nothing, and still ended.
    last = page.events[-1][0]
    again = await events_of(app, run["id"], after=last)
    assert (again.events, again.ended) == ([], True)


async def test_another_organisation_sees_no_event_of_the_run(client, app):
    run = await create_run(client)
    page = await events_of(app, run["id"], org_id=ORG_B)
    assert (page.found, page.events) == (False, [])


async def test_the_endpoint_refuses_before_streaming(client):
    run = await create_run(client)
    url = f"{API}/runs/{run['id']}/events"
    assert_error(await client.get(url, headers=HEADERS_B), 404, "Run not found")
    assert_error(await client.get(f"{API}/runs/{UNKNOWN}/events", headers=HEADERS_A), 404)
    assert_error(await client.get(f"{API}/runs/nope/events", headers=HEADERS_A), 404)
    bad = {**HEADERS_A, "Last-Event-ID": "1-2-3"}
    assert_error(await client.get(url, headers=bad), 400, "Last-Event-ID")


def test_event_ids_round_trip_and_order():
    key = events_store.EventKey(1733300000123, 3, "0193a1b2-0000-7000-8000-00000000000a", 2)
    assert events_store.parse_event_id(key.event_id) == key
    assert events_store.parse_event_id(" " + key.event_id + "\n") == key
    for bad in ("", "1-2", "x-3-0193a1b2-0000-7000-8000-00000000000a-2", key.event_id + "-1"):
        assert events_store.parse_event_id(bad) is None
    assert events_store.START < key < events_store.until(key.at)
