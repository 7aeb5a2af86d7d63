"""Schema fuzzing: schemathesis drives every operation of /openapi.json in process.

The app runs over the session's real PostgreSQL database. Cases are generated from the schema
(valid and invalid), with a fixed derandomised seed and a bounded number of examples per
operation, so a run is repeatable and takes about a minute. No answer may be a 5xx; every answer
must be JSON with the status, content type and body shape the schema declares.
"""

from __future__ import annotations

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
from tests.conftest import HEADERS_A

EXAMPLES_PER_OPERATION = 120


def _schema_document() -> dict[str, Any]:
    # The document does not depend on the database: build it from an app that is never started.
    app = create_app(Settings(database_url="postgresql://unused@localhost/unused"))
    document: dict[str, Any] = msgspec.json.decode(
        msgspec.json.encode(app.openapi_schema.to_schema())
    )
    return document


schema = schemathesis.openapi.from_dict(_schema_document())


@pytest.fixture(scope="module")
def app(database_url: str) -> Iterator[Litestar]:
    """One app (one small pool) for the module: schemathesis keeps an app's lifespan running."""
    yield create_app(Settings(database_url=database_url, db_pool_min=1, db_pool_max=3))
    asgi.shutdown_lifespans()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation(app: Litestar, case: schemathesis.Case) -> None:
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
