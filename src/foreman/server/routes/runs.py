"""POST/GET/PATCH /api/v1/runs."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from litestar import Request, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from foreman import ids, models
from foreman.models import Run, RunCreate, RunList, RunStatus, RunUpdate
from foreman.server import auth, cancelling, deps, events, params
from foreman.server.deps import error_responses, event_hub, org_conn
from foreman.store import runs as runs_store

SORT_BY = "One of created_at, started_at, completed_at (camelCase accepted)." + params.ONCE
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)


@post("", status_code=201, responses=error_responses(400, 413))
async def create_run(request: Request[Any, Any, Any], data: JSONBody[RunCreate]) -> Run:
    """Create a pending run."""
    async with org_conn(request) as (org_id, conn):
        return await runs_store.insert_run(
            conn,
            run_id=ids.new_id(),
            org_id=org_id,
            input_data=data.input_data,
            metadata=models.stored(data.metadata),
            now=ids.now_ms(),
            auto_complete=data.auto_complete,
        )


@get("/{run_id:str}", responses=error_responses(400, 404))
async def get_run(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Run:
    """A run with its task counters."""
    run_id = params.path_id(run_id, "Run")
    async with org_conn(request) as (org_id, conn):
        run = await runs_store.get_run(conn, org_id=org_id, run_id=run_id)
    return deps.found(run, "Run", run_id)


@get(
    "/{run_id:str}/events",
    media_type="text/event-stream",
    responses=error_responses(400, 404),
)
async def run_events(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Stream:
    """Server-Sent Events: one per state change of the run and of each of its tasks, with an id.

    A client reconnecting with `Last-Event-ID` gets the events after it, in order. The stream
    sends a comment when idle and an `end` event once the run and all its tasks have ended.
    """
    run_id = params.path_id(run_id, "Run")
    after = events.last_event_id(request.headers.get("last-event-id"))
    return await event_hub(request).stream(auth.request_org(request), run_id, after)


@post("/{run_id:str}/cancel", status_code=200, responses=error_responses(400, 404, 409))
async def cancel_run(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Run:
    """Cancel a run and every task of it that has not ended (running ones at their next beat).

    A cancelled run is answered as it is (its tasks cancelled again); a completed or failed one
    is 409.
    """
    run_id = params.path_id(run_id, "Run")
    return await cancelling.cancel_run(request, auth.request_org(request), run_id)


@patch("/{run_id:str}", responses=error_responses(400, 404, 413))
async def update_run(
    request: Request[Any, Any, Any], run_id: FromPath[str], data: JSONBody[RunUpdate]
) -> Run:
    """Change a run's status, output, error or metadata (metadata is replaced whole)."""
    run_id = params.path_id(run_id, "Run")
    changes = models.changes(data)
    async with org_conn(request) as (org_id, conn):
        run = await runs_store.update_run(
            conn, org_id=org_id, run_id=run_id, changes=changes, now=ids.now_ms()
        )
    return deps.found(run, "Run", run_id)


@get("", responses=error_responses(400), before_request=params.exact_request)
async def list_runs(
    request: Request[Any, Any, Any],
    limit: Annotated[int, params.integer_param(ge=1, le=100)] = 20,
    offset: deps.Offset = 0,
    status: Annotated[str | None, params.enum_param(RUN_STATUSES)] = None,
    sort_by: Annotated[str, QueryParameter(name="sortBy", description=SORT_BY)] = "created_at",
    sort_order_: deps.SortOrder = "desc",
) -> RunList:
    """The organisation's runs, newest first by default; ties broken by id."""
    status = params.choice(status, "status", RUN_STATUSES)
    columns = ("created_at", "started_at", "completed_at")
    paging = deps.checked_paging(sort_by, sort_order_, columns, limit=limit, offset=offset)
    async with org_conn(request) as (org_id, conn):
        page = await runs_store.list_runs(conn, org_id=org_id, status=status, paging=paging)
    return deps.listing(RunList, page, paging)


router = deps.api_router(
    "/api/v1/runs", "runs", [create_run, get_run, run_events, cancel_run, update_run, list_runs]
)
