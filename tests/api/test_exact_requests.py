"""Requests are read exactly: a path names one endpoint, ids have one spelling, filters and limits
mean what they say (server/params.py). Each defect here was found by a hostile client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from foreman.server.app import create_app
from tests.api.helpers import API, assert_error, assert_names_field, create_data, create_run
from tests.conftest import HEADERS_A, make_settings
from tests.queue_helpers import running_app


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The poll fallback is 30 s here: only a NOTIFY can wake a long poll quickly."""
    app = create_app(make_settings(db_url, poll_interval_s=30.0, sweep_enabled=False))
    async with running_app(app) as http:
        yield http


async def ready_task(client, run_id: str, **fields: Any) -> dict[str, Any]:
    body = {"runId": run_id, "type": "work", "inputData": 1, "enqueue": True, **fields}
    response = await client.post(f"{API}/tasks", json=body, headers=HEADERS_A)
    assert response.status_code == 201, response.text
    return response.json()


async def task_state(client, task_id: str) -> tuple[str, int, str | None]:
    response = await client.get(f"{API}/tasks/{task_id}", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    task = response.json()
    return task["status"], task["attempt"], task.get("workerId")


# ---------------------------------------------------------------- 1. empty path segments


# httpx itself resolves "." and ".." segments, so they are sent encoded here (bad_path refuses
# them raw: tests/unit/test_params.py).
@pytest.mark.parametrize("segment", ["", "%2F", "%2f", "%2E", "%2E%2E"])
async def test_a_claim_with_an_empty_id_leases_nothing(client, segment):
    run = await create_run(client)
    task = await ready_task(client, run["id"], maxRetries=0)
    response = await client.post(
        f"{API}/tasks/{segment}/claim", json={"workerId": "w"}, headers=HEADERS_A
    )
    assert_error(response, 404)
    # The ready task was not leased by the bulk claim the collapsed path used to reach.
    assert await task_state(client, task["id"]) == ("queued", 0, None)


async def test_an_encoded_slash_before_claim_is_404(client):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    for path in (f"{API}/tasks/%2Fclaim", f"{API}/tasks//claim/", f"{API}//tasks/claim"):
        response = await client.post(path, json={"workerId": "w"}, headers=HEADERS_A)
        assert_error(response, 404, "malformed path")
    assert await task_state(client, task["id"]) == ("queued", 0, None)


async def _id_routes(client) -> list[tuple[str, str]]:
    document = (await client.get("/openapi.json")).json()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        if "{" in path
        for method in item
    ]


@pytest.mark.parametrize("segment", ["", "%2F", "%2E", "%2E%2E", "%20", "x%0A"])
async def test_every_id_route_refuses_an_empty_or_malformed_id(client, segment):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    item = await create_data(client, run["id"], task["id"], "k")
    routes = await _id_routes(client)
    assert len(routes) >= 14, routes
    bodies = {  # a body each endpoint would accept, so that only the id can be refused
        "claim": {"workerId": "w"},
        "heartbeat": {"leaseToken": task["id"]},
        "complete": {"leaseToken": task["id"]},
        "fail": {"leaseToken": task["id"]},
        "release": {"leaseToken": task["id"]},
        "tags": {"add": ["t"]},
        "data": {"taskId": task["id"], "key": "k", "value": 1},
    }
    real = {"run_id": run["id"], "task_id": task["id"], "data_id": item["id"]}
    for method, template in routes:
        for name in real:
            if f"{{{name}}}" not in template:
                continue
            if segment == "" and template.endswith(f"{{{name}}}"):
                continue  # one trailing slash is allowed, as Express allowed it: the collection
            path = template
            for other, value in real.items():
                path = path.replace(f"{{{other}}}", segment if other == name else value)
            body = bodies.get(template.rsplit("/", 1)[-1], {"status": "running"})
            query = "?key=k" if method == "DELETE" else ""
            response = await client.request(
                method,
                path + query,
                json=None if method in ("GET", "DELETE") else body,
                headers=HEADERS_A,
            )
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]
    # Nothing was changed by any of them.
    assert await task_state(client, task["id"]) == ("queued", 0, None)
    data = await client.get(f"{API}/runs/{run['id']}/data", headers=HEADERS_A)
    assert [(d["key"], d["tags"]) for d in data.json()["data"]] == [("k", [])]


