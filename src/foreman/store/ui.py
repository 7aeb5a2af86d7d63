"""The dashboard's reads (/ui): pages and counts that stay fast with millions of rows.

Nothing here counts a whole table: a count reads at most ``bound + 1`` rows of an index and says
whether there were more (the page shows "1,000+"); a run's task counts come from its counters.
Every statement filters by the organisation (and runs under its RLS binding like the API's).
The list statements are built from fixed fragments like store/runs.py's; the rest are whole in
store/sql/ui.sql.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from foreman.models import Attempt, Run, RunData, Task
from foreman.store import queries
from foreman.store.db import Db

_SQL = queries.load_statements("ui")
_TASK_CHILDREN = _SQL["task_children"]
_TASK_RUN_DATA = _SQL["task_run_data"]
_QUEUE_OVERVIEW = _SQL["queue_overview"]
_LEASE_HOLDERS = _SQL["lease_holders"]

RUN_SORTS = ("created_at", "started_at", "completed_at")
_RUN_DATA_COLUMNS = """d.id, d.run_id, d.task_id, d.org_id, d.key, d.value, d.tags, d.metadata,
       d.created_at, d.updated_at"""


@dataclass(frozen=True, slots=True)
class Count:
    """A count read from at most bound + 1 rows: ``more`` when it reached the bound."""

    value: int
    more: bool

    def label(self) -> str:
        """``1,234`` or ``1,000+``."""
        return f"{self.value:,}+" if self.more else f"{self.value:,}"


async def _bounded(conn: Db, where: queries.Where, table: str, bound: int) -> Count:
    sql = f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where.sql()} LIMIT {where.param(bound + 1)}) b"  # noqa: S608 - fixed fragments, values are parameters
    found = int(await conn.fetchval(sql, *where.args))
    return Count(min(found, bound), found > bound)


class _Rows:
    """A filter of one of the dashboard's lists; it counts the rows that match."""

    __slots__ = ()
    table: ClassVar[str]  # the table, with the alias _where's clauses use ("run r")

    def _where(self) -> queries.Where:
        raise NotImplementedError

    async def count(self, conn: Db, *, bound: int) -> Count:
        """How many rows match, up to bound."""
        return await _bounded(conn, self._where(), self.table, bound)


def id_range(text: str) -> tuple[str, str] | None:
    """The ids starting with text (hex digits, hyphens ignored) as an inclusive uuid range, so a
    search by id prefix is a range scan of the primary key; None if text cannot start an id."""
    digits = text.strip().lower().replace("-", "")
    if not digits or len(digits) > 32 or any(c not in "0123456789abcdef" for c in digits):
        return None

    def uuid(hex32: str) -> str:
        return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"

    return uuid(digits.ljust(32, "0")), uuid(digits.ljust(32, "f"))


@dataclass(frozen=True, slots=True)
class Runs(_Rows):
    """The organisation's runs by status and id range, sorted: a page of them, or their count."""

    table = "run r"

    org_id: str
    status: str | None
    ids: tuple[str, str] | None
    sort_by: str
    order: str

    def _where(self) -> queries.Where:
        where = queries.Where(["r.org_id = $1"], [self.org_id])
        if self.status is not None:
            where.add("r.status = {}", self.status)
        if self.ids is not None:
            where.add("r.id BETWEEN {}::uuid AND {}::uuid", *self.ids)
        return where

    async def page(self, conn: Db, *, limit: int, offset: int) -> list[Run]:
        """A page of runs with their counters (limit + 1 rows tell the caller a next page exists)."""
        where = self._where()
        column = RUN_SORTS[RUN_SORTS.index(self.sort_by)]
        direction = queries.SORT_ORDERS[self.order]
        nulls = "NULLS LAST" if direction == "DESC" else "NULLS FIRST"
        sql = f"""
SELECT r.*, c.*
  FROM (SELECT * FROM run r WHERE {where.sql()}
         ORDER BY r.{column} {direction} {nulls}, r.id {direction}
         LIMIT {where.param(limit)} OFFSET {where.param(offset)}) r
 CROSS JOIN LATERAL run_task_counts(r.id) c
 ORDER BY r.{column} {direction} {nulls}, r.id {direction}
"""  # noqa: S608 - fixed fragments only; every value is a parameter
        return queries.models_from(Run, await conn.fetch(sql, *where.args))


