"""/api/v1/runs/:runId/data: add, query, retag and delete run data."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, Router, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from foreman import errors, ids, models
from foreman.models import Deleted, Pagination, RunData, RunDataCreate, RunDataList, TagsUpdate
from foreman.server import auth
from foreman.server.deps import (
    MAX_OFFSET,
    error_responses,
    org_conn,
    require_uuid,
    sort_column,
    sort_order,
)
from foreman.store import run_data as store
from foreman.store.queries import split_list


@post("", status_code=201, responses=error_responses(400, 404, 413))
async def create_run_data(
    request: Request[Any, Any, Any], run_id: FromPath[str], data: JSONBody[RunDataCreate]
) -> RunData:
    """Add a value under a key; every POST adds a row."""
    require_uuid(run_id, "Run")
    async with org_conn(request) as (org_id, conn):
        result = await store.insert_run_data(
            conn,
            org_id=org_id,
            run_id=run_id,
            data_id=ids.new_id(),
            task_id=str(data.task_id),
            key=data.key,
            value=data.value,
            tags=data.tags,
            metadata=models.stored(data.metadata),
            now=ids.now_ms(),
        )
    if not result.run_found:
        raise errors.NotFoundError(f"Run not found: {run_id}")
    if result.item is None:
        raise errors.NotFoundError(f"Task not found: {data.task_id}")
    return result.item


@get("", responses=error_responses(400, 404))
async def query_run_data(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    key: FromQuery[str | None] = None,
    keys: FromQuery[str | None] = None,
    key_starts_with: Annotated[str | None, QueryParameter(name="keyStartsWith")] = None,
    key_pattern: Annotated[str | None, QueryParameter(name="keyPattern")] = None,
    tags: FromQuery[str | None] = None,
    tag_starts_with: Annotated[str | None, QueryParameter(name="tagStartsWith")] = None,
    tag_mode: Annotated[Literal["any", "all"], QueryParameter(name="tagMode")] = "any",
    include_all: Annotated[bool, QueryParameter(name="includeAll")] = False,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    sort_by: Annotated[str, QueryParameter(name="sortBy")] = "created_at",
    sort_order_: Annotated[str, QueryParameter(name="sortOrder")] = "desc",
) -> RunDataList:
    """Run data matching the filters; only the latest row per key unless includeAll=true."""
    require_uuid(run_id, "Run")
    query = store.RunDataQuery(
        key=key,
        keys=tuple(split_list(keys)),
        key_prefixes=tuple(split_list(key_starts_with)),
        key_pattern=key_pattern or None,
        tags=tuple(split_list(tags)),
        tag_prefixes=tuple(split_list(tag_starts_with)),
        tag_mode=tag_mode,
        include_all=include_all,
        sort_by=sort_column(sort_by, ("created_at", "updated_at", "key")),
        sort_order=sort_order(sort_order_),
        limit=limit,
        offset=offset,
    )
    async with org_conn(request) as (org_id, conn):
        if not await store.run_exists(conn, org_id=org_id, run_id=run_id):
            raise errors.NotFoundError(f"Run not found: {run_id}")
        page = await store.query_run_data(conn, org_id=org_id, run_id=run_id, q=query)
    return RunDataList(
        data=page.items, pagination=Pagination(total=page.total, limit=limit, offset=offset)
    )


@patch("/{data_id:str}/tags", responses=error_responses(400, 404, 413))
async def update_run_data_tags(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    data_id: FromPath[str],
    data: JSONBody[TagsUpdate],
) -> RunData:
    """Remove tags, then add tags not already present; order kept, tags unique."""
    require_uuid(run_id, "Run")
    require_uuid(data_id, "Run data")
    async with org_conn(request) as (org_id, conn):
        item = await store.update_tags(
            conn,
            org_id=org_id,
            run_id=run_id,
            data_id=data_id,
            add=data.add or [],
            remove=data.remove or [],
            now=ids.now_ms(),
        )
        if item is None and not await store.run_exists(conn, org_id=org_id, run_id=run_id):
            raise errors.NotFoundError(f"Run not found: {run_id}")
    if item is None:
        raise errors.NotFoundError(f"Run data not found: {data_id}")
    return item


@delete("", status_code=200, responses=error_responses(400, 404))
async def delete_run_data(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    key: FromQuery[str | None] = None,
    data_id: Annotated[str | None, QueryParameter(name="id")] = None,
) -> Deleted:
    """Delete the run's values of a key, or one value by id."""
    require_uuid(run_id, "Run")
    if key is None and data_id is None:
        raise errors.ValidationError(
            "Either key or id is required",
            details=[{"loc": ["query", "key"], "msg": "either key or id is required"}],
        )
    async with org_conn(request) as (org_id, conn):
        if not await store.run_exists(conn, org_id=org_id, run_id=run_id):
            raise errors.NotFoundError(f"Run not found: {run_id}")
        deleted = 0
        if data_id is None or ids.is_uuid(data_id):
            deleted = await store.delete_run_data(
                conn, org_id=org_id, run_id=run_id, key=key, data_id=data_id
            )
    if deleted == 0:
        raise errors.NotFoundError("No run data matched")
    return Deleted(deleted=deleted)


router = Router(
    middleware=[auth.authenticated],
    path="/api/v1/runs/{run_id:str}/data",
    route_handlers=[create_run_data, query_run_data, update_run_data_tags, delete_run_data],
    tags=["run data"],
)
