"""Queue names per organisation, one rule for every broker backend.

A broker queue shared by all organisations lets one tenant's worker see (and a hostile one delay)
another's task ids, so each organisation gets queues of its own. The names must be valid on every
broker: Node BullMQ refuses ``:``, SQS allows only ``[A-Za-z0-9_-]`` up to 80 characters, AMQP up
to 255 bytes. A readable slug of the organisation keeps names recognisable in broker tools; the
hash keeps two organisations whose slugs collide apart.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_BASE_MAX = 40  # base + "-" + slug (24) + "-" + hash (10) stays within SQS's 80 characters
_SLUG_MAX = 24


def safe_queue_name(name: str) -> str:
    """name with every run of characters a broker may refuse replaced by one ``-``."""
    return _UNSAFE.sub("-", name).strip("-")[:_BASE_MAX] or "foreman"


def org_queue_name(base: str, org_id: str) -> str:
    """The queue of base (a configured name such as ``foreman:tasks``) for one organisation."""
    slug = _UNSAFE.sub("-", org_id).strip("-")[:_SLUG_MAX] or "org"
    digest = hashlib.sha256(org_id.encode()).hexdigest()[:10]
    return f"{safe_queue_name(base)}-{slug}-{digest}"
