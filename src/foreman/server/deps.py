"""What every route needs: the app state, the caller's connection, and parameter checks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar import Request
from litestar.openapi.datastructures import ResponseSpec

from foreman import errors, ids
from foreman.models import ErrorBody, Task
from foreman.server import auth
from foreman.settings import Settings
from foreman.store import db


@dataclass(slots=True)
class AppState:
    """Resources opened by the lifespan and shared by the routes."""

    settings: Settings
    pool: asyncpg.Pool  # type: ignore[type-arg]
    queue: Any = None

    async def publish(self, tasks: list[Task]) -> None:
        """Hand queued tasks to the queue backend (the postgres backend needs nothing more)."""
        if self.queue is not None and tasks:
            await self.queue.publish(tasks)


def state(request: Request[Any, Any, Any]) -> AppState:
    return request.app.state.foreman  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def org_conn(request: Request[Any, Any, Any]) -> AsyncIterator[tuple[str, db.Connection]]:
    """Authenticate, then lend a connection bound to the caller's organisation."""
    org_id = auth.request_org(request)
    async with db.org_connection(state(request).pool, org_id) as conn:
        with db.translate_errors():
            yield org_id, conn


def require_uuid(value: str, what: str) -> str:
    """A path id; a malformed one is simply not found (SPEC section 2)."""
    if not ids.is_uuid(value):
        raise errors.NotFoundError(f"{what} not found: {value}")
    return value


_SORT_ALIASES = {
    "createdAt": "created_at",
    "startedAt": "started_at",
    "completedAt": "completed_at",
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


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers a route gives."""
    descriptions = {
        400: "Invalid input",
        401: "Missing or invalid API key",
        403: "x-org-id does not match the key",
        404: "Not found",
        409: "Conflict with the current state",
        413: "Body too large",
        503: "Database unavailable",
    }
    return {
        code: ResponseSpec(data_container=ErrorBody, description=descriptions[code])
        for code in (*codes, 401, 403, 503)
    }
