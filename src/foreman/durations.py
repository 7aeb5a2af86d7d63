"""Durations written as a number and a unit: ``90s``, ``15m``, ``12h``, ``30d``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """The duration in seconds; ValueError naming the expected form for anything else."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: a whole number and a unit s, m, h or d (90s, 15m, 30d)"
        )
    return int(match.group(1)) * _UNIT_S[match.group(2)]
