"""Checks of a request body's JSON text that decoding leaves out.

The JSON values of a body (inputData, value, ...) are not decoded: msgspec checks their syntax and
hands their text on (models.JsonText), and PostgreSQL's jsonb parses it. Two things are then ours
to check, in C-speed scans of the bytes (about 10 ns a byte, measured on 10 MB bodies):

- the text is UTF-8 (msgspec does not look inside strings it skips; jsonb would refuse it with a
  message about NUL characters);
- numbers do not grow when written out: jsonb keeps numbers as numeric and writes them without an
  exponent, so ``1e100000`` (8 bytes) is answered as 100,001 digits. The digits added that way,
  over the whole body, may not exceed the body limit: an answer stays within twice that size.
"""

from __future__ import annotations

import re

from foreman import errors

# A quick test first: most bodies have no number with an exponent, and then nothing else runs.
_EXPONENT = re.compile(rb"[eE][+-]?[0-9]")
# Strings are matched whole so that "1e999" inside one is not taken for a number.
_STRING_OR_NUMBER = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?[eE][+-]?([0-9]+)')
_HUGE = 10**12  # an exponent of 12 digits or more: beyond any budget (and any numeric)


def require_utf8(body: bytes) -> None:
    """Raise ClientError unless body is UTF-8 (ASCII, the common case, is one quick test)."""
    if body.isascii():
        return
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise errors.ClientError(f"Malformed JSON body: invalid UTF-8: {exc.reason}") from None


def expansion(body: bytes) -> int:
    """How many bytes the numbers of body gain when written without an exponent."""
    if _EXPONENT.search(body) is None:
        return 0
    total = 0
    for match in _STRING_OR_NUMBER.finditer(body):
        digits = match[1]
        if digits is not None:
            exponent = int(digits) if len(digits) < 12 else _HUGE
            total += max(0, exponent - len(match[0]))
    return total


def require_bounded_numbers(body: bytes, limit: int) -> None:
    """Raise ValidationError when body's numbers written out in full exceed limit more bytes."""
    if expansion(body) > limit:
        message = (
            f"numbers with large exponents: written out in full (as stored) they add more than"
            f" {limit} bytes"
        )
        raise errors.ValidationError(
            f"Validation failed: body: {message}", details=[{"loc": ["body"], "msg": message}]
        )
