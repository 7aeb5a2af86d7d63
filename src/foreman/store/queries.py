"""Pieces shared by the store modules: the SQL loader, models from records, list envelopes and
LIKE escaping."""

from __future__ import annotations

import functools
import importlib.resources
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

import asyncpg
import msgspec

T = TypeVar("T")
M = TypeVar("M", bound=msgspec.Struct)

# A statement of store/sql/<file>.sql starts at a `-- name --` line; the comment lines right below
# it describe the statement (procrastinate's sql/queries.sql layout).
_STATEMENT_HEADER = re.compile(r"^-- ([a-z0-9_]+) --\n(?:--.*\n)*", re.MULTILINE)


def parse_statements(text: str) -> dict[str, str]:
    """The named statements of a .sql file's text (the file's own header comment is dropped)."""
    parts = _STATEMENT_HEADER.split(text)
    statements = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    if len(statements) * 2 != len(parts) - 1 or not all(statements.values()):
        raise ValueError("a statement name repeats, or a statement is empty")
    return statements


def load_statements(file: str) -> dict[str, str]:
    """The named statements of store/sql/<file>.sql, whole, as the store sends them."""
    path = importlib.resources.files("foreman.store") / "sql" / f"{file}.sql"
    return parse_statements(path.read_text(encoding="utf-8"))


@functools.cache
def _fields_getter(model: type[msgspec.Struct], columns: tuple[str, ...]) -> Callable[[Any], Any]:
    index: dict[str, int] = {}
    for position, column in enumerate(columns):
        if column in model.__struct_fields__:
            if column in index:
                raise ValueError(f"column {column!r} twice in a record for {model.__name__}")
            index[column] = position
    fields = model.__struct_fields__[: len(index)]
    if set(fields) != set(index):
        missing = [f for f in fields if f not in index]
        raise ValueError(f"{model.__name__} needs the columns {missing}")
    return operator.itemgetter(*(index[f] for f in fields))


def fields_of(model: type[msgspec.Struct], records: Sequence[Any]) -> Callable[[Any], Any]:
    """A function that returns a record's values for ``model(*values)``, found by column name.

    Other columns are ignored. The columns must carry the model's fields up to the last one
    present (the rest keep their defaults). The records of one result share their columns, so
    the positions are looked up once: ``model(*get(record))`` costs what ``model(*record)`` did.
    """
    if not records:
        return tuple
    return _fields_getter(model, tuple(records[0].keys()))


@functools.cache
def _values_getter(columns: tuple[str, ...], names: tuple[str, ...]) -> Callable[[Any], Any]:
    if len(names) < 2 or any(columns.count(name) != 1 for name in names):
        raise ValueError(f"need two or more names, each one column of the record: {names}")
    return operator.itemgetter(*(columns.index(name) for name in names))


def values(records: Sequence[Any], *names: str) -> Callable[[Any], tuple[Any, ...]]:
    """A function that returns the named columns of a record of records, as a tuple.

    The positions are looked up once for the result (see fields_of): by name, at the cost of
    indexing by position.
    """
    if not records:
        return lambda record: ()
    return _values_getter(tuple(records[0].keys()), names)


def models_from(model: type[M], records: Sequence[Any]) -> list[M]:
    """Build model from each record by column name (see fields_of)."""
    get = fields_of(model, records)
    return [model(*get(record)) for record in records]


def model_from(model: type[M], record: Any) -> M:
    """Build model from one record by column name (see fields_of)."""
    return model(*_fields_getter(model, tuple(record.keys()))(record))


async def fetch_model(
    conn: asyncpg.Connection, model: type[M], sql: str, *args: object
) -> M | None:
    """The one row of sql as model, or None when there is none."""
    record = await conn.fetchrow(sql, *args)
    return None if record is None else model_from(model, record)


