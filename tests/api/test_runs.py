"""POST/GET/PATCH /api/v1/runs and the run list (SPEC sections 4 and 5)."""

from __future__ import annotations

import uuid

import pytest

from tests.api.helpers import (
    API,
    BACK_MS,
    JSON_VALUES,
    admin_count,
    admin_insert_runs,
    assert_error,
    assert_names_field,
    backdate,
    create_run,
    create_task,
    get_run,
    missing_id,
    now_ms,
    set_times,
)
from tests.conftest import HEADERS_A, ORG_A

OPTIONAL_RUN_FIELDS = ("outputData", "errorData", "startedAt", "completedAt", "durationMs")


async def patch_run(client, run_id: str, **body):
    return await client.patch(f"{API}/runs/{run_id}", json=body, headers=HEADERS_A)


async def list_runs(client, query: str = "", *, headers=HEADERS_A):
    response = await client.get(f"{API}/runs{query}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- create and read


async def test_create_run_returns_a_pending_run_with_zero_counters(client):
    before = now_ms()
    response = await client.post(
        f"{API}/runs", json={"inputData": {"x": 1}, "metadata": {"m": "v"}}, headers=HEADERS_A
    )
    after = now_ms()

    assert response.status_code == 201
    run = response.json()
    assert uuid.UUID(run["id"])
    assert run["orgId"] == ORG_A
    assert run["status"] == "pending"
    assert run["inputData"] == {"x": 1}
    assert run["metadata"] == {"m": "v"}
    for counter in ("totalTasks", "completedTasks", "failedTasks", "cancelledTasks"):
        assert run[counter] == 0
    assert isinstance(run["createdAt"], int)
    assert before <= run["createdAt"] <= after
    assert run["updatedAt"] == run["createdAt"]
    for field in OPTIONAL_RUN_FIELDS:
        assert field not in run  # omitted when unset (SPEC section 4)


async def test_create_run_without_metadata_has_null_metadata(client):
    run = await create_run(client, inputData=[1, 2])
    assert run["metadata"] is None


@pytest.mark.parametrize("value", JSON_VALUES)
async def test_input_data_accepts_any_json_value(client, value):
    run = await create_run(client, inputData=value)
    assert run["inputData"] == value
    assert (await get_run(client, run["id"]))["inputData"] == value


async def test_missing_input_data_is_400_naming_it(client, db_url):
    response = await client.post(f"{API}/runs", json={"metadata": {}}, headers=HEADERS_A)
    assert_names_field(assert_error(response, 400, "inputData"), "inputData")
    assert await admin_count(db_url, "run") == 0


async def test_null_input_data_is_400(client, db_url):
    response = await client.post(f"{API}/runs", json={"inputData": None}, headers=HEADERS_A)
    assert_names_field(assert_error(response, 400, "inputData"), "inputData")
    assert await admin_count(db_url, "run") == 0


@pytest.mark.parametrize("metadata", ["text", [1, 2], 5, True])
async def test_metadata_must_be_an_object_or_null(client, metadata):
    response = await client.post(
        f"{API}/runs", json={"inputData": 1, "metadata": metadata}, headers=HEADERS_A
    )
    assert_names_field(assert_error(response, 400, "metadata"), "metadata")


async def test_unknown_body_fields_are_ignored(client):
    own_id = str(uuid.uuid4())
    body = {
        "inputData": {"a": 1},
        "id": own_id,
        "status": "completed",
        "completedAt": 1,
        "orgId": "someone-else",
        "totalTasks": 99,
    }
    response = await client.post(f"{API}/runs", json=body, headers=HEADERS_A)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["id"] != own_id
    assert run["status"] == "pending"
    assert run["orgId"] == ORG_A
    assert run["totalTasks"] == 0
    assert "completedAt" not in run


async def test_get_run_returns_what_was_created(client):
    run = await create_run(client, inputData={"deep": [1, {"x": None}]}, metadata={"k": [1]})
    assert await get_run(client, run["id"]) == run


async def test_get_unknown_run_is_404_with_its_id(client):
    run_id = missing_id()
    response = await client.get(f"{API}/runs/{run_id}", headers=HEADERS_A)
    body = assert_error(response, 404)
    assert body["error"] == f"Run not found: {run_id}"


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "0" * 33, "{" + "0" * 32 + "}"])
async def test_get_run_with_malformed_id_is_404(client, bad_id):
    response = await client.get(f"{API}/runs/{bad_id}", headers=HEADERS_A)
    body = assert_error(response, 404)
    assert body["error"] == f"Run not found: {bad_id}"


