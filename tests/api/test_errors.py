"""Bad input of every kind: always a 4xx JSON error that names the problem, never a 500, never a
driver message, and never a row written (SPEC section 2)."""

from __future__ import annotations

import json

import pytest
from litestar.testing import AsyncTestClient

from foreman.server.app import create_app
from tests.api.helpers import (
    API,
    admin_counts,
    assert_error,
    assert_names_field,
    create_data,
    create_run,
    create_task,
    missing_id,
)
from tests.conftest import HEADERS_A, make_settings

JSON_HEADERS = {**HEADERS_A, "content-type": "application/json"}


@pytest.fixture
async def world(client, db_url):
    """A run with a task and a value, and the row counts they make."""
    run = await create_run(client)
    task = await create_task(client, run["id"])
    item = await create_data(client, run["id"], task["id"], "k", tags=["t"])
    return {
        "run": run["id"],
        "task": task["id"],
        "data": item["id"],
        "counts": await admin_counts(db_url),
    }


def body_endpoints(world) -> list[tuple[str, str]]:
    run, task, data = world["run"], world["task"], world["data"]
    return [
        ("POST", f"{API}/runs"),
        ("PATCH", f"{API}/runs/{run}"),
        ("POST", f"{API}/tasks"),
        ("PATCH", f"{API}/tasks/{task}"),
        ("POST", f"{API}/runs/{run}/data"),
        ("PATCH", f"{API}/runs/{run}/data/{data}/tags"),
    ]


async def send_raw(client, method, url, content):
    return await client.request(method, url, content=content, headers=JSON_HEADERS)


async def assert_unchanged(client, db_url, world):
    assert await admin_counts(db_url) == world["counts"]
    run = (await client.get(f"{API}/runs/{world['run']}", headers=HEADERS_A)).json()
    assert run["status"] == "pending"
    assert "outputData" not in run
    task = (await client.get(f"{API}/tasks/{world['task']}", headers=HEADERS_A)).json()
    assert task["status"] == "pending"
    assert "queueJobId" not in task
    data = (await client.get(f"{API}/runs/{world['run']}/data", headers=HEADERS_A)).json()
    assert data["data"][0]["tags"] == ["t"]


# ---------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"inputData":', "malformed json"),
        (b"{inputData: 1}", "malformed json"),
        (b"{'inputData': 1}", "malformed json"),
        (b'{"inputData": 1,}', "malformed json"),
        (b'{"inputData": 1} trailing', ""),  # malformed, or first reported as incomplete
        (b"inputData=1", "malformed json"),
        (b'{"inputData": NaN}', "malformed json"),
        (b'\xff{"inputData": 1}', "malformed json"),  # not UTF-8
        (b'{"inputData": "\\ud800"}', "malformed json"),  # lone surrogate escape
        (b'{"inputData": "\\x41"}', "malformed json"),  # not a JSON escape
        (b"", "body"),
        (b"   ", "body"),
    ],
)
async def test_malformed_json_is_400_everywhere(client, db_url, world, content, fragment):
    for method, url in body_endpoints(world):
        response = await send_raw(client, method, url, content)
        assert_error(response, 400, fragment)
    await assert_unchanged(client, db_url, world)


@pytest.mark.parametrize("content", [b"[]", b"[1, 2]", b'"text"', b"1", b"null", b"true"])
async def test_non_object_bodies_are_400_everywhere(client, db_url, world, content):
    for method, url in body_endpoints(world):
        response = await send_raw(client, method, url, content)
        body = assert_error(response, 400, "expected `object`")
        assert body["details"][0]["loc"] == ["body"]
    await assert_unchanged(client, db_url, world)


async def test_deeply_nested_json_is_400_not_500(client, db_url, world):
    deep = b'{"inputData": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for method, url in body_endpoints(world):
        assert_error(await send_raw(client, method, url, deep), 400, "nested")
    await assert_unchanged(client, db_url, world)


