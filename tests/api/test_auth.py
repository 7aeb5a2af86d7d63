"""API keys, organisations and the public health check (SPEC section 3)."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from foreman.queue.naming import org_queue_name
from foreman.server.app import create_app
from tests.api.helpers import API, admin_counts, assert_error, create_run, missing_id
from tests.conftest import KEY_A, KEY_B, ORG_A, ORG_B, make_settings
from tests.services import free_port

RUN = "01900000-0000-7000-8000-000000000001"
TASK = "01900000-0000-7000-8000-000000000002"
DATA = "01900000-0000-7000-8000-000000000003"

# Every endpoint that needs a key, with a body that would otherwise be valid.
PROTECTED = [
    ("GET", f"{API}/config", None),
    ("GET", f"{API}/config/redis", None),
    ("GET", f"{API}/config/queues", None),
    ("POST", f"{API}/runs", {"inputData": 1}),
    ("GET", f"{API}/runs", None),
    ("GET", f"{API}/runs/{RUN}", None),
    ("PATCH", f"{API}/runs/{RUN}", {"status": "running"}),
    ("POST", f"{API}/tasks", {"runId": RUN, "type": "t", "inputData": 1}),
    ("GET", f"{API}/tasks", None),
    ("GET", f"{API}/tasks/{TASK}", None),
    ("PATCH", f"{API}/tasks/{TASK}", {"status": "running"}),
    ("POST", f"{API}/runs/{RUN}/data", {"taskId": TASK, "key": "k", "value": 1}),
    ("GET", f"{API}/runs/{RUN}/data", None),
    ("PATCH", f"{API}/runs/{RUN}/data/{DATA}/tags", {"add": ["a"]}),
    ("DELETE", f"{API}/runs/{RUN}/data?key=k", None),
]

# Requests that would be 400 or 404 with a key: without one they must still be 401, so a caller
# without a key learns nothing about ids, parameters or bodies.
INVALID_WITHOUT_KEY = [
    ("GET", f"{API}/runs/not-a-uuid", None),
    ("GET", f"{API}/tasks?runId=not-a-uuid", None),
    ("GET", f"{API}/runs?limit=0", None),
    ("POST", f"{API}/runs", {"inputData": None}),
    ("POST", f"{API}/tasks", {"runId": "x"}),
    ("PATCH", f"{API}/tasks/nope", {"status": "bogus"}),
    ("DELETE", f"{API}/runs/{RUN}/data", None),
    ("GET", f"{API}/runs/bad/data?tagMode=bad", None),
]

MALFORMED_KEYS = [
    "fmn_prod_acme",  # three parts
    "fmn",
    "xyz_prod_acme_k1",  # wrong prefix
    "FMN_prod_acme_k1",
    "fmn__acme_k1",  # empty environment
    "fmn_prod__k1",  # empty organisation
    "fmn_prod_acme_",  # empty random part
    "test-api-key2",
    "fmn_prod_ac\tme_k1",  # not printable
    "fmn_prod_acme_" + "k" * 600,  # absurdly long
]


async def call(client, method, url, body, headers):
    return await client.request(method, url, json=body, headers=headers)


@pytest.mark.parametrize(("method", "url", "body"), PROTECTED + INVALID_WITHOUT_KEY)
async def test_missing_key_is_401_before_anything_else(client, db_url, method, url, body):
    response = await call(client, method, url, body, {})
    assert assert_error(response, 401)["error"] == "Missing API key"
    assert await admin_counts(db_url) == {"run": 0, "task": 0, "run_data": 0}


@pytest.mark.parametrize(("method", "url", "body"), PROTECTED)
@pytest.mark.parametrize("key", MALFORMED_KEYS[:3])
async def test_malformed_key_is_401_on_every_endpoint(client, method, url, body, key):
    response = await call(client, method, url, body, {"x-api-key": key})
    assert assert_error(response, 401)["error"] == "Invalid API key format"


@pytest.mark.parametrize("key", MALFORMED_KEYS)
@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
async def test_malformed_key_variants(client, key, header):
    value = f"Bearer {key}" if header == "authorization" else key
    response = await client.get(f"{API}/runs", headers={header: value})
    assert assert_error(response, 401)["error"] == "Invalid API key format"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer "},
        {"authorization": "Bearer"},
        {"authorization": "Basic Zm9vOmJhcg=="},
        {"authorization": KEY_A},  # no scheme
        {"x-api-key": ""},
        {"x-api-key-other": KEY_A},
    ],
)
async def test_unusable_headers_count_as_missing(client, headers):
    response = await client.get(f"{API}/runs", headers=headers)
    assert assert_error(response, 401)["error"] == "Missing API key"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {KEY_A}"},
        {"authorization": f"bearer {KEY_A}"},
        {"Authorization": f"BEARER   {KEY_A}  "},
        {"x-api-key": KEY_A},
        {"X-API-KEY": KEY_A},
        {"authorization": "Basic Zm9v", "x-api-key": KEY_A},
    ],
)
async def test_accepted_key_headers(client, headers):
    response = await client.post(f"{API}/runs", json={"inputData": 1}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["orgId"] == "orga"


@pytest.mark.parametrize(
    ("key", "org"),
    [
        ("fmn_prod_acme_7f3k2", "acme"),
        ("fmn_dev_acme_x_y_z", "acme"),  # more parts: the org is still the third
        ("fmn_test_Org-With.Dots_r", "Org-With.Dots"),
    ],
)
async def test_the_org_is_the_third_part_of_the_key(client, key, org):
    response = await client.post(f"{API}/runs", json={"inputData": 1}, headers={"x-api-key": key})
    assert response.status_code == 201, response.text
    assert response.json()["orgId"] == org


async def test_test_key_maps_to_test_org(client):
    run = await create_run(client, headers={"x-api-key": "test-api-key"})
    assert run["orgId"] == "test-org"
    response = await client.get(
        f"{API}/runs/{run['id']}", headers={"authorization": "Bearer test-api-key"}
    )
    assert response.status_code == 200
    # test-org is an organisation like any other: its key format twin sees the same rows.
    twin = await client.get(f"{API}/runs/{run['id']}", headers={"x-api-key": "fmn_x_test-org_y"})
    assert twin.status_code == 200


async def test_test_key_is_refused_when_disabled(db_url):
    app = create_app(make_settings(db_url, allow_test_key=False))
    async with AsyncTestClient(app=app) as client:
        response = await client.get(f"{API}/runs", headers={"x-api-key": "test-api-key"})
        assert assert_error(response, 401)["error"] == "Invalid API key format"
        assert (await client.get(f"{API}/runs", headers={"x-api-key": KEY_A})).status_code == 200


async def test_matching_x_org_id_is_accepted(client):
    response = await client.post(
        f"{API}/runs", json={"inputData": 1}, headers={"x-api-key": KEY_A, "x-org-id": "orga"}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(("method", "url", "body"), PROTECTED)
async def test_mismatched_x_org_id_is_403_everywhere(client, db_url, method, url, body):
    response = await call(client, method, url, body, {"x-api-key": KEY_A, "x-org-id": "orgb"})
    assert_error(response, 403, "x-org-id")
    assert response.json()["code"] == "forbidden"
    assert await admin_counts(db_url) == {"run": 0, "task": 0, "run_data": 0}


@pytest.mark.parametrize("claimed", ["", "ORGA", "orga ", "test-org"])
async def test_x_org_id_must_match_exactly(client, claimed):
    response = await client.get(f"{API}/runs", headers={"x-api-key": KEY_A, "x-org-id": claimed})
    assert_error(response, 403)


async def test_missing_key_wins_over_x_org_id(client):
    response = await client.get(f"{API}/runs", headers={"x-org-id": "orga"})
    assert assert_error(response, 401)["error"] == "Missing API key"


@pytest.mark.parametrize("path", ["/health", f"{API}/health"])
async def test_health_needs_no_key(client, path):
    response = await client.get(path)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy"
    assert body["services"]["database"] == "connected"
    assert body["services"]["redis"] in ("connected", "not configured", "disconnected")
    assert body["timestamp"].endswith("Z")
    assert isinstance(body["environment"], str)


async def test_health_ignores_a_bad_key(client):
    response = await client.get("/health", headers={"x-api-key": "garbage"})
    assert response.status_code == 200


async def test_config_endpoints_with_a_key(client):
    config = (await client.get(f"{API}/config", headers={"x-api-key": KEY_A})).json()
    assert set(config) >= {"version", "environment", "redis", "queues", "queue"}
    assert config["queue"]["backend"] in ("postgres", "bullmq")
    redis = (await client.get(f"{API}/config/redis", headers={"x-api-key": KEY_A})).json()
    assert redis == config["redis"]
    queues = (await client.get(f"{API}/config/queues", headers={"x-api-key": KEY_A})).json()
    assert queues == config["queues"]
    assert set(queues) == {"taskQueue", "resultQueue"}


async def test_unknown_id_with_a_valid_key_is_404_not_401(client):
    response = await client.get(f"{API}/runs/{missing_id()}", headers={"x-api-key": KEY_A})
    assert_error(response, 404, "Run not found")


async def test_config_reflects_the_settings(db_url):
    settings = make_settings(
        db_url,
        sweep_enabled=False,
        version="9.9.9",
        environment="staging",
        redis_host="redis.internal",
        redis_port=6380,
        redis_db=2,
        task_queue_name="jobs",
        result_queue_name="results",
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        config = (await client.get(f"{API}/config", headers={"x-api-key": KEY_A})).json()
        health = (await client.get("/health")).json()
    assert config["version"] == "9.9.9"
    assert config["environment"] == "staging"
    assert config["redis"]["host"] == "redis.internal"
    assert config["redis"]["port"] == 6380
    assert config["redis"]["db"] == 2
    assert "password" not in config["redis"]  # none configured: omitted, not null
    # The caller's organisation's own queues (FOREMAN_QUEUE_PER_ORG, the default).
    assert config["queues"] == {
        "taskQueue": org_queue_name("jobs", ORG_A),
        "resultQueue": org_queue_name("results", ORG_A),
    }
    assert config["queue"] == {"backend": "postgres"}
    assert health["environment"] == "staging"


async def test_each_organisation_is_told_its_own_queues(db_url):
    settings = make_settings(db_url, sweep_enabled=False, task_queue_name="foreman:tasks")
    async with AsyncTestClient(app=create_app(settings)) as client:
        a = (await client.get(f"{API}/config/queues", headers={"x-api-key": KEY_A})).json()
        b = (await client.get(f"{API}/config/queues", headers={"x-api-key": KEY_B})).json()
    assert a["taskQueue"] == org_queue_name("foreman:tasks", ORG_A)
    assert b["taskQueue"] == org_queue_name("foreman:tasks", ORG_B)
    assert a["taskQueue"] != b["taskQueue"]
    assert ":" not in a["taskQueue"] + b["taskQueue"]  # Node BullMQ refuses ":"


async def test_one_shared_queue_when_queues_per_organisation_are_off(db_url):
    settings = make_settings(
        db_url, sweep_enabled=False, task_queue_name="jobs", queue_per_org=False
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        a = (await client.get(f"{API}/config/queues", headers={"x-api-key": KEY_A})).json()
        b = (await client.get(f"{API}/config/queues", headers={"x-api-key": KEY_B})).json()
    assert a == b == {"taskQueue": "jobs", "resultQueue": "foreman:results"}


# ---------------------------------------------------------------- non-ASCII keys, two keys


@pytest.mark.parametrize(
    "raw",
    [
        "fmn_prod_ørg_k1".encode(),  # UTF-8 (read as Latin-1, another organisation)
        "fmn_prod_ørg_k1".encode("latin-1"),
        "fmn_prod_orga_k€".encode(),  # the organisation is ASCII, the random part is not
    ],
)
@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
async def test_a_key_with_non_ascii_bytes_is_refused(client, db_url, raw, header):
    value = b"Bearer " + raw if header == "authorization" else raw
    response = await client.post(f"{API}/runs", json={"inputData": 1}, headers={header: value})
    body = assert_error(response, 401, "API key")
    assert "ASCII" in body["error"]
    assert await admin_counts(db_url) == {"run": 0, "task": 0, "run_data": 0}


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer fmn_prod_first_k", "x-api-key": "fmn_prod_second_k"},
        {"authorization": f"Bearer {KEY_A}", "x-api-key": "test-api-key"},
        {"authorization": "Bearer test-api-key", "x-api-key": KEY_A},
        {"authorization": f"Bearer {KEY_A}", "x-api-key": "garbage"},
    ],
)
async def test_two_keys_of_different_organisations_are_refused(client, db_url, headers):
    response = await client.post(f"{API}/runs", json={"inputData": 1}, headers=headers)
    body = assert_error(response, 401)
    assert "Authorization" in body["error"]
    assert "x-api-key" in body["error"]
    assert await admin_counts(db_url) == {"run": 0, "task": 0, "run_data": 0}


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {KEY_A}", "x-api-key": KEY_A},  # the same key twice
        {"authorization": f"Bearer {KEY_A}", "x-api-key": "fmn_prod_orga_other"},  # same org
    ],
)
async def test_two_keys_of_the_same_organisation_are_accepted(client, headers):
    response = await client.post(f"{API}/runs", json={"inputData": 1}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["orgId"] == "orga"


async def test_per_org_redis_users_are_never_replaced_by_the_admin_password(db_url):
    # FOREMAN_REDIS_ACL=per-org with Redis unreachable: 503, never the admin password instead.
    settings = make_settings(
        db_url,
        sweep_enabled=False,
        queue_backend="bullmq",
        redis_host="127.0.0.1",
        redis_port=free_port(),
        redis_password="admin-secret",
        redis_acl="per-org",
        redis_acl_secret="x" * 32,
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        for path in (f"{API}/config", f"{API}/config/redis"):
            response = await client.get(path, headers={"x-api-key": KEY_A})
            assert response.status_code == 503, response.text
            assert "admin-secret" not in response.text
            assert response.json()["code"] == "unavailable"
