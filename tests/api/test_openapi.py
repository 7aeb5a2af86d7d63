"""/openapi.json is a valid OpenAPI 3.1 document that tells the truth about every endpoint, and
/docs serves the interactive documentation."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate as validate_spec

from tests.api.helpers import API, create_data, create_run, create_task, missing_id
from tests.conftest import HEADERS_A

# SPEC section 5: every endpoint, with the request body it takes (None: no body).
ENDPOINTS = {
    ("get", "/health"): None,
    ("get", f"{API}/health"): None,
    ("get", f"{API}/config"): None,
    ("get", f"{API}/config/redis"): None,
    ("get", f"{API}/config/queues"): None,
    ("post", f"{API}/runs"): "RunCreate",
    ("get", f"{API}/runs"): None,
    ("get", f"{API}/runs/{{run_id}}"): None,
    ("patch", f"{API}/runs/{{run_id}}"): "RunUpdate",
    ("post", f"{API}/tasks"): "TaskCreate",
    ("get", f"{API}/tasks"): None,
    ("get", f"{API}/tasks/{{task_id}}"): None,
    ("patch", f"{API}/tasks/{{task_id}}"): "TaskUpdate",
    ("post", f"{API}/tasks/{{task_id}}/retry"): None,
    ("post", f"{API}/runs/{{run_id}}/data"): "RunDataCreate",
    ("get", f"{API}/runs/{{run_id}}/data"): None,
    ("delete", f"{API}/runs/{{run_id}}/data"): None,
    ("patch", f"{API}/runs/{{run_id}}/data/{{data_id}}/tags"): "TagsUpdate",
    ("post", f"{API}/schedules"): "ScheduleCreate",
    ("get", f"{API}/schedules"): None,
    ("get", f"{API}/schedules/{{schedule_id}}"): None,
    ("patch", f"{API}/schedules/{{schedule_id}}"): "ScheduleUpdate",
    ("delete", f"{API}/schedules/{{schedule_id}}"): None,
}

QUERY_PARAMETERS = {
    ("get", f"{API}/runs"): {"limit", "offset", "status", "sortBy", "sortOrder"},
    ("get", f"{API}/tasks"): {
        "limit",
        "offset",
        "runId",
        "status",
        "type",
        "parentTaskId",
        "sortBy",
        "sortOrder",
    },
    ("get", f"{API}/runs/{{run_id}}/data"): {
        "key",
        "keys",
        "keyStartsWith",
        "keyPattern",
        "tags",
        "tagStartsWith",
        "tagMode",
        "includeAll",
        "limit",
        "offset",
        "sortBy",
        "sortOrder",
    },
    ("delete", f"{API}/runs/{{run_id}}/data"): {"key", "id"},
    ("get", f"{API}/schedules"): {"limit", "offset", "sortBy", "sortOrder"},
}


@pytest.fixture(scope="module")
async def document(session_client) -> dict[str, Any]:
    response = await session_client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def json_schema(operation: dict[str, Any], status: str) -> dict[str, Any]:
    return operation["responses"][status]["content"]["application/json"]["schema"]


def validator(document: dict[str, Any], schema: dict[str, Any]) -> OAS31Validator:
    # The components ride along so that every "#/components/..." reference resolves.
    return OAS31Validator(
        {**schema, "components": document["components"]}, format_checker=oas31_format_checker
    )


def assert_conforms(document, method: str, path: str, response) -> None:
    """The answer's body matches what the document declares for its status."""
    operation = document["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], (method, path, status)
    errors = list(validator(document, json_schema(operation, status)).iter_errors(response.json()))
    assert not errors, (method, path, status, [e.message for e in errors])


async def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"] == "Foreman"
    validate_spec(document)


async def test_every_endpoint_is_documented_with_its_bodies(document):
    for (method, path), body_schema in ENDPOINTS.items():
        operation = document["paths"].get(path, {}).get(method)
        assert operation is not None, (method, path)
        if body_schema is None:
            assert "requestBody" not in operation, (method, path)
        else:
            body = operation["requestBody"]
            assert body["required"] is True
            schema = body["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{body_schema}"}
        success = [code for code in operation["responses"] if code.startswith("2")]
        assert success, (method, path)
        for code in success:
            assert json_schema(operation, code), (method, path, code)


async def test_every_api_operation_documents_its_errors_as_error_body(document):
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in document["paths"].items():
        if not path.startswith(API) or path == f"{API}/health":
            continue
        for method, operation in item.items():
            for code in ("401", "403"):
                assert json_schema(operation, code) == error_body, (method, path, code)
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    # Never Litestar's own {"status_code", "detail"} shape: ours is ErrorBody.
                    assert schema == error_body, (method, path, code, schema)


async def test_query_parameters_have_their_wire_names(document):
    for (method, path), names in QUERY_PARAMETERS.items():
        parameters = document["paths"][path][method].get("parameters", [])
        documented = {p["name"] for p in parameters if p["in"] == "query"}
        assert documented == names, (method, path, documented ^ names)


async def test_path_parameters_match_the_templates(document):
    for path, item in document["paths"].items():
        for operation in item.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            in_template = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert declared == in_template, path


async def test_list_bounds_are_documented(document):
    def query_schema(path, name):
        for parameter in document["paths"][path]["get"]["parameters"]:
            if parameter["name"] == name:
                return parameter["schema"]
        raise AssertionError(name)

    runs_limit = query_schema(f"{API}/runs", "limit")
    assert (runs_limit["minimum"], runs_limit["maximum"]) == (1, 100)
    data_limit = query_schema(f"{API}/runs/{{run_id}}/data", "limit")
    assert (data_limit["minimum"], data_limit["maximum"]) == (1, 1000)
    assert query_schema(f"{API}/tasks", "offset")["minimum"] == 0


async def test_request_schemas_state_the_rules(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["RunCreate"]["required"]) == {"inputData"}
    assert set(schemas["TaskCreate"]["required"]) == {"runId", "type", "inputData"}
    assert set(schemas["RunDataCreate"]["required"]) == {"taskId", "key", "value"}
    assert set(schemas["ScheduleCreate"]["required"]) == {"name", "task"}
    assert set(schemas["ScheduleTask"]["required"]) == {"type", "inputData"}
    interval = schemas["ScheduleCreate"]["properties"]["intervalMs"]
    assert interval["minimum"] == 1000
    assert "5-field" in str(schemas["ScheduleCreate"]["properties"]["cron"])
    assert "IANA" in str(schemas["ScheduleCreate"]["properties"]["timezone"])
    max_retries = schemas["TaskCreate"]["properties"]["maxRetries"]
    assert (max_retries["minimum"], max_retries["maximum"], max_retries["default"]) == (0, 10, 3)
    task_type = schemas["TaskCreate"]["properties"]["type"]
    assert (task_type["minLength"], task_type["maxLength"]) == (1, 255)
    # inputData / value: any JSON value but null.
    for name, field in (
        ("RunCreate", "inputData"),
        ("TaskCreate", "inputData"),
        ("RunDataCreate", "value"),
    ):
        check = validator(document, schemas[name]["properties"][field])
        for value in ({"a": 1}, [1], "s", 1.5, True):
            assert check.is_valid(value), (name, value)
        assert not check.is_valid(None), name


async def test_response_schemas_leave_optional_fields_out_of_required(document):
    schemas = document["components"]["schemas"]
    run_required = set(schemas["Run"]["required"])
    assert run_required >= {
        "id",
        "orgId",
        "status",
        "inputData",
        "metadata",
        "totalTasks",
        "createdAt",
    }
    assert not run_required & {"outputData", "errorData", "startedAt", "completedAt", "durationMs"}
    task_required = set(schemas["Task"]["required"])
    assert task_required >= {"id", "runId", "orgId", "type", "status", "retryCount", "maxRetries"}
    assert not task_required & {
        "parentTaskId",
        "queuedAt",
        "startedAt",
        "completedAt",
        "queueJobId",
    }
    assert set(schemas["RunData"]["required"]) >= {"id", "runId", "taskId", "key", "value", "tags"}
    schedule_required = set(schemas["Schedule"]["required"])
    assert schedule_required >= {"id", "orgId", "name", "enabled", "timezone", "task"}
    assert not schedule_required & {"cron", "intervalMs", "nextRunAt", "lastRunAt", "lastRunId"}


async def test_real_answers_conform_to_the_document(client, document):
    run = await create_run(client, metadata={"m": 1})
    task = await create_task(client, run["id"])
    item = await create_data(client, run["id"], task["id"], "k", tags=["a"])
    run_path, task_path = f"{API}/runs/{{run_id}}", f"{API}/tasks/{{task_id}}"
    data_path = f"{API}/runs/{{run_id}}/data"
    schedule = {"name": "s", "intervalMs": 60_000, "task": {"type": "t", "inputData": 1}}
    made = (await client.post(f"{API}/schedules", json=schedule, headers=HEADERS_A)).json()
    schedule_path = f"{API}/schedules/{{schedule_id}}"
    calls = [
        ("get", "/health", "/health", None),
        ("get", f"{API}/config", f"{API}/config", None),
        ("get", f"{API}/config/redis", f"{API}/config/redis", None),
        ("get", f"{API}/config/queues", f"{API}/config/queues", None),
        ("post", f"{API}/runs", f"{API}/runs", {"inputData": [1]}),
        ("post", f"{API}/runs", f"{API}/runs", {}),
        ("get", f"{API}/runs", f"{API}/runs", None),
        ("get", f"{API}/runs", f"{API}/runs?limit=0", None),
        ("get", run_path, f"{API}/runs/{run['id']}", None),
        ("get", run_path, f"{API}/runs/{missing_id()}", None),
        ("patch", run_path, f"{API}/runs/{run['id']}", {"status": "running", "outputData": 1}),
        ("patch", run_path, f"{API}/runs/{run['id']}", {"status": "bogus"}),
        ("post", f"{API}/tasks", f"{API}/tasks", {"runId": run["id"], "type": "t", "inputData": 1}),
        (
            "post",
            f"{API}/tasks",
            f"{API}/tasks",
            {"runId": missing_id(), "type": "t", "inputData": 1},
        ),
        ("get", f"{API}/tasks", f"{API}/tasks?runId={run['id']}", None),
        ("get", task_path, f"{API}/tasks/{task['id']}", None),
        ("patch", task_path, f"{API}/tasks/{task['id']}", {"status": "completed"}),
        ("patch", task_path, f"{API}/tasks/{task['id']}", {"status": "pending"}),
        (
            "post",
            data_path,
            f"{API}/runs/{run['id']}/data",
            {"taskId": task["id"], "key": "k", "value": "v"},
        ),
        ("get", data_path, f"{API}/runs/{run['id']}/data?includeAll=true", None),
        ("get", data_path, f"{API}/runs/{missing_id()}/data", None),
        (
            "patch",
            f"{data_path}/{{data_id}}/tags",
            f"{API}/runs/{run['id']}/data/{item['id']}/tags",
            {"add": ["b"]},
        ),
        ("delete", data_path, f"{API}/runs/{run['id']}/data", None),
        ("delete", data_path, f"{API}/runs/{run['id']}/data?key=k", None),
        ("post", f"{API}/schedules", f"{API}/schedules", schedule),
        ("post", f"{API}/schedules", f"{API}/schedules", {**schedule, "cron": "* * * * *"}),
        ("get", f"{API}/schedules", f"{API}/schedules", None),
        ("get", schedule_path, f"{API}/schedules/{missing_id()}", None),
        ("patch", schedule_path, f"{API}/schedules/{made['id']}", {"enabled": False}),
        ("get", schedule_path, f"{API}/schedules/{made['id']}", None),
        ("delete", schedule_path, f"{API}/schedules/{made['id']}", None),
    ]
    statuses = set()
    for method, path, url, body in calls:
        response = await client.request(method.upper(), url, json=body, headers=HEADERS_A)
        assert_conforms(document, method, path, response)
        statuses.add(response.status_code)
    assert statuses == {200, 201, 400, 404, 409}
    # Answers without a key conform too.
    assert_conforms(document, "get", f"{API}/runs", await client.get(f"{API}/runs"))


async def test_docs_serve_html(client):
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "openapi" in response.text.lower()
    assert (await client.get("/docs/openapi.json")).status_code == 200


async def test_query_parameters_state_their_rules(document):
    # server/params.py: every query parameter of a list says how it is read.
    for method, path in QUERY_PARAMETERS:
        for parameter in document["paths"][path][method]["parameters"]:
            if parameter["in"] != "query":
                continue
            assert "at most once" in parameter["description"].lower(), (path, parameter)
            schema = parameter["schema"]
            if schema.get("type") == "integer":
                assert "decimal digits" in parameter["description"], parameter
            elif parameter["name"] in ("keys", "keyStartsWith", "tags", "tagStartsWith"):
                assert (schema["minLength"], schema["pattern"]) == (1, "^[^,]+(,[^,]+)*$")
                assert "spaces are kept" in parameter["description"], parameter
            elif parameter["name"] in ("status", "tagMode"):
                assert schema["enum"], parameter
            elif parameter["name"] not in ("includeAll", "sortBy", "sortOrder"):
                assert (schema["minLength"], schema["maxLength"]) == (1, 255), parameter


async def test_identifier_fields_are_bounded_in_the_schema(document):
    schemas = document["components"]["schemas"]
    for schema, field in (
        ("TaskUpdate", "queueJobId"),
        ("TaskCreate", "idempotencyKey"),
        ("TaskClaim", "workerId"),
        ("TaskClaimOne", "workerId"),
        ("TaskClaimIds", "workerId"),
        ("RunDataCreate", "key"),
    ):
        prop = schemas[schema]["properties"][field]
        assert (prop["minLength"], prop["maxLength"]) == (1, 255), (schema, field, prop)
    assert "100 distinct" in schemas["RunDataCreate"]["properties"]["tags"]["description"]
