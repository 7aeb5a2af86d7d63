"""Payload limits: body size (413), JSON depth (400), tag and key sizes (400), big valid bodies."""

from __future__ import annotations

import json

import pytest

from foreman.server import jsontext, middleware
from tests.api.helpers import API, assert_error, create_run, create_task
from tests.conftest import HEADERS_A

RAW_HEADERS = {**HEADERS_A, "content-type": "application/json"}


def nested(depth: int) -> object:
    """A JSON value whose arrays and objects nest depth levels deep."""
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# ---------------------------------------------------------------- JSON depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b'"[[[{{{"', 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": "]]]"}]}', 3),
        (b'["\\"[", ["\\\\"], [[]]]', 3),
        (b'{"k\\\\\\"[": [[["\\\\\\\\"]]]}', 4),
    ],
)
def test_json_depth(text, depth):
    assert middleware.json_depth(text) == depth
    assert middleware.too_deep(text, depth) is False
    if depth:
        assert middleware.too_deep(text, depth - 1) is True


@pytest.mark.parametrize("offset", [65530, 65535, 65536, 131071])
def test_json_depth_of_strings_across_slices(offset):
    """Strings are cut out 64 KiB at a time: a string across a slice's end still hides brackets."""
    text = b'["' + b"x" * offset + b'[[[\\"{{' + b"]" * 70_000 + b'", [[1]], "' + b"{" * 9 + b'"]'
    assert middleware.json_depth(text) == 3
    assert middleware.json_depth(b"[" * offset + b"]" * offset) == offset


async def test_depth_at_the_limit_is_accepted_one_more_is_400(client):
    # The request body's envelope {"inputData": ...} is one level of the 64.
    accepted = await client.post(f"{API}/runs", json={"inputData": nested(63)}, headers=HEADERS_A)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["inputData"] == nested(63)
    refused = await client.post(f"{API}/runs", json={"inputData": nested(64)}, headers=HEADERS_A)
    body = assert_error(refused, 400, "nested deeper than 64")
    assert body["details"][0]["loc"] == ["body"]


async def test_authentication_comes_before_the_depth_check(client):
    # A caller without a key learns nothing about its body (SPEC section 3).
    response = await client.post(f"{API}/runs", json={"inputData": nested(100)})
    assert_error(response, 401, "missing api key")
    bad_key = {"x-api-key": "nope"}
    response = await client.post(f"{API}/runs", json={"inputData": nested(100)}, headers=bad_key)
    assert_error(response, 401, "invalid api key format")


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_very_deep_bodies_are_400_not_500(client, depth):
    text = "[" * depth + "]" * depth
    response = await client.post(
        f"{API}/runs",
        content=f'{{"inputData": {text}}}',
        headers={**HEADERS_A, "content-type": "application/json"},
    )
    assert_error(response, 400, "nested")


async def test_depth_limit_covers_every_body(client):
    run = await create_run(client)
    task = await create_task(client, run["id"])
    deep = nested(70)
    attempts = [
        client.patch(f"{API}/runs/{run['id']}", json={"metadata": {"m": deep}}, headers=HEADERS_A),
        client.post(
            f"{API}/tasks",
            json={"runId": run["id"], "type": "t", "inputData": deep},
            headers=HEADERS_A,
        ),
        client.patch(f"{API}/tasks/{task['id']}", json={"outputData": deep}, headers=HEADERS_A),
        client.post(
            f"{API}/runs/{run['id']}/data",
            json={"taskId": task["id"], "key": "k", "value": deep},
            headers=HEADERS_A,
        ),
    ]
    for attempt in attempts:
        assert_error(await attempt, 400, "nested deeper")


async def test_depth_limit_is_configurable(app_with):
    async with app_with(max_json_depth=4) as client:
        ok = await client.post(f"{API}/runs", json={"inputData": nested(3)}, headers=HEADERS_A)
        assert ok.status_code == 201
        deep = await client.post(f"{API}/runs", json={"inputData": nested(4)}, headers=HEADERS_A)
        assert_error(deep, 400, "nested deeper than 4")


# ---------------------------------------------------------------- body size


async def test_body_over_the_limit_is_413(app_with):
    async with app_with(max_body_bytes=4096) as client:
        small = await client.post(f"{API}/runs", json={"inputData": "x" * 3000}, headers=HEADERS_A)
        assert small.status_code == 201
        big = await client.post(f"{API}/runs", json={"inputData": "x" * 5000}, headers=HEADERS_A)
        body = assert_error(big, 413, "too large", "4096")
        assert body["code"] == "payload_too_large"
        assert big.headers["connection"] == "close"


async def test_a_lying_content_length_is_413_before_reading(app_with):
    async with app_with(max_body_bytes=4096) as client:
        response = await client.post(
            f"{API}/runs",
            content=b'{"inputData": 1}',
            headers={**HEADERS_A, "content-type": "application/json", "content-length": "999999"},
        )
        assert_error(response, 413, "too large")


