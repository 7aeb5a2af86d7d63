"""POST/GET/PATCH/DELETE /api/v1/schedules and the schedule list: shape, validation, isolation.

Firing (the controlled clock, replicas) is in tests/integration/test_schedules.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.api.helpers import API, admin_count, assert_error, assert_names_field, now_ms
from tests.conftest import HEADERS_A, HEADERS_B, ORG_A

TASK = {"type": "report", "inputData": {"kind": "daily"}}


async def create_schedule(client, *, headers=HEADERS_A, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "every-minute")
    body.setdefault("task", TASK)
    if "cron" not in body and "intervalMs" not in body:
        body["intervalMs"] = 60_000
    response = await client.post(f"{API}/schedules", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def patch_schedule(client, schedule_id: str, *, headers=HEADERS_A, **body: Any):
    return await client.patch(f"{API}/schedules/{schedule_id}", json=body, headers=headers)


# ---------------------------------------------------------------- create and read


async def test_create_an_interval_schedule(client):
    before = now_ms()
    made = await create_schedule(
        client,
        name="nightly",
        intervalMs=5_000,
        runInputData={"source": "schedule"},
        task={**TASK, "maxRetries": 1, "priority": 3},
    )
    after = now_ms()
    assert uuid.UUID(made["id"])
    assert made["orgId"] == ORG_A
    assert made["name"] == "nightly"
    assert made["intervalMs"] == 5_000
    assert "cron" not in made
    assert made["timezone"] == "UTC"
    assert made["enabled"] is True
    assert made["runInputData"] == {"source": "schedule"}
    assert made["task"] == {
        "type": "report",
        "inputData": {"kind": "daily"},
        "maxRetries": 1,
        "priority": 3,
    }
    assert before <= made["createdAt"] == made["updatedAt"] <= after
    # The first tick of an interval is one interval after its creation.
    assert made["nextRunAt"] == made["createdAt"] + 5_000
    assert "lastRunAt" not in made
    assert "lastRunId" not in made

    response = await client.get(f"{API}/schedules/{made['id']}", headers=HEADERS_A)
    assert response.status_code == 200
    assert response.json() == made


async def test_create_a_cron_schedule_with_defaults(client):
    made = await create_schedule(
        client, cron="*/5 * * * *", timezone="America/New_York", task={"type": "t", "inputData": 1}
    )
    assert made["cron"] == "*/5 * * * *"
    assert "intervalMs" not in made
    assert made["timezone"] == "America/New_York"
    assert made["runInputData"] == {}
    assert made["task"] == {"type": "t", "inputData": 1, "maxRetries": 3, "priority": 0}
    # The next multiple of five minutes after its creation.
    assert made["nextRunAt"] % 300_000 == 0
    assert made["createdAt"] < made["nextRunAt"] <= made["createdAt"] + 300_000


async def test_a_disabled_schedule_has_no_next_run(client):
    made = await create_schedule(client, enabled=False)
    assert made["enabled"] is False
    assert "nextRunAt" not in made


async def test_unknown_schedule_is_404(client):
    for path in (str(uuid.uuid4()), "not-a-uuid"):
        response = await client.get(f"{API}/schedules/{path}", headers=HEADERS_A)
        assert_error(response, 404, "Schedule not found")
        response = await patch_schedule(client, path, name="x")
        assert_error(response, 404, "Schedule not found")
        response = await client.delete(f"{API}/schedules/{path}", headers=HEADERS_A)
        assert_error(response, 404, "Schedule not found")


# ---------------------------------------------------------------- list


async def test_list_schedules_pages_newest_first(client):
    made = [await create_schedule(client, name=f"s{i}") for i in range(3)]
    response = await client.get(f"{API}/schedules?limit=2", headers=HEADERS_A)
    assert response.status_code == 200
    page = response.json()
    assert page["pagination"] == {"total": 3, "limit": 2, "offset": 0}
    assert [s["name"] for s in page["data"]] == ["s2", "s1"]

    response = await client.get(
        f"{API}/schedules?offset=2&sortBy=createdAt&sortOrder=desc", headers=HEADERS_A
    )
    assert [s["id"] for s in response.json()["data"]] == [made[0]["id"]]
    response = await client.get(
        f"{API}/schedules?sortBy=nextRunAt&sortOrder=asc", headers=HEADERS_A
    )
    listed = response.json()["data"]
    assert [s["nextRunAt"] for s in listed] == sorted(s["nextRunAt"] for s in made)


async def test_list_schedules_checks_its_parameters(client):
    response = await client.get(f"{API}/schedules?sortBy=name", headers=HEADERS_A)
    assert_names_field(assert_error(response, 400, "sortBy"), "sortBy")
    response = await client.get(f"{API}/schedules?limit=0", headers=HEADERS_A)
    assert_error(response, 400, "limit")


# ---------------------------------------------------------------- update and delete


async def test_patch_name_keeps_the_next_run(client):
    made = await create_schedule(client, intervalMs=3_600_000)
    response = await patch_schedule(client, made["id"], name="renamed")
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["name"] == "renamed"
    assert changed["nextRunAt"] == made["nextRunAt"]
    assert changed["updatedAt"] >= made["updatedAt"]
    assert changed["intervalMs"] == 3_600_000


async def test_patch_trigger_replaces_the_other_and_sets_the_next_run_from_now(client):
    made = await create_schedule(client, intervalMs=3_600_000)
    response = await patch_schedule(client, made["id"], cron="0 0 1 1 *", timezone="Asia/Tokyo")
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["cron"] == "0 0 1 1 *"
    assert "intervalMs" not in changed
    assert changed["timezone"] == "Asia/Tokyo"
    # Midnight of 1 January in Tokyo is 15:00 UTC on 31 December.
    assert changed["nextRunAt"] % 86_400_000 == 15 * 3_600_000

    response = await patch_schedule(client, made["id"], intervalMs=2_000)
    changed = response.json()
    assert changed["intervalMs"] == 2_000
    assert "cron" not in changed
    assert changed["updatedAt"] <= changed["nextRunAt"] <= now_ms() + 2_000


async def test_patch_task_changes_only_the_given_fields(client):
    made = await create_schedule(client, task={**TASK, "priority": 2})
    response = await patch_schedule(client, made["id"], task={"maxRetries": 0}, runInputData=[1])
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["task"] == {**TASK, "maxRetries": 0, "priority": 2}
    assert changed["runInputData"] == [1]
    response = await patch_schedule(client, made["id"], task={"type": "other", "inputData": "x"})
    assert response.json()["task"] == {
        "type": "other",
        "inputData": "x",
        "maxRetries": 0,
        "priority": 2,
    }


async def test_disable_and_enable(client):
    made = await create_schedule(client, intervalMs=10_000)
    response = await patch_schedule(client, made["id"], enabled=False)
    disabled = response.json()
    assert disabled["enabled"] is False
    assert "nextRunAt" not in disabled
    before = now_ms()
    response = await patch_schedule(client, made["id"], enabled=True)
    enabled = response.json()
    assert enabled["enabled"] is True
    assert before + 10_000 <= enabled["nextRunAt"] <= now_ms() + 10_000


async def test_delete_answers_the_schedule_and_removes_it(client, db_url):
    made = await create_schedule(client)
    other = await create_schedule(client, name="kept")
    response = await client.delete(f"{API}/schedules/{made['id']}", headers=HEADERS_A)
    assert response.status_code == 200
    assert response.json() == made
    response = await client.get(f"{API}/schedules/{made['id']}", headers=HEADERS_A)
    assert_error(response, 404, "Schedule not found")
    response = await client.delete(f"{API}/schedules/{made['id']}", headers=HEADERS_A)
    assert_error(response, 404)
    assert await admin_count(db_url, "schedule") == 1
    response = await client.get(f"{API}/schedules/{other['id']}", headers=HEADERS_A)
    assert response.status_code == 200


# ---------------------------------------------------------------- bad input


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "s", "task": TASK, "intervalMs": 60_000}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


BAD_CREATES = [
    (_body(intervalMs=..., cron="not a cron"), "cron"),
    (_body(intervalMs=..., cron="61 * * * *"), "cron"),
    (_body(intervalMs=..., cron="0 0 * * * *"), "cron"),  # 6 fields: seconds are not standard
    (_body(intervalMs=..., cron="@daily"), "cron"),
    (_body(intervalMs=..., cron="0 0 30 2 *"), "cron"),  # 30 February never comes
    (_body(intervalMs=..., cron=""), "cron"),
    (_body(intervalMs=..., cron=5), "cron"),
    (_body(timezone="Mars/Olympus_Mons"), "timezone"),
    (_body(timezone="../../etc/passwd"), "timezone"),
    (_body(timezone="europe/warsaw"), "timezone"),
    (_body(timezone=""), "timezone"),
    (_body(intervalMs=999), "intervalMs"),
    (_body(intervalMs=0), "intervalMs"),
    (_body(intervalMs=1.5), "intervalMs"),
    (_body(intervalMs="60000"), "intervalMs"),
    # Both or neither: the message names both fields, the details the first.
    (_body(cron="* * * * *"), "cron"),
    (_body(intervalMs=...), "cron"),
    (_body(intervalMs=None, cron=None), "cron"),
    (_body(task={"inputData": {}}), "type"),
    (_body(task={"type": "", "inputData": {}}), "type"),
    (_body(task={"type": "t"}), "inputData"),
    (_body(task={"type": "t", "inputData": None}), "inputData"),
    (_body(task={"type": "t", "inputData": 1, "maxRetries": -1}), "maxRetries"),
    (_body(task={"type": "t", "inputData": 1, "priority": -1}), "priority"),
    (_body(task=...), "task"),
    (_body(name=...), "name"),
    (_body(name=""), "name"),
    (_body(enabled="yes"), "enabled"),
    (_body(runInputData=None), "runInputData"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CREATES)
async def test_bad_create_is_400_naming_the_field(client, db_url, body, field):
    response = await client.post(f"{API}/schedules", json=body, headers=HEADERS_A)
    error = assert_error(response, 400, field)
    assert error["code"] == "validation_error"
    if field == "cron" and "cron" not in body:
        assert "intervalMs" in error["error"]
    assert any(field in detail["loc"] for detail in error["details"]), error
    assert await admin_count(db_url, "schedule") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "bad"}, "cron"),
        ({"cron": None}, "cron"),  # would leave no trigger
        ({"intervalMs": None}, "cron"),
        ({"cron": "* * * * *", "intervalMs": 1000}, "cron"),
        ({"intervalMs": 10}, "intervalMs"),
        ({"timezone": "Nowhere"}, "timezone"),
        ({"task": {"type": ""}}, "type"),
        ({"task": {"inputData": None}}, "inputData"),
        ({"enabled": None}, "enabled"),
        ({"name": None}, "name"),
    ],
)
async def test_bad_patch_is_400_naming_the_field(client, body, field):
    made = await create_schedule(client)
    response = await patch_schedule(client, made["id"], **body)
    error = assert_error(response, 400, field)
    assert any(field in detail["loc"] for detail in error["details"]), error
    response = await client.get(f"{API}/schedules/{made['id']}", headers=HEADERS_A)
    assert response.json() == made


# ---------------------------------------------------------------- tenant isolation


async def test_another_orgs_schedule_is_not_found(client, db_url):
    made = await create_schedule(client)
    path = f"{API}/schedules/{made['id']}"
    assert_error(await client.get(path, headers=HEADERS_B), 404, "Schedule not found")
    assert_error(await patch_schedule(client, made["id"], headers=HEADERS_B, name="x"), 404)
    assert_error(await client.delete(path, headers=HEADERS_B), 404)
    listed = (await client.get(f"{API}/schedules", headers=HEADERS_B)).json()
    assert listed == {"data": [], "pagination": {"total": 0, "limit": 20, "offset": 0}}
    # Untouched for its own organisation.
    response = await client.get(path, headers=HEADERS_A)
    assert response.json() == made
    assert await admin_count(db_url, "schedule") == 1


async def test_row_level_security_hides_other_orgs_schedules(client, app):
    from foreman.store import db

    await create_schedule(client)
    async with db.org_connection(app.state.foreman.pool, "orgb") as conn:
        assert await conn.fetchval("SELECT count(*) FROM schedule") == 0  # no org filter
    async with db.org_connection(app.state.foreman.pool, ORG_A) as conn:
        assert await conn.fetchval("SELECT count(*) FROM schedule") == 1
