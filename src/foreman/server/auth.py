"""API keys and organisations (SPEC section 3), the rate limit, and what callers may see.

Two modes (FOREMAN_AUTH_MODE, docs/security.md):
- ``format`` (default): SPEC section 3's trusted-environment check; the key's third part is the org.
- ``registered``: the key must also be one made by ``foreman keys create`` and not revoked. Answers
  of the key table are cached in the process for FOREMAN_AUTH_CACHE_TTL_S (5 s), so the hot path
  costs no query, and a revoked key stops working everywhere within that time.

Keys never reach a log: a caller is logged as its organisation and a short fingerprint.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from foreman import errors
from foreman.server import context, ratelimit
from foreman.server.context import CONTEXT_KEY, Caller
from foreman.settings import Settings
from foreman.store import api_keys, db
from foreman.store.pool import Pool

logger = logging.getLogger(__name__)

TEST_KEY = "test-api-key"
TEST_ORG = "test-org"
MAX_KEY_LENGTH = 512
LOOKUP_TIMEOUT_S = 5.0
MAX_CACHED_KEYS = 10_000

Connection = ASGIConnection[Any, Any, Any, Any]


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def org_for_key(key: str, *, allow_test_key: bool) -> str:
    """The organisation of a key in the fmn_<environment>_<orgId>_<random> format."""
    if allow_test_key and hmac.compare_digest(_key_bytes(key), _key_bytes(TEST_KEY)):
        return TEST_ORG
    parts = key.split("_")
    if (
        len(key) > MAX_KEY_LENGTH
        or len(parts) < 4
        or parts[0] != "fmn"
        or not all(parts[1:4])
        or not key.isprintable()
    ):
        raise errors.UnauthorizedError("Invalid API key format")
    return parts[2]


def _ascii_key(value: bytes) -> str:
    # Header bytes have no declared charset: the same bytes read as Latin-1 or as UTF-8 would
    # name two organisations ("ørg" or its mojibake), so a key is ASCII or it is refused.
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise errors.UnauthorizedError("Invalid API key format: an API key is ASCII") from None


def key_headers(scope: Scope) -> tuple[str | None, str | None, bytes | None]:
    """The ``Authorization: Bearer`` key, the ``x-api-key`` key and the raw ``x-org-id`` of a
    request, in one pass over the raw ASGI headers (names arrive lower-cased; reading them here
    instead of through Litestar's Headers saves building that mapping on every request)."""
    authorization = api_key = org_id = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value if authorization is None else authorization
        elif name == b"x-api-key":
            api_key = value if api_key is None else api_key
        elif name == b"x-org-id":
            org_id = value if org_id is None else org_id
    bearer = None
    if authorization:
        scheme, _, value = authorization.partition(b" ")
        value = value.strip()
        if value and scheme.lower() == b"bearer":
            bearer = _ascii_key(value)
    return bearer, (_ascii_key(api_key) if api_key else None), org_id


def fingerprint(key: str) -> str:
    """The key's short fingerprint, as logs and `foreman keys list` show it."""
    return api_keys.fingerprint(api_keys.hash_key(key))


class _Miss:
    pass


MISS: Final = _Miss()


class KeyCache:
    """Answers of the key table by key digest (an org, or None for unknown/revoked), for ttl_s."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = MAX_CACHED_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[bytes, tuple[str | None, float]] = {}

    def get(self, digest: bytes) -> str | _Miss | None:
        """The cached answer, or MISS when there is none or it is older than ttl_s."""
        entry = self._entries.get(digest)
        if entry is None or entry[1] <= self.clock():
            return MISS
        return entry[0]

    def put(self, digest: bytes, org_id: str | None) -> None:
        """Remember an answer (unknown keys too, so that a repeated bad key costs no query)."""
        if self.ttl_s <= 0:
            return
        now = self.clock()
        if len(self._entries) >= self.max_entries:
            # Random bad keys must not grow memory: drop what expired, then the oldest half.
            self._entries = {d: e for d, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= self.max_entries:
                self._entries = dict(list(self._entries.items())[self.max_entries // 2 :])
        self._entries[digest] = (org_id, now + self.ttl_s)


class Authenticator:
    """How this process recognises callers and limits their rate (one per app, made in the
    lifespan: it holds the key cache and the rate buckets)."""

    def __init__(self, settings: Settings, *, pool: Pool[db.Connection]) -> None:
        self.settings = settings
        self.pool = pool
        self.registered = settings.auth_mode == "registered"
        self.cache = KeyCache(settings.auth_cache_ttl_s)
        rate = settings.rate()
        self.limiter = None if rate is None else ratelimit.RateLimiter(rate)
        # Callers of well-formed keys in format mode: a pure function of the key, so no expiry;
        # the hash behind the fingerprint is then paid once per key, not once per request.
        self._format_callers: dict[str, Caller] = {}

    async def authenticate(self, scope: Scope) -> Caller:
        """The caller of a request's key (401), checked against x-org-id (403) and the rate (429)."""
        bearer, api_key, claimed_org = key_headers(scope)
        key = bearer or api_key
        if key is None:
            raise errors.UnauthorizedError("Missing API key")
        if self.registered:
            caller = await self.registered_caller(key)
        else:
            caller = self.format_caller(key)
        if bearer is not None and api_key is not None and api_key != bearer:
            self._check_same_org(caller, api_key)
        if claimed_org is not None and claimed_org.decode("latin-1") != caller.org_id:
            raise errors.ForbiddenError("x-org-id does not match the organisation of the API key")
        if self.limiter is not None:
            self.limiter.check(caller.org_id)
        return caller

    def _check_same_org(self, caller: Caller, other: str) -> None:
        # Two keys are fine when they are of one organisation; which one would win is otherwise a
        # guess a proxy and the server may make differently.
        allow_test_key = self.settings.allow_test_key and not self.registered
        try:
            same = org_for_key(other, allow_test_key=allow_test_key) == caller.org_id
        except errors.UnauthorizedError:
            same = False
        if not same:
            raise errors.UnauthorizedError(
                "Authorization and x-api-key carry keys of different organisations: send one key"
            )

    def format_caller(self, key: str) -> Caller:
        """SPEC section 3's format check only."""
        caller = self._format_callers.get(key)
        if caller is None:
            org_id = org_for_key(key, allow_test_key=self.settings.allow_test_key)
            caller = Caller(org_id=org_id, fingerprint=fingerprint(key), registered=False)
            if len(self._format_callers) >= MAX_CACHED_KEYS:
                self._format_callers.clear()  # many made-up keys must not grow memory
            self._format_callers[key] = caller
        return caller

    async def registered_caller(self, key: str) -> Caller:
        """The caller of a registered, unrevoked key; 401 for any other key."""
        claimed_org = org_for_key(key, allow_test_key=False)  # garbage never reaches the database
        digest = api_keys.hash_key(key)
        org_id = await self.registered_org(digest, claimed_org=claimed_org)
        if org_id is None:
            raise errors.UnauthorizedError("Unknown or revoked API key")
        return Caller(org_id=org_id, fingerprint=api_keys.fingerprint(digest), registered=True)

    async def registered_org(self, digest: bytes, *, claimed_org: str) -> str | None:
        """The organisation of a registered, unrevoked key's digest (cached like every lookup),
        None for any other; the dashboard's sessions keep only the digest (server/ui/session.py)."""
        org_id = self.cache.get(digest)
        if isinstance(org_id, _Miss):
            org_id = await self._lookup(digest, claimed_org=claimed_org)
            self.cache.put(digest, org_id)
        return org_id

    async def _lookup(self, digest: bytes, *, claimed_org: str) -> str | None:
        # Any pooled connection will do: the lookup function ignores the bound organisation.
        with db.translate_errors():
            async with self.pool.acquire(timeout=LOOKUP_TIMEOUT_S) as conn:
                record = await api_keys.lookup_api_key(conn, digest)
        # The digest already matched in the index; the constant-time comparison makes sure that no
        # other row could ever be accepted for this key, whatever the index did.
        ok = (
            record is not None
            and not record.revoked
            and hmac.compare_digest(record.key_hash, digest)
            and record.org_id == claimed_org
        )
        fp = api_keys.fingerprint(digest)
        if ok:
            logger.debug("registered API key accepted", extra={"org_id": claimed_org, "key_fp": fp})
            return claimed_org
        reason = "unknown" if record is None else "revoked" if record.revoked else "mismatched"
        logger.info("%s API key refused", reason, extra={"org_id": claimed_org, "key_fp": fp})
        return None


def authenticated(app: ASGIApp) -> ASGIApp:
    """Route middleware: authenticate before the path, query or body is looked at.

    It runs before Litestar parses parameters, so a caller without a valid key gets 401
    (SPEC section 3) and never learns whether its ids or body would have been valid. It does
    what a guard would, without the copy of the route handler Litestar makes for every guard
    call (benchmarks/README.md, "Notes moved from server/").
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            auth: Authenticator = Litestar.from_scope(scope).state.foreman.auth
            caller = await auth.authenticate(scope)
            state = scope["state"]
            state[CONTEXT_KEY] = state[CONTEXT_KEY].with_caller(caller)
        await app(scope, receive, send)

    return middleware


def request_org(connection: Connection) -> str:
    """The organisation of the caller the route's ``authenticated`` middleware found."""
    caller: Caller | None = connection.scope["state"][CONTEXT_KEY].caller
    if caller is None:
        # A route without the middleware must not let anyone in.
        logger.error("route %s has no authenticated middleware", connection.scope["path"])
        raise errors.UnauthorizedError("API key could not be verified")
    return caller.org_id


def may_see_redis_password(connection: Connection) -> bool:
    """Whether /api/v1/config may include REDIS_PASSWORD (FOREMAN_EXPOSE_REDIS_PASSWORD)."""
    policy: str = connection.app.state.foreman.settings.expose_redis_password
    if policy == "registered":
        caller = context.context_of(connection.scope).caller
        return caller is not None and caller.registered
    return policy == "always"
