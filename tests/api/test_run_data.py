"""/api/v1/runs/:runId/data: add, query, retag and delete run data (SPEC section 5)."""

from __future__ import annotations

import uuid
from urllib.parse import quote

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
    create_data,
    create_run,
    create_task,
    missing_id,
    now_ms,
)
from tests.conftest import HEADERS_A, ORG_A


@pytest.fixture
async def run_task(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    return run["id"], task["id"]


def data_url(run_id: str) -> str:
    return f"{API}/runs/{run_id}/data"


async def query(client, run_id: str, params: str = ""):
    response = await client.get(f"{data_url(run_id)}{params}", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    return response.json()


async def keys_of(client, run_id: str, params: str = "") -> list[str]:
    page = await query(client, run_id, params)
    assert page["pagination"]["total"] >= len(page["data"])
    return sorted(item["key"] for item in page["data"])


async def add(client, run_id, task_id, key, value=1, **body):
    return await create_data(client, run_id, task_id, key, value, **body)


# ---------------------------------------------------------------- create


async def test_create_returns_the_entry(client, run_task):
    run_id, task_id = run_task
    before = now_ms()
    response = await client.post(
        data_url(run_id),
        json={
            "taskId": task_id,
            "key": "result",
            "value": {"n": 1},
            "tags": ["a", "b"],
            "metadata": {"m": 1},
        },
        headers=HEADERS_A,
    )
    assert response.status_code == 201, response.text
    item = response.json()
    assert uuid.UUID(item["id"])
    assert item["runId"] == run_id
    assert item["taskId"] == task_id
    assert item["orgId"] == ORG_A
    assert item["key"] == "result"
    assert item["value"] == {"n": 1}
    assert item["tags"] == ["a", "b"]
    assert item["metadata"] == {"m": 1}
    assert before <= item["createdAt"] <= now_ms()
    assert item["updatedAt"] == item["createdAt"]


async def test_tags_are_always_present_and_metadata_null(client, run_task):
    item = await add(client, *run_task, "k")
    assert item["tags"] == []
    assert item["metadata"] is None


async def test_repeated_tags_are_stored_once_in_order(client, run_task):
    item = await add(client, *run_task, "k", tags=["b", "a", "b", "c", "a"])
    assert item["tags"] == ["b", "a", "c"]


@pytest.mark.parametrize("value", JSON_VALUES)
async def test_value_accepts_any_json_value(client, run_task, value):
    item = await add(client, *run_task, "k", value)
    assert item["value"] == value
    page = await query(client, run_task[0], "?key=k")
    assert page["data"][0]["value"] == value


async def test_a_key_holds_many_values(client, run_task):
    for n in range(3):
        await add(client, *run_task, "k", n)
    page = await query(client, run_task[0], "?includeAll=true")
    assert page["pagination"]["total"] == 3
    assert sorted(item["value"] for item in page["data"]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "k", "value": 1}, "taskId"),
        ({"taskId": "nope", "key": "k", "value": 1}, "taskId"),
        ({"taskId": "TASK", "value": 1}, "key"),
        ({"taskId": "TASK", "key": "", "value": 1}, "key"),
        ({"taskId": "TASK", "key": "k" * 256, "value": 1}, "key"),
        ({"taskId": "TASK", "key": 5, "value": 1}, "key"),
        ({"taskId": "TASK", "key": "k"}, "value"),
        ({"taskId": "TASK", "key": "k", "value": None}, "value"),
        ({"taskId": "TASK", "key": "k", "value": 1, "tags": "a"}, "tags"),
        ({"taskId": "TASK", "key": "k", "value": 1, "tags": ["a", 2]}, "tags"),
        ({"taskId": "TASK", "key": "k", "value": 1, "tags": [""]}, "tags"),
        ({"taskId": "TASK", "key": "k", "value": 1, "tags": None}, "tags"),
        ({"taskId": "TASK", "key": "k", "value": 1, "tags": [str(i) for i in range(101)]}, "tags"),
        ({"taskId": "TASK", "key": "k", "value": 1, "metadata": [1]}, "metadata"),
    ],
)
async def test_invalid_bodies_are_400_naming_the_field(client, run_task, db_url, body, field):
    run_id, task_id = run_task
    if body.get("taskId") == "TASK":
        body = {**body, "taskId": task_id}
    response = await client.post(data_url(run_id), json=body, headers=HEADERS_A)
    assert_names_field(assert_error(response, 400, field), field)
    assert await admin_count(db_url, "run_data") == 0


