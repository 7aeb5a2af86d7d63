"""Dashboard sessions: a signed cookie that names the organisation, never the key.

Logging in checks the key like an API call. The cookie then holds the organisation, whether the
key was a registered one (and then the key's SHA-256 digest, so that a revoked key ends its
sessions within FOREMAN_AUTH_CACHE_TTL_S), an expiry and the session's CSRF token, signed with
HMAC-SHA256 under FOREMAN_UI_SECRET. It is HttpOnly, SameSite=Strict, and Secure when the request
came over HTTPS (directly or, per X-Forwarded-Proto, through a proxy).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request

from foreman import errors
from foreman.server.auth import Authenticator
from foreman.server.context import Caller
from foreman.store import api_keys

COOKIE = "foreman_session"
LOGIN_FORM_S = 3600  # a login form's CSRF token is good this long


class LoginRequiredError(errors.UnauthorizedError):
    """Log in to see the dashboard."""


class _Payload(msgspec.Struct, array_like=True):
    org_id: str
    registered: bool
    digest: str  # hex SHA-256 of a registered key; "" for a format-mode key
    fingerprint: str
    csrf: str
    expires_s: float


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in dashboard user: the organisation and the token its forms must carry."""

    org_id: str
    fingerprint: str
    csrf: str


class Signer:
    """Signs and checks the session cookie and the login form's token."""

    def __init__(self, secret: str, *, session_s: float) -> None:
        self._key = hashlib.sha256(b"foreman-ui\x00" + secret.encode()).digest()
        self.session_s = session_s

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def sign(self, data: bytes) -> str:
        """data and its MAC, URL-safe."""
        return f"{_b64(data)}.{_b64(self._mac(data))}"

    def unsign(self, value: str) -> bytes | None:
        """The data of a value sign() made, or None."""
        data_part, _, mac_part = value.partition(".")
        try:
            data, mac = _unb64(data_part), _unb64(mac_part)
        except ValueError:
            return None
        return data if hmac.compare_digest(mac, self._mac(data)) else None

    def login_token(self, *, now: float) -> str:
        """The CSRF token of a login form (no session yet: signed and timed instead)."""
        return self.sign(f"login:{int(now)}".encode())

    def login_token_ok(self, token: str, *, now: float) -> bool:
        data = self.unsign(token)
        if data is None or not data.startswith(b"login:"):
            return False
        issued = int(data[6:].decode() or 0)
        return 0 <= now - issued <= LOGIN_FORM_S

    def cookie_for(self, caller: Caller, *, key: str, now: float) -> tuple[str, Session]:
        """A new session's cookie value for caller, who logged in with key."""
        digest = api_keys.hash_key(key).hex() if caller.registered else ""
        payload = _Payload(
            caller.org_id,
            caller.registered,
            digest,
            caller.fingerprint,
            secrets.token_urlsafe(24),
            now + self.session_s,
        )
        session = Session(caller.org_id, caller.fingerprint, payload.csrf)
        return self.sign(msgspec.msgpack.encode(payload)), session

    def payload(self, cookie: str | None, *, now: float) -> _Payload | None:
        """The cookie's payload when it is genuine and not expired."""
        if not cookie:
            return None
        data = self.unsign(cookie)
        if data is None:
            return None
        try:
            payload = msgspec.msgpack.decode(data, type=_Payload)
        except msgspec.DecodeError:
            return None
        return payload if payload.expires_s > now else None


async def current(request: Request[Any, Any, Any], signer: Signer, auth: Authenticator) -> Session:
    """The request's session; LoginRequiredError when there is none, it expired, or its
    registered key was revoked since."""
    payload = signer.payload(request.cookies.get(COOKIE), now=time.time())
    if payload is None:
        raise LoginRequiredError
    if payload.registered:
        org_id = await auth.registered_org(
            bytes.fromhex(payload.digest), claimed_org=payload.org_id
        )
        if org_id != payload.org_id:
            raise LoginRequiredError("The API key of this session was revoked: log in again")
    return Session(payload.org_id, payload.fingerprint, payload.csrf)


def check_csrf(session: Session, token: str | None) -> None:
    """403 unless a form carries its session's CSRF token."""
    if not token or not hmac.compare_digest(token, session.csrf):
        raise errors.ForbiddenError("The form's CSRF token is missing or stale: reload the page")


def secure_request(request: Request[Any, Any, Any]) -> bool:
    """Whether the browser reached us over HTTPS (directly, or per the proxy's header)."""
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip().lower() == "https"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