async def test_default_limit_is_10_mib(client):
    near = "x" * (10 * 1024 * 1024 - 100)
    accepted = await client.post(f"{API}/runs", json={"inputData": near}, headers=HEADERS_A)
    assert accepted.status_code == 201
    assert len(accepted.json()["inputData"]) == len(near)
    over = await client.post(f"{API}/runs", json={"inputData": near + "x" * 200}, headers=HEADERS_A)
    assert_error(over, 413, "too large", str(10 * 1024 * 1024))


async def test_numbers_may_not_grow_beyond_the_body_limit(app_with):
    """jsonb writes 1e3000 as 3,001 digits: the digits a body's numbers gain are bounded."""
    async with app_with(max_body_bytes=4096) as client:
        ok = await client.post(
            f"{API}/runs", content=b'{"inputData": [1e3000, -2.5E-1000]}', headers=RAW_HEADERS
        )
        assert ok.status_code == 201, ok.text
        assert len(ok.text) > 4000  # 3,001 + 1,001 digits
        grown = await client.post(
            f"{API}/runs", content=b'{"inputData": [1e3000, 1e2000]}', headers=RAW_HEADERS
        )
        body = assert_error(grown, 400, "large exponents", "4096")
        assert body["details"] == [{"loc": ["body"], "msg": body["error"].split(": ", 2)[2]}]
        # In a string it is text, not a number.
        text = await client.post(
            f"{API}/runs", content=rb'{"inputData": ["1e9999999", "\\", 1]}', headers=RAW_HEADERS
        )
        assert text.status_code == 201, text.text
        assert text.json()["inputData"] == ["1e9999999", "\\", 1]


async def test_many_small_exponents_add_up(client):
    body = b'{"inputData": [%s]}' % b",".join([b"1e999"] * 20_000)  # 120 kB, 20 MB written out
    response = await client.post(f"{API}/runs", content=body, headers=RAW_HEADERS)
    assert_error(response, 400, "large exponents")


async def test_a_wide_valid_body_round_trips(client):
    wide = {f"k{i}": [i, str(i), {"n": i}] for i in range(20_000)}
    response = await client.post(f"{API}/runs", json={"inputData": wide}, headers=HEADERS_A)
    assert response.status_code == 201
    fetched = await client.get(f"{API}/runs/{response.json()['id']}", headers=HEADERS_A)
    assert fetched.json()["inputData"] == wide


# ---------------------------------------------------------------- field sizes


async def _run_and_task(client):
    run = await create_run(client)
    return run, await create_task(client, run["id"])


async def test_tag_count_and_length(client):
    run, task = await _run_and_task(client)
    url = f"{API}/runs/{run['id']}/data"

    async def post(tags):
        body = {"taskId": task["id"], "key": "k", "value": 1, "tags": tags}
        return await client.post(url, json=body, headers=HEADERS_A)

    assert (await post([f"t{i}" for i in range(100)])).status_code == 201
    assert (await post(["x" * 255])).status_code == 201
    assert_error(await post([f"t{i}" for i in range(101)]), 400, "tags")
    assert_error(await post(["x" * 256]), 400, "tags")
    assert_error(await post([""]), 400, "tags")
    assert_error(await post([1]), 400, "tags")


async def test_tag_updates_have_the_same_limits(client):
    run, task = await _run_and_task(client)
    created = await client.post(
        f"{API}/runs/{run['id']}/data",
        json={"taskId": task["id"], "key": "k", "value": 1},
        headers=HEADERS_A,
    )
    url = f"{API}/runs/{run['id']}/data/{created.json()['id']}/tags"
    too_many = {"add": [f"t{i}" for i in range(101)]}
    assert_error(await client.patch(url, json=too_many, headers=HEADERS_A), 400, "add")
    too_long = {"remove": ["x" * 256]}
    assert_error(await client.patch(url, json=too_long, headers=HEADERS_A), 400, "remove")


async def test_key_type_and_idempotency_key_lengths(client):
    run, task = await _run_and_task(client)
    data_url = f"{API}/runs/{run['id']}/data"
    for key, status in (("k" * 255, 201), ("k" * 256, 400), ("", 400)):
        body = {"taskId": task["id"], "key": key, "value": 1}
        response = await client.post(data_url, json=body, headers=HEADERS_A)
        assert response.status_code == status, response.text
    for field in ("type", "idempotencyKey"):
        body = {"runId": run["id"], "type": "t", "inputData": 1, field: "x" * 256}
        response = await client.post(f"{API}/tasks", json=body, headers=HEADERS_A)
        assert_error(response, 400, field)


async def test_malformed_json_is_400(client):
    for text in ('{"inputData": ', "[1,]", "\x00", '{"inputData": NaN}', "\xff\xfe"):
        response = await client.post(
            f"{API}/runs",
            content=text.encode("latin-1"),
            headers={**HEADERS_A, "content-type": "application/json"},
        )
        assert response.status_code == 400, (text, response.text)
        assert json.loads(response.text)["error"]


@pytest.mark.parametrize("offset", [0, 65525, 65528, 65530])
def test_number_expansion_counts_numbers_not_strings(offset):
    # A number across the end of a 64 KiB slice still counts; one inside a string does not.
    text = b'["' + b"x" * offset + b'", 12.5e400, "1e99999", -3E+20]'
    assert jsontext.expansion(text) == (400 - len(b"12.5e400")) + (20 - len(b"-3E+20"))
