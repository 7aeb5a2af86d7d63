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
from dataclasses import dataclass
from typing import Any, Final

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from foreman import errors
from foreman.server import ratelimit
from foreman.settings import Settings
from foreman.store import api_keys, db

logger = logging.getLogger(__name__)

TEST_KEY = "test-api-key"
TEST_ORG = "test-org"
MAX_KEY_LENGTH = 512
# Where the guard leaves the caller for the handler and the access log (scope state, per request).
_ORG_STATE_KEY = "foreman_org"
CALLER_STATE_KEY = "foreman_caller"
LOOKUP_TIMEOUT_S = 5.0
MAX_CACHED_KEYS = 10_000

Connection = ASGIConnection[Any, Any, Any, Any]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the organisation, a loggable fingerprint of the key, how it was checked."""

    org_id: str
    fingerprint: str
    registered: bool  # True when the key was found, unrevoked, in the key table


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


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header, straight from the ASGI scope.

    Server names arrive lower-cased; reading them here instead of through Litestar's Headers
    saves building that mapping on every request.
    """
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def key_from_headers(scope: Scope) -> str:
    """The key from ``Authorization: Bearer`` or ``x-api-key``; 401 when there is none."""
    authorization = header(scope, b"authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = header(scope, b"x-api-key")
    if not key:
        raise errors.UnauthorizedError("Missing API key")
    return key


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
    """How this process recognises callers and limits their rate (one per app)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = KeyCache(settings.auth_cache_ttl_s)
        rate = ratelimit.parse_rate(settings.rate_limit, burst=settings.rate_limit_burst)
        self.limiter = None if rate is None else ratelimit.RateLimiter(rate)
        # Callers of well-formed keys in format mode: a pure function of the key, so no expiry;
        # the hash behind the fingerprint is then paid once per key, not once per request.
        self._format_callers: dict[str, Caller] = {}

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

    async def registered_caller(self, key: str, *, pool: Any) -> Caller:
        """The caller of a registered, unrevoked key; 401 for any other key."""
        claimed_org = org_for_key(key, allow_test_key=False)  # garbage never reaches the database
        digest = api_keys.hash_key(key)
        org_id = self.cache.get(digest)
        if isinstance(org_id, _Miss):
            org_id = await self._lookup(digest, claimed_org=claimed_org, pool=pool)
            self.cache.put(digest, org_id)
        if org_id is None:
            raise errors.UnauthorizedError("Unknown or revoked API key")
        return Caller(org_id=org_id, fingerprint=api_keys.fingerprint(digest), registered=True)

    async def _lookup(self, digest: bytes, *, claimed_org: str, pool: Any) -> str | None:
        # Any pooled connection will do: the lookup function ignores the bound organisation.
        with db.translate_errors():
            async with pool.acquire(timeout=LOOKUP_TIMEOUT_S) as conn:
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

    def admit(self, scope: Scope, caller: Caller) -> str:
        """Check x-org-id (403) and the rate limit (429), then remember the caller."""
        claimed = header(scope, b"x-org-id")
        if claimed is not None and claimed != caller.org_id:
            raise errors.ForbiddenError("x-org-id does not match the organisation of the API key")
        if self.limiter is not None:
            self.limiter.check(caller.org_id)
        state = scope["state"]
        state[CALLER_STATE_KEY] = caller
        state[_ORG_STATE_KEY] = caller.org_id
        return caller.org_id


def authenticator(app: Litestar) -> Authenticator:
    """The app's Authenticator, made on first use (it holds the key cache and rate buckets)."""
    found: Authenticator | None = getattr(app.state, "foreman_auth", None)
    if found is None:
        found = Authenticator(app.state.foreman.settings)
        app.state.foreman_auth = found
    return found


def request_org(connection: Connection) -> str:
    """The caller's organisation; 403 when an x-org-id header names another one."""
    cached = connection.scope["state"].get(_ORG_STATE_KEY)
    if cached is not None:
        return str(cached)
    auth = authenticator(connection.app)
    if auth.settings.auth_mode == "registered":
        # Only the async guard can ask the key table; a route without it must not let anyone in.
        logger.error("route %s has no require_org guard", connection.scope["path"])
        raise errors.UnauthorizedError("API key could not be verified")
    return auth.admit(connection.scope, auth.format_caller(key_from_headers(connection.scope)))


async def require_org(connection: Connection, _: BaseRouteHandler) -> None:
    """Guard form of authenticate_connection (for a route outside the authenticated routers)."""
    await authenticate_connection(connection)


def authenticated(app: ASGIApp) -> ASGIApp:
    """Route middleware: authenticate before the path, query or body is looked at.

    It runs before Litestar parses parameters, so a caller without a valid key gets 401
    (SPEC section 3) and never learns whether its ids or body would have been valid. It does
    what a guard would, without the copy of the route handler Litestar makes for every guard
    call (about a tenth of the server's CPU on GET /tasks/:id in a profile).
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            await authenticate_scope(scope)
        await app(scope, receive, send)

    return middleware


async def authenticate_connection(connection: Connection) -> None:
    """Find the caller of a request (401/403/429 otherwise) and remember it in the scope."""
    await authenticate_scope(connection.scope)


async def authenticate_scope(scope: Scope) -> None:
    """authenticate_connection on the request's ASGI scope."""
    if scope["state"].get(_ORG_STATE_KEY) is not None:
        return
    app = Litestar.from_scope(scope)
    auth = authenticator(app)
    key = key_from_headers(scope)
    if auth.settings.auth_mode == "registered":
        caller = await auth.registered_caller(key, pool=app.state.foreman.pool)
    else:
        caller = auth.format_caller(key)
    auth.admit(scope, caller)


def caller_of(scope: Any) -> Caller | None:
    """The authenticated caller of a request, if any (for the access log)."""
    state = scope.get("state")
    return None if state is None else state.get(CALLER_STATE_KEY)


def may_see_redis_password(connection: Connection) -> bool:
    """Whether /api/v1/config may include REDIS_PASSWORD (FOREMAN_EXPOSE_REDIS_PASSWORD)."""
    policy = authenticator(connection.app).settings.expose_redis_password
    if policy == "registered":
        caller = caller_of(connection.scope)
        return caller is not None and caller.registered
    return policy == "always"
