"""Tenant isolation under attack: org B aims org A's ids at every operation of /openapi.json.

tests/api/test_isolation.py checks the core endpoints one by one; here every operation the app
publishes must be covered by a hostile case (a new endpoint fails the coverage test until it is
added), the queue endpoints included, and random organisations created through random keys
must see only their own rows through every list and filter.
"""

from __future__ import annotations

import string
import uuid
from typing import Any

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.server.app import create_app
from foreman.settings import Settings
from tests.api.helpers import API, create_data, create_run, create_task
from tests.conftest import HEADERS_A, HEADERS_B, ORG_A, ORG_B, truncate_all

SECRET = f"secret-of-a-{uuid.uuid4()}"
IDEMPOTENCY_KEY = f"idem-{uuid.uuid4()}"  # A's; B using it must get a task of its own


def _operations() -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="postgresql://unused@localhost/unused"))
    document = msgspec.json.decode(msgspec.json.encode(app.openapi_schema.to_schema()))
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    }


@pytest.fixture
async def org_a(client) -> dict[str, str]:
    """Org A's rows: a run, a queued task claimed by A (with its lease token), run data."""
    run = await create_run(client, inputData={"secret": SECRET}, metadata={"s": SECRET})
    task = await create_task(
        client, run["id"], type=f"type-{SECRET}", inputData=SECRET, idempotencyKey=IDEMPOTENCY_KEY
    )
    child = await create_task(client, run["id"], parentTaskId=task["id"], enqueue=True)
    failed = await create_task(client, run["id"], type="failing")
    patched = await client.patch(
        f"{API}/tasks/{failed['id']}", json={"status": "failed"}, headers=HEADERS_A
    )
    assert patched.status_code == 200, patched.text
    claimed = await client.post(
        f"{API}/tasks/{task['id']}/claim", json={"workerId": "worker-a"}, headers=HEADERS_A
    )
    assert claimed.status_code == 200, claimed.text
    data = await create_data(client, run["id"], task["id"], f"key-{SECRET}", SECRET, tags=[SECRET])
    schedule = await client.post(
        f"{API}/schedules",
        json={
            "name": f"schedule-{SECRET}",
            "intervalMs": 3_600_000,
            "runInputData": SECRET,
            "task": {"type": f"type-{SECRET}", "inputData": SECRET},
        },
        headers=HEADERS_A,
    )
    assert schedule.status_code == 201, schedule.text
    return {
        "run": run["id"],
        "task": task["id"],
        "child": child["id"],
        "failed": failed["id"],  # one that A could retry
        "data": data["id"],
        "token": claimed.json()["leaseToken"],
        "type": task["type"],
        "key": data["key"],
        "schedule": schedule.json()["id"],
    }


async def _b_run_and_task(client) -> tuple[str, str]:
    run = await create_run(client, headers=HEADERS_B)
    task = await create_task(client, run["id"], headers=HEADERS_B)
    return run["id"], task["id"]