async def test_moderately_nested_json_is_stored(client):
    value: object = "leaf"
    for _ in range(25):  # 50 levels, within FOREMAN_MAX_JSON_DEPTH (64 by default)
        value = {"v": [value]}
    run = await create_run(client, inputData=value)
    assert run["inputData"] == value


@pytest.mark.parametrize(
    ("target", "content"),
    [
        ("runs", b'{"inputData": "\xff\xfe"}'),
        ("runs", b'{"inputData": {"\xc3\x28": 1}}'),
        ("tasks", b'{"runId": "RUN", "type": "\xff", "inputData": 1}'),
        ("data", b'{"taskId": "TASK", "key": "\xed\xa0\x80", "value": 1}'),
    ],
)
async def test_invalid_utf8_in_known_fields_is_400(client, db_url, world, target, content):
    url = {
        "runs": f"{API}/runs",
        "tasks": f"{API}/tasks",
        "data": f"{API}/runs/{world['run']}/data",
    }[target]
    content = content.replace(b"RUN", world["run"].encode()).replace(
        b"TASK", world["task"].encode()
    )
    assert_error(await send_raw(client, "POST", url, content), 400, "malformed json")
    await assert_unchanged(client, db_url, world)


# ---------------------------------------------------------------- NUL characters


NUL_BODIES = [
    ("POST", "runs", {"inputData": "a\u0000b"}),
    ("POST", "runs", {"inputData": {"k\u0000": 1}}),
    ("POST", "runs", {"inputData": [{"deep": ["\u0000"]}]}),
    ("POST", "runs", {"inputData": 1, "metadata": {"m": "\u0000"}}),
    ("PATCH", "run", {"outputData": "\u0000"}),
    ("PATCH", "run", {"errorData": {"e": "\u0000"}}),
    ("PATCH", "run", {"metadata": {"\u0000": 1}}),
    ("POST", "tasks", {"type": "t\u0000"}),
    ("POST", "tasks", {"inputData": "\u0000"}),
    ("POST", "tasks", {"idempotencyKey": "k\u0000"}),
    ("POST", "tasks", {"metadata": {"a": "\u0000"}}),
    ("PATCH", "task", {"queueJobId": "job\u0000"}),
    ("PATCH", "task", {"outputData": ["\u0000"]}),
    ("PATCH", "task", {"status": "completed", "outputData": "\u0000"}),
    ("POST", "data", {"key": "k\u0000"}),
    ("POST", "data", {"value": "\u0000"}),
    ("POST", "data", {"tags": ["ok", "t\u0000"]}),
    ("POST", "data", {"metadata": {"m": "\u0000"}}),
    ("PATCH", "tags", {"add": ["\u0000"]}),
    ("PATCH", "tags", {"remove": ["\u0000"]}),
]


def nul_request(world, method, target, fields):
    run, task, data = world["run"], world["task"], world["data"]
    base = {
        "runs": (f"{API}/runs", {"inputData": 1}),
        "run": (f"{API}/runs/{run}", {}),
        "tasks": (f"{API}/tasks", {"runId": run, "type": "t", "inputData": 1}),
        "task": (f"{API}/tasks/{task}", {}),
        "data": (f"{API}/runs/{run}/data", {"taskId": task, "key": "k", "value": 1}),
        "tags": (f"{API}/runs/{run}/data/{data}/tags", {}),
    }[target]
    return method, base[0], {**base[1], **fields}


@pytest.mark.parametrize(("method", "target", "fields"), NUL_BODIES)
async def test_nul_characters_in_bodies_are_400(client, db_url, world, method, target, fields):
    method, url, body = nul_request(world, method, target, fields)
    # Sent as the JSON escape \u0000, which is what a JSON encoder produces.
    content = json.dumps(body).encode()
    assert b"\\u0000" in content
    response = await send_raw(client, method, url, content)
    assert_error(response, 400, "NUL")
    await assert_unchanged(client, db_url, world)


