"""Per-organisation Redis users (queue/redis_acl.py) against a real Redis 7 of our own, whose
default user needs a password: rules, derived passwords, rotation, and what a user may run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis_asyncio
from pydantic import ValidationError
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from foreman.queue.naming import org_queue_name
from foreman.queue.redis_acl import RedisAcl, generation
from foreman.settings import Settings
from tests.e2e.conftest import OwnRedis, running_own_redis

ADMIN = "admin-" + uuid.uuid4().hex
SECRET = "s" * 40
DAY_MS = 86_400_000
# Every command without keys an organisation's user may run, reviewed: none lists, reads or
# changes another organisation's keys or channels, or the server's settings. A Redis release that
# adds a keyless command to a category the rules grant fails here until it is reviewed.
REVIEWED_KEYLESS = {
    "asking", "auth", "client|getname", "client|getredir", "client|help", "client|id",
    "client|info", "client|reply", "client|setname", "client|trackinginfo", "command",
    "command|count", "command|docs", "command|getkeys", "command|getkeysandflags", "command|help",
    "command|info", "command|list", "discard", "echo", "exec", "hello", "info", "lolwut", "multi",
    "ping", "punsubscribe", "quit", "readonly", "readwrite", "reset", "script|exists",
    "script|help", "script|load", "select", "unsubscribe", "unwatch", "wait",
    # Redis 7.2+
    "client|no-touch", "client|setinfo", "waitaof",
}  # fmt: skip


@pytest.fixture(scope="module")
def redis7() -> Iterator[OwnRedis]:
    with running_own_redis(password=ADMIN) as server:
        yield server


@pytest.fixture
async def admin(redis7) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis(port=redis7.port, password=ADMIN, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def acl(admin) -> RedisAcl:
    return RedisAcl(
        admin, secret=SECRET, queue_names=("foreman:tasks", "foreman:results"), rotate_s=86_400
    )


async def _as(redis7: OwnRedis, username: str, password: str) -> redis_asyncio.Redis:
    client = redis_asyncio.Redis(
        port=redis7.port, username=username, password=password, decode_responses=True
    )
    await client.ping()
    return client


async def test_a_user_reaches_its_own_queues_only(redis7, acl):
    org = f"acme-{uuid.uuid4().hex[:6]}"
    user = await acl.ensure(org, now_ms=DAY_MS)
    client = await _as(redis7, user.username, user.password)
    try:
        for base in ("foreman:tasks", "foreman:results"):
            key = f"bull:{org_queue_name(base, org)}:x"
            await client.set(key, "1")
            assert await client.get(key) == "1"
        with pytest.raises(NoPermissionError):
            await client.get(f"bull:{org_queue_name('foreman:tasks', 'other')}:x")
        with pytest.raises(NoPermissionError):
            await client.get("anything-else")
    finally:
        await client.aclose()


async def test_passwords_are_derived_alike_everywhere_and_rotated(redis7, admin, acl):
    org = f"rot-{uuid.uuid4().hex[:6]}"
    first = await acl.ensure(org, now_ms=DAY_MS)
    # Another replica (another object, same secret) derives the same password, stores nothing.
    twin = RedisAcl(admin, secret=SECRET, queue_names=("foreman:tasks", "x"), rotate_s=86_400)
    assert twin.credentials(org, now_ms=DAY_MS + 1000) == first
    assert await acl.rotate(now_ms=DAY_MS) >= 1
    assert await acl.rotate(now_ms=DAY_MS + 5) == 0  # once per period per process
    # Next period: the new password works, and the one handed out before still does.
    assert await acl.rotate(now_ms=2 * DAY_MS) >= 1
    second = acl.credentials(org, now_ms=2 * DAY_MS)
    assert second.password != first.password
    for password in (first.password, second.password):
        await (await _as(redis7, first.username, password)).aclose()
    # One period later the first is refused: a worker holding it asks the server again.
    await acl.rotate(now_ms=3 * DAY_MS)
    with pytest.raises(AuthenticationError):
        await _as(redis7, first.username, first.password)
    await (await _as(redis7, first.username, second.password)).aclose()
    # A Redis that lost its users (a restart without an ACL file) gets them back on the next ask.
    await admin.execute_command("ACL", "DELUSER", first.username)
    again = await acl.ensure(org, now_ms=3 * DAY_MS)
    await (await _as(redis7, again.username, again.password)).aclose()
    assert generation(3 * DAY_MS, 86_400) == 3


async def test_every_keyless_command_a_user_may_run_was_reviewed(admin, acl):
    user = await acl.ensure("review", now_ms=DAY_MS)
    allowed = set()
    for name, info in (await admin.command()).items():
        entries = [(name, info["first_key_pos"], info["key_specifications"], info["arity"])]
        entries += [(s[0], s[3], s[8], s[1]) for s in info["subcommands"]]
        for command, first_key, key_specs, arity in entries:
            if first_key or key_specs:
                continue  # bound by the key patterns
            parts = command.split("|")
            padding = ["0"] * max(0, abs(arity) - len(parts))
            try:
                answer = await admin.execute_command(
                    "ACL", "DRYRUN", user.username, *parts, *padding
                )
            except ResponseError:
                continue
            if answer == "OK":
                allowed.add(command)
    assert allowed - REVIEWED_KEYLESS == set()
    assert {"scan", "keys", "flushall", "randomkey", "client|list", "config|get"} & allowed == set()


def test_per_org_acl_needs_bullmq_a_secret_and_queues_per_organisation():
    bullmq = {"queue_backend": "bullmq"}
    with pytest.raises(ValidationError, match="FOREMAN_QUEUE_BACKEND=bullmq"):
        Settings(redis_acl="per-org", redis_acl_secret=SECRET)
    with pytest.raises(ValidationError, match="FOREMAN_REDIS_ACL_SECRET"):
        Settings(redis_acl="per-org", **bullmq)
    with pytest.raises(ValidationError, match="FOREMAN_REDIS_ACL_SECRET"):
        Settings(redis_acl="per-org", redis_acl_secret="short", **bullmq)
    with pytest.raises(ValidationError, match="FOREMAN_QUEUE_PER_ORG"):
        Settings(redis_acl="per-org", redis_acl_secret=SECRET, queue_per_org=False, **bullmq)
    settings = Settings(redis_acl="per-org", redis_acl_secret=SECRET, **bullmq)
    assert settings.redis_acl == "per-org"
    assert SECRET not in repr(settings)


async def test_rotation_leaves_users_of_another_deployment_alone(redis7, admin, acl):
    mine = await acl.ensure(f"mine-{uuid.uuid4().hex[:6]}", now_ms=DAY_MS)
    # Another Foreman on the same Redis, its TASK_QUEUE_NAME beginning like ours.
    theirs = f"foreman-org:foreman-tasks-eu:foreman-tasks-eu-{uuid.uuid4().hex[:6]}"
    await admin.execute_command("ACL", "SETUSER", theirs, "on", ">their-password", "+ping")
    try:
        assert await acl.rotate(now_ms=5 * DAY_MS) >= 0
        await (await _as(redis7, theirs, "their-password")).aclose()
        # Ours was rotated, however long no server ran (its password is four periods old).
        with pytest.raises(AuthenticationError):
            await _as(redis7, mine.username, mine.password)
    finally:
        await admin.execute_command("ACL", "DELUSER", theirs)


async def test_an_open_default_user_is_noticed(acl, redis_server):
    # The admin password protects the default user here; the shared test Redis has none.
    assert await acl.open_default_user() is False
    shared = redis_asyncio.Redis(
        host=redis_server.host, port=redis_server.port, decode_responses=True
    )
    try:
        probe = RedisAcl(shared, secret=SECRET, queue_names=("q", "r"), rotate_s=86_400)
        flags = (await shared.acl_getuser("default"))["flags"]
        assert await probe.open_default_user() is ("nopass" in flags)
    finally:
        await shared.aclose()