@dataclass(frozen=True, slots=True)
class _RunRows(_Rows):
    """A filter of a run's rows."""

    org_id: str
    run_id: str

    def _run_where(self) -> queries.Where:
        """The clauses that keep the run's rows (by the table's alias)."""
        alias = self.table.split()[-1]
        clauses = [f"{alias}.org_id = $1", f"{alias}.run_id = $2"]
        return queries.Where(clauses, [self.org_id, self.run_id])


@dataclass(frozen=True, slots=True)
class RunTasks(_RunRows):
    """A run's tasks, by status, oldest first: a page of them, or their count."""

    table = "task t"

    status: str | None

    def _where(self) -> queries.Where:
        where = self._run_where()
        if self.status is not None:
            where.add("t.status = {}", self.status)
        return where

    async def page(self, conn: Db, *, limit: int, offset: int) -> list[Task]:
        """A page of a run's tasks (task_run_status_idx / task_run_created_idx)."""
        where = self._where()
        sql = f"""
SELECT t.*
  FROM task_answer t
 WHERE {where.sql()}
 ORDER BY t.created_at, t.id
 LIMIT {where.param(limit)} OFFSET {where.param(offset)}
"""  # noqa: S608 - fixed fragments only; every value is a parameter
        return queries.models_from(Task, await conn.fetch(sql, *where.args))


@dataclass(frozen=True, slots=True)
class RunDataRows(_RunRows):
    """A run's data rows by key prefix and tag, newest first: a page of them, or their count."""

    table = "run_data d"

    key_prefix: str | None
    tag: str | None

    def _where(self) -> queries.Where:
        where = self._run_where()
        if self.key_prefix:
            where.add("d.key LIKE {}", queries.escape_like(self.key_prefix) + "%")
        if self.tag:
            where.add("d.tags @> ARRAY[{}]::text[]", self.tag)
        return where

    async def page(self, conn: Db, *, limit: int, offset: int) -> list[RunData]:
        """A page of the run's data rows."""
        where = self._where()
        sql = f"""
SELECT {_RUN_DATA_COLUMNS}
  FROM run_data d
 WHERE {where.sql()}
 ORDER BY d.created_at DESC, d.id DESC
 LIMIT {where.param(limit)} OFFSET {where.param(offset)}
"""  # noqa: S608 - fixed fragments only; every value is a parameter
        return queries.models_from(RunData, await conn.fetch(sql, *where.args))


async def task_children(conn: Db, *, org_id: str, task_id: str, limit: int) -> list[Task]:
    """Tasks whose parent is task_id, oldest first."""
    return queries.models_from(Task, await conn.fetch(_TASK_CHILDREN, org_id, task_id, limit))


async def task_run_data(conn: Db, *, org_id: str, task_id: str, limit: int) -> list[RunData]:
    """Run data a task wrote, newest first."""
    return queries.models_from(RunData, await conn.fetch(_TASK_RUN_DATA, org_id, task_id, limit))


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One task type of an organisation's queue (counts up to the bound)."""

    task_type: str
    ready: int
    retrying: int
    running: int
    oldest_ready_at: int | None
    blocked: int = 0


async def queue_overview(conn: Db, *, org_id: str, now: int, bound: int) -> list[QueueRow]:
    """Ready, retrying (waiting out a backoff), running and blocked tasks per type; each status
    read from at most bound rows."""
    records = await conn.fetch(_QUEUE_OVERVIEW, org_id, now, bound)
    return [
        QueueRow(
            r["type"],
            r["ready"],
            r["retrying"],
            r["running"],
            r["oldest_ready_at"],
            blocked=r["blocked"],
        )
        for r in records
    ]


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """A worker holding leases now: how many, since when, until when."""

    worker_id: str
    tasks: int
    oldest_start: int | None
    latest_expiry: int | None
    types: list[str]


