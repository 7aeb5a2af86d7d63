"""/api/v1/runs/:runId/data: add, query, retag and delete run data."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from foreman import errors, ids, models
from foreman.models import Deleted, RunData, RunDataCreate, RunDataList, TagsUpdate
from foreman.server import deps, params
from foreman.server.deps import error_responses, org_conn
from foreman.store import run_data as store

SORT_BY = "One of created_at, updated_at, key (camelCase accepted)." + params.ONCE

TAG_MODES = ("any", "all")
SORT_COLUMNS = ("created_at", "updated_at", "key")


@post("", status_code=201, responses=error_responses(400, 404, 413))
async def create_run_data(
    request: Request[Any, Any, Any], run_id: FromPath[str], data: JSONBody[RunDataCreate]
) -> RunData:
    """Add a value under a key; every POST adds a row."""
    run_id = params.path_id(run_id, "Run")
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


@get("", responses=error_responses(400, 404), before_request=params.exact_request)
async def query_run_data(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    key: Annotated[str | None, params.text_param()] = None,
    keys: Annotated[str | None, params.list_param()] = None,
    key_starts_with: Annotated[str | None, params.list_param(name="keyStartsWith")] = None,
    key_pattern: Annotated[str | None, params.text_param(name="keyPattern")] = None,
    tags: Annotated[str | None, params.list_param()] = None,
    tag_starts_with: Annotated[str | None, params.list_param(name="tagStartsWith")] = None,
    tag_mode: Annotated[str, params.enum_param(TAG_MODES, name="tagMode")] = "any",
    include_all: Annotated[
        bool, QueryParameter(name="includeAll", description="true or false." + params.ONCE)
    ] = False,
    limit: Annotated[int, params.integer_param(ge=1, le=1000)] = 100,
    offset: deps.Offset = 0,
    sort_by: Annotated[str, QueryParameter(name="sortBy", description=SORT_BY)] = "created_at",
    sort_order_: deps.SortOrder = "desc",
) -> RunDataList:
    """Run data matching the filters; only the latest row per key unless includeAll=true."""
    run_id = params.path_id(run_id, "Run")
    query = store.RunDataQuery(
        key=params.text(key, "key"),
        keys=params.comma_list(keys, "keys"),
        key_prefixes=params.comma_list(key_starts_with, "keyStartsWith"),
        key_pattern=params.text(key_pattern, "keyPattern"),
        tags=params.comma_list(tags, "tags"),
        tag_prefixes=params.comma_list(tag_starts_with, "tagStartsWith"),
        tag_mode=params.choice(tag_mode, "tagMode", TAG_MODES) or "any",
        include_all=include_all,
        # Checked after the filters: the first bad parameter is the one answered.
        **(
            paging := deps.checked_paging(
                sort_by, sort_order_, SORT_COLUMNS, limit=limit, offset=offset
            )
        ),
    )
    async with org_conn(request) as (org_id, conn):
        if not await store.run_exists(conn, org_id=org_id, run_id=run_id):
            raise errors.NotFoundError(f"Run not found: {run_id}")
        page = await store.query_run_data(conn, org_id=org_id, run_id=run_id, q=query)
    return deps.listing(RunDataList, page, paging)


@patch("/{data_id:str}/tags", responses=error_responses(400, 404, 413))
async def update_run_data_tags(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    data_id: FromPath[str],
    data: JSONBody[TagsUpdate],
) -> RunData:
    """Remove tags, then add tags not already present; order kept, tags unique."""
    run_id = params.path_id(run_id, "Run")
    data_id = params.path_id(data_id, "Run data")
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
    return deps.found(item, "Run data", data_id)


@delete(
    "", status_code=200, responses=error_responses(400, 404), before_request=params.exact_request
)
async def delete_run_data(
    request: Request[Any, Any, Any],
    run_id: FromPath[str],
    key: Annotated[str | None, params.text_param()] = None,
    data_id: Annotated[str | None, params.id_param(name="id")] = None,
) -> Deleted:
    """Delete the run's values of a key, or one value by id."""
    run_id = params.path_id(run_id, "Run")
    key = params.text(key, "key")
    data_id = params.id_filter(data_id, "id")
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


router = deps.api_router(
    "/api/v1/runs/{run_id:str}/data",
    "run data",
    [create_run_data, query_run_data, update_run_data_tags, delete_run_data],
)
