"""JSON values come back as they were sent: every number exact, in every endpoint that stores one.

The values are kept as JSON text from the request to PostgreSQL's jsonb (numeric numbers, exact);
jsonb's own normal form applies (``1e2`` is ``100``, ``-0.0`` is ``0.0``, whitespace and key order
are its own), so values are compared as parsed with Decimal, plus the exact digits as text.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from tests.api.helpers import API, assert_error, assert_names_field, create_run, create_task
from tests.conftest import HEADERS_A

# What a double cannot carry: 20 significant digits, a 36-digit fraction, an integer beyond
# 64 bits, a trailing zero, exponents beyond a double's range, and a negative zero.
NUMBERS = (
    "[12345678901234567890.123, 0.1000000000000000055511151231257827,"
    " 123456789012345678901234567890, 1.50, 1e400, -1E-400, -0.0]"
)
DIGITS = ("12345678901234567890.123", "0.1000000000000000055511151231257827", "1.50")
JSON_HEADERS = {**HEADERS_A, "content-type": "application/json"}


class Text(str):
    """JSON text to put into a body as it is."""


def obj(**fields: Any) -> Text:
    """A JSON object: Text fields as they are, others encoded (the body a client would send)."""
    items = (
        f"{json.dumps(k)}: {v if isinstance(v, Text) else json.dumps(v)}" for k, v in fields.items()
    )
    return Text("{" + ", ".join(items) + "}")


NUMBERS_TEXT = Text(NUMBERS)
OBJECT = obj(n=NUMBERS_TEXT, nested=obj(x=Text(f"[{NUMBERS}]")))


def exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


EXPECTED_NUMBERS = exact(NUMBERS)
EXPECTED_OBJECT = exact(OBJECT)


def assert_exact(response, status: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The answer has status and each field (camelCase) equals its value, exactly."""
    assert response.status_code == status, response.text
    for digits in DIGITS:
        assert digits in response.text, (digits, response.text[:400])
    body = exact(response.text)
    for name, value in fields.items():
        assert body[name] == value, (name, body[name])
    return body


async def send(client, method: str, path: str, body: str):
    return await client.request(method, f"{API}{path}", content=body.encode(), headers=JSON_HEADERS)


async def claimed(client, run_id: str, count: int = 1) -> list[dict[str, Any]]:
    for _ in range(count):
        await create_task(client, run_id, enqueue=True)
    response = await client.post(
        f"{API}/tasks/claim", json={"workerId": "w", "limit": count}, headers=HEADERS_A
    )
    assert response.status_code == 200, response.text
    tasks = response.json()["data"]
    assert len(tasks) == count
    return tasks


async def test_runs_keep_numbers_exact(client):
    response = await send(client, "POST", "/runs", obj(inputData=NUMBERS_TEXT, metadata=OBJECT))
    run = assert_exact(response, 201, {"inputData": EXPECTED_NUMBERS, "metadata": EXPECTED_OBJECT})
    body = obj(outputData=OBJECT, errorData=NUMBERS_TEXT, metadata=OBJECT)
    response = await send(client, "PATCH", f"/runs/{run['id']}", body)
    fields = {"outputData": EXPECTED_OBJECT, "errorData": EXPECTED_NUMBERS}
    assert_exact(response, 200, {**fields, "metadata": EXPECTED_OBJECT})
    response = await client.get(f"{API}/runs/{run['id']}", headers=HEADERS_A)
    assert_exact(response, 200, {"inputData": EXPECTED_NUMBERS, **fields})
    response = await client.get(f"{API}/runs", headers=HEADERS_A)
    assert response.status_code == 200
    assert exact(response.text)["data"][0]["outputData"] == EXPECTED_OBJECT


async def test_tasks_keep_numbers_exact(client):
    run = await create_run(client)
    body = obj(runId=run["id"], type="t", inputData=OBJECT, metadata=OBJECT)
    response = await send(client, "POST", "/tasks", body)
    task = assert_exact(response, 201, {"inputData": EXPECTED_OBJECT, "metadata": EXPECTED_OBJECT})
    body = obj(status="completed", outputData=NUMBERS_TEXT, errorData=OBJECT)
    response = await send(client, "PATCH", f"/tasks/{task['id']}", body)
    fields = {"outputData": EXPECTED_NUMBERS, "errorData": EXPECTED_OBJECT}
    assert_exact(response, 200, fields)
    response = await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)
    assert_exact(response, 200, {"inputData": EXPECTED_OBJECT, **fields})


async def test_batch_create_keeps_numbers_exact(client):
    run = await create_run(client)
    item = obj(runId=run["id"], type="t", inputData=NUMBERS_TEXT, metadata=OBJECT)
    response = await send(client, "POST", "/tasks/batch", obj(tasks=Text(f"[{item}, {item}]")))
    assert response.status_code == 201, response.text
    for task in exact(response.text)["data"]:
        assert task["inputData"] == EXPECTED_NUMBERS
        assert task["metadata"] == EXPECTED_OBJECT


async def test_ending_attempts_keeps_numbers_exact(client):
    run = await create_run(client)
    first, second = await claimed(client, run["id"], 2)
    body = obj(leaseToken=first["leaseToken"], outputData=NUMBERS_TEXT)
    response = await send(client, "POST", f"/tasks/{first['id']}/complete", body)
    assert_exact(response, 200, {"outputData": EXPECTED_NUMBERS})
    body = obj(leaseToken=second["leaseToken"], errorData=OBJECT, retryable=False)
    response = await send(client, "POST", f"/tasks/{second['id']}/fail", body)
    assert_exact(response, 200, {"errorData": EXPECTED_OBJECT})