@pytest.mark.parametrize(
    "fields", [{"type": "t\u0000"}, {"inputData": "\u0000"}, {"metadata": {"a": ["\u0000"]}}]
)
async def test_nul_characters_in_a_batch_of_ids_only_are_400(client, db_url, world, fields):
    # insert_plain_tasks takes the types and JSON values of the batch as one JSON array each.
    item = {"runId": world["run"], "type": "t", "inputData": 1}
    content = json.dumps({"tasks": [item, {**item, **fields}]}).encode()
    headers = {**JSON_HEADERS, "Prefer": "return=minimal"}
    response = await client.post(f"{API}/tasks/batch", content=content, headers=headers)
    assert_error(response, 400, "NUL")
    await assert_unchanged(client, db_url, world)


@pytest.mark.parametrize(
    "query",
    [
        "data?key=a%00b",
        "data?keys=a,b%00",
        "data?keyStartsWith=%00",
        "data?keyPattern=*%00*",
        "data?tags=%00",
        "data?tagStartsWith=t%00",
    ],
)
async def test_nul_characters_in_run_data_queries_are_400(client, world, query):
    response = await client.get(f"{API}/runs/{world['run']}/{query}", headers=HEADERS_A)
    assert_error(response, 400, "NUL")


async def test_nul_characters_in_other_queries_and_paths(client, db_url, world):
    response = await client.delete(f"{API}/runs/{world['run']}/data?key=k%00", headers=HEADERS_A)
    assert_error(response, 400, "NUL")
    response = await client.get(f"{API}/tasks?type=t%00", headers=HEADERS_A)
    assert_error(response, 400, "NUL")
    for path in ("runs/%00", "tasks/%00", "runs/%00/data", f"runs/{world['run']}/data/%00/tags"):
        method = "PATCH" if path.endswith("tags") else "GET"
        response = await client.request(method, f"{API}/{path}", json={}, headers=HEADERS_A)
        assert_error(response, 404, "not found")
    await assert_unchanged(client, db_url, world)


# ---------------------------------------------------------------- numbers


async def test_numbers_beyond_numeric_range_are_400(client, db_url, world):
    # jsonb keeps every number PostgreSQL's numeric holds, exactly (1e400 and -1e999 included:
    # tests/api/test_exact_values.py); beyond numeric's range the value cannot be stored.
    response = await send_raw(client, "POST", f"{API}/runs", b'{"inputData": 1e200000}')
    assert_error(response, 400, "out of range")
    response = await send_raw(client, "POST", f"{API}/runs", b'{"inputData": [-1e-200000]}')
    assert_error(response, 400, "out of range")
    await assert_unchanged(client, db_url, world)


async def test_big_integers_and_precise_decimals_survive(client):
    value = {"big": 10**40, "neg": -(10**25), "small": 1e-300, "pi": 3.141592653589793}
    run = await create_run(client, inputData=value)
    assert run["inputData"] == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("maxRetries", 10**30),
        ("maxRetries", -(10**30)),
        ("maxRetries", 1e308),
        ("priority", 2**63),
        ("priority", -(2**63) - 1),
        ("delayMs", 10**19),
        ("delayMs", 1e20),
    ],
)
async def test_huge_numbers_in_integer_fields_are_400(client, db_url, world, field, value):
    body = {"runId": world["run"], "type": "t", "inputData": 1, field: value}
    response = await client.post(f"{API}/tasks", json=body, headers=HEADERS_A)
    assert_names_field(assert_error(response, 400, field), field)
    await assert_unchanged(client, db_url, world)


@pytest.mark.parametrize(
    "query",
    [
        "runs?limit=99999999999999999999",
        "runs?offset=99999999999999999999999999",
        "tasks?offset=9223372036854775808",
        "tasks?limit=-99999999999999999999",
    ],
)
async def test_huge_numbers_in_queries_are_400(client, query):
    field = query.split("?")[1].split("=")[0]
    body = assert_error(await client.get(f"{API}/{query}", headers=HEADERS_A), 400, field)
    assert body["details"][0]["loc"] == ["query", field]