async def test_key_of_255_characters_is_accepted(client, run_task):
    assert (await add(client, *run_task, "k" * 255))["key"] == "k" * 255


async def test_unknown_run_is_404(client, run_task, db_url):
    run_id = missing_id()
    response = await client.post(
        data_url(run_id), json={"taskId": run_task[1], "key": "k", "value": 1}, headers=HEADERS_A
    )
    assert assert_error(response, 404)["error"] == f"Run not found: {run_id}"
    response = await client.post(
        data_url("not-a-uuid"),
        json={"taskId": run_task[1], "key": "k", "value": 1},
        headers=HEADERS_A,
    )
    assert assert_error(response, 404)["error"] == "Run not found: not-a-uuid"
    assert await admin_count(db_url, "run_data") == 0


async def test_task_of_another_run_is_404(client, run_task, db_url):
    run_id, _ = run_task
    other_run = await create_run(client)
    foreign = await create_task(client, other_run["id"])
    response = await client.post(
        data_url(run_id), json={"taskId": foreign["id"], "key": "k", "value": 1}, headers=HEADERS_A
    )
    assert assert_error(response, 404)["error"] == f"Task not found: {foreign['id']}"
    unknown = missing_id()
    response = await client.post(
        data_url(run_id), json={"taskId": unknown, "key": "k", "value": 1}, headers=HEADERS_A
    )
    assert assert_error(response, 404)["error"] == f"Task not found: {unknown}"
    assert await admin_count(db_url, "run_data") == 0


# ---------------------------------------------------------------- latest per key


async def test_default_returns_the_latest_row_per_key(client, run_task):
    run_id, task_id = run_task
    for n in range(3):
        await add(client, run_id, task_id, "a", n)
    await add(client, run_id, task_id, "b", "only")
    page = await query(client, run_id)
    assert page["pagination"] == {"total": 2, "limit": 100, "offset": 0}
    assert {item["key"]: item["value"] for item in page["data"]} == {"a": 2, "b": "only"}
    every = await query(client, run_id, "?includeAll=true")
    assert every["pagination"]["total"] == 4
    assert len(every["data"]) == 4
    explicit_false = await query(client, run_id, "?includeAll=false")
    assert explicit_false["pagination"]["total"] == 2


async def test_latest_per_key_breaks_created_at_ties_by_id(client, run_task, db_url):
    run_id, task_id = run_task
    ids = sorted(str(uuid.uuid4()) for _ in range(3))
    conn = await asyncpg.connect(db_url)
    try:
        await conn.executemany(
            "INSERT INTO run_data (id, run_id, task_id, org_id, key, value, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, 'tie', $5, 1700000000000, 1700000000000)",
            [(data_id, run_id, task_id, ORG_A, f'"{data_id}"') for data_id in ids],
        )
    finally:
        await conn.close()
    page = await query(client, run_id)
    assert [item["id"] for item in page["data"]] == [ids[-1]]


async def test_latest_is_taken_among_the_matching_rows(client, run_task):
    run_id, task_id = run_task
    await add(client, run_id, task_id, "k", "old", tags=["x"])
    await add(client, run_id, task_id, "k", "new", tags=["y"])
    assert [i["value"] for i in (await query(client, run_id, "?tags=x"))["data"]] == ["old"]
    assert [i["value"] for i in (await query(client, run_id, "?tags=y"))["data"]] == ["new"]
    assert [i["value"] for i in (await query(client, run_id))["data"]] == ["new"]


# ---------------------------------------------------------------- key filters


@pytest.fixture
async def keyed(client, run_task):
    run_id, task_id = run_task
    for key, tags in [
        ("user.name", ["profile", "pii"]),
        ("user.email", ["profile", "pii", "contact"]),
        ("user.age", ["profile"]),
        ("order.1", ["billing"]),
        ("order.22", ["billing", "big"]),
        ("log", []),
    ]:
        await add(client, run_id, task_id, key, key, tags=tags)
    return run_id


