"""The queue's depth for /metrics: bounded reads across organisations (store/sql/metrics.sql)."""

from __future__ import annotations

from dataclasses import dataclass

from foreman.store import queries
from foreman.store.db import Db

_SQL = queries.load_statements("metrics")
_READY_TASKS = _SQL["ready_tasks"]
_RUNNING_TASKS = _SQL["running_tasks"]


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Tasks of one organisation and type: ready now (and the oldest's ready time), running."""

    org_id: str
    task_type: str
    ready: int = 0
    oldest_ready_ms: int | None = None
    running: int = 0


async def queue_depth(conn: Db, *, now: int, bound: int) -> list[QueueDepth]:
    """Ready and running tasks per organisation and type, each count read from at most bound rows.

    conn must be the table owner's (every organisation's rows).
    """
    depth: dict[tuple[str, str], QueueDepth] = {}
    for record in await conn.fetch(_READY_TASKS, now, bound):
        key = (record["org_id"], record["type"])
        depth[key] = QueueDepth(*key, ready=record["tasks"], oldest_ready_ms=record["oldest"])
    for record in await conn.fetch(_RUNNING_TASKS, bound):
        key = (record["org_id"], record["type"])
        found = depth.get(key)
        depth[key] = QueueDepth(
            *key,
            ready=0 if found is None else found.ready,
            oldest_ready_ms=None if found is None else found.oldest_ready_ms,
            running=record["tasks"],
        )
    return list(depth.values())
