"""Path ids: what counts as a UUID (a malformed one is 'not found', never a database error)."""

from __future__ import annotations

import uuid

import pytest

from foreman import ids


@pytest.mark.parametrize(
    "value",
    [
        "01900000-0000-7000-8000-000000000001",
        "01900000000070008000000000000001",
        "01900000-0000-7000-8000-00000000000A",
        str(uuid.uuid4()),
        ids.new_id(),
    ],
)
def test_uuids(value):
    assert ids.is_uuid(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "nope",
        "0190000-0000-7000-8000-000000000001",
        "{01900000-0000-7000-8000-000000000001}",
        "g" * 32,
        "0" * 33,
        "\x00",
        "01900000-0000-7000-8000-000000000001\n",
        "01900000000070008000000000000001\n",
        " 01900000-0000-7000-8000-000000000001",
        "01900000-00007000-8000-000000000001",  # hyphens must be all there or all gone
        "urn:uuid:01900000-0000-7000-8000-000000000001",
        "\uff10" * 32,  # fullwidth digits are no hex digits
    ],
)
def test_not_uuids(value):
    assert not ids.is_uuid(value)
    assert ids.canonical_id(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "01900000-0000-7000-8000-00000000ABCD",
        "01900000-0000-7000-8000-00000000abcd",
        "0190000000007000800000000000abcd",
        "0190000000007000800000000000ABCD",
    ],
)
def test_every_spelling_has_one_canonical_form(value):
    assert ids.canonical_id(value) == "01900000-0000-7000-8000-00000000abcd"
    assert ids.canonical_id(value) == str(uuid.UUID(value))


def test_new_ids_are_version_7_and_ordered():
    first, second = ids.new_id(), ids.new_id()
    assert uuid.UUID(first).version == 7
    assert first < second


def test_now_ms_is_epoch_milliseconds():
    import time

    assert abs(ids.now_ms() - time.time() * 1000) < 1000