async def test_key_exact(client, keyed):
    assert await keys_of(client, keyed, "?key=user.name") == ["user.name"]
    assert await keys_of(client, keyed, "?key=user") == []


async def test_keys_comma_list(client, keyed):
    assert await keys_of(client, keyed, "?keys=log,order.1,missing") == ["log", "order.1"]
    # Items are taken as sent: spaces are part of a key (an empty item is a 400, see
    # tests/api/test_exact_requests.py).
    assert await keys_of(client, keyed, "?keys=log,%20order.1%20") == ["log"]


async def test_key_starts_with_comma_list(client, keyed):
    assert await keys_of(client, keyed, "?keyStartsWith=user.") == [
        "user.age",
        "user.email",
        "user.name",
    ]
    assert await keys_of(client, keyed, "?keyStartsWith=order,lo") == ["log", "order.1", "order.22"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("user.*", ["user.age", "user.email", "user.name"]),
        ("*.name", ["user.name"]),
        ("order.?", ["order.1"]),
        ("order.??", ["order.22"]),
        ("*", ["log", "order.1", "order.22", "user.age", "user.email", "user.name"]),
        ("l?g", ["log"]),
        ("user", []),
    ],
)
async def test_key_pattern_glob(client, keyed, pattern, expected):
    assert await keys_of(client, keyed, f"?keyPattern={quote(pattern)}") == expected


async def test_key_filters_are_or_ed(client, keyed):
    params = "?key=log&keys=order.1&keyStartsWith=user.e&keyPattern=*.22"
    assert await keys_of(client, keyed, params) == ["log", "order.1", "order.22", "user.email"]


async def test_tags_any_and_all(client, keyed):
    assert await keys_of(client, keyed, "?tags=pii,billing") == [
        "order.1",
        "order.22",
        "user.email",
        "user.name",
    ]
    assert await keys_of(client, keyed, "?tags=pii,billing&tagMode=any") == [
        "order.1",
        "order.22",
        "user.email",
        "user.name",
    ]
    assert await keys_of(client, keyed, "?tags=pii,profile&tagMode=all") == [
        "user.email",
        "user.name",
    ]
    assert await keys_of(client, keyed, "?tags=pii,billing&tagMode=all") == []


async def test_tag_starts_with_any_and_all(client, keyed):
    assert await keys_of(client, keyed, "?tagStartsWith=con,bi") == [
        "order.1",
        "order.22",
        "user.email",
    ]
    assert await keys_of(client, keyed, "?tagStartsWith=pi,pro&tagMode=all") == [
        "user.email",
        "user.name",
    ]


async def test_key_group_and_tag_filters_are_and_ed(client, keyed):
    assert await keys_of(client, keyed, "?keyStartsWith=user.&tags=pii") == [
        "user.email",
        "user.name",
    ]
    assert await keys_of(client, keyed, "?keyStartsWith=user.&keys=order.22&tags=big,pii") == [
        "order.22",
        "user.email",
        "user.name",
    ]
    assert await keys_of(client, keyed, "?keyStartsWith=user.&tags=pii&tagStartsWith=cont") == [
        "user.email"
    ]
    assert await keys_of(client, keyed, "?tags=profile&tagStartsWith=bi") == []


async def test_total_counts_every_match(client, keyed):
    page = await query(client, keyed, "?keyStartsWith=user.&limit=1&offset=1")
    assert page["pagination"] == {"total": 3, "limit": 1, "offset": 1}
    assert len(page["data"]) == 1


# ---------------------------------------------------------------- LIKE escaping