async def lease_holders(conn: Db, *, org_id: str, bound: int) -> list[LeaseHolder]:
    """Workers that hold leases in the organisation (from at most bound running tasks)."""
    records = await conn.fetch(_LEASE_HOLDERS, org_id, bound)
    return [
        LeaseHolder(r["worker_id"], r["tasks"], r["oldest_start"], r["latest_expiry"], r["types"])
        for r in records
    ]


# ---------------------------------------------------------------- workflows (issue 13)


@dataclass(frozen=True, slots=True)
class Parent:
    """A parent of a task (dependsOn): its status, and whether the child still waits for it."""

    id: str
    type: str
    status: str
    completed_at: int | None
    open: bool


@dataclass(frozen=True, slots=True)
class ParentCount(Count):
    """How many parents (up to the bound), and how many of those have not ended."""

    open: int = 0


@dataclass(frozen=True, slots=True)
class _OfTask:
    """Rows that belong to one task."""

    org_id: str
    task_id: str


@dataclass(frozen=True, slots=True)
class TaskParents(_OfTask):
    """A task's parents in edge order: a page of them, or their count (and the open ones)."""

    async def page(self, conn: Db, *, limit: int, offset: int) -> list[Parent]:
        """A page of the parents (task_dependency_child_idx, then each parent by id)."""
        records = await conn.fetch(_SQL["task_parents"], self.org_id, self.task_id, limit, offset)
        return [
            Parent(str(r["id"]), r["type"], r["status"], r["completed_at"], r["open"])
            for r in records
        ]

    @staticmethod
    def whole(rows: list[Parent]) -> ParentCount:
        """The count of a first page that holds every parent (no statement needed)."""
        return ParentCount(len(rows), False, sum(1 for row in rows if row.open))

    async def count(self, conn: Db, *, bound: int) -> ParentCount:
        """How many parents, up to bound, and how many of those are still open."""
        record = await conn.fetchrow(
            _SQL["task_parents_count"], self.org_id, self.task_id, bound + 1
        )
        assert record is not None
        found = int(record["parents"])
        return ParentCount(min(found, bound), found > bound, int(record["open"]))


@dataclass(frozen=True, slots=True)
class TaskAttempts(_OfTask):
    """A task's attempts (task_attempt), oldest first: a page of them, or their count."""

    async def page(self, conn: Db, *, limit: int, offset: int) -> list[Attempt]:
        """A page of the attempts."""
        records = await conn.fetch(_SQL["task_attempts"], self.org_id, self.task_id, limit, offset)
        return queries.models_from(Attempt, records)

    @staticmethod
    def whole(rows: list[Attempt]) -> Count:
        """The count of a first page that holds every attempt (no statement needed)."""
        return Count(len(rows), False)

    async def count(self, conn: Db, *, bound: int) -> Count:
        """How many attempts, up to bound."""
        found = int(
            await conn.fetchval(_SQL["task_attempts_count"], self.org_id, self.task_id, bound + 1)
        )
        return Count(min(found, bound), found > bound)


async def task_cancel_requested(conn: Db, *, org_id: str, task_id: str) -> int | None:
    """When a cancel was asked of the running task (epoch ms), None if none was."""
    value = await conn.fetchval(_SQL["task_cancel_requested"], org_id, task_id)
    return None if value is None else int(value)


async def run_blocked(conn: Db, *, org_id: str, run_id: str, bound: int) -> Count:
    """How many of the run's tasks wait for parents (blocked), up to bound."""
    found = int(await conn.fetchval(_SQL["run_blocked_count"], org_id, run_id, bound + 1))
    return Count(min(found, bound), found > bound)
