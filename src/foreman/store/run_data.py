"""Run data: a key-value store per run, many values per key, with tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreman import errors
from foreman.models import MAX_TAGS, RunData
from foreman.store.db import Db
from foreman.store.queries import SORT_ORDERS, Page, Where, escape_like, glob_to_like

COLUMNS = """
    d.id, d.run_id, d.task_id, d.org_id, d.key, d.value, d.tags, d.metadata,
    d.created_at, d.updated_at
"""

_RUN_EXISTS = "SELECT EXISTS (SELECT 1 FROM run WHERE org_id = $1 AND id = $2)"

_INSERT_RUN_DATA = f"""
WITH r AS (
    SELECT id FROM run WHERE org_id = $1 AND id = $2
), t AS (
    SELECT id FROM task WHERE org_id = $1 AND id = $3 AND run_id = $2
), d AS (
    INSERT INTO run_data (id, run_id, task_id, org_id, key, value, tags, metadata,
                          created_at, updated_at)
    SELECT $4, r.id, t.id, $1, $5, $6, $7, $8, $9, $9 FROM r, t
    RETURNING *
)
SELECT EXISTS (SELECT 1 FROM r), EXISTS (SELECT 1 FROM t), {COLUMNS}
  FROM (SELECT 1) AS one LEFT JOIN d ON true
"""

# Remove first, then append each added tag not already there (the row's tags as updated by
# this statement: recomputed on the latest row version if a concurrent update got there first).
_NEW_TAGS = """unnest(array_cat(
                    ARRAY(SELECT x FROM unnest(tags) AS x WHERE x <> ALL($4::text[])),
                    $5::text[])) WITH ORDINALITY AS u(tag, n)"""

# First occurrences kept, in order; refused (no row) when the entry would pass MAX_TAGS.
_UPDATE_TAGS = f"""
WITH d AS (
    UPDATE run_data
       SET tags = (
               SELECT coalesce(array_agg(tag ORDER BY first), '{{}}')
                 FROM (SELECT tag, min(n) AS first FROM {_NEW_TAGS} GROUP BY tag) AS kept
           ),
           updated_at = $6
     WHERE org_id = $1 AND run_id = $2 AND id = $3
       AND (SELECT count(DISTINCT tag) FROM {_NEW_TAGS}) <= $7
    RETURNING *
)
SELECT {COLUMNS} FROM d
"""

_RUN_DATA_EXISTS = (
    "SELECT EXISTS (SELECT 1 FROM run_data WHERE org_id = $1 AND run_id = $2 AND id = $3)"
)

_SORT_COLUMNS = {"created_at": "created_at", "updated_at": "updated_at", "key": "key"}


def unique_tags(tags: list[str]) -> list[str]:
    """Tags without repeats, first occurrence first."""
    return list(dict.fromkeys(tags))


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The new row, or which of run and task was missing."""

    item: RunData | None
    run_found: bool
    task_found: bool


async def run_exists(conn: Db, *, org_id: str, run_id: str) -> bool:
    """Whether the organisation has this run."""
    return bool(await conn.fetchval(_RUN_EXISTS, org_id, run_id))


async def insert_run_data(
    conn: Db,
    *,
    org_id: str,
    run_id: str,
    data_id: str,
    task_id: str,
    key: str,
    value: Any,
    tags: list[str],
    metadata: Any,
    now: int,
) -> InsertResult:
    """Add one value under key (a key may hold many values)."""
    record = await conn.fetchrow(
        _INSERT_RUN_DATA,
        org_id,
        run_id,
        task_id,
        data_id,
        key,
        value,
        unique_tags(tags),
        metadata,
        now,
    )
    assert record is not None
    item = None if record[2] is None else RunData(*tuple(record)[2:])
    return InsertResult(item, record[0], record[1])


async def update_tags(
    conn: Db, *, org_id: str, run_id: str, data_id: str, add: list[str], remove: list[str], now: int
) -> RunData | None:
    """Remove, then add tags; None if the entry is not in this run (400 past MAX_TAGS)."""
    record = await conn.fetchrow(_UPDATE_TAGS, org_id, run_id, data_id, remove, add, now, MAX_TAGS)
    if record is not None:
        return RunData(*record)
    if await conn.fetchval(_RUN_DATA_EXISTS, org_id, run_id, data_id):
        raise errors.ValidationError(
            f"Validation failed: an entry may carry at most {MAX_TAGS} tags",
            details=[
                {"loc": ["body", "add"], "msg": f"the entry would have more than {MAX_TAGS} tags"}
            ],
        )
    return None