@pytest.fixture
async def wild(client, run_task):
    run_id, task_id = run_task
    for key in ["100%", "100% done", "1000", "a_b", "axb", "a\\b", "a\\\\b", "tag"]:
        await add(client, run_id, task_id, key, tags=[key])
    return run_id


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("?keyStartsWith=100%25", ["100%", "100% done"]),
        ("?keyStartsWith=a_", ["a_b"]),
        ("?keyStartsWith=a%5C", ["a\\\\b", "a\\b"]),
        ("?keyPattern=a_b", ["a_b"]),
        ("?keyPattern=a?b", ["a\\b", "a_b", "axb"]),
        ("?keyPattern=100%25", ["100%"]),
        ("?keyPattern=100%25*", ["100%", "100% done"]),
        ("?keyPattern=%25", []),
        ("?keyPattern=a%5Cb", ["a\\b"]),
        ("?keyPattern=a%5C%5Cb", ["a\\\\b"]),
        ("?tagStartsWith=a_", ["a_b"]),
        ("?tagStartsWith=100%25%20d", ["100% done"]),
        ("?tagStartsWith=%25", []),
    ],
)
async def test_percent_underscore_and_backslash_match_themselves(client, wild, params, expected):
    assert await keys_of(client, wild, params) == expected


# ---------------------------------------------------------------- sorting and pages


async def test_sort_by_key_and_order(client, keyed):
    asc = await query(client, keyed, "?sortBy=key&sortOrder=asc")
    assert [i["key"] for i in asc["data"]] == sorted(i["key"] for i in asc["data"])
    desc = await query(client, keyed, "?sortBy=key")
    assert [i["key"] for i in desc["data"]] == sorted(
        (i["key"] for i in desc["data"]), reverse=True
    )


@pytest.mark.parametrize("sort_by", ["created_at", "createdAt", "updated_at", "updatedAt"])
async def test_sort_by_time_snake_or_camel_case(client, admin_conn, run_task, sort_by):
    run_id, task_id = run_task
    items = [await add(client, run_id, task_id, key) for key in ("a", "b", "c")]
    for i, item in enumerate(items):  # distinct times, chosen by the test, in the past
        await backdate(admin_conn, "run_data", item["id"], ms=BACK_MS * (3 - i))
    # Touch "a" last: it becomes the most recently updated.
    await client.patch(
        f"{data_url(run_id)}/{items[0]['id']}/tags", json={"add": ["t"]}, headers=HEADERS_A
    )
    page = await query(client, run_id, f"?sortBy={sort_by}&sortOrder=asc")
    expected = ["a", "b", "c"] if sort_by.startswith("created") else ["b", "c", "a"]
    assert [i["key"] for i in page["data"]] == expected


async def test_ties_are_broken_by_id_and_pages_are_stable(client, run_task, db_url):
    run_id, task_id = run_task
    ids = [str(uuid.uuid4()) for _ in range(12)]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.executemany(
            "INSERT INTO run_data (id, run_id, task_id, org_id, key, value, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, '1', 1700000000000, 1700000000000)",
            [(data_id, run_id, task_id, ORG_A, f"k{n % 4}") for n, data_id in enumerate(ids)],
        )
    finally:
        await conn.close()
    for order in ("asc", "desc"):
        seen: list[str] = []
        for offset in range(0, 12, 5):
            page = await query(
                client, run_id, f"?includeAll=true&limit=5&offset={offset}&sortOrder={order}"
            )
            assert page["pagination"]["total"] == 12
            seen += [i["id"] for i in page["data"]]
        assert seen == sorted(ids, reverse=order == "desc")


async def test_limit_bounds(client, run_task):
    await add(client, *run_task, "k")
    assert (await query(client, run_task[0], "?limit=1000"))["pagination"]["limit"] == 1000
    assert (await query(client, run_task[0], "?limit=1"))["pagination"]["limit"] == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit"),
        ("?offset=-1", "offset"),
        ("?offset=1.5", "offset"),
        ("?tagMode=some", "tagMode"),
        ("?includeAll=maybe", "includeAll"),
        ("?sortBy=value", "sortBy"),
        ("?sortBy=started_at", "sortBy"),
        ("?sortOrder=random", "sortOrder"),
    ],
)
async def test_bad_query_values_are_400(client, run_task, params, field):
    response = await client.get(f"{data_url(run_task[0])}{params}", headers=HEADERS_A)
    body = assert_error(response, 400, field)
    assert body["details"][0]["loc"] == ["query", field]


