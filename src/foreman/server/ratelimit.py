"""Per-organisation rate limit (FOREMAN_RATE_LIMIT): a token bucket per organisation, per process.

Each server process keeps its own buckets, so with N processes (FOREMAN_SERVER_WORKERS) an
organisation can get up to N times the limit when its connections land on every process. A shared
limit would cost a PostgreSQL or Redis round trip on every request; the per-process bucket costs
a dictionary lookup and bounds what one client connection can do (docs/security.md). The rate's
grammar (``100/s``, ``6000/min``) is parsed by foreman.settings.parse_rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from foreman import errors
from foreman.settings import Rate

MAX_BUCKETS = 10_000  # organisations remembered before idle (full) buckets are dropped


class RateLimiter:
    """Token buckets by organisation; ``acquire`` takes one token or says how long to wait."""

    def __init__(
        self,
        rate: Rate,
        *,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.max_buckets = max_buckets
        self.clock = clock
        # org -> [tokens, time of the last refill]
        self._buckets: dict[str, list[float]] = {}

    def acquire(self, org_id: str) -> float:
        """0 when the request may go ahead, else the seconds until a token is available."""
        now = self.clock()
        bucket = self._buckets.get(org_id)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._prune(now)
            bucket = self._buckets[org_id] = [self.rate.burst, now]
        tokens = min(self.rate.burst, bucket[0] + (now - bucket[1]) * self.rate.per_s)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate.per_s

    def check(self, org_id: str) -> None:
        """Take a token for org_id; 429 with a Retry-After (whole seconds) when there is none."""
        wait_s = self.acquire(org_id)
        if wait_s > 0:
            raise errors.RateLimitedError(
                f"Rate limit exceeded: {_describe(self.rate)} per organisation",
                retryAfter=max(1, math.ceil(wait_s)),
            )

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: dropping it changes nothing. If every
        # bucket is busy (many organisations at once), forget the oldest half instead of growing.
        full = [
            org
            for org, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate.per_s >= self.rate.burst
        ]
        for org in full:
            del self._buckets[org]
        if len(self._buckets) >= self.max_buckets:
            for org in list(self._buckets)[: self.max_buckets // 2]:
                del self._buckets[org]


def _describe(rate: Rate) -> str:
    if rate.per_s >= 1:
        return f"{rate.per_s:g} requests per second"
    return f"{rate.per_s * 60:g} requests per minute"