async def test_huge_offset_on_run_data_is_400(client, world):
    response = await client.get(
        f"{API}/runs/{world['run']}/data?offset=99999999999999999999", headers=HEADERS_A
    )
    assert_error(response, 400, "offset")


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("target", "fields", "field"),
    [
        ("runs", {"metadata": "x"}, "metadata"),
        ("runs", {"metadata": [1]}, "metadata"),
        ("run", {"status": 1}, "status"),
        ("run", {"status": ["running"]}, "status"),
        ("run", {"metadata": 1}, "metadata"),
        ("tasks", {"runId": 5}, "runId"),
        ("tasks", {"runId": None}, "runId"),
        ("tasks", {"type": {"a": 1}}, "type"),
        ("tasks", {"maxRetries": "3"}, "maxRetries"),
        ("tasks", {"maxRetries": 3.0}, "maxRetries"),
        ("tasks", {"priority": True}, "priority"),
        ("tasks", {"parentTaskId": 1}, "parentTaskId"),
        ("tasks", {"idempotencyKey": 1}, "idempotencyKey"),
        ("task", {"status": False}, "status"),
        ("task", {"queueJobId": 7}, "queueJobId"),
        ("task", {"metadata": "m"}, "metadata"),
        ("data", {"taskId": ["x"]}, "taskId"),
        ("data", {"key": None}, "key"),
        ("data", {"tags": [None]}, "tags"),
        ("tags", {"add": "a"}, "add"),
        ("tags", {"remove": [1, 2]}, "remove"),
    ],
)
async def test_wrong_types_are_400_naming_the_field(client, db_url, world, target, fields, field):
    method = "POST" if target in ("runs", "tasks", "data") else "PATCH"
    method, url, body = nul_request(world, method, target, fields)
    response = await client.request(method, url, json=body, headers=HEADERS_A)
    body = assert_error(response, 400, field)
    assert_names_field(body, field)
    assert body["code"] == "validation_error"
    for detail in body["details"]:
        assert detail["loc"][0] == "body"
        assert isinstance(detail["msg"], str)
    await assert_unchanged(client, db_url, world)


async def test_nested_field_errors_give_the_full_location(client, world):
    body = {"taskId": world["task"], "key": "k", "value": 1, "tags": ["a", "b", 3]}
    response = await client.post(f"{API}/runs/{world['run']}/data", json=body, headers=HEADERS_A)
    detail = assert_error(response, 400, "tags")["details"][0]
    assert detail["loc"] == ["body", "tags", 2]


@pytest.mark.parametrize(
    ("target", "fields", "field"),
    [
        ("tasks", {"runId": "not-a-uuid"}, "runId"),
        ("tasks", {"runId": "0000"}, "runId"),
        ("tasks", {"parentTaskId": "zz"}, "parentTaskId"),
        ("data", {"taskId": "123e4567-e89b-12d3-a456-42661417400"}, "taskId"),  # one short
        ("data", {"taskId": "123e4567-e89b-12d3-a456-4266141740000"}, "taskId"),  # one long
    ],
)
async def test_malformed_uuids_in_bodies_are_400(client, db_url, world, target, fields, field):
    _, url, body = nul_request(world, "POST", target, fields)
    response = await client.post(url, json=body, headers=HEADERS_A)
    assert_names_field(assert_error(response, 400, field, "uuid"), field)
    await assert_unchanged(client, db_url, world)


# ---------------------------------------------------------------- paths, enums, routes


