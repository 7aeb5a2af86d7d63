"""API keys and organisations (SPEC section 3)."""

from __future__ import annotations

from litestar import Request

from foreman import errors

TEST_KEY = "test-api-key"
TEST_ORG = "test-org"
MAX_KEY_LENGTH = 512


def org_for_key(key: str, *, allow_test_key: bool) -> str:
    """The organisation of a key in the fmn_<environment>_<orgId>_<random> format."""
    if key == TEST_KEY and allow_test_key:
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


def key_from_headers(request: Request) -> str:  # type: ignore[type-arg]
    """The key from ``Authorization: Bearer`` or ``x-api-key``; 401 when there is none."""
    headers = request.headers
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    if not key:
        raise errors.UnauthorizedError("Missing API key")
    return key


def request_org(request: Request) -> str:  # type: ignore[type-arg]
    """The caller's organisation; 403 when an x-org-id header names another one."""
    org_id = org_for_key(
        key_from_headers(request), allow_test_key=request.app.state.foreman.settings.allow_test_key
    )
    claimed = request.headers.get("x-org-id")
    if claimed is not None and claimed != org_id:
        raise errors.ForbiddenError("x-org-id does not match the organisation of the API key")
    return org_id
