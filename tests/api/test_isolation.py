"""Tenant isolation at both layers (SPEC section 3): every query filters by org, and row-level
security stops one that forgets. Another org's rows behave exactly like rows that do not exist."""

from __future__ import annotations

import asyncpg
import pytest

from foreman.store import db
from tests.api.helpers import (
    API,
    admin_counts,
    assert_error,
    create_data,
    create_run,
    create_task,
    get_run,
)
from tests.conftest import HEADERS_A, HEADERS_B, ORG_A, ORG_B


@pytest.fixture
async def two_orgs(client):
    """Org A and org B each with a run, two tasks (one a child) and run data."""
    made = {}
    for org, headers in ((ORG_A, HEADERS_A), (ORG_B, HEADERS_B)):
        run = await create_run(client, headers=headers, inputData={"org": org})
        parent = await create_task(client, run["id"], headers=headers, idempotencyKey="same-key")
        child = await create_task(client, run["id"], headers=headers, parentTaskId=parent["id"])
        item = await create_data(
            client, run["id"], parent["id"], "shared-key", headers=headers, tags=["t"]
        )
        schedule = await client.post(
            f"{API}/schedules",
            json={"name": org, "intervalMs": 3_600_000, "task": {"type": "t", "inputData": 1}},
            headers=headers,
        )
        assert schedule.status_code == 201, schedule.text
        made[org] = {
            "run": run,
            "parent": parent,
            "child": child,
            "data": item,
            "schedule": schedule.json(),
        }
    return made


async def snapshot(client, org_rows, headers):
    run = await get_run(client, org_rows["run"]["id"], headers=headers)
    tasks = [
        (await client.get(f"{API}/tasks/{org_rows[name]['id']}", headers=headers)).json()
        for name in ("parent", "child")
    ]
    data = (
        await client.get(
            f"{API}/runs/{org_rows['run']['id']}/data?includeAll=true", headers=headers
        )
    ).json()
    return run, tasks, data


async def test_every_endpoint_answers_404_for_another_orgs_rows(client, db_url, two_orgs):
    a = two_orgs[ORG_A]
    run_id, task_id, child_id, data_id = (
        a["run"]["id"],
        a["parent"]["id"],
        a["child"]["id"],
        a["data"]["id"],
    )
    before = await snapshot(client, a, HEADERS_A)
    counts = await admin_counts(db_url)
    own_task = two_orgs[ORG_B]["parent"]["id"]
    requests = [
        ("GET", f"runs/{run_id}", None, f"Run not found: {run_id}"),
        (
            "PATCH",
            f"runs/{run_id}",
            {"status": "cancelled", "metadata": {"x": 1}},
            f"Run not found: {run_id}",
        ),
        ("GET", f"tasks/{task_id}", None, f"Task not found: {task_id}"),
        ("PATCH", f"tasks/{task_id}", {"status": "completed"}, f"Task not found: {task_id}"),
        ("PATCH", f"tasks/{child_id}", {"metadata": {"x": 1}}, f"Task not found: {child_id}"),
        (
            "POST",
            "tasks",
            {"runId": run_id, "type": "t", "inputData": 1},
            f"Run not found: {run_id}",
        ),
        (
            "POST",
            f"runs/{run_id}/data",
            {"taskId": own_task, "key": "k", "value": 1},
            f"Run not found: {run_id}",
        ),
        ("GET", f"runs/{run_id}/data", None, f"Run not found: {run_id}"),
        (
            "GET",
            f"runs/{run_id}/data?key=shared-key&includeAll=true",
            None,
            f"Run not found: {run_id}",
        ),
        ("PATCH", f"runs/{run_id}/data/{data_id}/tags", {"add": ["x"]}, f"Run not found: {run_id}"),
        ("DELETE", f"runs/{run_id}/data?key=shared-key", None, f"Run not found: {run_id}"),
        ("DELETE", f"runs/{run_id}/data?id={data_id}", None, f"Run not found: {run_id}"),
    ]
    for method, path, body, message in requests:
        response = await client.request(method, f"{API}/{path}", json=body, headers=HEADERS_B)
        assert assert_error(response, 404)["error"] == message, (method, path)
    # Org A's rows did not change, and org B created nothing.
    assert await snapshot(client, a, HEADERS_A) == before
    assert await admin_counts(db_url) == counts