async def test_run_ids_are_accepted_in_any_uuid_spelling(client):
    run = await create_run(client)
    for spelling in (run["id"].upper(), run["id"].replace("-", "")):
        assert (await get_run(client, spelling))["id"] == run["id"]


# ---------------------------------------------------------------- update


async def test_patch_running_sets_started_at_once(client, admin_conn):
    run = await create_run(client)
    await backdate(admin_conn, "run", run["id"])
    first = (await patch_run(client, run["id"], status="running")).json()
    assert first["status"] == "running"
    assert first["startedAt"] > run["createdAt"] - BACK_MS
    assert first["updatedAt"] == first["startedAt"]
    assert "completedAt" not in first
    assert "durationMs" not in first

    await backdate(admin_conn, "run", run["id"], "updated_at")
    second = (await patch_run(client, run["id"], status="running")).json()
    assert second["startedAt"] == first["startedAt"]
    assert second["updatedAt"] > first["updatedAt"] - BACK_MS


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
async def test_terminal_status_sets_completed_at_and_duration_from_start(
    client, admin_conn, terminal
):
    run = await create_run(client)
    started = (await patch_run(client, run["id"], status="running")).json()
    await backdate(admin_conn, "run", run["id"], "started_at")
    started_at = started["startedAt"] - BACK_MS
    response = await patch_run(client, run["id"], status=terminal)
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == terminal
    assert isinstance(done["completedAt"], int)
    assert done["completedAt"] >= started_at + BACK_MS
    assert done["durationMs"] == done["completedAt"] - started_at
    assert done["updatedAt"] == done["completedAt"]


async def test_duration_without_start_counts_from_creation(client, admin_conn):
    run = await create_run(client)
    await backdate(admin_conn, "run", run["id"])
    done = (await patch_run(client, run["id"], status="completed")).json()
    assert "startedAt" not in done
    assert done["durationMs"] == done["completedAt"] - (run["createdAt"] - BACK_MS)
    assert done["durationMs"] >= BACK_MS


async def test_repeating_a_terminal_status_keeps_the_first_completion(client, admin_conn):
    run = await create_run(client)
    first = (await patch_run(client, run["id"], status="completed")).json()
    await backdate(admin_conn, "run", run["id"], "completed_at")
    again = await patch_run(client, run["id"], status="completed")
    assert again.status_code == 200
    assert again.json()["completedAt"] == first["completedAt"] - BACK_MS  # not moved to now
    assert again.json()["durationMs"] == first["durationMs"]


async def test_patch_always_bumps_updated_at(client, admin_conn):
    run = await create_run(client)
    await backdate(admin_conn, "run", run["id"], "updated_at")
    response = await patch_run(client, run["id"])
    assert response.status_code == 200
    updated = response.json()
    assert updated["updatedAt"] > run["updatedAt"] - BACK_MS
    assert updated["createdAt"] == run["createdAt"]
    assert updated["status"] == "pending"


async def test_metadata_is_replaced_whole_and_can_be_cleared(client):
    run = await create_run(client, metadata={"a": 1, "b": {"c": 2}})
    replaced = (await patch_run(client, run["id"], metadata={"z": True})).json()
    assert replaced["metadata"] == {"z": True}
    untouched = (await patch_run(client, run["id"], status="running")).json()
    assert untouched["metadata"] == {"z": True}
    cleared = (await patch_run(client, run["id"], metadata=None)).json()
    assert cleared["metadata"] is None


