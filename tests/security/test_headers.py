"""Security headers, CORS restricted by configuration, and who sees the Redis password."""

from __future__ import annotations

import pytest

from tests.api.helpers import API
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
