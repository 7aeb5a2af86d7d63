"""Registered API keys: make, hash, look up, list and revoke (migration 0003).

A key is ``fmn_<env>_<org>_<random>`` (SPEC section 3), so clients use it like any other key. Only
its SHA-256 digest is stored: the random part carries 160 bits, which makes a fast digest as safe as
a slow password hash would be, without its cost on a request (docs/security.md).

The request role reaches the table only through ``foreman_api_key_lookup``; ``insert_api_key``,
``list_api_keys`` and ``revoke_api_keys`` need the owner's connection (``foreman keys``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import asyncpg

from foreman import errors, ids
from foreman.store.db import Db, translate_errors

RANDOM_BYTES = 20  # 160 bits, written as 40 hex characters
PREFIX_RANDOM_CHARS = 8  # shown by `foreman keys list`; the other 128 bits stay secret
FINGERPRINT_CHARS = 8
# Visible ASCII without "_" (it separates the parts of a key) and without whitespace.
_PART = re.compile(r"^[!-^`-~]{1,100}$")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: ``key`` is shown once and never stored."""

    id: str
    org_id: str
    key: str
    prefix: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A registered key as `foreman keys list` shows it (never the key itself)."""

    id: str
    org_id: str
    name: str | None
    prefix: str
    fingerprint: str
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What authentication needs to know about a presented key."""

    id: str
    org_id: str
    key_hash: bytes
    revoked: bool


def hash_key(key: str) -> bytes:
    """The SHA-256 digest stored for a key."""
    return hashlib.sha256(key.encode()).digest()


def fingerprint(key_hash: bytes) -> str:
    """A short, non-secret name for a key in logs and listings (the digest's first hex digits)."""
    return key_hash.hex()[:FINGERPRINT_CHARS]


def check_part(value: str, what: str) -> str:
    """An environment or organisation usable inside a key; ValidationError otherwise."""
    if not _PART.match(value):
        raise errors.ValidationError(
            f"{what} must be 1 to 100 visible ASCII characters without '_' or spaces: {value!r}"
        )
    return value


def new_key(org_id: str, *, environment: str) -> NewKey:
    """A fresh random key for org_id (not yet stored)."""
    random_part = secrets.token_hex(RANDOM_BYTES)
    head = f"fmn_{check_part(environment, 'environment')}_{check_part(org_id, 'organisation')}_"
    key = head + random_part
    return NewKey(
        id=ids.new_id(),
        org_id=org_id,
        key=key,
        prefix=head + random_part[:PREFIX_RANDOM_CHARS],
        fingerprint=fingerprint(hash_key(key)),
    )


_INSERT_API_KEY = """
INSERT INTO api_key (id, org_id, name, key_hash, prefix, created_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""


async def insert_api_key(conn: Db, new: NewKey, *, name: str | None, now: int) -> None:
    """Store the digest of a new key (owner connection)."""
    with translate_errors():
        await conn.execute(
            _INSERT_API_KEY, new.id, new.org_id, name, hash_key(new.key), new.prefix, now
        )


_LOOKUP_API_KEY = "SELECT id, org_id, key_hash, revoked_at FROM foreman_api_key_lookup($1)"


async def lookup_api_key(conn: Db, key_hash: bytes) -> KeyRecord | None:
    """The registered key with this digest, revoked or not; None when there is none."""
    with translate_errors():
        record = await conn.fetchrow(_LOOKUP_API_KEY, key_hash)
    if record is None:
        return None
    return KeyRecord(
        id=str(record["id"]),
        org_id=record["org_id"],
        key_hash=bytes(record["key_hash"]),
        revoked=record["revoked_at"] is not None,
    )


_LIST_API_KEYS = """
SELECT id, org_id, name, prefix, key_hash, created_at, revoked_at
  FROM api_key
 WHERE $1::text IS NULL OR org_id = $1
 ORDER BY org_id, created_at, id
"""


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=str(row["id"]),
        org_id=row["org_id"],
        name=row["name"],
        prefix=row["prefix"],
        fingerprint=fingerprint(bytes(row["key_hash"])),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def list_api_keys(conn: Db, *, org_id: str | None = None) -> list[ApiKey]:
    """Every registered key, or those of one organisation (owner connection)."""
    with translate_errors():
        records = await conn.fetch(_LIST_API_KEYS, org_id)
    return [_api_key(r) for r in records]


# Matched by id, by the whole key (its digest) or by the start of its prefix. LIKE's wildcards in
# the given text are escaped so that "fmn_x_" cannot match "fmnAxB..." keys.
_FIND_API_KEYS = r"""
SELECT id, org_id, name, prefix, key_hash, created_at, revoked_at
  FROM api_key
 WHERE id::text = $1
    OR key_hash = $2
    OR prefix LIKE replace(replace(replace($1, '\', '\\'), '%', '\%'), '_', '\_') || '%'
 ORDER BY created_at, id
"""

_REVOKE_API_KEY = """
UPDATE api_key
   SET revoked_at = coalesce(revoked_at, $2)
 WHERE id = $1
RETURNING id, org_id, name, prefix, key_hash, created_at, revoked_at
"""


async def find_api_keys(conn: Db, id_key_or_prefix: str) -> list[ApiKey]:
    """The keys an operator's argument names: an id, a whole key, or a key prefix."""
    with translate_errors():
        records = await conn.fetch(_FIND_API_KEYS, id_key_or_prefix, hash_key(id_key_or_prefix))
    return [_api_key(r) for r in records]


async def revoke_api_key(conn: Db, key_id: str, *, now: int) -> ApiKey:
    """Revoke one key by id (a key revoked earlier keeps its first revocation time)."""
    with translate_errors():
        record = await conn.fetchrow(_REVOKE_API_KEY, key_id, now)
    if record is None:
        raise errors.NotFoundError(f"API key not found: {key_id}")
    return _api_key(record)
