"""Registered keys: storage, the request role's access, auth in registered mode, the CLI, logs."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest
from typer.testing import CliRunner

from foreman import errors, keys_cli
from foreman.server import auth
from foreman.store import api_keys
from tests.api.helpers import API, assert_error, create_run
from tests.conftest import HEADERS_A
from tests.security.conftest import bearer

# ---------------------------------------------------------------- storage


async def test_only_a_digest_of_the_key_is_stored(owner, make_key):
    new = await make_key("acme", name="svc")
    assert new.key.startswith("fmn_test_acme_")
    assert auth.org_for_key(new.key, allow_test_key=False) == "acme"
    row = await owner.fetchrow("SELECT * FROM api_key WHERE id = $1", new.id)
    assert bytes(row["key_hash"]) == api_keys.hash_key(new.key)
    assert len(row["key_hash"]) == 32
    secret = new.key.removeprefix("fmn_test_acme_")
    row_text = repr(dict(row))
    assert new.key not in row_text
    assert secret not in row_text  # the prefix keeps only the first 8 random characters
    assert secret[:8] in row["prefix"]
    assert row["org_id"] == "acme"
    assert row["name"] == "svc"
    assert row["revoked_at"] is None


async def test_keys_are_random_and_distinct(make_key):
    keys = [await make_key("acme") for _ in range(20)]
    assert len({k.key for k in keys}) == 20
    assert all(len(k.key.rsplit("_", 1)[1]) == 2 * api_keys.RANDOM_BYTES for k in keys)


@pytest.mark.parametrize("org", ["", "a_b", "has space", "tab\t", "ünïcode", "x" * 101])
async def test_organisations_that_cannot_be_in_a_key_are_refused(org):
    with pytest.raises(errors.ValidationError, match="organisation"):
        api_keys.new_key(org, environment="prod")


async def _as_app_role(db_url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET ROLE foreman_app")
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM api_key",
        "SELECT count(*) FROM api_key",
        "INSERT INTO api_key (id, org_id, key_hash, prefix, created_at)"
        " VALUES (gen_random_uuid(), 'x', sha256('k'), 'p', 0)",
        "UPDATE api_key SET revoked_at = NULL",
        "DELETE FROM api_key",
    ],
)
async def test_the_request_role_cannot_touch_the_key_table(db_url, make_key, sql):
    await make_key("acme")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _as_app_role(db_url, sql)


async def test_the_request_role_can_only_look_up_a_key_it_holds(db_url, make_key):
    new = await make_key("acme")
    found = await _as_app_role(
        db_url, "SELECT org_id FROM foreman_api_key_lookup($1)", api_keys.hash_key(new.key)
    )
    assert [r["org_id"] for r in found] == ["acme"]  # type: ignore[attr-defined]
    other = await _as_app_role(
        db_url, "SELECT org_id FROM foreman_api_key_lookup($1)", api_keys.hash_key(new.key + "x")
    )
    assert other == []


async def test_a_temporary_table_cannot_shadow_the_key_table(db_url, make_key):
    # The lookup function pins its search_path: a caller's temp table named api_key is ignored.
    new = await make_key("acme")
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET ROLE foreman_app")
        await conn.execute(
            "CREATE TEMP TABLE api_key (id uuid, org_id text, key_hash bytea, revoked_at bigint)"
        )
        forged = api_keys.hash_key("fmn_x_evil_forged")
        await conn.execute(
            "INSERT INTO api_key VALUES (gen_random_uuid(), 'evil', $1, NULL)", forged
        )
        assert await conn.fetch("SELECT * FROM foreman_api_key_lookup($1)", forged) == []
        real = await conn.fetch(
            "SELECT org_id FROM foreman_api_key_lookup($1)", api_keys.hash_key(new.key)
        )
        assert [r["org_id"] for r in real] == ["acme"]
    finally:
        await conn.close()


# ---------------------------------------------------------------- registered mode


async def test_a_registered_key_works_and_names_its_organisation(app_with, make_key):
    new = await make_key("acme")
    async with app_with(auth_mode="registered") as client:
        run = await create_run(client, headers=bearer(new.key))
        assert run["orgId"] == "acme"
        response = await client.get(f"{API}/runs/{run['id']}", headers={"x-api-key": new.key})
        assert response.status_code == 200
        assert response.json()["id"] == run["id"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("fmn_test_acme_" + "0" * 40, "unknown or revoked"),  # well-formed, never registered
        ("fmn_test_orga_k1", "unknown or revoked"),  # fine in format mode, not registered
        ("test-api-key", "invalid api key format"),  # the test key is format mode only
        ("not-a-key", "invalid api key format"),
    ],
)
async def test_unregistered_keys_get_401(app_with, make_key, key, message):
    await make_key("acme")
    async with app_with(auth_mode="registered") as client:
        for path in ("/runs", "/tasks", "/config"):
            assert_error(await client.get(f"{API}{path}", headers=bearer(key)), 401, message)
        assert_error(await client.get(f"{API}/runs"), 401, "missing api key")
        # health stays open
        assert (await client.get("/health")).status_code == 200


async def test_a_key_whose_org_part_was_altered_is_refused(app_with, make_key):
    new = await make_key("acme")
    forged = new.key.replace("_acme_", "_evil_")
    async with app_with(auth_mode="registered") as client:
        assert_error(await client.get(f"{API}/runs", headers=bearer(forged)), 401, "unknown")


async def test_a_revoked_key_gets_401_once_the_cache_expires(app_with, owner, make_key):
    new = await make_key("acme")
    ttl_s = 0.3
    async with app_with(auth_mode="registered", auth_cache_ttl_s=ttl_s) as client:
        assert (await client.get(f"{API}/runs", headers=bearer(new.key))).status_code == 200
        await api_keys.revoke_api_key(owner, new.id, now=1)
        await asyncio.sleep(ttl_s + 0.1)
        response = await client.get(f"{API}/runs", headers=bearer(new.key))
        assert_error(response, 401, "unknown or revoked api key")


async def test_answers_are_cached_so_the_hot_path_asks_no_query(app_with, owner, make_key):
    # Within the TTL the key table is not asked again: a revocation is seen only after it
    # (the documented window). The cache works by digest, so another key is looked up at once.
    new = await make_key("acme")
    other = await make_key("acme")
    async with app_with(auth_mode="registered", auth_cache_ttl_s=60) as client:
        assert (await client.get(f"{API}/runs", headers=bearer(new.key))).status_code == 200
        await api_keys.revoke_api_key(owner, new.id, now=1)
        await api_keys.revoke_api_key(owner, other.id, now=1)
        assert (await client.get(f"{API}/runs", headers=bearer(new.key))).status_code == 200
        assert (await client.get(f"{API}/runs", headers=bearer(other.key))).status_code == 401


async def test_registered_mode_needs_the_database_only_on_a_cache_miss(app_with, make_key, owner):
    new = await make_key("acme")
    async with app_with(auth_mode="registered", auth_cache_ttl_s=60) as client:
        assert (await client.get(f"{API}/config", headers=bearer(new.key))).status_code == 200
        # The table's row is gone, but the cached answer stands until the TTL ends.
        await owner.execute("DELETE FROM api_key")
        assert (await client.get(f"{API}/config", headers=bearer(new.key))).status_code == 200


async def test_x_org_id_must_match_the_registered_organisation(app_with, make_key):
    new = await make_key("acme")
    async with app_with(auth_mode="registered") as client:
        headers = {**bearer(new.key), "x-org-id": "other"}
        assert_error(await client.get(f"{API}/runs", headers=headers), 403, "x-org-id")
        headers = {**bearer(new.key), "x-org-id": "acme"}
        assert (await client.get(f"{API}/runs", headers=headers)).status_code == 200


async def test_format_mode_ignores_the_key_table(client, make_key):
    # The default (SPEC section 3): any well-formed key is accepted, registered or not.
    assert (await client.get(f"{API}/runs", headers=HEADERS_A)).status_code == 200
    assert (await client.get(f"{API}/runs", headers=bearer("test-api-key"))).status_code == 200


def test_key_cache_bounds_its_memory():
    now = [0.0]
    cache = auth.KeyCache(5.0, max_entries=100, clock=lambda: now[0])
    for i in range(1_000):
        cache.put(i.to_bytes(32, "big"), None)
    assert len(cache._entries) <= 100
    cache.put(b"k" * 32, "acme")
    assert cache.get(b"k" * 32) == "acme"
    now[0] = 5.0
    assert cache.get(b"k" * 32) is auth.MISS
    assert auth.KeyCache(0).get(b"k" * 32) is auth.MISS


# ---------------------------------------------------------------- logs


async def test_keys_are_never_logged_only_org_and_fingerprint(app_with, owner, make_key, caplog):
    new = await make_key("acme")
    revoked = await make_key("acme")
    await api_keys.revoke_api_key(owner, revoked.id, now=1)
    unknown = "fmn_test_acme_" + "f" * 40
    caplog.set_level(logging.DEBUG)
    async with app_with(auth_mode="registered") as client:
        for key in (new.key, revoked.key, unknown):
            await client.get(f"{API}/runs", headers=bearer(key))
            await client.get(f"{API}/runs", headers={"x-api-key": key})
    everything = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    for key in (new.key, revoked.key, unknown):
        assert key not in everything
        assert key.rsplit("_", 1)[1] not in everything
    access = [r for r in caplog.records if r.name == "foreman.access"]
    assert any(getattr(r, "key_fp", None) == new.fingerprint for r in access)
    assert any(getattr(r, "org_id", None) == "acme" for r in access)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("revoked" in m for m in refusals)
    assert any("unknown" in m for m in refusals)


# ---------------------------------------------------------------- the CLI


def _cli(db_url: str, *args: str):
    env = {"FOREMAN_DATABASE_URL": db_url, "FOREMAN_AUTO_MIGRATE": "false"}
    return CliRunner().invoke(keys_cli.app, list(args), env=env)


async def test_cli_create_list_revoke(db_url, owner, app_with):
    created = await asyncio.to_thread(_cli, db_url, "create", "--org", "acme", "--name", "etl")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("fmn_")
    assert "_acme_" in key
    assert "shown only this once" in created.stderr
    (row,) = await owner.fetch("SELECT id, prefix FROM api_key")

    listed = await asyncio.to_thread(_cli, db_url, "list", "--org", "acme")
    assert listed.exit_code == 0
    assert str(row["id"]) in listed.stdout
    assert row["prefix"] in listed.stdout
    assert key not in listed.stdout
    assert auth.fingerprint(key) in listed.stdout
    assert "active" in listed.stdout

    async with app_with(auth_mode="registered", auth_cache_ttl_s=0) as client:
        assert (await client.get(f"{API}/runs", headers=bearer(key))).status_code == 200
        revoked = await asyncio.to_thread(_cli, db_url, "revoke", row["prefix"])
        assert revoked.exit_code == 0, revoked.output
        assert "revoked" in revoked.stdout
        assert (await client.get(f"{API}/runs", headers=bearer(key))).status_code == 401
    again = await asyncio.to_thread(_cli, db_url, "list")
    assert "revoked" in again.stdout


async def test_cli_revoke_by_id_or_whole_key_and_refuses_ambiguity(db_url, owner):
    keys = []
    for _ in range(2):
        result = await asyncio.to_thread(_cli, db_url, "create", "--org", "acme", "--env", "prod")
        keys.append(result.stdout.strip())
    ambiguous = await asyncio.to_thread(_cli, db_url, "revoke", "fmn_prod_acme_")
    assert ambiguous.exit_code == 1
    assert "2 keys match" in ambiguous.stderr
    assert await owner.fetchval("SELECT count(*) FROM api_key WHERE revoked_at IS NOT NULL") == 0

    by_key = await asyncio.to_thread(_cli, db_url, "revoke", keys[0])
    assert by_key.exit_code == 0, by_key.output
    key_id = await owner.fetchval(
        "SELECT id FROM api_key WHERE key_hash = $1", api_keys.hash_key(keys[1])
    )
    by_id = await asyncio.to_thread(_cli, db_url, "revoke", str(key_id))
    assert by_id.exit_code == 0, by_id.output
    assert await owner.fetchval("SELECT count(*) FROM api_key WHERE revoked_at IS NULL") == 0

    missing = await asyncio.to_thread(_cli, db_url, "revoke", str(uuid.uuid4()))
    assert missing.exit_code == 1
    assert "no api key matches" in missing.stderr.lower()
    # LIKE wildcards in a prefix match themselves only
    wildcard = await asyncio.to_thread(_cli, db_url, "revoke", "fmn%")
    assert wildcard.exit_code == 1


async def test_cli_refuses_an_organisation_with_an_underscore(db_url, owner):
    result = await asyncio.to_thread(_cli, db_url, "create", "--org", "my_org")
    assert result.exit_code == 1
    assert "organisation" in result.stderr
    assert await owner.fetchval("SELECT count(*) FROM api_key") == 0