def _hostile_cases(a: dict[str, str], b_run: str, b_task: str) -> list[tuple[str, str, str, Any]]:
    """(method, path template, url, body or query) for every operation, aimed at A's rows."""
    lease = {"taskId": a["task"], "leaseToken": a["token"]}
    create = {"runId": a["run"], "type": "t", "inputData": 1}
    return [
        ("GET", "/api/v1/runs", f"{API}/runs?limit=100", None),
        ("POST", "/api/v1/runs", f"{API}/runs", {"inputData": {"id": a["run"]}}),
        ("GET", "/api/v1/runs/{run_id}", f"{API}/runs/{a['run']}", None),
        ("GET", "/api/v1/runs/{run_id}/events", f"{API}/runs/{a['run']}/events", None),
        ("PATCH", "/api/v1/runs/{run_id}", f"{API}/runs/{a['run']}", {"status": "cancelled"}),
        ("GET", "/api/v1/tasks", f"{API}/tasks?runId={a['run']}", None),
        ("GET", "/api/v1/tasks", f"{API}/tasks?parentTaskId={a['task']}", None),
        ("GET", "/api/v1/tasks", f"{API}/tasks?type={a['type']}", None),
        ("GET", "/api/v1/tasks", f"{API}/tasks?status=running&limit=100", None),
        ("POST", "/api/v1/tasks", f"{API}/tasks", create),
        (
            "POST",
            "/api/v1/tasks",
            f"{API}/tasks",
            {"runId": b_run, "type": "t", "inputData": 1, "parentTaskId": a["task"]},
        ),
        (
            "POST",
            "/api/v1/tasks",
            f"{API}/tasks",
            {"runId": b_run, "type": "t", "inputData": 1, "idempotencyKey": IDEMPOTENCY_KEY},
        ),
        ("GET", "/api/v1/tasks/{task_id}", f"{API}/tasks/{a['task']}", None),
        ("GET", "/api/v1/tasks/{task_id}/attempts", f"{API}/tasks/{a['task']}/attempts", None),
        ("GET", "/api/v1/tasks/{task_id}/parents", f"{API}/tasks/{a['task']}/parents", None),
        (
            "POST",
            "/api/v1/tasks",
            f"{API}/tasks",
            {**create, "runId": b_run, "dependsOn": [a["task"]]},
        ),
        ("POST", "/api/v1/tasks/{task_id}/cancel", f"{API}/tasks/{a['task']}/cancel", None),
        ("POST", "/api/v1/runs/{run_id}/cancel", f"{API}/runs/{a['run']}/cancel", None),
        ("PATCH", "/api/v1/tasks/{task_id}", f"{API}/tasks/{a['task']}", {"status": "cancelled"}),
        ("POST", "/api/v1/tasks/batch", f"{API}/tasks/batch", {"tasks": [create]}),
        ("POST", "/api/v1/tasks/claim", f"{API}/tasks/claim", {"workerId": "b", "limit": 1000}),
        (
            "POST",
            "/api/v1/tasks/claim-ids",
            f"{API}/tasks/claim-ids",
            {"workerId": "b", "taskIds": [a["child"], a["task"]]},
        ),
        (
            "POST",
            "/api/v1/tasks/{task_id}/claim",
            f"{API}/tasks/{a['child']}/claim",
            {"workerId": "b"},
        ),
        ("POST", "/api/v1/tasks/heartbeat", f"{API}/tasks/heartbeat", {"leases": [lease]}),
        (
            "POST",
            "/api/v1/tasks/{task_id}/heartbeat",
            f"{API}/tasks/{a['task']}/heartbeat",
            {"leaseToken": a["token"]},
        ),
        (
            "POST",
            "/api/v1/tasks/{task_id}/complete",
            f"{API}/tasks/{a['task']}/complete",
            {"leaseToken": a["token"], "outputData": "b"},
        ),
        (
            "POST",
            "/api/v1/tasks/{task_id}/fail",
            f"{API}/tasks/{a['task']}/fail",
            {"leaseToken": a["token"], "retryable": False},
        ),
        (
            "POST",
            "/api/v1/tasks/complete",
            f"{API}/tasks/complete",
            {"results": [{**lease, "status": "completed"}]},
        ),
        (
            "POST",
            "/api/v1/tasks/{task_id}/release",
            f"{API}/tasks/{a['task']}/release",
            {"leaseToken": a["token"]},
        ),
        ("POST", "/api/v1/tasks/release", f"{API}/tasks/release", {"leases": [lease]}),
        ("POST", "/api/v1/tasks/{task_id}/retry", f"{API}/tasks/{a['failed']}/retry", None),
        ("GET", "/api/v1/tasks/{task_id}/wait", f"{API}/tasks/{a['task']}/wait?timeoutMs=0", None),
        ("GET", "/api/v1/runs/{run_id}/data", f"{API}/runs/{a['run']}/data?includeAll=true", None),
        (
            "GET",
            "/api/v1/runs/{run_id}/data",
            f"{API}/runs/{b_run}/data?key={a['key']}&includeAll=true",
            None,
        ),
        (
            "POST",
            "/api/v1/runs/{run_id}/data",
            f"{API}/runs/{a['run']}/data",
            {"taskId": a["task"], "key": "k", "value": 1},
        ),
        (
            "POST",
            "/api/v1/runs/{run_id}/data",
            f"{API}/runs/{b_run}/data",
            {"taskId": a["task"], "key": "k", "value": 1},
        ),
        (
            "DELETE",
            "/api/v1/runs/{run_id}/data",
            f"{API}/runs/{a['run']}/data?key={a['key']}",
            None,
        ),
        ("DELETE", "/api/v1/runs/{run_id}/data", f"{API}/runs/{b_run}/data?id={a['data']}", None),
        (
            "PATCH",
            "/api/v1/runs/{run_id}/data/{data_id}/tags",
            f"{API}/runs/{a['run']}/data/{a['data']}/tags",
            {"remove": [SECRET]},
        ),
        (
            "PATCH",
            "/api/v1/runs/{run_id}/data/{data_id}/tags",
            f"{API}/runs/{b_run}/data/{a['data']}/tags",
            {"add": ["b"]},
        ),
        ("GET", "/api/v1/schedules", f"{API}/schedules?limit=100", None),
        (
            "POST",
            "/api/v1/schedules",
            f"{API}/schedules",
            {"name": a["schedule"], "intervalMs": 3_600_000, "task": {"type": "t", "inputData": 1}},
        ),
        ("GET", "/api/v1/schedules/{schedule_id}", f"{API}/schedules/{a['schedule']}", None),
        (
            "PATCH",
            "/api/v1/schedules/{schedule_id}",
            f"{API}/schedules/{a['schedule']}",
            {"enabled": False, "task": {"inputData": "b"}},
        ),
        ("DELETE", "/api/v1/schedules/{schedule_id}", f"{API}/schedules/{a['schedule']}", None),
        ("GET", "/api/v1/config", f"{API}/config", None),
        ("GET", "/api/v1/config/redis", f"{API}/config/redis", None),
        ("GET", "/api/v1/config/queues", f"{API}/config/queues", None),
        ("GET", "/api/v1/health", f"{API}/health", None),
        ("GET", "/health", "/health", None),
    ]


