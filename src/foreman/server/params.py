"""Path and query parameters, read exactly: what every route's parameters must look like.

Litestar's own parsing is lax in ways that changed what a request meant: it collapses ``//``
(``POST /tasks//claim`` reached the bulk claim), keeps the last of repeated parameters, and reads
``1e2`` as the integer 100. A malformed path is refused before routing (server/edge.py);
``exact_request``, the hook of every handler with query parameters, refuses the rest before the
handler runs; the functions below parse the values a handler reads. The rules, for clients:

- a path has no empty segment, no ``.``/``..`` segment and no encoded ``/`` (404);
- an id is a UUID, hyphenated or 32 hex digits, any case; it is used in its canonical lowercase
  hyphenated form (``ids.canonical_id``); anything else is 404 in a path;
- a query parameter appears at most once (400), an integer is plain decimal digits without a
  leading zero (400);
- a filter given is never empty (400): leave it out to not filter; a comma list has no empty
  item; values are taken as sent, spaces included.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.handlers import BaseRouteHandler
from litestar.params import QueryParameter

from foreman import errors, ids
from foreman.models import MAX_LIST_ITEMS, MAX_NAME_CHARS

_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # as in JSON: no sign, exponent or leading zero
_ENCODED_SLASH = re.compile(rb"%2f", re.IGNORECASE)
_SHOWN_CHARS = 80  # of a bad value echoed in an error message


def shown(value: str) -> str:
    """value as an error message may echo it: cut short when long."""
    return value if len(value) <= _SHOWN_CHARS else f"{value[:_SHOWN_CHARS]}..."


def _invalid(name: str, msg: str) -> errors.ValidationError:
    return errors.ValidationError(
        f"Validation failed: {name}: {msg}", details=[{"loc": ["query", name], "msg": msg}]
    )


# ---------------------------------------------------------------- the guard


@dataclass(frozen=True, slots=True)
class _QuerySpec:
    names: frozenset[str]  # wire names of the handler's query parameters
    integers: frozenset[str]  # those of them that are integers


# By the handler's function: the spec depends on its signature only, and Litestar's own handler
# objects (the OPTIONS ones) cannot be weakly referenced.
_SPECS: weakref.WeakKeyDictionary[Callable[..., Any], _QuerySpec] = weakref.WeakKeyDictionary()


def _query_spec(handler: BaseRouteHandler) -> _QuerySpec:
    """The handler's query parameters, read once from its signature."""
    spec = _SPECS.get(handler.fn)
    if spec is None:
        names: set[str] = set()
        integers: set[str] = set()
        for field in handler.parsed_fn_signature.parameters.values():
            kwarg = field.kwarg_definition
            if isinstance(kwarg, QueryParameter):
                names.add(kwarg.name or field.name)
                if field.annotation is int:
                    integers.add(kwarg.name or field.name)
        spec = _SPECS[handler.fn] = _QuerySpec(frozenset(names), frozenset(integers))
    return spec


def bad_path(raw_path: bytes) -> bool:
    """Whether a raw request path has an empty, ``.`` or ``..`` segment, or an encoded ``/``.

    The router collapses ``//`` and the server decodes ``%2F`` before routing, so such a path
    would reach another endpoint than the one it names. One trailing ``/`` is allowed.
    """
    if b"//" not in raw_path and b"/." not in raw_path and b"%" not in raw_path:
        return False  # the usual path, decided by three scans in C (checked on every request)
    path = raw_path.split(b"?", 1)[0]  # httpx's ASGI transport leaves the query in raw_path
    segments = path.removesuffix(b"/").split(b"/")[1:]
    return _ENCODED_SLASH.search(path) is not None or any(
        segment in (b"", b".", b"..") for segment in segments
    )


def malformed_path(raw_path: bytes | None) -> errors.NotFoundError | None:
    """The 404 for a raw path that bad_path refuses (None: the path is fine, or unknown)."""
    if raw_path is None or not bad_path(raw_path):
        return None
    text = shown(raw_path.split(b"?", 1)[0].decode(errors="replace"))
    return errors.NotFoundError(
        f"Malformed path: {text} has an empty, dot or encoded-slash segment"
    )


async def exact_request(request: Request[Any, Any, Any]) -> None:
    """Refuse a repeated query parameter or a non-decimal integer (400).

    The ``before_request`` hook of every handler with query parameters (a test checks that none
    lacks it). Not a guard: Litestar copies the route handler for every guard call, which cost
    ~150 us per request; and not on handlers without query parameters, whose hook call would
    only cost time. Malformed paths are refused before routing (server/edge.py).
    """
    spec = _query_spec(request.scope["route_handler"])
    if not spec.names:
        return
    query = request.query_params
    for name in spec.names & query.keys():
        values = query.getall(name)
        if len(values) > 1:
            raise _invalid(name, "given more than once; each query parameter may appear once")
        if name in spec.integers and _DECIMAL.fullmatch(values[0]) is None:
            raise _invalid(
                name, f"must be an integer in plain decimal digits, got {shown(values[0])!r}"
            )


