"""Run data: a key-value store per run, many values per key, with tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreman import errors
from foreman.models import MAX_TAGS, RunData
from foreman.store import queries
from foreman.store.db import Db

_SQL = queries.load_statements("run_data")  # store/sql/run_data.sql
_RUN_EXISTS = _SQL["run_exists"]
_INSERT_RUN_DATA = _SQL["insert_run_data"]
_UPDATE_TAGS = _SQL["update_tags"]
_RUN_DATA_EXISTS = _SQL["run_data_exists"]

# For the statements built below (as in store/sql/run_data.sql): named as models.RunData's fields.
_RUN_DATA_COLUMNS = """d.id, d.run_id, d.task_id, d.org_id, d.key, d.value, d.tags, d.metadata,
       d.created_at, d.updated_at"""

_SORT_COLUMNS = {"created_at": "created_at", "updated_at": "updated_at", "key": "key"}


def unique_tags(tags: list[str]) -> list[str]:
    """Tags without repeats, first occurrence first."""
    return list(dict.fromkeys(tags))


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The new row; None when the run is missing (run_found False) or the task is not the run's."""

    item: RunData | None
    run_found: bool


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
    item = None if record["id"] is None else queries.model_from(RunData, record)
    return InsertResult(item, record["run_found"])


async def update_tags(
    conn: Db, *, org_id: str, run_id: str, data_id: str, add: list[str], remove: list[str], now: int
) -> RunData | None:
    """Remove, then add tags; None if the entry is not in this run (400 past MAX_TAGS)."""
    record = await conn.fetchrow(_UPDATE_TAGS, org_id, run_id, data_id, remove, add, now, MAX_TAGS)
    if record is not None:
        return queries.model_from(RunData, record)
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


def _where(org_id: str, run_id: str, q: RunDataQuery) -> queries.Where:
    where = queries.Where(["d.org_id = $1", "d.run_id = $2"], [org_id, run_id])
    key_group = queries.Where([], where.args)  # shares the parameter list
    if q.key is not None:
        key_group.add("d.key = {}", q.key)
    if q.keys:
        key_group.add("d.key = ANY({}::text[])", list(q.keys))
    if q.key_prefixes:
        key_group.add(
            "d.key LIKE ANY({}::text[])", [queries.escape_like(p) + "%" for p in q.key_prefixes]
        )
    if q.key_pattern is not None:
        key_group.add("d.key LIKE {}", queries.glob_to_like(q.key_pattern))
    if key_group.clauses:
        where.clauses.append("(" + " OR ".join(key_group.clauses) + ")")
    if q.tags:
        where.add(
            "d.tags @> {}::text[]" if q.tag_mode == "all" else "d.tags && {}::text[]", list(q.tags)
        )
    if q.tag_prefixes:
        patterns = [queries.escape_like(p) + "%" for p in q.tag_prefixes]
        if q.tag_mode == "all":
            fragment = "NOT EXISTS (SELECT 1 FROM unnest({}::text[]) AS p WHERE NOT EXISTS (SELECT 1 FROM unnest(d.tags) AS x WHERE x LIKE p))"
        else:
            fragment = "EXISTS (SELECT 1 FROM unnest(d.tags) AS x WHERE x LIKE ANY({}::text[]))"
        where.add(fragment, patterns)
    return where


async def query_run_data(
    conn: Db, *, org_id: str, run_id: str, q: RunDataQuery
) -> queries.Page[RunData]:
    """Matching rows (or only the latest per key), a page of them, and how many match in all."""
    where = _where(org_id, run_id, q)
    sql = _query_run_data_sql(
        where,
        _SORT_COLUMNS[q.sort_by],
        queries.SORT_ORDERS[q.sort_order],
        latest_per_key=not q.include_all,
    )
    return await queries.fetch_page(conn, RunData, sql, [*where.args, q.limit, q.offset])


def _query_run_data_sql(
    where: queries.Where, column: str, order: str, *, latest_per_key: bool
) -> str:
    """A page of entries and the total, from fixed fragments: where's clauses (their values are
    parameters, then $n limit and offset), a whitelisted sort column and order. Latest per key:
    among the matching rows, by created_at, then id."""
    limit, offset = where.page()
    distinct, latest = (
        ("DISTINCT ON (d.key) ", " ORDER BY d.key, d.created_at DESC, d.id DESC")
        if latest_per_key
        else ("", "")
    )
    return f"""
WITH m AS (SELECT {distinct}* FROM run_data d WHERE {where.sql()}{latest})
SELECT n.total, p.*
  FROM (SELECT count(*) AS total FROM m) n
  LEFT JOIN LATERAL (
      SELECT {_RUN_DATA_COLUMNS}
        FROM m d
       ORDER BY d.{column} {order}, d.id {order}
       LIMIT {limit} OFFSET {offset}
  ) p ON true
"""  # noqa: S608 - fixed fragments only (see the docstring); every value is a parameter


async def delete_run_data(
    conn: Db, *, org_id: str, run_id: str, key: str | None, data_id: str | None
) -> int:
    """Delete the run's rows with this key and/or id; the number deleted."""
    where = queries.Where(["org_id = $1", "run_id = $2"], [org_id, run_id])
    if key is not None:
        where.add("key = {}", key)
    if data_id is not None:
        where.add("id = {}", data_id)
    sql = f"DELETE FROM run_data WHERE {where.sql()}"  # noqa: S608 - Where's fixed fragments, values as parameters
    status = await conn.execute(sql, *where.args)
    return int(status.split()[-1])
