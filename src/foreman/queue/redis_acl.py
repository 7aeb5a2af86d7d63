"""Redis ACL users per organisation (FOREMAN_REDIS_ACL=per-org, docs/security.md).

Each organisation gets a Redis user allowed only the keys and channels of its own queues
(``bull:<its queue>:*``) and the commands BullMQ needs, minus every command that reaches across
keys (SCAN, KEYS, FLUSHALL, ...). ``/api/v1/config/redis`` hands that user to the organisation's
key holders instead of the admin password.

Passwords are derived, not stored: ``HMAC-SHA256(FOREMAN_REDIS_ACL_SECRET, user | generation)``,
a generation being one FOREMAN_REDIS_ACL_ROTATE_S period. Every replica computes the same
password with no shared state and no query, and Redis keeps only SHA-256 hashes of them. A user
accepts the current and the previous generation's password, so a password handed out stays
valid for at least one period; a worker whose password was rotated out asks the server again
(worker/_bullmq.py, on WRONGPASS).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from foreman import background, errors, ids
from foreman.queue import naming
from foreman.queue.bullmq import KEY_PREFIX, redis_client
from foreman.settings import Settings

logger = logging.getLogger(__name__)

USER_PREFIX = "foreman-org:"
ROTATE_CHECKS = 10  # per rotation period, so a period begins at most a tenth late
MAX_ROTATE_CHECK_S = 60.0
ENSURE_TIMEOUT_S = 3.0
# What a BullMQ producer or worker (Python or Node) runs, as Redis ACL categories, then every
# command taken away that is not bound by the key patterns and would reach other organisations'
# keys or the server itself (tests/integration/test_redis_acl.py lists what is left keyless).
COMMAND_RULES: tuple[str, ...] = (
    "+@read", "+@write", "+@scripting", "+@transaction", "+@connection", "+@blocking",
    "+@pubsub",
    "-@dangerous", "-@admin",
    # Keyless, yet they list or touch keys and channels of every organisation.
    "-scan", "-randomkey", "-dbsize", "-pubsub", "-swapdb", "-flushdb", "-flushall",
    "-function", "-script|flush", "-script|kill", "-script|debug", "-fcall", "-fcall_ro",
    # Client-side caching in broadcast mode would report every key written, any organisation's.
    "-client|tracking", "-client|caching",
    # What the BullMQ clients ask on connecting (the Redis version; the connection's name).
    "+info", "+client|setname", "+client|getname", "+client|id",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class OrgCredentials:
    """The Redis user of one organisation and its current password."""

    username: str
    password: str


def generation(now_ms: int, rotate_s: float) -> int:
    """The rotation period now_ms falls in."""
    return int(now_ms // round(rotate_s * 1000))


def org_password(secret: str, username: str, period: int) -> str:
    """The password of username in one rotation period."""
    message = f"{username}\x00{period}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _hashed(password: str) -> str:
    # "#<sha256>": Redis stores the hash it is given, so the password never travels to Redis.
    return "#" + hashlib.sha256(password.encode()).hexdigest()


class RedisAcl:
    """Creates, updates and rotates the per-organisation Redis users over an admin connection."""

    def __init__(
        self,
        client: redis_asyncio.Redis,
        *,
        secret: str,
        queue_names: Sequence[str],
        rotate_s: float,
    ) -> None:
        self._redis = client
        self._secret = secret
        self._queue_names = tuple(queue_names)  # the configured base names (task, result)
        self.rotate_s = rotate_s
        self._user_prefix = f"{USER_PREFIX}{naming.safe_queue_name(self._queue_names[0])}:"
        self._rotated: int | None = None  # the last generation rotate() applied
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisAcl:
        """The ACL manager of settings (FOREMAN_REDIS_ACL=per-org), as the configured admin."""
        assert settings.redis_acl_secret is not None  # checked by Settings
        return cls(
            redis_client(settings),
            secret=settings.redis_acl_secret,
            queue_names=(settings.task_queue_name, settings.result_queue_name),
            rotate_s=settings.redis_acl_rotate_s,
        )

    def username(self, org_id: str) -> str:
        """The Redis user of org_id: ``foreman-org:<base>:<its task queue>``, unique per
        organisation and per deployment (the colon never occurs in a queue name, so another
        deployment's TASK_QUEUE_NAME is never mistaken for a prefix of ours)."""
        return self._user_prefix + naming.org_queue_name(self._queue_names[0], org_id)

    def credentials(self, org_id: str, *, now_ms: int) -> OrgCredentials:
        """org_id's user and its password of the current period."""
        username = self.username(org_id)
        period = generation(now_ms, self.rotate_s)
        return OrgCredentials(username, org_password(self._secret, username, period))

    def _passwords(self, username: str, *, now_ms: int) -> list[str]:
        period = generation(now_ms, self.rotate_s)
        return [_hashed(org_password(self._secret, username, p)) for p in (period, period - 1)]

    def rules(self, org_id: str, *, now_ms: int) -> list[str]:
        """The whole ACL SETUSER rule list of org_id's user."""
        queues = [naming.org_queue_name(base, org_id) for base in self._queue_names]
        return [
            "reset",  # no rule of an earlier version of this list survives
            "on",
            *self._passwords(self.username(org_id), now_ms=now_ms),
            *(f"~{KEY_PREFIX}:{queue}:*" for queue in queues),
            "resetchannels",
            *(f"&{KEY_PREFIX}:{queue}:*" for queue in queues),
            *COMMAND_RULES,
        ]

    async def ensure(self, org_id: str, *, now_ms: int) -> OrgCredentials:
        """Create (or bring up to date) org_id's user; its credentials. One round trip.

        Run whenever credentials are handed out, so that a Redis that restarted without its
        ACLs, or a new release's rules, are set again by the next worker that asks.
        """
        try:
            async with asyncio.timeout(ENSURE_TIMEOUT_S):
                await _setuser(
                    self._redis, self.username(org_id), self.rules(org_id, now_ms=now_ms)
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise errors.UnavailableError(
                "Redis unavailable: the organisation's Redis user could not be set up"
            ) from exc
        return self.credentials(org_id, now_ms=now_ms)

    async def rotate(self, *, now_ms: int) -> int:
        """Give every organisation user of this deployment the passwords of now's period (once
        per period per process); how many users were rotated."""
        period = generation(now_ms, self.rotate_s)
        if self._rotated == period:
            return 0
        users: list[Any] = await self._redis.acl_users()
        ours = [u for u in map(_text, users) if u.startswith(self._user_prefix)]
        if ours:
            async with self._redis.pipeline(transaction=False) as pipe:
                for username in ours:
                    _setuser(
                        pipe, username, ["resetpass", *self._passwords(username, now_ms=now_ms)]
                    )
                await pipe.execute()
        self._rotated = period
        if ours:
            logger.info("rotated the Redis passwords of %d organisation user(s)", len(ours))
        return len(ours)

    def start(self) -> None:
        """Rotate in the background (checked ROTATE_CHECKS times per period) until close()."""
        self._task = asyncio.create_task(self._loop(), name="foreman-redis-acl")

    async def close(self) -> None:
        """Stop rotating and close the admin connection."""
        task, self._task = self._task, None
        await background.cancel_and_wait(task)
        await self._redis.aclose()

    async def open_default_user(self) -> bool:
        """Whether Redis's ``default`` user is enabled without a password: then anyone who can
        reach Redis is admin, and per-organisation users protect nothing (warned at start)."""
        info: Any = await self._redis.acl_getuser("default")
        flags = set(map(_text, (info or {}).get("flags", [])))
        return {"on", "nopass"} <= flags

    async def _warn_open_default_user(self) -> None:
        try:
            if await self.open_default_user():
                logger.warning(
                    "FOREMAN_REDIS_ACL=per-org, but Redis's default user needs no password: "
                    "anyone who can reach Redis is admin. Set one (requirepass) or disable it."
                )
        except Exception as exc:  # Redis down or the admin may not read ACLs: say so, go on
            logger.warning("could not check Redis's default user: %s", exc)

    async def _loop(self) -> None:
        await self._warn_open_default_user()
        while True:
            try:
                await self.rotate(now_ms=ids.now_ms())
            except Exception as exc:  # Redis down: the next check tries again
                logger.warning("rotating the Redis passwords of organisations failed: %s", exc)
            await asyncio.sleep(min(self.rotate_s / ROTATE_CHECKS, MAX_ROTATE_CHECK_S))


def _setuser(client: Any, username: str, rules: Sequence[str]) -> Any:
    # ACL SETUSER with a whole rule list: redis-py's acl_setuser always adds "on" or "off" and
    # cannot express "reset" or channel rules in this order.
    return client.execute_command("ACL", "SETUSER", username, *rules)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
