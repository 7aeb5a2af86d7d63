"""Exact parameters (server/params.py): which raw paths are refused, how filters are read."""

from __future__ import annotations

import pytest

from foreman import errors
from foreman.server import params


@pytest.mark.parametrize(
    "path",
    [
        b"/api/v1/tasks//claim",
        b"/api/v1/tasks/%2F/claim",
        b"/api/v1/tasks/%2fclaim",
        b"/api/v1/tasks/./claim",
        b"/api/v1/tasks/../claim",
        b"/api/v1/tasks/..",
        b"//api/v1/runs",
        b"/api/v1/runs//",
        b"/api/v1/runs/a%2Fb",
        b"/api/v1/runs/%2F?limit=1",
    ],
)
def test_bad_paths(path):
    assert params.bad_path(path)
    error = params.malformed_path(path)
    assert isinstance(error, errors.NotFoundError)
    assert "Malformed path" in error.message
    assert "?" not in error.message


@pytest.mark.parametrize(
    "path",
    [
        b"/",
        b"/health",
        b"/api/v1/runs",
        b"/api/v1/runs/",  # one trailing slash, as Express allowed it
        b"/api/v1/tasks/01900000-0000-7000-8000-000000000001/claim",
        b"/api/v1/runs/x/data?keys=a//b,%2F",  # the query is not the path
        b"/api/v1/tasks/...",
        b"/api/v1/tasks/%2E",  # decoded to ".", an id that is simply not found
    ],
)
def test_good_paths(path):
    assert not params.bad_path(path)
    assert params.malformed_path(path) is None
    assert params.malformed_path(None) is None


def test_comma_lists_are_read_as_sent():
    assert params.comma_list(None, "tags") == ()
    assert params.comma_list("a", "tags") == ("a",)
    assert params.comma_list(" a , b ", "tags") == (" a ", " b ")
    assert params.comma_list(",".join(["x" * 255] * 1000), "tags") == ("x" * 255,) * 1000


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "got 0"),
        (",", "got 0"),
        ("a,", "got 0"),
        (",a", "got 0"),
        ("a,,b", "got 0"),
        ("x" * 256, "got 256"),
        (",".join(["x"] * 1001), "1001 items"),
    ],
)
def test_bad_comma_lists(value, fragment):
    with pytest.raises(errors.ValidationError) as caught:
        params.comma_list(value, "keyStartsWith")
    assert caught.value.message.startswith("Validation failed: keyStartsWith: ")
    assert fragment in caught.value.message
    assert caught.value.details["details"] == [
        {"loc": ["query", "keyStartsWith"], "msg": caught.value.message.split(": ", 2)[2]}
    ]


def test_text_filters():
    assert params.text(None, "key") is None
    assert params.text(" k ", "key") == " k "
    assert params.text("x" * 255, "key") == "x" * 255
    for value in ("", "x" * 256):
        with pytest.raises(errors.ValidationError, match=r"key: must be 1\.\.255 characters"):
            params.text(value, "key")


def test_id_filters_are_canonical_or_left_as_sent():
    assert params.id_filter(None, "runId") is None
    upper = "01900000-0000-7000-8000-00000000ABCD"
    assert params.id_filter(upper, "runId") == upper.lower()
    assert params.id_filter(upper + "\n", "runId") == upper + "\n"  # no UUID: matches nothing
    with pytest.raises(errors.ValidationError, match="runId"):
        params.id_filter("", "runId")


def test_path_ids():
    assert params.path_id("0190000000007000800000000000ABCD", "Task") == (
        "01900000-0000-7000-8000-00000000abcd"
    )
    with pytest.raises(errors.NotFoundError) as caught:
        params.path_id("x" * 10_000, "Task")
    assert caught.value.message == f"Task not found: {'x' * 80}..."


def test_choices_are_exact():
    assert params.choice(None, "status", ("a", "b")) is None
    assert params.choice("a", "status", ("a", "b")) == "a"
    for value in ("null", "A", " a", ""):
        with pytest.raises(errors.ValidationError, match="status: must be one of a, b"):
            params.choice(value, "status", ("a", "b"))


def test_every_handler_with_query_parameters_checks_them_and_no_other_pays_for_it():
    """exact_request is a per-handler hook (a router-wide one, or a guard, costs every request)."""
    from foreman.server.app import create_app
    from foreman.settings import Settings

    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused"))
    checked, unchecked = [], []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not handler.fn.__module__.startswith("foreman."):
                continue  # Litestar's own (OPTIONS, the OpenAPI pages)
            hook = handler.resolve_before_request()
            has_query = bool(params._query_spec(handler).names)
            assert (hook is not None) == has_query, (route.path, handler.http_methods)
            (checked if has_query else unchecked).append(route.path)
    assert "/api/v1/tasks" in checked
    assert "/api/v1/tasks/{task_id:str}" in unchecked
