"""Identifiers and clock: UUIDv7 ids (btree-local inserts) and epoch milliseconds (SPEC section 1)."""

from __future__ import annotations

import re
import time

import uuid_utils

# The two spellings msgspec accepts for a UUID in a body, in any case: hyphenated and 32 hex
# digits. fullmatch, not match with "$", which also matches before a trailing newline.
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)


def new_id() -> str:
    """A new UUIDv7 as its canonical string."""
    return str(uuid_utils.uuid7())


def canonical_id(value: str) -> str | None:
    """The canonical form (lowercase, hyphenated) of a UUID, or None when value is not one.

    Every id from a path or a query goes through here, so the store and the notifier only ever
    see one spelling (a NOTIFY payload is compared as text). Ids in bodies are decoded by msgspec
    as ``uuid.UUID``, which accepts the same spellings; ``str()`` of it is this same form.
    """
    if _UUID_RE.fullmatch(value) is None:
        return None
    digits = value.replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def is_uuid(value: str) -> bool:
    """Whether value is a UUID in one of the spellings canonical_id accepts."""
    return _UUID_RE.fullmatch(value) is not None


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
