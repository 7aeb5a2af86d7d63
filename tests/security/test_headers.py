"""Security headers, CORS restricted by configuration, and who sees the Redis password."""

from __future__ import annotations

import pytest

from tests.api.helpers import API, admin_counts, assert_error, create_run, create_task, missing_id
from tests.conftest import HEADERS_A
from tests.security.conftest import bearer

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
API_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", f"{API}/runs", HEADERS_A, 200),
        ("GET", f"{API}/runs", {}, 401),
        ("GET", f"{API}/runs/nope", HEADERS_A, 404),
        ("POST", f"{API}/runs", HEADERS_A, 400),
        ("GET", f"{API}/config", HEADERS_A, 200),
        ("GET", "/health", {}, 200),
        ("GET", f"{API}/no-such-route", HEADERS_A, 404),
        ("DELETE", f"{API}/runs", HEADERS_A, 405),
    ],
)
async def test_api_answers_carry_security_headers(client, method, path, headers, status):
    response = await client.request(method, path, headers=headers)
    assert response.status_code == status
    for name, value in {**SECURITY_HEADERS, **API_HEADERS}.items():
        assert response.headers[name] == value, name
    assert response.headers["x-request-id"]


async def test_docs_keep_their_own_policy(client):
    response = await client.get("/docs/")
    assert response.status_code == 200
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "content-security-policy" not in response.headers  # Swagger UI loads a CDN script


async def test_413_and_depth_errors_carry_security_headers(app_with):
    async with app_with(max_body_bytes=2048) as client:
        response = await client.post(
            f"{API}/runs", json={"inputData": "x" * 4096}, headers=HEADERS_A
        )
        assert response.status_code == 413
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------- CORS

ORIGIN = "https://app.example.com"


def _preflight(origin: str, request_headers: str = "authorization,content-type") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": request_headers,
    }


