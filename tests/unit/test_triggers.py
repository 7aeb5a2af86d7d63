"""Schedule triggers: cron expressions in a timezone and intervals, on epoch milliseconds."""

from __future__ import annotations

from datetime import datetime

import pytest

from foreman.triggers import Trigger, check_cron, zone


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1000


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "has 4 field(s), not 5"),
        ("0 0 * * * *", "has 6 field(s), not 5"),
        ("@daily", "has 1 field(s), not 5"),
        ("0 25 * * *", "not a valid cron expression (Bad hour)"),
        ("0 0 30 2 *", "not a valid cron expression (Bad day-of-month)"),
        ("* * */20 * 1L", "never fires"),
    ],
)
def test_bad_cron_expressions_say_what_is_wrong(expression, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_cron(expression)


def test_good_cron_expressions_pass():
    for expression in ("* * * * *", "*/15 9-17 * * MON-FRI", "0 0 L * *", "30 2 * 1,7 SUN#1"):
        check_cron(expression)


def test_only_iana_zone_names():
    assert str(zone("Europe/Warsaw")) == "Europe/Warsaw"
    for name in ("europe/warsaw", "Europe", "../etc/passwd", "/etc/localtime", "", "UTC\x00"):
        with pytest.raises(ValueError, match="IANA"):
            zone(name)


def test_interval_ticks_keep_their_phase():
    every = Trigger(interval_ms=1000)
    assert every.first(now=5_500) == 6_500
    assert every.due(6_500, now=6_500) == (6_500, 7_500)
    assert every.due(6_500, now=9_999) == (9_500, 10_500)  # three missed: one fires


def test_cron_tick_at_exactly_now_fires_and_the_next_is_after():
    hourly = Trigger(cron="0 * * * *")
    top = ms("2026-06-01T10:00:00+00:00")
    assert hourly.first(now=top) == top + 3_600_000
    assert hourly.first(now=top - 1) == top
    assert hourly.due(top, now=top) == (top, top + 3_600_000)
    assert hourly.due(top, now=top + 999) == (top, top + 3_600_000)
    assert hourly.due(top, now=top + 5 * 3_600_000 + 1) == (
        top + 5 * 3_600_000,
        top + 6 * 3_600_000,
    )


def test_cron_fires_once_in_the_repeated_hour_of_a_fall_back():
    # 01:30 happens twice in New York on 1 November 2026 (EDT, then EST): Debian cron runs once.
    daily = Trigger(cron="30 1 * * *", timezone="America/New_York")
    first = daily.first(now=ms("2026-10-31T12:00:00+00:00"))
    assert first == ms("2026-11-01T01:30:00-04:00")
    _, after = daily.due(first, now=first)
    assert after == ms("2026-11-02T01:30:00-05:00")
