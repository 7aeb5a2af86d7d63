"""What every route needs: the app state, the caller's connection, and parameter checks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from litestar import Request, Router
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter

from foreman import errors
from foreman.models import ErrorBody, Pagination, Task
from foreman.queue.base import QueueBackend

if TYPE_CHECKING:  # redis_acl imports redis, the optional foreman[redis] extra
    from foreman.queue.redis_acl import RedisAcl
from foreman.server import auth, jsontext, notify, params
from foreman.server import errors as error_handlers
from foreman.server.events import EventHub
from foreman.server.metrics import ServerMetrics
from foreman.server.middleware import received_body
from foreman.settings import Settings
from foreman.store import db, queries
from foreman.store import dependencies as dependencies_store
from foreman.store.pool import Pool

# Largest offset a list accepts: beyond it no page can hold rows, and PostgreSQL's bigint ends.
MAX_OFFSET = 2**53

T = TypeVar("T")
L = TypeVar("L")

# The query parameters of every list's page (its limit's range and sortBy's columns are its own).
Offset = Annotated[int, params.integer_param(ge=0, le=MAX_OFFSET)]
SortOrder = Annotated[
    str, QueryParameter(name="sortOrder", description="asc or desc, any case." + params.ONCE)
]


@dataclass(slots=True)
class AppState:
    """Resources opened by the lifespan and shared by the routes."""

    settings: Settings
    pool: Pool[db.Connection]
    auth: auth.Authenticator
    queue: QueueBackend | None = None
    notifier: notify.Notifier | None = None  # wakes long polls; None = polling only
    # FOREMAN_REDIS_ACL=per-org: hands out each organisation's own Redis user (else None).
    redis_acl: RedisAcl | None = None
    metrics: ServerMetrics | None = None  # None: metrics are off
    events: EventHub | None = None  # the live run events' feeds
    draining: bool = False  # shutting down: long polls and event streams answer now

    def drain(self) -> None:
        """The process begins to shut down (server/runner.py): long polls answer at their next
        look and event streams close, instead of holding the shutdown for their whole wait."""
        self.draining = True
        if self.events is not None:
            self.events.drain()

    @property
    def publishes(self) -> bool:
        """Whether queued tasks go to a broker after the commit (not the postgres backend's)."""
        return self.queue is not None and self.queue.name != "postgres"

    async def publish(self, tasks: list[Task]) -> None:
        """Hand queued tasks to the queue backend (the postgres backend needs nothing more)."""
        if self.queue is not None and tasks:
            await self.queue.publish(tasks)


@functools.cache
def _decoder(body_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(body_type)


class JsonRequest(Request[Any, Any, Any]):
    """A request whose JSON body is decoded once, strictly, straight into the handler's body type.

    Litestar decodes to builtins and then converts with ``strict=False``, which accepts ``"3"`` and
    ``3.0`` for an integer; SPEC section 2 makes a wrong type a 400. Litestar's later conversion
    passes the decoded struct through unchanged. JSON values stay text (models.JsonText); the
    checks of server/jsontext.py cover what decoding them would have checked.
    """

    async def body(self) -> bytes:
        """The body BodyLimitMiddleware received already, or Litestar's own read of it."""
        body = received_body(self.scope)
        return await super().body() if body is None else body

    async def json(self) -> Any:
        data = self.route_handler.parsed_fn_signature.parameters.get("data")
        try:
            decoder = _decoder(Any if data is None else data.annotation)
        except TypeError:  # not a type msgspec decodes (none of ours): Litestar's own path
            return await super().json()
        body = await self.body()
        if not body.strip():
            raise errors.ValidationError(
                "Validation failed: body: a JSON request body is required",
                details=[{"loc": ["body"], "msg": "a JSON request body is required"}],
            )
        jsontext.require_utf8(body)
        try:
            decoded = decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise error_handlers.body_validation_error(str(exc)) from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise errors.ClientError(f"Malformed JSON body: {exc}") from exc
        except RecursionError as exc:
            raise errors.ClientError("Malformed JSON body: nested too deeply") from exc
        jsontext.require_bounded_numbers(body, state(self).settings.max_body_bytes)
        return decoded


def state(request: Request[Any, Any, Any]) -> AppState:
    return request.app.state.foreman  # type: ignore[no-any-return]


class CallerConnection:
    """``async with org_conn(request) as (org_id, conn)``: the caller's organisation and a
    connection bound to it."""

    __slots__ = ("_lease", "_org_id")

    def __init__(self, org_id: str, lease: db.OrgConnection) -> None:
        self._org_id = org_id
        self._lease = lease

    async def __aenter__(self) -> tuple[str, db.Connection]:
        return self._org_id, await self._lease.__aenter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self._lease.__aexit__(exc_type, exc, tb)


def org_conn(request: Request[Any, Any, Any]) -> CallerConnection:
    """A connection bound to the organisation of the caller the route authenticated."""
    org_id = auth.request_org(request)
    return CallerConnection(org_id, db.org_connection(state(request).pool, org_id))


_SORT_ALIASES = {
    "createdAt": "created_at",
    "startedAt": "started_at",
    "completedAt": "completed_at",
    "nextRunAt": "next_run_at",
    "updatedAt": "updated_at",
}


def sort_column(value: str, allowed: tuple[str, ...]) -> str:
    """sortBy in snake_case or camelCase; 400 naming the allowed values otherwise."""
    column = _SORT_ALIASES.get(value, value)
    if column not in allowed:
        raise errors.ValidationError(
            f"Validation failed: sortBy must be one of {', '.join(allowed)}",
            details=[{"loc": ["query", "sortBy"], "msg": f"must be one of {', '.join(allowed)}"}],
        )
    return column


def sort_order(value: str) -> str:
    """sortOrder asc|desc, any case."""
    order = value.lower()
    if order not in ("asc", "desc"):
        raise errors.ValidationError(
            "Validation failed: sortOrder must be asc or desc",
            details=[{"loc": ["query", "sortOrder"], "msg": "must be asc or desc"}],
        )
    return order


def checked_paging(
    sort_by: str, order: str, columns: tuple[str, ...], *, limit: int, offset: int
) -> queries.Paging:
    """sortBy (one of columns) and sortOrder, checked in that order (400), with the page."""
    column = sort_column(sort_by, columns)
    return queries.Paging(sort_by=column, sort_order=sort_order(order), limit=limit, offset=offset)


def listing(kind: Callable[..., L], page: queries.Page[Any], paging: queries.Paging) -> L:
    """The answer of a list: page's items with the total and the page asked for."""
    pagination = Pagination(total=page.total, limit=paging["limit"], offset=paging["offset"])
    return kind(data=page.items, pagination=pagination)


def found(item: T | None, what: str, item_id: str) -> T:
    """item, or the 404 that names what was not found."""
    if item is None:
        raise errors.NotFoundError(f"{what} not found: {item_id}")
    return item


def api_router(path: str, tag: str, handlers: list[HTTPRouteHandler]) -> Router:
    """The routes of one resource of the API under path, for authenticated callers only, listed in
    the API's documentation under tag."""
    return Router(path=path, route_handlers=handlers, middleware=[auth.authenticated], tags=[tag])


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers a route gives."""
    descriptions = {
        400: "Invalid input",
        401: "Missing or invalid API key",
        403: "x-org-id does not match the key",
        404: "Not found",
        409: "Conflict with the current state",
        413: "Body too large",
        415: "The body is declared as something other than JSON",
        503: "Database unavailable, or no database connection free in time",
        504: "The database did not finish the request in time (statement timeout)",
    }
    return {
        code: ResponseSpec(data_container=ErrorBody, description=descriptions[code])
        for code in (*codes, 401, 403, 415, 503, 504)
    }


def event_hub(request: Request[Any, Any, Any]) -> EventHub:
    """The process's live run events hub (the lifespan opens it)."""
    hub = state(request).events
    if hub is None:
        raise errors.UnavailableError("Run events are not available: the server is starting")
    return hub


async def released_tasks(
    request: Request[Any, Any, Any], conn: db.Connection, org_id: str, released: list[str]
) -> list[Task]:
    """The children an end released, to publish (the postgres backend needs no message)."""
    queue = state(request).queue
    if not released or queue is None or queue.name == "postgres":
        return []
    return await dependencies_store.get_tasks(conn, org_id=org_id, task_ids=released)
