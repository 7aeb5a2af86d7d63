"""Checks of a request body's JSON text that decoding leaves out.

The JSON values of a body (inputData, value, ...) are not decoded: msgspec checks their syntax and
hands their text on (models.JsonText), and PostgreSQL's jsonb parses it. Two things are then ours
to check, in C-speed scans of the bytes (5-15 ns a byte, measured on 10 MB bodies):

- the text is UTF-8 (msgspec does not look inside strings it skips; jsonb would refuse it with a
  message about NUL characters);
- numbers do not grow when written out: jsonb keeps numbers as numeric and writes them without an
  exponent, so ``1e100000`` (8 bytes) is answered as 100,001 digits. The digits added that way,
  over the whole body, may not exceed the body limit: an answer stays within twice that size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from foreman import errors

# Exponents anywhere, strings included: their sum bounds what the numbers can gain, and most
# bodies have none (a quick scan), or few and small.
_EXPONENT = re.compile(rb"[eE][+-]?([0-9]+)")
# A number with an exponent, in text whose strings are cut out.
_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?[eE][+-]?([0-9]+)")
_HUGE = 10**12  # an exponent of 12 digits or more: beyond any budget (and any numeric)
_SLICE = 1 << 16


def require_utf8(body: bytes) -> None:
    """Raise ClientError unless body is UTF-8 (ASCII, the common case, is one quick test)."""
    if body.isascii():
        return
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise errors.ClientError(f"Malformed JSON body: invalid UTF-8: {exc.reason}") from None


def outside_strings(body: bytes) -> Iterator[bytes]:
    """The JSON text of body with its strings cut out, a 64 KiB slice at a time.

    Escaped backslashes and quotes go first; then each slice is split at its quotes. Splitting a
    whole 10 MB body of short strings at once made millions of pieces (210 MB); by slices it
    takes a few MB. Text that is not JSON gives some text; the decoder rejects it anyway.
    """
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    inside = False  # whether the slice starts inside a string (an odd count of quotes so far)
    for start in range(0, len(unescaped), _SLICE):
        parts = unescaped[start : start + _SLICE].split(b'"')
        yield b"".join(parts[inside::2])
        inside ^= len(parts) % 2 == 0


# The text outside strings of the last body (up to this size) that it was cut from: a body that
# nests more than the depth limit's worth of brackets (server/middleware.py) is cut for its depth,
# and then again for its numbers (below); a batch of results is both (about 1.5 us per task).
KEPT_MAX = 1 << 20
_kept: list[bytes] = [b"", b""]  # [body, its text outside strings]


def text_outside_strings(body: bytes) -> bytes:
    """``b"".join(outside_strings(body))``, kept for the next call on the same body object."""
    if _kept[0] is body:
        return _kept[1]
    text = b"".join(outside_strings(body))
    if len(body) <= KEPT_MAX:
        _kept[:] = [body, text]
    return text


def _exponent(digits: bytes) -> int:
    return int(digits) if len(digits) < 12 else _HUGE


def _expansion_of(text: bytes) -> int:
    return sum(max(0, _exponent(m[1]) - len(m[0])) for m in _NUMBER.finditer(text))


def expansion(body: bytes) -> int:
    """How many bytes the numbers of body gain when written without an exponent."""
    return _expansion_of(b"".join(outside_strings(body)))


def require_bounded_numbers(body: bytes, limit: int) -> None:
    """Raise ValidationError when body's numbers written out in full exceed limit more bytes."""
    if _kept[0] is body:
        # Cut already (its depth): the quick sum counts the exponents outside strings only, not
        # the hex runs of the ids (a UUID's "e4096..." made every batch of results take the
        # full scan).
        text = _kept[1]
        if sum(map(_exponent, _EXPONENT.findall(text))) <= limit or _expansion_of(text) <= limit:
            return
    elif sum(map(_exponent, _EXPONENT.findall(body))) <= limit or expansion(body) <= limit:
        return
    message = (
        f"numbers with large exponents: written out in full (as stored) they add more than"
        f" {limit} bytes"
    )
    raise errors.ValidationError(
        f"Validation failed: body: {message}", details=[{"loc": ["body"], "msg": message}]
    )
