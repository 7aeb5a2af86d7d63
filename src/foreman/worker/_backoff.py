"""Retrying a failing service: growing delays, and log lines that grow rarer with them."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """Delays between tries of something that keeps failing: first_s, doubling up to max_s, with
    up to a quarter of jitter (workers that lost Redis together do not all come back at once)."""

    first_s: float
    max_s: float
    failures: int = 0  # in a row

    def failed(self) -> float:
        """Count a failure; the delay before the next try."""
        self.failures += 1
        delay_s = min(self.first_s * (1 << min(self.failures - 1, 30)), self.max_s)
        return delay_s * random.uniform(0.75, 1.0)  # noqa: S311 - jitter, not a secret

    def should_log(self) -> bool:
        """Whether the failure just counted deserves a log line: the 1st, 2nd, 4th, 8th, ...

        A service down for an hour is reported about a dozen times, not once a second."""
        return self.failures > 0 and self.failures & (self.failures - 1) == 0

    def succeeded(self) -> int:
        """Count a success; how many failures it ended."""
        failures, self.failures = self.failures, 0
        return failures