async def test_no_cors_unless_configured(client):
    response = await client.get(f"{API}/runs", headers={**HEADERS_A, "origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options(f"{API}/runs", headers=_preflight(ORIGIN))
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_only_the_configured_origins(app_with):
    async with app_with(cors_origin=f"{ORIGIN}, https://other.example.com") as client:
        allowed = await client.options(f"{API}/runs", headers=_preflight(ORIGIN))
        assert allowed.status_code in (200, 204)
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        allowed_headers = allowed.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers
        assert "x-api-key" in allowed_headers
        assert "traceparent" in allowed_headers  # a browser's trace context (README "Traces")
        assert "access-control-allow-credentials" not in allowed.headers

        simple = await client.get(f"{API}/runs", headers={**HEADERS_A, "origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in simple.headers["access-control-expose-headers"]

        evil = "https://evil.example.net"
        refused = await client.options(f"{API}/runs", headers=_preflight(evil))
        assert refused.headers.get("access-control-allow-origin") != evil
        assert refused.status_code >= 400
        cross = await client.get(f"{API}/runs", headers={**HEADERS_A, "origin": evil})
        assert "access-control-allow-origin" not in cross.headers


async def test_cors_refuses_headers_a_client_does_not_need(app_with):
    async with app_with(cors_origin=ORIGIN) as client:
        response = await client.options(
            f"{API}/runs", headers=_preflight(ORIGIN, "authorization,x-internal-admin")
        )
        assert response.status_code >= 400


# ---------------------------------------------------------------- the Redis password


async def _redis_passwords(client, headers) -> tuple[object, object]:
    config = await client.get(f"{API}/config", headers=headers)
    redis = await client.get(f"{API}/config/redis", headers=headers)
    assert config.status_code == redis.status_code == 200
    assert config.json()["redis"]["host"] == "redis.internal"
    return config.json()["redis"].get("password"), redis.json().get("password")


async def test_redis_password_is_returned_by_default(app_with):
    # SPEC section 5: workers read the Redis connection from /api/v1/config.
    async with app_with(redis_host="redis.internal", redis_password="s3cret") as client:
        assert await _redis_passwords(client, HEADERS_A) == ("s3cret", "s3cret")


async def test_redis_password_never(app_with):
    async with app_with(
        redis_host="redis.internal", redis_password="s3cret", expose_redis_password="never"
    ) as client:
        assert await _redis_passwords(client, HEADERS_A) == (None, None)
        response = await client.get(f"{API}/config", headers=HEADERS_A)
        assert "s3cret" not in response.text


async def test_redis_password_only_to_registered_keys(app_with, make_key):
    settings = {
        "redis_host": "redis.internal",
        "redis_password": "s3cret",
        "expose_redis_password": "registered",
    }
    async with app_with(**settings) as client:  # format mode: nobody is registered
        assert await _redis_passwords(client, HEADERS_A) == (None, None)
    new = await make_key("acme")
    async with app_with(auth_mode="registered", **settings) as client:
        assert await _redis_passwords(client, bearer(new.key)) == ("s3cret", "s3cret")
        unknown = await client.get(f"{API}/config", headers=bearer("fmn_test_acme_" + "0" * 40))
        assert unknown.status_code == 401
        assert "s3cret" not in unknown.text


async def test_redis_password_is_never_logged(app_with, caplog):
    caplog.set_level("DEBUG")
    async with app_with(redis_host="redis.internal", redis_password="s3cret") as client:
        await client.get(f"{API}/config", headers=HEADERS_A)
    assert all("s3cret" not in f"{r.getMessage()} {vars(r)}" for r in caplog.records)


# ---------------------------------------------------------------- HEAD

VARYING = {"date", "x-request-id"}


async def _get_paths(client) -> list[tuple[str, dict[str, str]]]:
    run = await create_run(client)
    task = await create_task(client, run["id"])
    keyed = [
        f"{API}/config",
        f"{API}/config/redis",
        f"{API}/config/queues",
        f"{API}/runs",
        f"{API}/runs/{run['id']}",
        f"{API}/runs/{missing_id()}",
        f"{API}/runs/{run['id']}/data",
        f"{API}/tasks",
        f"{API}/tasks?limit=0",
        f"{API}/tasks/{task['id']}",
        f"{API}/tasks/{task['id']}/wait?timeoutMs=1",
    ]
    public = ["/health", f"{API}/health", "/openapi.json", "/docs/", "/docs/openapi.json"]
    return [(p, HEADERS_A) for p in keyed] + [(p, {}) for p in public] + [(keyed[3], {})]


async def test_head_answers_every_get_route_like_get_without_a_body(client):
    for path, headers in await _get_paths(client):
        got = await client.get(path, headers=headers)
        head = await client.head(path, headers=headers)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        expected = {k: v for k, v in got.headers.items() if k not in VARYING}
        assert {k: v for k, v in head.headers.items() if k not in VARYING} == expected, path


async def test_head_of_a_route_without_get_is_405(client):
    response = await client.head(f"{API}/tasks/claim", headers=HEADERS_A)
    assert response.status_code == 405
    assert response.content == b""


# ---------------------------------------------------------------- content types


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonp",
        "text/json",
    ],
)
async def test_a_declared_non_json_body_is_415(client, db_url, content_type):
    response = await client.post(
        f"{API}/runs",
        content=b'{"inputData": 1}',
        headers={**HEADERS_A, "content-type": content_type},
    )
    body = assert_error(response, 415, "content-type")
    assert body["code"] == "unsupported_media_type"
    assert await admin_counts(db_url) == {"run": 0, "task": 0, "run_data": 0}


@pytest.mark.parametrize(
    "content_type",
    [
        None,  # no content-type: accepted as JSON, as the original API did
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.foreman+json",
        "application/merge-patch+json",
    ],
)
async def test_json_content_types_are_accepted(client, content_type):
    headers = dict(HEADERS_A)
    if content_type is not None:
        headers["content-type"] = content_type
    response = await client.post(f"{API}/runs", content=b'{"inputData": 1}', headers=headers)
    assert response.status_code == 201, response.text


async def test_415_comes_after_401(client):
    response = await client.post(
        f"{API}/runs", content=b"a=1", headers={"content-type": "text/plain"}
    )
    assert_error(response, 401)