async def _rows_of(db_url: str, org_id: str) -> dict[str, list[str]]:
    """Every row of org_id in every table, as text (the superuser sees across orgs)."""
    conn = await asyncpg.connect(db_url)
    try:
        return {
            table: sorted(
                str(dict(r))
                for r in await conn.fetch(f"SELECT * FROM {table} WHERE org_id = $1", org_id)
            )
            for table in (
                "run",
                "run_counter",
                "task",
                "run_data",
                "task_attempt",
                "task_dependency",
                "schedule",
            )
        }
    finally:
        await conn.close()


def _assert_nothing_of_a(response, a: dict[str, str]) -> None:
    assert response.status_code < 500, response.text
    assert SECRET not in response.text, response.text
    assert a["token"] not in response.text
    if response.status_code < 300 and response.headers["content-type"].startswith(
        "application/json"
    ):
        body = response.json()
        if isinstance(body, dict) and "orgId" in body:
            assert body["orgId"] == ORG_B, body
        items = body.get("data", []) if isinstance(body, dict) else []
        for item in items if isinstance(items, list) else []:
            assert item.get("id") not in a.values(), item
            assert item.get("orgId", ORG_B) == ORG_B, item
            if "ok" in item:  # a batch answer about A's task: refused, not even its status
                assert item["ok"] is False, item
                assert item.get("status") is None, item
                assert item.get("leaseExpiresAt") is None, item
                assert not item.get("cancelled"), item


