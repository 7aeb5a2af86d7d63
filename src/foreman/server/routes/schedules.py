"""POST/GET/PATCH/DELETE /api/v1/schedules: runs created on a cron expression or an interval."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from foreman import ids, models, triggers
from foreman.models import Schedule, ScheduleCreate, ScheduleList, ScheduleUpdate
from foreman.server import deps, params
from foreman.server.deps import error_responses, org_conn
from foreman.store import schedules as store

SORT_BY = "One of created_at, next_run_at (camelCase accepted)." + params.ONCE
_EMPTY_OBJECT = msgspec.Raw(b"{}")


def new_schedule(data: ScheduleCreate) -> store.NewSchedule:
    """The store's view of a create request."""
    trigger = triggers.Trigger(cron=data.cron, interval_ms=data.interval_ms, timezone=data.timezone)
    run_input = data.run_input_data
    return store.NewSchedule(
        name=data.name,
        trigger=trigger,
        enabled=data.enabled,
        run_input_data=run_input if isinstance(run_input, msgspec.Raw) else _EMPTY_OBJECT,
        task=msgspec.Raw(msgspec.json.encode(data.task)),
    )


def schedule_changes(data: ScheduleUpdate) -> dict[str, Any]:
    """The fields a PATCH sets (snake_case); ``task`` as the JSON object of its fields to set."""
    changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    if isinstance(data.task, models.ScheduleTaskUpdate):
        # camelCase, fields left out omitted (UNSET), inputData as the client's JSON text
        changes["task"] = msgspec.Raw(msgspec.json.encode(data.task))
    return changes


@post("", status_code=201, responses=error_responses(400, 413))
async def create_schedule(
    request: Request[Any, Any, Any], data: JSONBody[ScheduleCreate]
) -> Schedule:
    """Create a schedule; each tick creates a run (its metadata names the schedule) with one
    queued task."""
    async with org_conn(request) as (org_id, conn):
        return await store.insert_schedule(
            conn,
            org_id=org_id,
            schedule_id=ids.new_id(),
            new=new_schedule(data),
            now=ids.now_ms(),
        )


@get("/{schedule_id:str}", responses=error_responses(400, 404))
async def get_schedule(request: Request[Any, Any, Any], schedule_id: FromPath[str]) -> Schedule:
    """A schedule, with its next tick and last firing."""
    schedule_id = params.path_id(schedule_id, "Schedule")
    async with org_conn(request) as (org_id, conn):
        schedule = await store.get_schedule(conn, org_id=org_id, schedule_id=schedule_id)
    return deps.found(schedule, "Schedule", schedule_id)


@patch("/{schedule_id:str}", responses=error_responses(400, 404, 413))
async def update_schedule(
    request: Request[Any, Any, Any], schedule_id: FromPath[str], data: JSONBody[ScheduleUpdate]
) -> Schedule:
    """Change a schedule; a new trigger, timezone or enabled sets its next tick from now."""
    schedule_id = params.path_id(schedule_id, "Schedule")
    async with org_conn(request) as (org_id, conn):
        schedule = await store.update_schedule(
            conn,
            org_id=org_id,
            schedule_id=schedule_id,
            changes=schedule_changes(data),
            now=ids.now_ms(),
        )
    return deps.found(schedule, "Schedule", schedule_id)


@delete("/{schedule_id:str}", status_code=200, responses=error_responses(400, 404))
async def delete_schedule(request: Request[Any, Any, Any], schedule_id: FromPath[str]) -> Schedule:
    """Delete a schedule (the runs it created stay); answers it as it was."""
    schedule_id = params.path_id(schedule_id, "Schedule")
    async with org_conn(request) as (org_id, conn):
        schedule = await store.delete_schedule(conn, org_id=org_id, schedule_id=schedule_id)
    return deps.found(schedule, "Schedule", schedule_id)


@get("", responses=error_responses(400), before_request=params.exact_request)
async def list_schedules(
    request: Request[Any, Any, Any],
    limit: Annotated[int, params.integer_param(ge=1, le=100)] = 20,
    offset: deps.Offset = 0,
    sort_by: Annotated[str, QueryParameter(name="sortBy", description=SORT_BY)] = "created_at",
    sort_order_: deps.SortOrder = "desc",
) -> ScheduleList:
    """The organisation's schedules, newest first by default; ties broken by id."""
    paging = deps.checked_paging(
        sort_by, sort_order_, ("created_at", "next_run_at"), limit=limit, offset=offset
    )
    async with org_conn(request) as (org_id, conn):
        page = await store.list_schedules(conn, org_id=org_id, paging=paging)
    return deps.listing(ScheduleList, page, paging)


router = deps.api_router(
    "/api/v1/schedules",
    "schedules",
    [create_schedule, get_schedule, update_schedule, delete_schedule, list_schedules],
)
