"""Percentiles and the summary of one measured figure: pure arithmetic, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0 < fraction <= 1).

    Nearest rank (no interpolation) so that a p99 is always a latency that was really observed.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rank = math.ceil(fraction * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """Throughput and latency of one figure measured over a window of duration_s seconds."""

    operations: int
    errors: int
    duration_s: float
    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    def as_dict(self, prefix: str) -> dict[str, float | int | None]:
        """Flat JSON keys: {prefix}_p50_ms, {prefix}_p99_ms, {prefix}_errors, ..."""
        return {
            f"{prefix}_p50_ms": _round(self.p50_ms),
            f"{prefix}_p99_ms": _round(self.p99_ms),
            f"{prefix}_max_ms": _round(self.max_ms),
            f"{prefix}_errors": self.errors,
            f"{prefix}_operations": self.operations,
        }


def summarize(latencies_s: Sequence[float], *, errors: int, duration_s: float) -> Summary:
    """Summarise successful operations' latencies (seconds) measured over duration_s.

    Throughput counts successes only: an error answered fast must not look like speed.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    ordered = sorted(latencies_s)
    if not ordered:
        return Summary(0, errors, duration_s, 0.0, None, None, None)
    return Summary(
        operations=len(ordered),
        errors=errors,
        duration_s=duration_s,
        per_s=len(ordered) / duration_s,
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        max_ms=ordered[-1] * 1000,
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
