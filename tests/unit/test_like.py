"""LIKE escaping, globs and comma lists of the run-data filters (SPEC section 5: user text in
prefixes and patterns matches itself)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.store.queries import escape_like, glob_to_like

# Keys drawn from an alphabet rich in characters that mean something to LIKE, globs and regexes.
TEXT = st.text(alphabet="ab%_\\*?.[]^$-", max_size=8)


def like_matches(pattern: str, text: str) -> bool:
    """PostgreSQL's LIKE with its default escape character, the backslash."""
    regex, chars = [], iter(pattern)
    for char in chars:
        if char == "\\":
            regex.append(re.escape(next(chars, "\\")))
        elif char == "%":
            regex.append(".*")
        elif char == "_":
            regex.append(".")
        else:
            regex.append(re.escape(char))
    return re.fullmatch("".join(regex), text, flags=re.DOTALL) is not None


def glob_matches(pattern: str, text: str) -> bool:
    """The glob of keyPattern: ``*`` any run, ``?`` one character, everything else itself."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain", "plain"),
        ("100%", "100\\%"),
        ("a_b", "a\\_b"),
        ("back\\slash", "back\\\\slash"),
        ("%_\\", "\\%\\_\\\\"),
        ("", ""),
    ],
)
def test_escape_like(text, escaped):
    assert escape_like(text) == escaped


@pytest.mark.parametrize(
    ("glob", "like"),
    [
        ("user.*", "user.%"),
        ("a?c", "a_c"),
        ("100%*", "100\\%%"),
        ("a_b", "a\\_b"),
        ("*\\?", "%\\\\_"),
        ("", ""),
    ],
)
def test_glob_to_like(glob, like):
    assert glob_to_like(glob) == like


@given(prefix=TEXT, key=TEXT)
def test_escaped_prefix_matches_exactly_the_keys_that_start_with_it(prefix, key):
    assert like_matches(escape_like(prefix) + "%", key) == key.startswith(prefix)


@given(text=TEXT, key=TEXT)
def test_escaped_text_matches_only_itself(text, key):
    assert like_matches(escape_like(text), key) == (key == text)


@given(pattern=TEXT, key=TEXT)
def test_glob_translation_keeps_glob_semantics(pattern, key):
    assert like_matches(glob_to_like(pattern), key) == glob_matches(pattern, key)
