"""Pieces shared by the store modules: list envelopes and LIKE escaping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

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

    def next_param(self) -> str:
        return f"${len(self.args) + 1}"


def escape_like(text: str) -> str:
    """Escape LIKE's wildcards so that user text matches itself (SPEC section 5: Fixed)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def glob_to_like(pattern: str) -> str:
    """Translate a glob (``*`` any run, ``?`` one character) into an escaped LIKE pattern."""
    return "".join("%" if c == "*" else "_" if c == "?" else escape_like(c) for c in pattern)


def split_list(values: Sequence[str] | str | None) -> list[str]:
    """A comma list from a query string, without empty items."""
    if values is None:
        return []
    joined = values if isinstance(values, str) else ",".join(values)
    return [v.strip() for v in joined.split(",") if v.strip()]