async def test_batch_complete_keeps_numbers_exact(client):
    run = await create_run(client)
    done, failed = await claimed(client, run["id"], 2)
    results = (
        obj(
            taskId=done["id"], leaseToken=done["leaseToken"], status="completed", outputData=OBJECT
        ),
        obj(
            taskId=failed["id"],
            leaseToken=failed["leaseToken"],
            status="failed",
            retryable=False,
            errorData=NUMBERS_TEXT,
        ),
    )
    response = await send(
        client, "POST", "/tasks/complete", obj(results=Text(f"[{', '.join(results)}]"))
    )
    assert response.status_code == 200, response.text
    assert [a["ok"] for a in response.json()["data"]] == [True, True]
    response = await client.get(f"{API}/tasks/{done['id']}", headers=HEADERS_A)
    assert_exact(response, 200, {"outputData": EXPECTED_OBJECT})
    response = await client.get(f"{API}/tasks/{failed['id']}", headers=HEADERS_A)
    assert_exact(response, 200, {"errorData": EXPECTED_NUMBERS})


async def test_run_data_keeps_numbers_exact(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    body = obj(taskId=task["id"], key="k", value=NUMBERS_TEXT, metadata=OBJECT)
    response = await send(client, "POST", f"/runs/{run['id']}/data", body)
    assert_exact(response, 201, {"value": EXPECTED_NUMBERS, "metadata": EXPECTED_OBJECT})
    response = await client.get(f"{API}/runs/{run['id']}/data", headers=HEADERS_A)
    assert response.status_code == 200, response.text
    assert exact(response.text)["data"][0]["value"] == EXPECTED_NUMBERS


async def test_negative_zero_is_jsonb_zero(client):
    """jsonb's numeric has no negative zero: -0.0 is stored and answered as 0.0 (equal value)."""
    response = await send(client, "POST", "/runs", '{"inputData": [-0.0, -0, 1e2]}')
    assert response.status_code == 201, response.text
    assert '"inputData":[0.0,0,100]' in response.text.replace(" ", "")


@pytest.mark.parametrize("metadata", ["[]", '"text"', "1.5", "true"])
async def test_metadata_must_be_an_object_or_null(client, metadata):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    item = obj(runId=run["id"], type="t", inputData=1, metadata=Text(metadata))
    requests = [
        ("POST", "/runs", obj(inputData=1, metadata=Text(metadata))),
        ("PATCH", f"/runs/{run['id']}", obj(metadata=Text(metadata))),
        ("POST", "/tasks", item),
        ("POST", "/tasks/batch", obj(tasks=Text(f"[{item}]"))),
        ("PATCH", f"/tasks/{task['id']}", obj(metadata=Text(metadata))),
        (
            "POST",
            f"/runs/{run['id']}/data",
            obj(taskId=task["id"], key="k", value=1, metadata=Text(metadata)),
        ),
    ]
    for method, path, body in requests:
        response = await send(client, method, path, body)
        assert_names_field(assert_error(response, 400, "metadata", "object or null"), "metadata")


async def test_null_values_are_unset(client):
    """JSON null for an optional value stores nothing: the field is left out of the answer."""
    run = await create_run(client, metadata={"a": 1})
    response = await send(
        client, "PATCH", f"/runs/{run['id']}", '{"outputData": null, "metadata": null}'
    )
    assert response.status_code == 200, response.text
    assert "outputData" not in response.json()
    assert response.json()["metadata"] is None
    response = await send(client, "POST", "/runs", '{"inputData": null}')
    assert_names_field(assert_error(response, 400, "inputData"), "inputData")


async def test_a_completion_or_failure_without_data_stores_none(client):
    # A handler that returns None: the worker sends outputData null (or nothing); the task keeps
    # no output (SQL NULL, the key left out of every answer), not a JSON null. Likewise a failure
    # without errorData.
    run = await create_run(client)
    made = [await create_task(client, run["id"], enqueue=True, maxRetries=0) for _ in range(3)]
    claim = {"workerId": "w", "limit": 3}
    held = (await client.post(f"{API}/tasks/claim", json=claim, headers=HEADERS_A)).json()["data"]
    assert len(held) == 3
    results = [
        {
            "taskId": held[0]["id"],
            "leaseToken": held[0]["leaseToken"],
            "status": "completed",
            "outputData": None,
        },
        {"taskId": held[1]["id"], "leaseToken": held[1]["leaseToken"], "status": "completed"},
    ]
    done = await client.post(f"{API}/tasks/complete", json={"results": results}, headers=HEADERS_A)
    assert done.status_code == 200, done.text
    failed = await client.post(
        f"{API}/tasks/{held[2]['id']}/fail",
        json={"leaseToken": held[2]["leaseToken"]},
        headers=HEADERS_A,
    )
    assert failed.status_code == 200, failed.text
    for task in made:
        body = (await client.get(f"{API}/tasks/{task['id']}", headers=HEADERS_A)).json()
        assert "outputData" not in body, body
        assert "errorData" not in body, body