@pytest.mark.parametrize("value", JSON_VALUES)
async def test_output_and_error_data_accept_any_json_value(client, value):
    run = await create_run(client)
    updated = (await patch_run(client, run["id"], outputData=value, errorData=value)).json()
    assert updated["outputData"] == value
    assert updated["errorData"] == value
    fetched = await get_run(client, run["id"])
    assert fetched["outputData"] == value
    assert fetched["errorData"] == value


async def test_output_data_null_clears_it(client):
    run = await create_run(client)
    await patch_run(client, run["id"], outputData={"r": 1})
    cleared = (await patch_run(client, run["id"], outputData=None)).json()
    assert "outputData" not in cleared


async def test_patch_ignores_unknown_fields(client):
    run = await create_run(client)
    response = await patch_run(
        client, run["id"], status="running", completedAt=5, createdAt=7, inputData="changed"
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["status"] == "running"
    assert "completedAt" not in updated
    assert updated["createdAt"] == run["createdAt"]
    assert updated["inputData"] == run["inputData"]


@pytest.mark.parametrize("status", ["done", "RUNNING", "", "queued", 3])
async def test_patch_with_invalid_status_is_400(client, status):
    run = await create_run(client)
    response = await patch_run(client, run["id"], status=status)
    assert_names_field(assert_error(response, 400, "status"), "status")
    assert (await get_run(client, run["id"]))["status"] == "pending"


async def test_patch_unknown_run_is_404(client):
    run_id = missing_id()
    response = await patch_run(client, run_id, status="running")
    assert assert_error(response, 404)["error"] == f"Run not found: {run_id}"
    response = await patch_run(client, "nope", status="running")
    assert assert_error(response, 404)["error"] == "Run not found: nope"


async def test_run_counters_follow_its_tasks(client):
    run = await create_run(client)
    tasks = [await create_task(client, run["id"]) for _ in range(4)]
    for task, status in zip(tasks, ["completed", "failed", "cancelled", "running"], strict=True):
        response = await client.patch(
            f"{API}/tasks/{task['id']}", json={"status": status}, headers=HEADERS_A
        )
        assert response.status_code == 200, response.text
    fetched = await get_run(client, run["id"])
    assert fetched["totalTasks"] == 4
    assert fetched["completedTasks"] == 1
    assert fetched["failedTasks"] == 1
    assert fetched["cancelledTasks"] == 1
    # The list shows the same counters as the single read.
    listed = (await list_runs(client))["data"][0]
    assert listed == fetched


# ---------------------------------------------------------------- list


async def test_list_envelope_defaults_and_newest_first(client):
    created = [await create_run(client, inputData=i) for i in range(3)]
    page = await list_runs(client)
    assert page["pagination"] == {"total": 3, "limit": 20, "offset": 0}
    assert [run["id"] for run in page["data"]] == [run["id"] for run in reversed(created)]


async def test_empty_list(client):
    assert await list_runs(client) == {
        "data": [],
        "pagination": {"total": 0, "limit": 20, "offset": 0},
    }


async def test_total_counts_every_match_not_the_page(client):
    for _ in range(5):
        await create_run(client)
    page = await list_runs(client, "?limit=2&offset=1")
    assert page["pagination"] == {"total": 5, "limit": 2, "offset": 1}
    assert len(page["data"]) == 2
    beyond = await list_runs(client, "?limit=2&offset=50")
    assert beyond["data"] == []
    assert beyond["pagination"]["total"] == 5


async def test_status_filter_and_its_total(client):
    runs = [await create_run(client) for _ in range(5)]
    for run in runs[:2]:
        await patch_run(client, run["id"], status="running")
    await patch_run(client, runs[2]["id"], status="failed")
    page = await list_runs(client, "?status=running")
    assert page["pagination"]["total"] == 2
    assert {run["id"] for run in page["data"]} == {run["id"] for run in runs[:2]}
    assert all(run["status"] == "running" for run in page["data"])
    assert (await list_runs(client, "?status=failed"))["pagination"]["total"] == 1
    assert (await list_runs(client, "?status=cancelled"))["data"] == []


async def test_sort_order_asc(client):
    created = [await create_run(client) for _ in range(3)]
    page = await list_runs(client, "?sortOrder=asc")
    assert [run["id"] for run in page["data"]] == [run["id"] for run in created]
    assert [r["id"] for r in (await list_runs(client, "?sortOrder=ASC"))["data"]] == [
        run["id"] for run in created
    ]


@pytest.mark.parametrize(
    ("sort_by", "field"),
    [
        ("started_at", "startedAt"),
        ("startedAt", "startedAt"),
        ("completed_at", "completedAt"),
        ("completedAt", "completedAt"),
        ("createdAt", "createdAt"),
    ],
)
async def test_sort_by_snake_or_camel_case(client, admin_conn, sort_by, field):
    runs = [await create_run(client) for _ in range(3)]
    # Distinct times chosen by the test (requests are faster than a millisecond); started and
    # finished in the reverse order of creation.
    for i, run in enumerate(runs):
        await patch_run(client, run["id"], status="completed")
        times = {"created_at": 1000 + i, "started_at": 2000 - i, "completed_at": 3000 - i}
        await set_times(admin_conn, "run", run["id"], **times)
    page = await list_runs(client, f"?sortBy={sort_by}&sortOrder=asc")
    values = [run[field] for run in page["data"]]
    assert values == sorted(values)
    assert len(set(values)) == 3


async def test_ties_are_broken_by_id_and_pages_are_stable(client, db_url):
    ids = await admin_insert_runs(db_url, org_id=ORG_A, created_at=1_700_000_000_000, count=25)
    for order in ("desc", "asc"):
        seen: list[str] = []
        for offset in range(0, 25, 7):
            page = await list_runs(client, f"?limit=7&offset={offset}&sortOrder={order}")
            assert page["pagination"]["total"] == 25
            seen += [run["id"] for run in page["data"]]
        assert seen == sorted(ids, reverse=order == "desc")
        # The same page twice is the same page.
        again = await list_runs(client, f"?limit=7&offset=7&sortOrder={order}")
        assert [run["id"] for run in again["data"]] == seen[7:14]


async def test_null_sort_keys_still_paginate_stably(client, db_url):
    ids = await admin_insert_runs(db_url, org_id=ORG_A, created_at=1_700_000_000_000, count=9)
    seen = []
    for offset in range(0, 9, 4):
        page = await list_runs(client, f"?sortBy=startedAt&limit=4&offset={offset}")
        seen += [run["id"] for run in page["data"]]
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 9


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=abc", "limit"),
        ("?limit=1.5", "limit"),
        ("?offset=-1", "offset"),
        ("?offset=x", "offset"),
        ("?offset=100000000000000000000000", "offset"),
        ("?status=done", "status"),
        ("?sortBy=inputData", "sortBy"),
        ("?sortBy=id", "sortBy"),
        ("?sortOrder=sideways", "sortOrder"),
    ],
)
async def test_list_rejects_bad_query_values(client, query, field):
    response = await client.get(f"{API}/runs{query}", headers=HEADERS_A)
    body = assert_error(response, 400, field)
    assert body["details"][0]["loc"] == ["query", field]


async def test_limit_bounds_are_inclusive(client):
    await create_run(client)
    assert (await list_runs(client, "?limit=1"))["pagination"]["limit"] == 1
    assert (await list_runs(client, "?limit=100"))["pagination"]["limit"] == 100