async def test_a_trailing_slash_still_names_its_endpoint(client):
    run = await create_run(client)
    response = await client.get(f"{API}/runs/{run['id']}/", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == run["id"]


# ---------------------------------------------------------------- 10. one spelling of an id


async def test_an_id_with_a_trailing_newline_is_not_found(client):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    for path in (f"{API}/tasks/{task['id']}%0A", f"{API}/runs/{run['id']}%0A"):
        assert_error(await client.get(path, headers=HEADERS_A), 404, "not found")
    response = await client.get(f"{API}/tasks?runId={run['id']}%0A", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == []
    response = await client.delete(
        f"{API}/runs/{run['id']}/data?id={task['id']}%0A", headers=HEADERS_A
    )
    assert_error(response, 404, "no run data matched")


@pytest.mark.parametrize("spelling", [str.upper, lambda s: s.replace("-", "")])
async def test_other_spellings_of_an_id_find_the_same_row(client, spelling):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    got = await client.get(f"{API}/tasks/{spelling(task['id'])}", headers=HEADERS_A)
    assert got.status_code == 200, got.text
    assert got.json()["id"] == task["id"]
    listed = await client.get(f"{API}/tasks?runId={spelling(run['id'])}", headers=HEADERS_A)
    assert [t["id"] for t in listed.json()["data"]] == [task["id"]]


@pytest.mark.parametrize("spelling", [str.upper, lambda s: s.replace("-", "")])
async def test_wait_on_another_spelling_is_woken_by_notify(client, spelling):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    claimed = await client.post(
        f"{API}/tasks/{task['id']}/claim", json={"workerId": "w"}, headers=HEADERS_A
    )
    token = claimed.json()["leaseToken"]
    started = time.monotonic()
    waiting = asyncio.create_task(
        client.get(f"{API}/tasks/{spelling(task['id'])}/wait?timeoutMs=10000", headers=HEADERS_A)
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    done = await client.post(
        f"{API}/tasks/{task['id']}/complete", json={"leaseToken": token}, headers=HEADERS_A
    )
    assert done.status_code == 200, done.text
    answer = await asyncio.wait_for(waiting, 15)
    # The poll fallback is 30 s: only the NOTIFY of the completion can have woken it in time.
    assert answer.json()["status"] == "completed"
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- 2. bounded names


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/tasks/{task}", {"queueJobId": "{long}"}, "queueJobId"),
        ("/tasks/{task}/claim", {"workerId": "{long}"}, "workerId"),
        ("/tasks/claim", {"workerId": "{long}"}, "workerId"),
        ("/tasks/claim", {"workerId": "w", "types": ["{long}"]}, "types"),
        ("/tasks/claim-ids", {"workerId": "{long}", "taskIds": ["{task}"]}, "workerId"),
        ("/tasks", {"runId": "{run}", "type": "{long}", "inputData": 1}, "type"),
        (
            "/tasks",
            {"runId": "{run}", "type": "t", "inputData": 1, "idempotencyKey": "{long}"},
            "idempotencyKey",
        ),
        ("/runs/{run}/data", {"taskId": "{task}", "key": "{long}", "value": 1}, "key"),
        (
            "/runs/{run}/data",
            {"taskId": "{task}", "key": "k", "value": 1, "tags": ["{long}"]},
            "tags",
        ),
    ],
)
async def test_names_in_bodies_are_at_most_255_characters(client, path, body, field):
    run = await create_run(client)
    task = await ready_task(client, run["id"])

    def fill(value: Any, text: str) -> Any:
        if isinstance(value, list):
            return [fill(v, text) for v in value]
        if isinstance(value, dict):
            return {k: fill(v, text) for k, v in value.items()}
        if isinstance(value, str):
            return value.format(run=run["id"], task=task["id"], long=text)
        return value

    method = "PATCH" if path == "/tasks/{task}" else "POST"
    url = API + path.format(run=run["id"], task=task["id"])
    refused = await client.request(method, url, json=fill(body, "x" * 256), headers=HEADERS_A)
    error = assert_error(refused, 400, "255")
    assert_names_field(error, field)
    accepted = await client.request(method, url, json=fill(body, "x" * 255), headers=HEADERS_A)
    assert accepted.status_code in (200, 201), accepted.text


async def test_a_2_mb_queue_job_id_is_refused_and_not_stored(client):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    response = await client.patch(
        f"{API}/tasks/{task['id']}", json={"queueJobId": "j" * 2_000_000}, headers=HEADERS_A
    )
    assert_names_field(assert_error(response, 400, "queueJobId"), "queueJobId")
    fetched = await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)
    assert "queueJobId" not in fetched.json()


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("tasks", "type"),
        ("tasks", "runId"),
        ("tasks", "parentTaskId"),
        ("data", "key"),
        ("data", "keyPattern"),
        ("data", "keys"),
        ("data", "keyStartsWith"),
        ("data", "tags"),
        ("data", "tagStartsWith"),
        ("delete", "key"),
        ("delete", "id"),
    ],
)
async def test_text_query_parameters_are_1_to_255_characters(client, where, name):
    run = await create_run(client)
    url = f"{API}/tasks" if where == "tasks" else f"{API}/runs/{run['id']}/data"
    method = "DELETE" if where == "delete" else "GET"
    for value in ("", "x" * 256):
        response = await client.request(method, url, params={name: value}, headers=HEADERS_A)
        assert_names_field(assert_error(response, 400, name), name)
    ok = await client.request(method, url, params={name: "x" * 255}, headers=HEADERS_A)
    assert ok.status_code in (200, 404), ok.text  # 404: a delete that matched nothing


