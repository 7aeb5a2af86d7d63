"""When a schedule fires: a 5-field cron expression in an IANA timezone, or a fixed interval.

Pure functions over epoch milliseconds, no I/O. Cron expressions are read and stepped by cronsim,
which follows Debian's cron, daylight saving time included: a local time skipped by a
spring-forward fires at the first minute after the gap, one repeated by a fall-back fires once.
"""

from __future__ import annotations

import functools
import zoneinfo
from dataclasses import dataclass
from datetime import datetime

from cronsim import CronSim, CronSimError

CRON_FIELDS = 5  # minute hour day-of-month month day-of-week; no seconds, no @aliases
MIN_INTERVAL_MS = 1000
MAX_INTERVAL_MS = 366 * 24 * 3600 * 1000
DEFAULT_TIMEZONE = "UTC"


@functools.cache
def _zone_names() -> frozenset[str]:
    # The IANA names of the system's zone database and of the tzdata package: read once (the scan
    # walks a directory tree), then a set lookup per check.
    return frozenset(zoneinfo.available_timezones())


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA timezone name; ValueError (a predicate for the name) when there is no such zone."""
    if name not in _zone_names():
        raise ValueError(f"must be an IANA timezone name such as Europe/Warsaw, got {name!r}")
    return zoneinfo.ZoneInfo(name)


def check_cron(expression: str) -> None:
    """ValueError saying what is wrong (a predicate for the expression) unless expression is a
    standard 5-field cron expression that fires at least once."""
    fields = len(expression.split())
    if fields != CRON_FIELDS:
        raise ValueError(
            f"has {fields} field(s), not 5 (minute hour day-of-month month day-of-week)"
        )
    try:
        iterator = CronSim(expression, datetime(2000, 1, 1))  # noqa: DTZ001 - syntax check only
    except CronSimError as exc:
        raise ValueError(f"is not a valid cron expression ({exc}): {expression!r}") from exc
    if next(iterator, None) is None:
        raise ValueError(f"never fires: {expression!r}")


@dataclass(frozen=True, slots=True)
class Trigger:
    """A schedule's trigger: cron (with timezone) or interval_ms, exactly one of them."""

    cron: str | None = None
    interval_ms: int | None = None
    timezone: str = DEFAULT_TIMEZONE

    def first(self, *, now: int) -> int | None:
        """The first tick after now (an interval's first one is a whole interval away)."""
        if self.interval_ms is not None:
            return now + self.interval_ms
        return self._cron_after(now)

    def due(self, next_run_at: int, *, now: int) -> tuple[int, int | None]:
        """For a schedule due at next_run_at <= now: the tick that fires (the latest one at or
        before now: ticks missed during a downtime fire once, as that one) and the next tick."""
        if self.interval_ms is not None:
            missed = (now - next_run_at) // self.interval_ms
            tick = next_run_at + missed * self.interval_ms
            return tick, tick + self.interval_ms
        return max(next_run_at, self._cron_at_or_before(now)), self._cron_after(now)

    def _cron_after(self, now: int) -> int | None:
        # CronSim begins one second after its start, now's whole second: strictly after now.
        tick = next(CronSim(self._expression(), _local(now // 1000, self.timezone)), None)
        return None if tick is None else _epoch_ms(tick)

    def _cron_at_or_before(self, now: int) -> int:
        # Reversed, CronSim begins one second before its start: starting a second past now's
        # whole second, a tick at exactly that second counts.
        start = _local(now // 1000 + 1, self.timezone)
        tick = next(CronSim(self._expression(), start, reverse=True), None)
        return now if tick is None else _epoch_ms(tick)

    def _expression(self) -> str:
        assert self.cron is not None
        return self.cron


def _local(seconds: int, timezone: str) -> datetime:
    return datetime.fromtimestamp(seconds, zone(timezone))


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000  # ticks are whole seconds
