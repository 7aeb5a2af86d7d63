"""How a msgspec validation message becomes the ``details`` of a 400 (SPEC section 2)."""

from __future__ import annotations

import pytest

from foreman import errors
from foreman.server.errors import body_error_detail, body_validation_error, json_path


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("", []),
        (".runId", ["runId"]),
        (".tags[2]", ["tags", 2]),
        ("[0].a.b", [0, "a", "b"]),
        ('.metadata["odd.key"]', ["metadata", "odd.key"]),
    ],
)
def test_json_path(path, parts):
    assert json_path(path) == parts


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        (
            "Expected `int`, got `str` - at `$.maxRetries`",
            {"loc": ["body", "maxRetries"], "msg": "Expected `int`, got `str`"},
        ),
        (
            "Expected `str`, got `int` - at `$.tags[1]`",
            {"loc": ["body", "tags", 1], "msg": "Expected `str`, got `int`"},
        ),
        (
            "Object missing required field `inputData`",
            {"loc": ["body", "inputData"], "msg": "Object missing required field `inputData`"},
        ),
        (
            "`inputData` is required and must not be null",
            {"loc": ["body", "inputData"], "msg": "`inputData` is required and must not be null"},
        ),
        (
            "Expected `object`, got `array`",
            {"loc": ["body"], "msg": "Expected `object`, got `array`"},
        ),
    ],
)
def test_body_error_detail(message, detail):
    assert body_error_detail(message) == detail


def test_body_validation_error_names_the_field():
    exc = body_validation_error("Invalid UUID - at `$.runId`")
    assert isinstance(exc, errors.ValidationError)
    assert exc.status_code == 400
    assert exc.to_body() == {
        "error": "Validation failed: runId: Invalid UUID",
        "code": "validation_error",
        "details": [{"loc": ["body", "runId"], "msg": "Invalid UUID"}],
    }
