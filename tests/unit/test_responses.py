"""JsonResponse (server/responses.py): its short path answers exactly as Litestar's own path."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar, Response, get
from litestar.testing import TestClient

from foreman.server.responses import JsonBody, JsonResponse


class Item(msgspec.Struct, rename="camel"):
    item_id: str
    payload: msgspec.Raw
    count: int | None = None


ITEM = Item(item_id="a", payload=msgspec.Raw(b'{"x":[1,2]}'))


def make_app(response_class: type[Response[Any]]) -> Litestar:
    @get("/item")
    async def item() -> Item:
        return ITEM

    @get("/created", status_code=201)
    async def created() -> Item:
        return ITEM

    @get("/listed")
    async def listed() -> dict[str, Any]:
        return {"items": [ITEM], "total": 1}

    @get("/with-header")
    async def with_header() -> Response[Item]:
        return response_class(ITEM, headers={"x-extra": "1"}, status_code=202)

    @get("/text", media_type="text/plain")
    async def text() -> str:
        return "plain"

    @get("/nothing", status_code=204)
    async def nothing() -> None:
        return None

    return Litestar(
        [item, created, listed, with_header, text, nothing],
        response_class=response_class,
        logging_config=None,
    )


@pytest.mark.parametrize(
    "path", ["/item", "/created", "/listed", "/with-header", "/text", "/nothing"]
)
def test_answers_match_litestars_own_path(path: str) -> None:
    with TestClient(make_app(Response)) as theirs, TestClient(make_app(JsonResponse)) as ours:
        expected, actual = theirs.get(path), ours.get(path)
    assert actual.status_code == expected.status_code
    assert actual.content == expected.content
    assert dict(actual.headers) == dict(expected.headers)


def test_a_plain_json_answer_takes_the_short_path() -> None:
    response = JsonResponse(ITEM, status_code=201)
    answer = response.to_asgi_response(None, None)  # type: ignore[arg-type]
    assert isinstance(answer, JsonBody)
    assert answer.status == 201
    assert msgspec.json.decode(answer.body) == {
        "itemId": "a",
        "payload": {"x": [1, 2]},
        "count": None,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": {"x-extra": "1"}},
        {"cookies": {"c": "1"}},
        {"media_type": "text/plain"},
        {"status_code": 204},
        {"status_code": 404},
    ],
)
def test_anything_more_takes_litestars_path(kwargs: dict[str, Any]) -> None:
    content = None if kwargs.get("status_code") == 204 else "x"
    response = JsonResponse(content, **kwargs)
    answer = response.to_asgi_response(None, None)  # type: ignore[arg-type]
    assert not isinstance(answer, JsonBody)