# ---------------------------------------------------------------- values


def path_id(value: str, what: str) -> str:
    """The canonical form of a path id; a malformed one is simply not found (SPEC section 2)."""
    canonical = ids.canonical_id(value)
    if canonical is None:
        raise errors.NotFoundError(f"{what} not found: {shown(value)}")
    return canonical


def text(value: str | None, name: str) -> str | None:
    """A text filter: 1..MAX_NAME_CHARS characters, taken as sent."""
    if value is not None and not 0 < len(value) <= MAX_NAME_CHARS:
        raise _invalid(name, f"must be 1..{MAX_NAME_CHARS} characters, got {len(value)}")
    return value


def comma_list(value: str | None, name: str) -> tuple[str, ...]:
    """A comma-list filter: 1..MAX_LIST_ITEMS items of 1..MAX_NAME_CHARS characters, as sent."""
    if value is None:
        return ()
    items = value.split(",")
    if len(items) > MAX_LIST_ITEMS:
        raise _invalid(name, f"has {len(items)} items; the limit is {MAX_LIST_ITEMS}")
    for item in items:
        if not 0 < len(item) <= MAX_NAME_CHARS:
            raise _invalid(
                name,
                f"items must be 1..{MAX_NAME_CHARS} characters, got {len(item)} "
                "(an empty item is a 400, never 'no filter')",
            )
    return tuple(items)


def id_filter(value: str | None, name: str) -> str | None:
    """An id filter in its canonical form. A value that is no UUID comes back as sent: it can
    match no row, and the caller answers an empty result (``ids.is_uuid`` tells them apart)."""
    checked = text(value, name)
    return None if checked is None else ids.canonical_id(checked) or checked


def choice(value: str | None, name: str, allowed: Sequence[str]) -> str | None:
    """An enum filter: one of allowed, exactly (Litestar reads ``status=null`` as no filter)."""
    if value is not None and value not in allowed:
        raise _invalid(name, f"must be one of {', '.join(allowed)}")
    return value


# ---------------------------------------------------------------- their OpenAPI documentation

ONCE = " At most once per request."
_ID_RULES = (
    "A UUID (hyphenated or 32 hex digits, any case); a value that is no UUID matches nothing."
)
_TEXT_RULES = f"Matched exactly, spaces included; 1..{MAX_NAME_CHARS} characters."
_LIST_RULES = (
    f"Comma list of 1..{MAX_LIST_ITEMS} items of 1..{MAX_NAME_CHARS} characters each, matched "
    "exactly (spaces are kept); an empty list or an empty item is a 400."
)


def integer_param(*, ge: int, le: int, name: str | None = None) -> QueryParameter:
    """An integer query parameter in ge..le, written in decimal digits (``exact_request``)."""
    rules = "Plain decimal digits: no sign, exponent, fraction, spaces or leading zero."
    return QueryParameter(name=name, ge=ge, le=le, description=rules + ONCE)


def enum_param(allowed: Sequence[str], *, name: str | None = None) -> QueryParameter:
    """A query parameter that is one of allowed (checked by ``choice``)."""
    return QueryParameter(name=name, enum=list(allowed), description="Exactly one of these." + ONCE)


# The string rules are checked by text, comma_list and id_filter, which name the parameter as the
# client wrote it; in the schema they are only documented (schema_extra: Litestar does not
# enforce it), so that Litestar's own check does not answer first.
_NAME_SCHEMA = {"minLength": 1, "maxLength": MAX_NAME_CHARS}
_LIST_SCHEMA = {"minLength": 1, "pattern": "^[^,]+(,[^,]+)*$"}


def text_param(*, name: str | None = None) -> QueryParameter:
    """A text filter (checked by ``text``)."""
    return QueryParameter(name=name, schema_extra=_NAME_SCHEMA, description=_TEXT_RULES + ONCE)


def list_param(*, name: str | None = None) -> QueryParameter:
    """A comma-list filter (checked by ``comma_list``)."""
    return QueryParameter(name=name, schema_extra=_LIST_SCHEMA, description=_LIST_RULES + ONCE)


def id_param(*, name: str | None = None) -> QueryParameter:
    """An id filter (checked by ``id_filter``)."""
    return QueryParameter(name=name, schema_extra=_NAME_SCHEMA, description=_ID_RULES + ONCE)
