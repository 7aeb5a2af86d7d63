"""Counter shards: a run's task counters are spread over rows so that a busy run has no hot row."""

from __future__ import annotations

import random

COUNTER_SHARDS = 16


def shard() -> int:
    """A random counter shard: spreads one busy run's counter updates over several rows."""
    return random.randrange(COUNTER_SHARDS)  # noqa: S311 - not for security


def two_shards() -> tuple[int, int]:
    """A shard for a statement's own counter INSERT and another for the dependency step it calls
    (end_dependents(), migration 0021): a counter row may change once per statement."""
    own = shard()
    return own, (own + 1) % COUNTER_SHARDS