async def test_query_of_unknown_run_is_404(client):
    run_id = missing_id()
    response = await client.get(data_url(run_id), headers=HEADERS_A)
    assert assert_error(response, 404)["error"] == f"Run not found: {run_id}"
    response = await client.get(data_url("zzz"), headers=HEADERS_A)
    assert assert_error(response, 404)["error"] == "Run not found: zzz"


async def test_query_of_an_empty_run(client):
    run = await create_run(client)
    assert await query(client, run["id"]) == {
        "data": [],
        "pagination": {"total": 0, "limit": 100, "offset": 0},
    }


# ---------------------------------------------------------------- tags


async def patch_tags(client, run_id, data_id, **body):
    return await client.patch(f"{data_url(run_id)}/{data_id}/tags", json=body, headers=HEADERS_A)


@pytest.mark.parametrize(
    ("start", "remove", "add_tags", "expected"),
    [
        (["a", "b", "c"], ["b"], ["d", "a", "e", "d"], ["a", "c", "d", "e"]),
        (["a", "b", "c"], ["a"], ["a"], ["b", "c", "a"]),
        (["a"], ["missing"], [], ["a"]),
        (["a", "b"], ["a", "b"], [], []),
        ([], None, ["x", "y", "x"], ["x", "y"]),
        (["a", "b"], None, None, ["a", "b"]),
    ],
)
async def test_tags_patch_removes_then_adds_unique_in_order(
    client, admin_conn, run_task, start, remove, add_tags, expected
):
    run_id, task_id = run_task
    item = await add(client, run_id, task_id, "k", tags=start)
    await backdate(admin_conn, "run_data", item["id"], "updated_at")
    body = {k: v for k, v in (("remove", remove), ("add", add_tags)) if v is not None}
    response = await patch_tags(client, run_id, item["id"], **body)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["tags"] == expected
    assert updated["updatedAt"] > item["updatedAt"] - BACK_MS
    assert {k: v for k, v in updated.items() if k not in ("tags", "updatedAt")} == {
        k: v for k, v in item.items() if k not in ("tags", "updatedAt")
    }
    page = await query(client, run_id, "?key=k")
    assert page["data"][0]["tags"] == expected


async def test_tags_patch_needs_the_entry_in_that_run(client, run_task):
    run_id, task_id = run_task
    item = await add(client, run_id, task_id, "k", tags=["a"])
    other = await create_run(client)
    response = await patch_tags(client, other["id"], item["id"], add=["x"])
    assert assert_error(response, 404)["error"] == f"Run data not found: {item['id']}"
    unknown = missing_id()
    response = await patch_tags(client, run_id, unknown, add=["x"])
    assert assert_error(response, 404)["error"] == f"Run data not found: {unknown}"
    response = await patch_tags(client, run_id, "bad", add=["x"])
    assert_error(response, 404, "Run data not found")
    missing_run = missing_id()
    response = await patch_tags(client, missing_run, item["id"], add=["x"])
    assert assert_error(response, 404)["error"] == f"Run not found: {missing_run}"
    assert (await query(client, run_id))["data"][0]["tags"] == ["a"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"add": "x"}, "add"),
        ({"add": [1]}, "add"),
        ({"remove": [""]}, "remove"),
        ({"add": ["x" * 256]}, "add"),
        ({"remove": {"a": 1}}, "remove"),
    ],
)
async def test_tags_patch_rejects_bad_bodies(client, run_task, body, field):
    item = await add(client, *run_task, "k", tags=["a"])
    response = await patch_tags(client, run_task[0], item["id"], **body)
    assert_names_field(assert_error(response, 400, field), field)


# ---------------------------------------------------------------- delete


async def delete(client, run_id, params):
    return await client.delete(f"{data_url(run_id)}{params}", headers=HEADERS_A)


async def test_delete_by_key_removes_every_value_of_the_key(client, run_task, db_url):
    run_id, task_id = run_task
    for n in range(3):
        await add(client, run_id, task_id, "gone", n)
    await add(client, run_id, task_id, "kept")
    response = await delete(client, run_id, "?key=gone")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 3}
    assert await keys_of(client, run_id, "?includeAll=true") == ["kept"]
    assert await admin_count(db_url, "run_data") == 1


