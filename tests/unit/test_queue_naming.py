"""Per-organisation queue names are valid on every broker and never shared by two organisations."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from foreman.queue.naming import org_queue_name, safe_queue_name

SQS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def test_a_configured_name_loses_its_colons() -> None:
    assert safe_queue_name("foreman:tasks") == "foreman-tasks"
    assert safe_queue_name(":::") == "foreman"


def test_the_name_is_readable_and_stable() -> None:
    name = org_queue_name("foreman:tasks", "acme")
    assert name.startswith("foreman-tasks-acme-")
    assert name == org_queue_name("foreman:tasks", "acme")


def test_organisations_whose_slugs_collide_get_different_queues() -> None:
    assert org_queue_name("foreman:tasks", "a:b") != org_queue_name("foreman:tasks", "a/b")


@given(base=st.text(min_size=0, max_size=300), org=st.text(min_size=0, max_size=300))
def test_every_name_is_valid_on_sqs_bullmq_and_amqp(base: str, org: str) -> None:
    name = org_queue_name(base, org)
    assert SQS_NAME.match(name), name
    assert ":" not in name