# ---------------------------------------------------------------- 9. exact filters


@pytest.fixture
async def spaced(client) -> str:
    """A run whose keys and tags differ only by spaces."""
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    for key, tags in (("a", ["t"]), (" a", [" t"]), ("a ", ["t "]), ("b", ["u"])):
        await create_data(client, run["id"], task["id"], key, tags=tags)
    return str(run["id"])


async def _keys(client, run_id: str, query: str) -> list[str]:
    response = await client.get(
        f"{API}/runs/{run_id}/data?includeAll=true&{query}", headers=HEADERS_A
    )
    assert response.status_code == 200, response.text
    return sorted(item["key"] for item in response.json()["data"])


async def test_list_filters_match_spaces_exactly(client, spaced):
    assert await _keys(client, spaced, "keys=%20a") == [" a"]
    assert await _keys(client, spaced, "keys=a%20,b") == ["a ", "b"]
    assert await _keys(client, spaced, "tags=%20t") == [" a"]
    assert await _keys(client, spaced, "tags=t%20") == ["a "]
    assert await _keys(client, spaced, "keyStartsWith=%20") == [" a"]
    assert await _keys(client, spaced, "tagStartsWith=%20") == [" a"]
    assert await _keys(client, spaced, "key=a%20") == ["a "]


@pytest.mark.parametrize(
    "query",
    [
        "tags=,",
        "tags=",
        "keys=",
        "keys=a,,b",
        "keys=a,",
        "keyStartsWith=,",
        "tagStartsWith=,a",
        "key=",
        "keyPattern=",
    ],
)
async def test_an_empty_filter_is_400_not_everything(client, spaced, query):
    response = await client.get(f"{API}/runs/{spaced}/data?{query}", headers=HEADERS_A)
    name = query.split("=")[0]
    assert_names_field(assert_error(response, 400, name), name)


@pytest.mark.parametrize(
    "url",
    [
        "/runs?status=null",
        "/tasks?status=null",
        "/tasks?status=",
        "/tasks?type=",
        "/tasks?runId=",
        "/tasks?parentTaskId=",
    ],
)
async def test_an_empty_or_null_list_filter_is_400(client, url):
    await create_run(client)
    response = await client.get(API + url, headers=HEADERS_A)
    name = url.split("?")[1].split("=")[0]
    assert_names_field(assert_error(response, 400, name), name)


@pytest.mark.parametrize(
    "url",
    [
        "/runs?limit=5&limit=6",
        "/tasks?status=queued&status=running",
        "/tasks?type=a&type=b",
        "/runs/{run}/data?tags=a&tags=b",
        "/runs/{run}/data?key=a&key=b",
        "/runs/{run}/data?includeAll=true&includeAll=false",
        "/tasks/{task}/wait?timeoutMs=0&timeoutMs=1",
    ],
)
async def test_a_repeated_parameter_is_400(client, url):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    url = API + url.format(run=run["id"], task=task["id"])
    response = await client.get(url, headers=HEADERS_A)
    name = url.split("?")[1].split("=")[0]
    body = assert_error(response, 400, name, "more than once")
    assert_names_field(body, name)


