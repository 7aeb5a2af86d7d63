"""A run's events, derived from its stored rows (store/sql/events.sql explains how), by key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from foreman import ids
from foreman.models import RunEvent
from foreman.store import queries
from foreman.store.db import Db

_RUN_EVENTS = queries.load_statements("events")["run_events"]

_NIL = "00000000-0000-0000-0000-000000000000"
_MAX = "ffffffff-ffff-ffff-ffff-ffffffffffff"
_MAX_INT = 2**31 - 1
_ID_RE = re.compile(
    r"(\d{1,15})-(\d)-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-(\d{1,9})"
)


class EventKey(NamedTuple):
    """An event's place in its run's stream: time, rank of its kind, run or task id, attempt.
    Tuples compare as the SQL row comparison of store/sql/events.sql does (ids as lowercase
    hyphenated text sort as the uuids do)."""

    at: int
    rank: int
    subject: str
    n: int

    @property
    def event_id(self) -> str:
        return f"{self.at}-{self.rank}-{self.subject}-{self.n}"


START = EventKey(-1, 0, _NIL, 0)  # before every event


def until(at_ms: int) -> EventKey:
    """The last key at at_ms: every event of that millisecond is at or before it."""
    return EventKey(at_ms, 9, _MAX, _MAX_INT)


def parse_event_id(value: str) -> EventKey | None:
    """The key an event id names (what a client sends as Last-Event-ID), or None."""
    match = _ID_RE.fullmatch(value.strip())
    if match is None:
        return None
    at, rank, subject, n = match.groups()
    return EventKey(int(at), int(rank), subject, int(n))


@dataclass(slots=True)
class EventPage:
    """Events after a key, oldest first; whether the run exists, and whether it has ended."""

    found: bool
    ended: bool
    events: list[tuple[EventKey, RunEvent]]


async def run_events(
    conn: Db, *, org_id: str, run_id: str, after: EventKey, upto: EventKey, limit: int
) -> EventPage:
    """The run's events with after < key <= upto, at most limit of them.

    ``ended`` is True when the run and all its tasks have ended and nothing of it changed after
    upto's time: the stream has nothing more to send.
    """
    records = await conn.fetch(_RUN_EVENTS, org_id, run_id, *after, *upto, limit)
    head = records[0]
    events = []
    for r in records:
        if r["at"] is None:
            continue
        key = EventKey(r["at"], r["rank"], str(r["subject"]), r["n"])
        event = RunEvent(
            id=key.event_id,
            type=r["kind"],
            run_id=run_id,
            status=r["status"],
            at=r["at"],
            task_id=None if r["task_id"] is None else str(r["task_id"]),
            task_type=r["task_type"],
            attempt=r["attempt"],
            worker_id=r["worker_id"],
        )
        events.append((key, event))
    return EventPage(found=head["found"], ended=head["ended"], events=events)


def horizon(settle_ms: int) -> EventKey:
    """The last key the stream may send now: events younger than settle_ms may still be
    committing with an older time (their statement took its time before it ran)."""
    return until(ids.now_ms() - settle_ms)
