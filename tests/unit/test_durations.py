"""`foreman prune --older-than` durations."""

from __future__ import annotations

import pytest

from foreman.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("0s", 0)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "1.5h", "-1d", "30 d", "30D", "1w", "٣d"])
def test_anything_else_is_refused_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="a whole number and a unit s, m, h or d"):
        parse_duration(text)