SORT_ORDERS = {"asc": "ASC", "desc": "DESC"}


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list and the number of rows that match the whole filter."""

    items: list[T]
    total: int


@dataclass(slots=True)
class Where:
    """A WHERE clause assembled from fixed SQL fragments; values only ever travel as parameters."""

    clauses: list[str]
    args: list[object]

    def add(self, fragment: str, *values: object) -> None:
        """Append fragment, whose placeholders are written {} and numbered here in order."""
        numbers = [f"${len(self.args) + i + 1}" for i in range(len(values))]
        self.args.extend(values)
        self.clauses.append(fragment.format(*numbers))

    def sql(self) -> str:
        return " AND ".join(self.clauses)

    def page(self) -> tuple[str, str]:
        """The placeholders of LIMIT and OFFSET, whose values follow args."""
        return f"${len(self.args) + 1}", f"${len(self.args) + 2}"

    def param(self, value: object) -> str:
        """Append a value; its placeholder."""
        self.args.append(value)
        return f"${len(self.args)}"


def _page_sql(table: str, where: Where, column: str, order: str, *, each: str = "") -> str:
    """A page of table's rows and the total, from fixed fragments: where's clauses (their values
    are parameters, then $n limit and offset), a whitelisted sort column and order (ties broken
    by id); each, a set-returning call on row r whose columns join every row (as counters)."""
    limit, offset = where.page()
    rows = f"""SELECT * FROM {table} WHERE {where.sql()}
               ORDER BY {column} {order}, id {order} LIMIT {limit} OFFSET {offset}"""  # noqa: S608
    if each:
        rows = f"""SELECT r.*, e.*
        FROM ({rows}) r
       CROSS JOIN LATERAL {each} e
       ORDER BY r.{column} {order}, r.id {order}"""  # noqa: S608
    return f"""
SELECT n.total, p.*
  FROM (SELECT count(*) AS total FROM {table} WHERE {where.sql()}) n
  LEFT JOIN LATERAL (
      {rows}
  ) p ON true
"""  # noqa: S608 - fixed fragments only (see the docstring); every value is a parameter


class Paging(TypedDict):
    """A list's sort and page, checked by the route: a sortBy column name, asc or desc, limit
    and offset."""

    sort_by: str
    sort_order: str
    limit: int
    offset: int


async def fetch_sorted_page(
    conn: asyncpg.Connection,
    model: type[M],
    table: str,
    where: Where,
    paging: Paging,
    *,
    columns: Mapping[str, str],
    each: str = "",
) -> Page[M]:
    """A page of table's rows that match where, as paging asks (columns: the whitelist of sortBy
    names to columns), with the total (_page_sql)."""
    column, order = columns[paging["sort_by"]], SORT_ORDERS[paging["sort_order"]]
    sql = _page_sql(table, where, column, order, each=each)
    return await fetch_page(conn, model, sql, [*where.args, paging["limit"], paging["offset"]])


async def fetch_page(
    conn: asyncpg.Connection, model: type[M], sql: str, args: Sequence[object]
) -> Page[M]:
    """Run a list statement: each row is the total count, then one item's columns (NULL there
    when the page is empty: the rows come from a LEFT JOIN LATERAL on the count)."""
    records = await conn.fetch(sql, *args)
    get = fields_of(model, records)
    items = [model(*get(r)) for r in records if r["id"] is not None]
    return Page(items=items, total=records[0]["total"] if records else 0)


def jsonb_items(values: Sequence[Any]) -> list[msgspec.Raw | None]:
    """JSON values as elements of a jsonb[] parameter.

    Encoded here: asyncpg would take a JSON array for a nested dimension of the SQL array. A
    request's JSON text (msgspec.Raw) goes as it is.
    """
    return [
        v if v is None or isinstance(v, msgspec.Raw) else msgspec.Raw(msgspec.json.encode(v))
        for v in values
    ]


def escape_like(text: str) -> str:
    """Escape LIKE's wildcards so that user text matches itself (SPEC section 5: Fixed)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def glob_to_like(pattern: str) -> str:
    """Translate a glob (``*`` any run, ``?`` one character) into an escaped LIKE pattern."""
    return "".join("%" if c == "*" else "_" if c == "?" else escape_like(c) for c in pattern)