@dataclass(frozen=True, slots=True)
class RunDataQuery:
    """Filters of GET /runs/:runId/data (SPEC section 5)."""

    key: str | None = None
    keys: tuple[str, ...] = ()
    key_prefixes: tuple[str, ...] = ()
    key_pattern: str | None = None
    tags: tuple[str, ...] = ()
    tag_prefixes: tuple[str, ...] = ()
    tag_mode: str = "any"
    include_all: bool = False
    sort_by: str = "created_at"
    sort_order: str = "desc"
    limit: int = 100
    offset: int = 0


def _where(org_id: str, run_id: str, q: RunDataQuery) -> Where:
    where = Where(["d.org_id = $1", "d.run_id = $2"], [org_id, run_id])
    key_group = Where([], where.args)  # shares the parameter list
    if q.key is not None:
        key_group.add("d.key = {}", q.key)
    if q.keys:
        key_group.add("d.key = ANY({}::text[])", list(q.keys))
    if q.key_prefixes:
        key_group.add("d.key LIKE ANY({}::text[])", [escape_like(p) + "%" for p in q.key_prefixes])
    if q.key_pattern is not None:
        key_group.add("d.key LIKE {}", glob_to_like(q.key_pattern))
    if key_group.clauses:
        where.clauses.append("(" + " OR ".join(key_group.clauses) + ")")
    if q.tags:
        where.add(
            "d.tags @> {}::text[]" if q.tag_mode == "all" else "d.tags && {}::text[]", list(q.tags)
        )
    if q.tag_prefixes:
        patterns = [escape_like(p) + "%" for p in q.tag_prefixes]
        if q.tag_mode == "all":
            fragment = "NOT EXISTS (SELECT 1 FROM unnest({}::text[]) AS p WHERE NOT EXISTS (SELECT 1 FROM unnest(d.tags) AS x WHERE x LIKE p))"
        else:
            fragment = "EXISTS (SELECT 1 FROM unnest(d.tags) AS x WHERE x LIKE ANY({}::text[]))"
        where.add(fragment, patterns)
    return where


async def query_run_data(conn: Db, *, org_id: str, run_id: str, q: RunDataQuery) -> Page[RunData]:
    """Matching rows (or only the latest per key), a page of them, and how many match in all."""
    where = _where(org_id, run_id, q)
    column = _SORT_COLUMNS[q.sort_by]
    order = SORT_ORDERS[q.sort_order]
    if q.include_all:
        matches = f"SELECT * FROM run_data d WHERE {where.sql()}"
    else:
        # Latest row per key among the matching rows: by created_at, then id.
        matches = f"""SELECT DISTINCT ON (d.key) * FROM run_data d WHERE {where.sql()}
                       ORDER BY d.key, d.created_at DESC, d.id DESC"""
    lim, off = f"${len(where.args) + 1}", f"${len(where.args) + 2}"
    sql = f"""
WITH m AS ({matches})
SELECT n.total, p.*
  FROM (SELECT count(*) AS total FROM m) n
  LEFT JOIN LATERAL (
      SELECT {COLUMNS} FROM m d ORDER BY d.{column} {order}, d.id {order} LIMIT {lim} OFFSET {off}
  ) p ON true
"""
    records = await conn.fetch(sql, *where.args, q.limit, q.offset)
    total = records[0][0] if records else 0
    items = [RunData(*tuple(rec)[1:]) for rec in records if rec[1] is not None]
    return Page(items=items, total=total)


async def delete_run_data(
    conn: Db, *, org_id: str, run_id: str, key: str | None, data_id: str | None
) -> int:
    """Delete the run's rows with this key and/or id; the number deleted."""
    where = Where(["org_id = $1", "run_id = $2"], [org_id, run_id])
    if key is not None:
        where.add("key = {}", key)
    if data_id is not None:
        where.add("id = {}", data_id)
    status = await conn.execute(f"DELETE FROM run_data WHERE {where.sql()}", *where.args)
    return int(status.split()[-1])