async def test_delete_by_id_removes_one_row(client, run_task):
    run_id, task_id = run_task
    first = await add(client, run_id, task_id, "k", 1)
    await add(client, run_id, task_id, "k", 2)
    response = await delete(client, run_id, f"?id={first['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 1}
    page = await query(client, run_id, "?includeAll=true")
    assert [i["value"] for i in page["data"]] == [2]


async def test_delete_by_key_and_id_needs_both_to_match(client, run_task):
    run_id, task_id = run_task
    item = await add(client, run_id, task_id, "k")
    assert_error(await delete(client, run_id, f"?key=other&id={item['id']}"), 404)
    response = await delete(client, run_id, f"?key=k&id={item['id']}")
    assert response.json() == {"deleted": 1}


async def test_delete_without_key_or_id_is_400(client, run_task):
    run_id, task_id = run_task
    await add(client, run_id, task_id, "k")
    body = assert_error(await delete(client, run_id, ""), 400, "key", "id")
    assert body["details"]
    assert (await query(client, run_id))["pagination"]["total"] == 1


async def test_delete_that_matches_nothing_is_404(client, run_task):
    run_id, task_id = run_task
    item = await add(client, run_id, task_id, "k")
    assert_error(await delete(client, run_id, "?key=missing"), 404)
    assert_error(await delete(client, run_id, f"?id={missing_id()}"), 404)
    assert_error(await delete(client, run_id, "?id=not-a-uuid"), 404)
    # An entry of another run is not this run's to delete.
    other = await create_run(client)
    assert_error(await delete(client, other["id"], f"?id={item['id']}"), 404)
    assert_error(await delete(client, other["id"], "?key=k"), 404)
    assert (await query(client, run_id))["pagination"]["total"] == 1


async def test_delete_in_unknown_run_is_404(client):
    run_id = missing_id()
    response = await delete(client, run_id, "?key=k")
    assert assert_error(response, 404)["error"] == f"Run not found: {run_id}"
    assert_error(await delete(client, "bad-run", "?key=k"), 404, "Run not found")


async def test_deleting_a_run_s_task_data_leaves_other_runs_alone(client, run_task):
    run_id, task_id = run_task
    other = await create_run(client)
    other_task = await create_task(client, other["id"])
    await add(client, run_id, task_id, "shared")
    await add(client, other["id"], other_task["id"], "shared")
    assert (await delete(client, run_id, "?key=shared")).json() == {"deleted": 1}
    assert await keys_of(client, other["id"]) == ["shared"]


async def test_tag_update_past_the_tag_limit_is_refused_and_changes_nothing(client):
    from tests.conftest import HEADERS_A

    run = (await client.post("/api/v1/runs", json={"inputData": 1}, headers=HEADERS_A)).json()
    task = (
        await client.post(
            "/api/v1/tasks",
            json={"runId": run["id"], "type": "t", "inputData": 1},
            headers=HEADERS_A,
        )
    ).json()
    base = f"/api/v1/runs/{run['id']}/data"
    first = [f"a{i}" for i in range(60)]
    item = (
        await client.post(
            base,
            json={"taskId": task["id"], "key": "k", "value": 1, "tags": first},
            headers=HEADERS_A,
        )
    ).json()
    too_many = await client.patch(
        f"{base}/{item['id']}/tags", json={"add": [f"b{i}" for i in range(41)]}, headers=HEADERS_A
    )
    assert too_many.status_code == 400, too_many.text
    assert "100 tags" in too_many.json()["error"]
    # Removing as many as are added stays within the limit.
    swapped = await client.patch(
        f"{base}/{item['id']}/tags",
        json={"remove": first[:41], "add": [f"b{i}" for i in range(41)]},
        headers=HEADERS_A,
    )
    assert swapped.status_code == 200, swapped.text
    assert len(swapped.json()["tags"]) == 60
    assert swapped.json()["tags"][:19] == first[41:]
    read = await client.get(f"{base}?includeAll=true", headers=HEADERS_A)
    assert read.json()["data"][0]["tags"] == swapped.json()["tags"]
