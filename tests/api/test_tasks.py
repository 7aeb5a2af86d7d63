"""POST/GET/PATCH /api/v1/tasks and the task list (SPEC sections 4 and 5)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.api.helpers import (
    API,
    BACK_MS,
    JSON_VALUES,
    admin_count,
    assert_error,
    assert_names_field,
    backdate,
    create_run,
    create_task,
    get_run,
    missing_id,
    now_ms,
    patch_task,
    set_times,
)
from tests.conftest import HEADERS_A, ORG_A

OPTIONAL_TASK_FIELDS = (
    "parentTaskId",
    "outputData",
    "errorData",
    "queuedAt",
    "startedAt",
    "completedAt",
    "durationMs",
    "queueJobId",
    "runAfter",
    "leaseExpiresAt",
    "idempotencyKey",
    "workerId",
    "leaseToken",
)
TERMINAL = ("completed", "failed", "cancelled")
STATUSES = ("pending", "queued", "running", "completed", "failed", "cancelled", "retrying")
COUNTER_OF = {"completed": "completedTasks", "failed": "failedTasks", "cancelled": "cancelledTasks"}


async def post_task(client, body, *, headers=HEADERS_A):
    return await client.post(f"{API}/tasks", json=body, headers=headers)


async def get_task(client, task_id: str):
    response = await client.get(f"{API}/tasks/{task_id}", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()


async def list_tasks(client, query: str = ""):
    response = await client.get(f"{API}/tasks{query}", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def run(client):
    return await create_run(client)


# ---------------------------------------------------------------- create


async def test_create_task_returns_a_pending_task(client, run):
    before = now_ms()
    response = await post_task(
        client, {"runId": run["id"], "type": "resize", "inputData": {"w": 10}, "metadata": {"m": 1}}
    )
    after = now_ms()
    assert response.status_code == 201, response.text
    task = response.json()
    assert uuid.UUID(task["id"])
    assert task["runId"] == run["id"]
    assert task["orgId"] == ORG_A
    assert task["type"] == "resize"
    assert task["status"] == "pending"
    assert task["inputData"] == {"w": 10}
    assert task["metadata"] == {"m": 1}
    assert task["retryCount"] == 0
    assert task["maxRetries"] == 3
    assert task["priority"] == 0
    assert isinstance(task["createdAt"], int)
    assert before <= task["createdAt"] <= after
    assert task["updatedAt"] == task["createdAt"]
    for field in OPTIONAL_TASK_FIELDS:
        assert field not in task  # omitted when unset (SPEC section 4)
    assert await get_task(client, task["id"]) == task


async def test_create_task_without_metadata_has_null_metadata(client, run):
    assert (await create_task(client, run["id"]))["metadata"] is None


@pytest.mark.parametrize("max_retries", [0, 1, 10])
async def test_max_retries_is_kept_including_zero(client, run, max_retries):
    task = await create_task(client, run["id"], maxRetries=max_retries)
    assert task["maxRetries"] == max_retries
    assert (await get_task(client, task["id"]))["maxRetries"] == max_retries


@pytest.mark.parametrize("max_retries", [-1, 11, 2.5, 3.0, "3", None, True, 10**30])
async def test_max_retries_out_of_range_or_wrong_type_is_400(client, run, db_url, max_retries):
    response = await post_task(
        client, {"runId": run["id"], "type": "t", "inputData": 1, "maxRetries": max_retries}
    )
    assert_names_field(assert_error(response, 400, "maxRetries"), "maxRetries")
    assert await admin_count(db_url, "task") == 0


@pytest.mark.parametrize("task_type", ["", "x" * 256, 5, None, ["t"]])
async def test_type_must_be_a_string_of_1_to_255(client, run, task_type):
    response = await post_task(client, {"runId": run["id"], "type": task_type, "inputData": 1})
    assert_names_field(assert_error(response, 400, "type"), "type")


async def test_type_of_255_characters_is_accepted(client, run):
    assert (await create_task(client, run["id"], type="x" * 255))["type"] == "x" * 255


@pytest.mark.parametrize("missing", ["runId", "type", "inputData"])
async def test_required_fields(client, run, missing):
    body = {"runId": run["id"], "type": "t", "inputData": 1}
    del body[missing]
    assert_names_field(assert_error(await post_task(client, body), 400, missing), missing)


async def test_null_input_data_is_400(client, run, db_url):
    response = await post_task(client, {"runId": run["id"], "type": "t", "inputData": None})
    assert_names_field(assert_error(response, 400, "inputData"), "inputData")
    assert await admin_count(db_url, "task") == 0


@pytest.mark.parametrize("value", JSON_VALUES)
async def test_input_data_accepts_any_json_value(client, run, value):
    task = await create_task(client, run["id"], inputData=value)
    assert task["inputData"] == value
    assert (await get_task(client, task["id"]))["inputData"] == value


async def test_unknown_run_is_404_and_nothing_is_written(client, db_url):
    run_id = missing_id()
    response = await post_task(client, {"runId": run_id, "type": "t", "inputData": 1})
    assert assert_error(response, 404)["error"] == f"Run not found: {run_id}"
    assert await admin_count(db_url, "task") == 0
    assert await admin_count(db_url, "run_counter") == 0


@pytest.mark.parametrize("field", ["runId", "parentTaskId"])
@pytest.mark.parametrize("bad", ["nope", "1234", 7, ""])
async def test_malformed_ids_in_the_body_are_400(client, run, field, bad):
    body = {"runId": run["id"], "type": "t", "inputData": 1, field: bad}
    assert_names_field(assert_error(await post_task(client, body), 400, field), field)


async def test_parent_task_in_the_same_run(client, run):
    parent = await create_task(client, run["id"])
    child = await create_task(client, run["id"], parentTaskId=parent["id"])
    assert child["parentTaskId"] == parent["id"]
    assert (await get_run(client, run["id"]))["totalTasks"] == 2


async def test_parent_task_of_another_run_is_404(client, run, db_url):
    other_run = await create_run(client)
    foreign_parent = await create_task(client, other_run["id"])
    body = {"runId": run["id"], "type": "t", "inputData": 1, "parentTaskId": foreign_parent["id"]}
    response = await post_task(client, body)
    assert assert_error(response, 404)["error"] == f"Parent task not found: {foreign_parent['id']}"
    assert await admin_count(db_url, "task") == 1
    assert (await get_run(client, run["id"]))["totalTasks"] == 0


async def test_unknown_parent_task_is_404(client, run):
    parent_id = missing_id()
    body = {"runId": run["id"], "type": "t", "inputData": 1, "parentTaskId": parent_id}
    response = await post_task(client, body)
    assert assert_error(response, 404)["error"] == f"Parent task not found: {parent_id}"


async def test_unknown_body_fields_are_ignored(client, run):
    own_id = str(uuid.uuid4())
    body = {
        "runId": run["id"],
        "type": "t",
        "inputData": 1,
        "id": own_id,
        "status": "completed",
        "completedAt": 123,
        "retryCount": 9,
        "orgId": "other",
    }
    response = await post_task(client, body)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["id"] != own_id
    assert task["status"] == "pending"
    assert task["retryCount"] == 0
    assert task["orgId"] == ORG_A
    assert "completedAt" not in task


async def test_total_tasks_counts_the_runs_tasks(client, run):
    other = await create_run(client)
    for _ in range(3):
        await create_task(client, run["id"])
    await create_task(client, other["id"])
    assert (await get_run(client, run["id"]))["totalTasks"] == 3
    assert (await get_run(client, other["id"]))["totalTasks"] == 1


# ---------------------------------------------------------------- extensions


async def test_idempotency_key_repeat_returns_the_same_task_with_200(client, run):
    first = await post_task(
        client, {"runId": run["id"], "type": "t", "inputData": 1, "idempotencyKey": "order-42"}
    )
    assert first.status_code == 201
    assert first.json()["idempotencyKey"] == "order-42"
    again = await post_task(
        client, {"runId": run["id"], "type": "t", "inputData": 1, "idempotencyKey": "order-42"}
    )
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert (await get_run(client, run["id"]))["totalTasks"] == 1
    assert (await list_tasks(client))["pagination"]["total"] == 1


async def test_different_idempotency_keys_make_different_tasks(client, run):
    a = await create_task(client, run["id"], idempotencyKey="a")
    b = await create_task(client, run["id"], idempotencyKey="b")
    plain = await create_task(client, run["id"])
    assert len({a["id"], b["id"], plain["id"]}) == 3
    assert (await get_run(client, run["id"]))["totalTasks"] == 3


async def test_idempotency_key_with_unknown_run_is_404(client, run):
    await create_task(client, run["id"], idempotencyKey="k")
    response = await post_task(
        client, {"runId": missing_id(), "type": "t", "inputData": 1, "idempotencyKey": "k"}
    )
    assert_error(response, 404, "Run not found")


@pytest.mark.parametrize("key", ["", "k" * 256, 5])
async def test_bad_idempotency_key_is_400(client, run, key):
    body = {"runId": run["id"], "type": "t", "inputData": 1, "idempotencyKey": key}
    assert_names_field(assert_error(await post_task(client, body), 400), "idempotencyKey")


async def test_priority_is_stored(client, run):
    task = await create_task(client, run["id"], priority=5)
    assert task["priority"] == 5


@pytest.mark.parametrize("priority", [-1, 2_097_153, "high", 1.5, 2**64])
async def test_bad_priority_is_400(client, run, priority):
    body = {"runId": run["id"], "type": "t", "inputData": 1, "priority": priority}
    assert_names_field(assert_error(await post_task(client, body), 400, "priority"), "priority")


async def test_delay_ms_sets_run_after(client, run):
    task = await create_task(client, run["id"], delayMs=60_000)
    assert task["runAfter"] - task["createdAt"] == 60_000
    assert "runAfter" not in await create_task(client, run["id"], delayMs=0)


@pytest.mark.parametrize("delay", [-1, "10", 1.5, 10**20])
async def test_bad_delay_ms_is_400(client, run, delay):
    body = {"runId": run["id"], "type": "t", "inputData": 1, "delayMs": delay}
    assert_names_field(assert_error(await post_task(client, body), 400, "delayMs"), "delayMs")


# ---------------------------------------------------------------- read


async def test_get_unknown_task_is_404_with_its_id(client):
    task_id = missing_id()
    response = await client.get(f"{API}/tasks/{task_id}", headers=HEADERS_A)
    assert assert_error(response, 404)["error"] == f"Task not found: {task_id}"


@pytest.mark.parametrize("bad_id", ["nope", "42", "g" * 32])
async def test_get_task_with_malformed_id_is_404(client, bad_id):
    response = await client.get(f"{API}/tasks/{bad_id}", headers=HEADERS_A)
    assert assert_error(response, 404)["error"] == f"Task not found: {bad_id}"


# ---------------------------------------------------------------- update


async def test_queued_sets_queued_at_once(client, admin_conn, run):
    task = await create_task(client, run["id"])
    await backdate(admin_conn, "task", task["id"])
    first = (await patch_task(client, task["id"], status="queued")).json()
    assert first["status"] == "queued"
    assert first["queuedAt"] > task["createdAt"] - BACK_MS
    await patch_task(client, task["id"], status="running")
    await backdate(admin_conn, "task", task["id"], "queued_at")
    again = (await patch_task(client, task["id"], status="queued")).json()
    assert again["queuedAt"] == first["queuedAt"] - BACK_MS  # kept, not moved to now


async def test_running_sets_started_at_once(client, admin_conn, run):
    task = await create_task(client, run["id"])
    first = (await patch_task(client, task["id"], status="running")).json()
    assert first["startedAt"] >= task["createdAt"]
    await patch_task(client, task["id"], status="retrying")
    await backdate(admin_conn, "task", task["id"], "started_at")
    again = (await patch_task(client, task["id"], status="running")).json()
    assert again["startedAt"] == first["startedAt"] - BACK_MS  # kept, not moved to now
    assert "completedAt" not in again


async def test_retrying_adds_one_to_retry_count_each_time(client, run):
    task = await create_task(client, run["id"])
    for expected in (1, 2, 3):
        updated = (await patch_task(client, task["id"], status="retrying")).json()
        assert updated["status"] == "retrying"
        assert updated["retryCount"] == expected
    assert (await patch_task(client, task["id"], status="running")).json()["retryCount"] == 3


@pytest.mark.parametrize("terminal", TERMINAL)
async def test_terminal_status_sets_completion_and_counts_once(client, admin_conn, run, terminal):
    task = await create_task(client, run["id"])
    started = (await patch_task(client, task["id"], status="running")).json()
    await backdate(admin_conn, "task", task["id"], "started_at")
    started_at = started["startedAt"] - BACK_MS
    done = (await patch_task(client, task["id"], status=terminal)).json()
    assert done["status"] == terminal
    assert done["completedAt"] >= started_at + BACK_MS
    assert done["durationMs"] == done["completedAt"] - started_at
    counters = await get_run(client, run["id"])
    for status, counter in COUNTER_OF.items():
        assert counters[counter] == (1 if status == terminal else 0)

    # The same terminal status again is a no-op 200: nothing moves, nothing is counted twice.
    again = await patch_task(client, task["id"], status=terminal)
    assert again.status_code == 200, again.text
    assert again.json() == done
    assert await get_run(client, run["id"]) == counters


async def test_duration_without_start_counts_from_creation(client, admin_conn, run):
    task = await create_task(client, run["id"])
    await backdate(admin_conn, "task", task["id"])
    done = (await patch_task(client, task["id"], status="failed")).json()
    assert "startedAt" not in done
    assert done["durationMs"] == done["completedAt"] - (task["createdAt"] - BACK_MS)
    assert done["durationMs"] >= BACK_MS


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest.mark.parametrize("target", STATUSES)
async def test_leaving_a_terminal_status_is_409(client, run, terminal, target):
    if target == terminal:
        return  # the no-op case is covered above
    task = await create_task(client, run["id"])
    done = (await patch_task(client, task["id"], status=terminal, outputData={"r": 1})).json()
    response = await patch_task(client, task["id"], status=target, outputData={"r": 2})
    assert_error(response, 409, terminal, target)
    assert response.json()["code"] == "conflict"
    # Nothing changed: not the status, not the data, not the counters.
    assert await get_task(client, task["id"]) == done
    fetched = await get_run(client, run["id"])
    assert fetched[COUNTER_OF[terminal]] == 1
    assert sum(fetched[c] for c in COUNTER_OF.values()) == 1


async def test_patch_without_status_on_a_terminal_task_changes_data_only(client, run):
    task = await create_task(client, run["id"])
    await patch_task(client, task["id"], status="completed")
    updated = (await patch_task(client, task["id"], metadata={"note": "late"})).json()
    assert updated["status"] == "completed"
    assert updated["metadata"] == {"note": "late"}
    assert (await get_run(client, run["id"]))["completedTasks"] == 1


async def test_patch_sets_queue_job_id_and_replaces_metadata(client, admin_conn, run):
    task = await create_task(client, run["id"], metadata={"a": 1, "b": 2})
    await backdate(admin_conn, "task", task["id"], "updated_at")
    updated = (await patch_task(client, task["id"], queueJobId="job-7", metadata={"c": 3})).json()
    assert updated["queueJobId"] == "job-7"
    assert updated["metadata"] == {"c": 3}
    assert updated["updatedAt"] > task["updatedAt"] - BACK_MS
    assert updated["status"] == "pending"
    cleared = (await patch_task(client, task["id"], metadata=None, queueJobId=None)).json()
    assert cleared["metadata"] is None
    assert "queueJobId" not in cleared


@pytest.mark.parametrize("value", JSON_VALUES)
async def test_output_and_error_data_accept_any_json_value(client, run, value):
    task = await create_task(client, run["id"])
    updated = (await patch_task(client, task["id"], outputData=value, errorData=value)).json()
    assert updated["outputData"] == value
    assert updated["errorData"] == value
    assert (await get_task(client, task["id"]))["outputData"] == value


async def test_complete_with_output_in_one_patch(client, run):
    task = await create_task(client, run["id"])
    done = (
        await patch_task(client, task["id"], status="completed", outputData={"ok": True})
    ).json()
    assert done["status"] == "completed"
    assert done["outputData"] == {"ok": True}


async def test_patch_ignores_unknown_fields(client, run):
    task = await create_task(client, run["id"])
    response = await patch_task(
        client, task["id"], status="running", completedAt=1, retryCount=5, runId=missing_id()
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["status"] == "running"
    assert updated["retryCount"] == 0
    assert updated["runId"] == run["id"]
    assert "completedAt" not in updated


@pytest.mark.parametrize("status", ["done", "Completed", "", 1, None])
async def test_patch_with_invalid_status_is_400(client, run, status):
    task = await create_task(client, run["id"])
    response = await patch_task(client, task["id"], status=status)
    assert_names_field(assert_error(response, 400, "status"), "status")
    assert (await get_task(client, task["id"]))["status"] == "pending"


async def test_patch_unknown_task_is_404(client):
    task_id = missing_id()
    response = await patch_task(client, task_id, status="running")
    assert assert_error(response, 404)["error"] == f"Task not found: {task_id}"
    response = await patch_task(client, "bad-id", status="running")
    assert assert_error(response, 404)["error"] == "Task not found: bad-id"


# ---------------------------------------------------------------- list


async def test_list_defaults_and_total(client, run):
    created = [await create_task(client, run["id"]) for _ in range(3)]
    page = await list_tasks(client)
    assert page["pagination"] == {"total": 3, "limit": 20, "offset": 0}
    assert [t["id"] for t in page["data"]] == [t["id"] for t in reversed(created)]
    page = await list_tasks(client, "?limit=1&offset=1")
    assert page["pagination"] == {"total": 3, "limit": 1, "offset": 1}
    assert [t["id"] for t in page["data"]] == [created[1]["id"]]


async def test_list_filters_and_their_totals(client, run):
    other = await create_run(client)
    parent = await create_task(client, run["id"], type="split")
    children = [
        await create_task(client, run["id"], type="leaf", parentTaskId=parent["id"])
        for _ in range(3)
    ]
    elsewhere = await create_task(client, other["id"], type="leaf")
    await patch_task(client, children[0]["id"], status="completed")

    async def ids(query):
        page = await list_tasks(client, query)
        assert page["pagination"]["total"] == len(page["data"])
        return {t["id"] for t in page["data"]}

    assert await ids(f"?runId={run['id']}") == {parent["id"], *(c["id"] for c in children)}
    assert await ids(f"?runId={other['id']}") == {elsewhere["id"]}
    assert await ids("?type=leaf") == {elsewhere["id"], *(c["id"] for c in children)}
    assert await ids(f"?type=leaf&runId={run['id']}") == {c["id"] for c in children}
    assert await ids("?status=completed") == {children[0]["id"]}
    assert await ids(f"?status=pending&runId={run['id']}&type=leaf") == {
        children[1]["id"],
        children[2]["id"],
    }
    assert await ids(f"?parentTaskId={parent['id']}") == {c["id"] for c in children}
    assert await ids("?type=nothing") == set()
    assert await ids(f"?runId={missing_id()}") == set()


@pytest.mark.parametrize("param", ["runId", "parentTaskId"])
async def test_malformed_id_filter_matches_nothing(client, run, param):
    await create_task(client, run["id"])
    page = await list_tasks(client, f"?{param}=not-a-uuid")
    assert page == {"data": [], "pagination": {"total": 0, "limit": 20, "offset": 0}}


@pytest.mark.parametrize(
    "sort_by", ["created_at", "createdAt", "started_at", "startedAt", "completed_at", "completedAt"]
)
async def test_sort_by_snake_or_camel_case(client, admin_conn, run, sort_by):
    tasks = [await create_task(client, run["id"]) for _ in range(3)]
    # Distinct times chosen by the test (three creates can share a millisecond); started and
    # finished in the reverse order of creation.
    for i, task in enumerate(tasks):
        await patch_task(client, task["id"], status="completed")
        times = {"created_at": 1000 + i, "started_at": 2000 - i, "completed_at": 3000 - i}
        await set_times(admin_conn, "task", task["id"], **times)
    field = {"created": "createdAt", "started": "startedAt"}.get(sort_by[:7], "completedAt")
    asc = [t[field] for t in (await list_tasks(client, f"?sortBy={sort_by}&sortOrder=asc"))["data"]]
    desc = [t[field] for t in (await list_tasks(client, f"?sortBy={sort_by}"))["data"]]
    assert asc == sorted(asc)
    assert desc == sorted(desc, reverse=True)
    assert len(set(asc)) == 3


async def test_ties_are_broken_by_id_and_pages_are_stable(client, run, db_url):
    conn = await asyncpg.connect(db_url)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    try:
        await conn.executemany(
            "INSERT INTO task (id, run_id, org_id, type, input_data, created_at, updated_at)"
            " VALUES ($1, $2, $3, 't', '1', 1700000000000, 1700000000000)",
            [(task_id, run["id"], ORG_A) for task_id in ids],
        )
    finally:
        await conn.close()
    for order in ("asc", "desc"):
        seen: list[str] = []
        for offset in range(0, 20, 6):
            page = await list_tasks(client, f"?limit=6&offset={offset}&sortOrder={order}")
            assert page["pagination"]["total"] == 20
            seen += [t["id"] for t in page["data"]]
        assert seen == sorted(ids, reverse=order == "desc")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=x", "limit"),
        ("?offset=-5", "offset"),
        ("?offset=99999999999999999999999", "offset"),
        ("?status=finished", "status"),
        ("?sortBy=type", "sortBy"),
        ("?sortOrder=up", "sortOrder"),
    ],
)
async def test_list_rejects_bad_query_values(client, query, field):
    response = await client.get(f"{API}/tasks{query}", headers=HEADERS_A)
    body = assert_error(response, 400, field)
    assert body["details"][0]["loc"] == ["query", field]
