"""Property tests (hypothesis): key parsing, LIKE escaping against PostgreSQL, JSON depth, and
the token bucket's bound."""

from __future__ import annotations

import json
import re

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman import errors
from foreman.server import auth, middleware, ratelimit
from foreman.store import api_keys
from foreman.store.queries import escape_like, glob_to_like

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ---------------------------------------------------------------- keys

# A part of a key: printable, no "_" (it separates the parts).
PARTS = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="_"),
    min_size=1,
    max_size=40,
).filter(str.isprintable)


@PROPERTY_SETTINGS
@given(env=PARTS, org=PARTS, random=st.lists(PARTS, min_size=1, max_size=3))
def test_the_org_is_always_the_third_part(env, org, random):
    key = "_".join(["fmn", env, org, *random])
    if len(key) <= auth.MAX_KEY_LENGTH:
        assert auth.org_for_key(key, allow_test_key=False) == org


@PROPERTY_SETTINGS
@given(key=st.text(max_size=600))
def test_anything_else_is_refused_with_401(key):
    parts = key.split("_")
    well_formed = (
        len(parts) >= 4
        and parts[0] == "fmn"
        and all(parts[1:4])
        and key.isprintable()
        and len(key) <= auth.MAX_KEY_LENGTH
    )
    if well_formed:
        assert auth.org_for_key(key, allow_test_key=False) == parts[2]
    else:
        with pytest.raises(errors.UnauthorizedError):
            auth.org_for_key(key, allow_test_key=False)


@PROPERTY_SETTINGS
@given(key=st.text(max_size=40))
def test_the_test_key_is_only_the_test_key(key):
    if key != auth.TEST_KEY and not key.startswith("fmn_"):
        with pytest.raises(errors.UnauthorizedError):
            auth.org_for_key(key, allow_test_key=True)
    assert auth.org_for_key(auth.TEST_KEY, allow_test_key=True) == auth.TEST_ORG


ASCII_PARTS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="_"),
    min_size=1,
    max_size=100,
)


@PROPERTY_SETTINGS
@given(env=ASCII_PARTS, org=ASCII_PARTS)
def test_made_keys_parse_back_to_their_org(env, org):
    new = api_keys.new_key(org, environment=env)
    assert auth.org_for_key(new.key, allow_test_key=False) == org
    assert len(new.key) <= auth.MAX_KEY_LENGTH
    assert new.key.startswith(new.prefix)
    assert new.fingerprint == auth.fingerprint(new.key)
    assert len(api_keys.hash_key(new.key)) == 32


# ---------------------------------------------------------------- LIKE escaping

# Text PostgreSQL can store: no NUL, no lone surrogates.
PG_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("%_\\*?[]^$.'\"ab"),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    max_size=12,
)


@pytest.fixture
async def pg(db_url):
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


@PROPERTY_SETTINGS
@given(prefix=PG_TEXT, text=PG_TEXT)
async def test_escaped_prefix_matches_exactly_the_texts_that_start_with_it(pg, prefix, text):
    for candidate in (text, prefix + text, text + prefix):
        matched = await pg.fetchval("SELECT $1 LIKE $2 || '%'", candidate, escape_like(prefix))
        assert matched == candidate.startswith(prefix), (candidate, prefix)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL
    )


@PROPERTY_SETTINGS
@given(pattern=PG_TEXT, text=PG_TEXT)
async def test_glob_matches_like_fnmatch_with_only_star_and_question_mark(pg, pattern, text):
    for candidate in (text, pattern.replace("*", text).replace("?", "x")):
        matched = await pg.fetchval("SELECT $1 LIKE $2", candidate, glob_to_like(pattern))
        assert matched == bool(_glob_regex(pattern).fullmatch(candidate)), (candidate, pattern)


# ---------------------------------------------------------------- JSON depth

JSON_STRINGS = st.text(
    alphabet=st.one_of(st.sampled_from('[]{}"\\,:'), st.characters(blacklist_categories=("Cs",)))
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | JSON_STRINGS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(JSON_STRINGS, children, max_size=4)
    ),
    max_leaves=40,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@PROPERTY_SETTINGS
@given(value=JSON_VALUES)
def test_json_depth_equals_the_decoded_depth(value):
    expected = _depth(value)
    for text in (
        msgspec.json.encode(value),
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8", "surrogatepass"),
    ):
        assert middleware.json_depth(text) == expected, text
        assert middleware.too_deep(text, expected) is False
        if expected:
            assert middleware.too_deep(text, expected - 1) is True


# ---------------------------------------------------------------- token bucket


@PROPERTY_SETTINGS
@given(
    per_s=st.floats(min_value=0.5, max_value=200),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=0.2), min_size=1, max_size=300),
)
def test_no_window_admits_more_than_burst_plus_rate(per_s, burst, gaps):
    now = [0.0]
    limiter = ratelimit.RateLimiter(
        ratelimit.Rate(per_s=per_s, burst=float(burst)), clock=lambda: now[0]
    )
    admitted = []
    for gap in gaps:
        now[0] += gap
        if limiter.acquire("org") == 0:
            admitted.append(now[0])
    for i, start in enumerate(admitted):
        in_window = [t for t in admitted[i:] if t - start <= 1.0]
        assert len(in_window) <= burst + per_s * 1.0 + 1e-6
    assert len(admitted) <= burst + per_s * now[0] + 1e-6