async def test_another_orgs_ids_inside_own_requests_are_not_found(client, db_url, two_orgs):
    a, b = two_orgs[ORG_A], two_orgs[ORG_B]
    counts = await admin_counts(db_url)
    # A parent task of org A under org B's run.
    response = await client.post(
        f"{API}/tasks",
        json={
            "runId": b["run"]["id"],
            "type": "t",
            "inputData": 1,
            "parentTaskId": a["parent"]["id"],
        },
        headers=HEADERS_B,
    )
    assert_error(response, 404, "Parent task not found")
    # Org A's task as the writer of org B's run data.
    response = await client.post(
        f"{API}/runs/{b['run']['id']}/data",
        json={"taskId": a["parent"]["id"], "key": "k", "value": 1},
        headers=HEADERS_B,
    )
    assert_error(response, 404, "Task not found")
    # Org A's entry through org B's own run.
    response = await client.patch(
        f"{API}/runs/{b['run']['id']}/data/{a['data']['id']}/tags",
        json={"add": ["x"]},
        headers=HEADERS_B,
    )
    assert_error(response, 404, "Run data not found")
    response = await client.delete(
        f"{API}/runs/{b['run']['id']}/data?id={a['data']['id']}", headers=HEADERS_B
    )
    assert_error(response, 404)
    assert await admin_counts(db_url) == counts


async def test_lists_and_filters_show_only_own_rows(client, two_orgs):
    a, b = two_orgs[ORG_A], two_orgs[ORG_B]
    runs = (await client.get(f"{API}/runs", headers=HEADERS_B)).json()
    assert [r["id"] for r in runs["data"]] == [b["run"]["id"]]
    assert runs["pagination"]["total"] == 1
    tasks = (await client.get(f"{API}/tasks", headers=HEADERS_B)).json()
    assert {t["id"] for t in tasks["data"]} == {b["parent"]["id"], b["child"]["id"]}
    assert tasks["pagination"]["total"] == 2
    for query in (
        f"runId={a['run']['id']}",
        f"parentTaskId={a['parent']['id']}",
        f"runId={a['run']['id']}&status=pending&type=work",
    ):
        page = (await client.get(f"{API}/tasks?{query}", headers=HEADERS_B)).json()
        assert page == {"data": [], "pagination": {"total": 0, "limit": 20, "offset": 0}}, query
    assert (await client.get(f"{API}/runs?status=pending", headers=HEADERS_B)).json()["pagination"][
        "total"
    ] == 1
    assert (await client.get(f"{API}/tasks?type=work", headers=HEADERS_B)).json()["pagination"][
        "total"
    ] == 2


async def test_idempotency_keys_are_per_org(client, two_orgs):
    a, b = two_orgs[ORG_A], two_orgs[ORG_B]
    assert a["parent"]["id"] != b["parent"]["id"]
    assert a["parent"]["orgId"] == ORG_A
    assert b["parent"]["orgId"] == ORG_B
    again = await client.post(
        f"{API}/tasks",
        json={
            "runId": b["run"]["id"],
            "type": "work",
            "inputData": {"n": 1},
            "idempotencyKey": "same-key",
        },
        headers=HEADERS_B,
    )
    assert again.status_code == 200
    assert again.json()["id"] == b["parent"]["id"]


async def test_counters_count_only_own_tasks(client, two_orgs):
    a, b = two_orgs[ORG_A], two_orgs[ORG_B]
    await client.patch(
        f"{API}/tasks/{b['parent']['id']}", json={"status": "completed"}, headers=HEADERS_B
    )
    assert (await get_run(client, a["run"]["id"]))["completedTasks"] == 0
    assert (await get_run(client, b["run"]["id"], headers=HEADERS_B))["completedTasks"] == 1
    assert (await get_run(client, b["run"]["id"], headers=HEADERS_B))["totalTasks"] == 2


