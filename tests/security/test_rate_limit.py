"""FOREMAN_RATE_LIMIT: a token bucket per organisation; 429 with a JSON body and Retry-After."""

from __future__ import annotations

import asyncio

import pydantic
import pytest

from foreman import errors
from foreman.server import ratelimit
from foreman.settings import Rate, Settings, parse_rate
from tests.api.helpers import API, assert_error
from tests.conftest import HEADERS_A, HEADERS_B
from tests.security.conftest import bearer


@pytest.mark.parametrize(
    ("text", "per_s", "burst"),
    [
        ("100/s", 100.0, 100.0),
        ("100", 100.0, 100.0),
        (" 5 / second ", 5.0, 5.0),
        ("6000/min", 100.0, 100.0),
        ("60/m", 1.0, 1.0),
        ("36/hour", 0.01, 1.0),
        ("2.5/s", 2.5, 2.5),
    ],
)
def test_parse_rate(text, per_s, burst):
    rate = parse_rate(text)
    assert rate is not None
    assert rate.per_s == pytest.approx(per_s)
    assert rate.burst == pytest.approx(burst)


@pytest.mark.parametrize("text", [None, "", "  ", "0", "0/s"])
def test_no_rate_means_no_limit(text):
    assert parse_rate(text) is None


@pytest.mark.parametrize("text", ["abc", "10/fortnight", "-1/s", "10/s/s"])
def test_bad_rates_are_refused(text):
    with pytest.raises(ValueError, match="Invalid rate limit"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["abc", "10/fortnight", "-1/s"])
def test_settings_refuse_bad_rates(text):
    with pytest.raises(pydantic.ValidationError):
        Settings(rate_limit=text)


@pytest.mark.parametrize("text", ["6000/MIN", " 100 / Second", "100"])
def test_settings_read_the_rate_with_the_same_grammar(text):
    # One parser: what the settings accept is what the limiter gets.
    assert Settings(rate_limit=text).rate() == Rate(per_s=100.0, burst=100.0)
    assert Settings(rate_limit=text, rate_limit_burst=7).rate() == Rate(per_s=100.0, burst=7.0)


def test_bucket_allows_a_burst_then_refills_at_the_rate():
    now = [0.0]
    limiter = ratelimit.RateLimiter(Rate(per_s=2.0, burst=3.0), clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # organisations do not share a bucket
    now[0] = 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    now[0] = 100.0  # idle: back to a full burst, never more
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0


def test_check_raises_429_with_whole_seconds_to_wait():
    now = [0.0]
    limiter = ratelimit.RateLimiter(Rate(per_s=0.1, burst=1.0), clock=lambda: now[0])
    limiter.check("a")
    with pytest.raises(errors.RateLimitedError) as caught:
        limiter.check("a")
    assert caught.value.status_code == 429
    assert caught.value.details["retryAfter"] == 10
    assert "6 requests per minute" in caught.value.message


def test_buckets_of_many_organisations_stay_bounded():
    now = [0.0]
    limiter = ratelimit.RateLimiter(
        Rate(per_s=1.0, burst=1.0), max_buckets=100, clock=lambda: now[0]
    )
    for i in range(10_000):
        now[0] += 0.0001
        limiter.acquire(f"org{i}")
    assert len(limiter._buckets) <= 100
    # a busy organisation seen last keeps its empty bucket
    assert limiter.acquire("org9999") > 0


async def test_429_with_json_body_and_retry_after(app_with):
    async with app_with(rate_limit="3/s") as client:
        statuses = [
            (await client.get(f"{API}/runs", headers=HEADERS_A)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 200]
        limited = await client.get(f"{API}/runs", headers=HEADERS_A)
        body = assert_error(limited, 429, "rate limit exceeded")
        assert body["code"] == "rate_limited"
        assert body["retryAfter"] == 1
        assert limited.headers["retry-after"] == "1"
        # Another organisation has its own bucket; health is not limited.
        assert (await client.get(f"{API}/runs", headers=HEADERS_B)).status_code == 200
        assert (await client.get("/health")).status_code == 200
        # POSTs count too, and are refused before they change anything.
        created = await client.post(f"{API}/runs", json={"inputData": 1}, headers=HEADERS_A)
        assert created.status_code == 429
        await asyncio.sleep(0.4)  # 3/s: a token every 333 ms
        assert (await client.get(f"{API}/runs", headers=HEADERS_A)).status_code == 200


async def test_no_limit_by_default(client):
    statuses = {(await client.get(f"{API}/runs", headers=HEADERS_A)).status_code for _ in range(50)}
    assert statuses == {200}


async def test_rate_limit_in_registered_mode_counts_the_registered_org(app_with, make_key):
    one = await make_key("acme")
    two = await make_key("acme")  # two keys, one organisation, one bucket
    async with app_with(auth_mode="registered", rate_limit="2/min", rate_limit_burst=2) as client:
        assert (await client.get(f"{API}/runs", headers=bearer(one.key))).status_code == 200
        assert (await client.get(f"{API}/runs", headers=bearer(two.key))).status_code == 200
        limited = await client.get(f"{API}/runs", headers=bearer(one.key))
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) == 30
