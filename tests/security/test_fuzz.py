"""Schema fuzzing: schemathesis drives every operation of /openapi.json in process.

The app runs over the session's real PostgreSQL database. Cases are generated from the schema
(valid and invalid), with a fixed derandomised seed and a bounded number of examples per
operation, so a run is repeatable and takes about a minute. No answer may be a 5xx; every answer
must be JSON with the status, content type and body shape the schema declares.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from litestar import Litestar
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from foreman.server.app import create_app
from foreman.settings import Settings
from tests.api.helpers import API
from tests.conftest import HEADERS_A

EXAMPLES_PER_OPERATION = 60
MAX_WAIT_MS = 20

pytestmark = pytest.mark.filterwarnings(
    # schemathesis' own strategies use `random`; nothing of ours
    "ignore::hypothesis.errors.HypothesisDeprecationWarning"
)


def _schema_document() -> dict[str, Any]:
    # The document does not depend on the database: build it from an app that is never started.
    app = create_app(Settings(database_url="postgresql://unused@localhost/unused"))
    document: dict[str, Any] = msgspec.json.decode(
        msgspec.json.encode(app.openapi_schema.to_schema())
    )
    return document


# The run events stream (text/event-stream) stays open while its run can change: an in-process
# call would never return. Its refusals (400, 404) are tested in tests/api/test_run_events.py,
# its stream in tests/integration/test_run_events.py.
schema = schemathesis.openapi.from_dict(_schema_document()).exclude(
    path="/api/v1/runs/{run_id}/events"
)


@pytest.fixture(scope="module")
def app(database_url: str) -> Iterator[Litestar]:
    """One app (one small pool) for the module: schemathesis keeps an app's lifespan running."""
    yield create_app(Settings(database_url=database_url, db_pool_min=1, db_pool_max=3))
    asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def known(app: Litestar) -> dict[str, str]:
    """Ids of rows that exist in org A, so that cases also reach the code behind a found row."""
    with asgi.get_client(app) as client:
        run = client.post(f"{API}/runs", json={"inputData": 1}, headers=HEADERS_A).json()
        task = client.post(
            f"{API}/tasks",
            json={"runId": run["id"], "type": "t", "inputData": 1},
            headers=HEADERS_A,
        ).json()
        data = client.post(
            f"{API}/runs/{run['id']}/data",
            json={"taskId": task["id"], "key": "k", "value": 1},
            headers=HEADERS_A,
        ).json()
    return {
        "run_id": run["id"],
        "runId": run["id"],
        "task_id": task["id"],
        "taskId": task["id"],
        "parentTaskId": task["id"],
        "data_id": data["id"],
    }


def _use_known_ids(case: schemathesis.Case, known: dict[str, str]) -> None:
    # About half of the generated ids (chosen by their checksum, so runs repeat) become real ones.
    for values in (case.path_parameters, case.body):
        if not isinstance(values, dict):
            continue
        for name, value in list(values.items()):
            if name in known and isinstance(value, str) and zlib.crc32(value.encode()) % 2:
                values[name] = known[name]


def _shorten_waits(case: schemathesis.Case) -> None:
    # Long polls (claim waitMs, wait timeoutMs) are meant to hold a request for up to a minute;
    # the fuzzer only needs their answer, not the wait.
    if isinstance(case.body, dict) and isinstance(case.body.get("waitMs"), int):
        case.body["waitMs"] = min(case.body["waitMs"], MAX_WAIT_MS)
    # An explicit example's timeoutMs is text ("30000"): a task the fuzzer retried (POST
    # /tasks/:id/retry) is queued again, and a wait on it would outlast the client's timeout.
    if case.operation.path.endswith("/wait") and "timeoutMs" not in (case.query or {}):
        case.query = {**(case.query or {}), "timeoutMs": MAX_WAIT_MS}  # the default is 30 s
    timeout_ms = case.query.get("timeoutMs") if isinstance(case.query, dict) else None
    if isinstance(timeout_ms, str) and timeout_ms.isdigit():
        timeout_ms = int(timeout_ms)
    if isinstance(timeout_ms, int) and isinstance(case.query, dict):
        case.query["timeoutMs"] = min(timeout_ms, MAX_WAIT_MS)


def _keep_the_host(case: schemathesis.Case) -> None:
    # A generated Host header (`k,OSW{Muw`) is refused by Litestar's router before any route, 400
    # "Invalid host header", on every operation alike: a property of the transport, not of an
    # operation's document. Seen in a full-suite run only (generation depends on what ran first).
    if isinstance(case.headers, dict):
        for name in [n for n in case.headers if n.lower() == "host"]:
            del case.headers[name]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation(app: Litestar, known: dict[str, str], case: schemathesis.Case) -> None:
    _use_known_ids(case, known)
    _shorten_waits(case)
    _keep_the_host(case)
    response = case.call(app=app, headers=HEADERS_A)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
        assert body["error"], body
