"""The queue's depth for /metrics: bounded reads across organisations (store/sql/metrics.sql)."""

from __future__ import annotations

from dataclasses import dataclass

from foreman.store import queries
from foreman.store.db import Db

_SQL = queries.load_statements("metrics")
_QUEUE_DEPTH = _SQL["queue_depth"]


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Tasks of one organisation and type: ready now (and the oldest's ready time), running,
    blocked (waiting for parents)."""

    org_id: str
    task_type: str
    ready: int = 0
    oldest_ready_ms: int | None = None
    running: int = 0
    blocked: int = 0


async def queue_depth(conn: Db, *, now: int, bound: int) -> list[QueueDepth]:
    """Ready, running and blocked tasks per organisation and type, in one statement; each count
    read from at most bound rows.

    conn must be the table owner's (every organisation's rows).
    """
    return [
        QueueDepth(
            r["org_id"],
            r["type"],
            ready=r["ready"],
            oldest_ready_ms=r["oldest"],
            running=r["running"],
            blocked=r["blocked"],
        )
        for r in await conn.fetch(_QUEUE_DEPTH, now, bound)
    ]