@pytest.mark.parametrize(
    "value", ["1e2", "1.0", "1.5", "+5", "-0", "05", "0x10", "5%20", "%205", "\u0661", ""]
)
async def test_integers_are_plain_decimal_digits(client, value):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    for url in (
        f"{API}/runs?limit={value}",
        f"{API}/tasks?offset={value}",
        f"{API}/runs/{run['id']}/data?limit={value}",
        f"{API}/tasks/{task['id']}/wait?timeoutMs={value}",
    ):
        response = await client.get(url, headers=HEADERS_A)
        name = url.split("?")[1].split("=")[0]
        assert_names_field(assert_error(response, 400, name), name)
    page = await client.get(f"{API}/runs?limit=10&offset=0", headers=HEADERS_A)
    assert page.json()["pagination"] == {"total": 1, "limit": 10, "offset": 0}


async def test_unknown_query_parameters_are_still_ignored(client):
    await create_run(client)
    response = await client.get(f"{API}/runs?x=1&x=2&limit=1", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1


# ---------------------------------------------------------------- 12. tags: unique, then counted


async def test_the_tag_limit_counts_distinct_tags(client):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    url = f"{API}/runs/{run['id']}/data"
    distinct = [f"t{i}" for i in range(100)]
    body = {"taskId": task["id"], "key": "k", "value": 1, "tags": distinct + distinct[:50]}
    created = await client.post(url, json=body, headers=HEADERS_A)
    assert created.status_code == 201, created.text
    assert created.json()["tags"] == distinct
    repeated = {"taskId": task["id"], "key": "k", "value": 1, "tags": ["a"] * 500}
    made = await client.post(url, json=repeated, headers=HEADERS_A)
    assert made.status_code == 201, made.text
    assert made.json()["tags"] == ["a"]
    too_many = {"taskId": task["id"], "key": "k", "value": 1, "tags": [*distinct, "x", "x"]}
    error = assert_error(await client.post(url, json=too_many, headers=HEADERS_A), 400, "101")
    assert_names_field(error, "tags")


async def test_tag_updates_count_distinct_tags(client):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    item = await create_data(client, run["id"], task["id"], "k", tags=["keep"])
    url = f"{API}/runs/{run['id']}/data/{item['id']}/tags"
    distinct = [f"t{i}" for i in range(99)]
    changed = await client.patch(
        url, json={"add": distinct * 2, "remove": ["gone"] * 150}, headers=HEADERS_A
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["tags"] == ["keep", *distinct]
    for field in ("add", "remove"):
        body = {field: [f"n{i}" for i in range(101)] + ["n0"]}
        refused = await client.patch(url, json=body, headers=HEADERS_A)
        assert_names_field(assert_error(refused, 400, "101"), field)


@pytest.mark.parametrize(
    "url",
    ["/runs?status={long}", "/tasks?status={long}", "/runs/{run}/data?tagMode={long}"],
)
async def test_a_long_bad_value_is_not_echoed(client, url):
    run = await create_run(client)
    long = "x" * 20_000
    response = await client.get(API + url.format(run=run["id"], long=long), headers=HEADERS_A)
    assert_error(response, 400, "must be one of")
    assert len(response.content) < 1_000


async def test_a_long_malformed_path_id_is_not_echoed_whole(client):
    response = await client.get(f"{API}/tasks/{'x' * 20_000}", headers=HEADERS_A)
    assert_error(response, 404, "task not found")
    assert len(response.content) < 1_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tasks/{task}", {"status": "{long}"}),
        ("/runs/{run}", {"status": "{long}"}),
        (
            "/tasks/complete",
            {"results": [{"taskId": "{task}", "leaseToken": "{task}", "status": "{long}"}]},
        ),
    ],
)
async def test_a_long_bad_enum_in_a_body_is_not_echoed_whole(client, path, body):
    run = await create_run(client)
    task = await ready_task(client, run["id"])
    text = json.dumps(body).replace("{long}", "x" * 100_000)
    text = text.replace("{task}", task["id"]).replace("{run}", run["id"])
    method = "POST" if path == "/tasks/complete" else "PATCH"
    url = API + path.format(run=run["id"], task=task["id"])
    response = await client.request(
        method, url, content=text, headers={**HEADERS_A, "content-type": "application/json"}
    )
    assert_error(response, 400, "status", "invalid enum value")
    assert len(response.content) < 1_000