# ---------------------------------------------------------------- row-level security


UNFILTERED = {
    "run": "SELECT count(*) FROM run",
    "task": "SELECT count(*) FROM task",
    "run_data": "SELECT count(*) FROM run_data",
    "run_counter": "SELECT count(*) FROM run_counter",
    "schedule": "SELECT count(*) FROM schedule",
}


async def test_unfiltered_queries_through_the_servers_pool_see_only_the_bound_org(
    client, app, db_url, two_orgs
):
    # Org A gets more rows than org B, so that a leak would change the counts.
    extra = await create_run(client)
    await create_task(client, extra["id"])
    everything = await admin_counts(db_url)
    pool = app.state.foreman.pool
    async with db.org_connection(pool, ORG_A) as conn:
        seen_a = {table: await conn.fetchval(sql) for table, sql in UNFILTERED.items()}
        orgs = {
            table: await conn.fetchval(f"SELECT array_agg(DISTINCT org_id) FROM {table}")
            for table in UNFILTERED
        }
    async with db.org_connection(pool, ORG_B) as conn:
        seen_b = {table: await conn.fetchval(sql) for table, sql in UNFILTERED.items()}
    assert seen_a["run"] == 2
    assert seen_a["task"] == 3
    assert seen_a["run_data"] == 1
    assert seen_a["run_counter"] >= 2
    assert seen_b["run"] == 1
    assert seen_b["task"] == 2
    assert seen_b["run_data"] == 1
    assert seen_b["run_counter"] >= 1
    assert seen_a["schedule"] == seen_b["schedule"] == 1
    assert orgs == {table: [ORG_A] for table in UNFILTERED}
    for table in ("run", "task", "run_data"):
        assert seen_a[table] + seen_b[table] == everything[table]


async def test_unfiltered_writes_cannot_touch_another_org(client, app, two_orgs):
    b = two_orgs[ORG_B]
    pool = app.state.foreman.pool
    async with db.org_connection(pool, ORG_A) as conn:
        assert await conn.execute("UPDATE task SET type = 'hijacked'") == "UPDATE 2"
        assert await conn.execute("DELETE FROM run_data") == "DELETE 1"
        # Writing a row for another org fails the policy's WITH CHECK.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO run (id, org_id, input_data, created_at, updated_at)"
                " VALUES (gen_random_uuid(), $1, '1', 1, 1)",
                ORG_B,
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE run SET org_id = $1", ORG_B)
    task = (await client.get(f"{API}/tasks/{b['parent']['id']}", headers=HEADERS_B)).json()
    assert task["type"] == "work"
    data = (await client.get(f"{API}/runs/{b['run']['id']}/data", headers=HEADERS_B)).json()
    assert data["pagination"]["total"] == 1


async def test_a_connection_without_an_org_sees_nothing(client, db_url, two_orgs):
    pool = await db.create_pool(
        db_url, min_size=1, max_size=1, command_timeout_s=5, connect_timeout_s=5
    )
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_setting('app.current_org_id', true)") in (
                None,
                "",
            )
            for sql in UNFILTERED.values():
                assert await conn.fetchval(sql) == 0
    finally:
        await pool.close()


async def test_server_role_is_foreman_app_without_bypassrls(app):
    pool = app.state.foreman.pool
    async with db.org_connection(pool, ORG_A) as conn:
        assert await conn.fetchval("SELECT current_user") == "foreman_app"
        role = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        assert role["rolsuper"] is False
        assert role["rolbypassrls"] is False
        # The role owns none of the tables (an owner skips RLS unless FORCE is set), and RLS is on.
        rows = await conn.fetch(
            "SELECT c.relname, c.relrowsecurity, pg_get_userbyid(c.relowner) AS owner"
            "  FROM pg_class c WHERE c.relname = ANY($1::text[])",
            list(UNFILTERED),
        )
        assert len(rows) == len(UNFILTERED)
        for row in rows:
            assert row["relrowsecurity"] is True, row["relname"]
            assert row["owner"] != "foreman_app", row["relname"]