@pytest.mark.parametrize(
    "bad", ["nope", "1", "%20", "00000000-0000-0000-0000-00000000000g", "x" * 300]
)
async def test_malformed_uuids_in_paths_are_404_everywhere(client, db_url, world, bad):
    run, data = world["run"], world["data"]
    requests = [
        ("GET", f"runs/{bad}", None, "Run not found"),
        ("PATCH", f"runs/{bad}", {"status": "running"}, "Run not found"),
        ("GET", f"tasks/{bad}", None, "Task not found"),
        ("PATCH", f"tasks/{bad}", {"status": "running"}, "Task not found"),
        (
            "POST",
            f"runs/{bad}/data",
            {"taskId": world["task"], "key": "k", "value": 1},
            "Run not found",
        ),
        ("GET", f"runs/{bad}/data", None, "Run not found"),
        ("DELETE", f"runs/{bad}/data?key=k", None, "Run not found"),
        ("PATCH", f"runs/{bad}/data/{data}/tags", {"add": ["x"]}, "Run not found"),
        ("PATCH", f"runs/{run}/data/{bad}/tags", {"add": ["x"]}, "Run data not found"),
    ]
    for method, path, body, message in requests:
        response = await client.request(method, f"{API}/{path}", json=body, headers=HEADERS_A)
        assert_error(response, 404, message)
        assert response.json()["code"] == "not_found"
    await assert_unchanged(client, db_url, world)


async def test_unknown_route_is_a_json_404(client):
    response = await client.get(f"{API}/nothing-here", headers=HEADERS_A)
    assert_error(response, 404, "not found")
    response = await client.get("/no/such/page")
    assert_error(response, 404, "not found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "runs"), ("PUT", "runs"), ("DELETE", "tasks"), ("POST", "runs/{run}")],
)
async def test_wrong_method_is_a_json_405(client, world, method, path):
    url = f"{API}/{path.format(run=world['run'])}"
    response = await client.request(method, url, headers=HEADERS_A)
    body = assert_error(response, 405, "method not allowed")
    assert body["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("runs?status=RUNNING", "status"),
        ("runs?status=", "status"),
        ("tasks?status=done", "status"),
        ("runs/{run}/data?tagMode=none", "tagMode"),
        ("runs/{run}/data?includeAll=yes-please", "includeAll"),
        ("runs?sortBy=created", "sortBy"),
        ("tasks?sortOrder=descending", "sortOrder"),
        ("runs/{run}/data?sortBy=id", "sortBy"),
    ],
)
async def test_invalid_enum_values_in_queries_are_400(client, world, path, field):
    response = await client.get(f"{API}/{path.format(run=world['run'])}", headers=HEADERS_A)
    body = assert_error(response, 400, field)
    assert body["details"][0]["loc"] == ["query", field]


async def test_body_over_the_limit_is_413(db_url):
    app = create_app(make_settings(db_url, max_body_bytes=2048))
    async with AsyncTestClient(app=app) as client:
        big = {"inputData": "x" * 4096}
        response = await client.post(f"{API}/runs", json=big, headers=HEADERS_A)
        body = assert_error(response, 413, "too large")
        assert body["code"] == "payload_too_large"
        small = await client.post(f"{API}/runs", json={"inputData": "x" * 100}, headers=HEADERS_A)
        assert small.status_code == 201
    assert (await admin_counts(db_url))["run"] == 1


async def test_json_without_a_content_type_is_still_parsed(client):
    # Old clients send JSON without a content type; a declared non-JSON type is 415
    # (tests/security/test_headers.py).
    response = await client.post(f"{API}/runs", content=b'{"inputData": 1}', headers=HEADERS_A)
    assert response.status_code == 201, response.text


async def test_error_bodies_have_the_documented_shape(client):
    response = await client.post(f"{API}/tasks", json={"type": 1}, headers=HEADERS_A)
    body = assert_error(response, 400)
    assert set(body) == {"error", "code", "details"}
    assert body["error"].startswith("Validation failed")
    for detail in body["details"]:
        assert set(detail) == {"loc", "msg"}
        assert isinstance(detail["loc"], list)
    response = await client.get(f"{API}/runs/{missing_id()}", headers=HEADERS_A)
    assert set(assert_error(response, 404)) == {"error", "code"}