async def test_hostile_cases_cover_every_operation(client, org_a):
    covered = {(m, p) for m, p, _, _ in _hostile_cases(org_a, "r", "t")}
    missing = _operations() - covered
    assert not missing, f"operations without a tenant-isolation case: {sorted(missing)}"


async def test_org_b_cannot_see_or_change_org_a_through_any_operation(client, db_url, org_a):
    b_run, b_task = await _b_run_and_task(client)
    before = await _rows_of(db_url, ORG_A)
    for method, _, url, body in _hostile_cases(org_a, b_run, b_task):
        response = await client.request(method, url, json=body, headers=HEADERS_B)
        _assert_nothing_of_a(response, org_a)
        path = url.partition("?")[0]
        if any(
            org_a[name] in path for name in ("run", "task", "child", "failed", "data", "schedule")
        ):
            assert response.status_code == 404, (method, url, response.text)
    assert await _rows_of(db_url, ORG_A) == before
    # A's lease survived every attempt: A can still finish its attempt.
    done = await client.post(
        f"{API}/tasks/{org_a['task']}/complete",
        json={"leaseToken": org_a["token"], "outputData": "a"},
        headers=HEADERS_A,
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"


async def test_org_b_claims_never_receive_org_a_tasks(client, org_a):
    for _ in range(3):
        claimed = await client.post(
            f"{API}/tasks/claim", json={"workerId": "b", "limit": 1000}, headers=HEADERS_B
        )
        assert claimed.status_code == 200
        assert claimed.json()["data"] == []
    mine = await client.post(
        f"{API}/tasks/claim", json={"workerId": "a", "limit": 1000}, headers=HEADERS_A
    )
    assert [t["id"] for t in mine.json()["data"]] == [org_a["child"]]


# ---------------------------------------------------------------- random organisations

# Organisations as a key can carry them, LIKE and SQL metacharacters included.
ORG_CHARS = string.ascii_letters + string.digits + "-.%'\";\\*?[](){}$#@!&|<>=+,:/~`^"
ORGS = st.text(alphabet=ORG_CHARS, min_size=1, max_size=12)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(orgs=st.lists(ORGS, min_size=2, max_size=4, unique=True), rows=st.integers(1, 3))
async def test_random_organisations_see_only_their_own_rows(client, database_url, orgs, rows):
    await truncate_all(database_url)
    made: dict[str, set[str]] = {}
    for org in orgs:
        headers = {"x-api-key": f"fmn_fuzz_{org}_k"}
        ids: set[str] = set()
        for _ in range(rows):
            run = await create_run(client, headers=headers, inputData=org)
            task = await create_task(client, run["id"], headers=headers, type=org)
            item = await create_data(client, run["id"], task["id"], org, org, headers=headers)
            ids |= {run["id"], task["id"], item["id"]}
        made[org] = ids
    for org in orgs:
        headers = {"x-api-key": f"fmn_fuzz_{org}_k"}
        runs = (await client.get(f"{API}/runs?limit=100", headers=headers)).json()
        tasks = (
            await client.get(f"{API}/tasks", params={"limit": 100, "type": org}, headers=headers)
        ).json()
        seen = {r["id"] for r in runs["data"]} | {t["id"] for t in tasks["data"]}
        assert runs["pagination"]["total"] == rows
        assert tasks["pagination"]["total"] == rows
        for run in runs["data"]:
            assert run["orgId"] == org
            data = (
                await client.get(f"{API}/runs/{run['id']}/data?includeAll=true", headers=headers)
            ).json()
            seen |= {d["id"] for d in data["data"]}
            for other in orgs:
                if other != org:
                    foreign = {"x-api-key": f"fmn_fuzz_{other}_k"}
                    peek = await client.get(f"{API}/runs/{run['id']}", headers=foreign)
                    assert peek.status_code == 404
        assert seen == made[org]
