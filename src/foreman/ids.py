"""Identifiers and clock: UUIDv7 ids (btree-local inserts) and epoch milliseconds (SPEC section 1)."""

from __future__ import annotations

import re
import time

import uuid_utils

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def new_id() -> str:
    """A new UUIDv7 as its canonical string."""
    return str(uuid_utils.uuid7())


def is_uuid(value: str) -> bool:
    """Whether value parses as a UUID (a malformed id is 'not found', never a database error)."""
    return _UUID_RE.match(value) is not None


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
