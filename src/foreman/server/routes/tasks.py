"""POST/GET/PATCH /api/v1/tasks."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from litestar import Request, Response, get, patch, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from foreman import errors, ids, models, tracing
from foreman.models import (
    AttemptList,
    Task,
    TaskCreate,
    TaskList,
    TaskStatus,
    TaskUpdate,
)
from foreman.server import auth, cancelling, deps, params
from foreman.server.deps import error_responses, org_conn, released_tasks, state
from foreman.server.responses import JsonResponse
from foreman.store import dependencies as dependencies_store
from foreman.store import queries
from foreman.store import tasks as tasks_store

SORT_BY = "One of created_at, started_at, completed_at (camelCase accepted)." + params.ONCE

TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)


def parent_ids(
    data: TaskCreate, refs: dict[str, str] | None = None, where: str = ""
) -> tuple[str, ...]:
    """dependsOn as task ids, each once: a ref of an earlier batch item (refs) or a task id."""
    if data.ref is not None and refs is None:
        raise errors.ValidationError(
            "ref: only items of POST /api/v1/tasks/batch carry a ref", field="ref"
        )
    resolved: dict[str, None] = {}
    for name in data.depends_on or ():
        if refs is not None and name in refs:
            resolved[refs[name]] = None
        elif (task_id := ids.canonical_id(name)) is not None:
            resolved[task_id] = None
        elif refs is not None:
            raise errors.ValidationError(
                f"{where}dependsOn: {name!r} is neither the ref of an earlier item nor a task id",
                field=f"{where}dependsOn",
            )
        else:
            raise errors.NotFoundError(f"Task not found: {name}", field="dependsOn")
    return tuple(resolved)


def request_traceparent(request: Request[Any, Any, Any]) -> str | None:
    """The request's traceparent header when it is a valid W3C one (README "Traces": an invalid
    one is ignored, not an error: tracing must never fail a request)."""
    for name, value in request.scope["headers"]:
        if name == b"traceparent":
            return tracing.valid_traceparent(value.decode("latin-1"))
    return None


def new_task(
    data: TaskCreate, depends_on: tuple[str, ...] = (), traceparent: str | None = None
) -> tasks_store.NewTask:
    """The store's view of a create request (traceparent: the request's, unless the item has
    a valid one of its own)."""
    return tasks_store.NewTask(
        run_id=str(data.run_id),
        task_type=data.type,
        input_data=data.input_data,
        parent_task_id=None if data.parent_task_id is None else str(data.parent_task_id),
        metadata=models.stored(data.metadata),
        max_retries=data.max_retries,
        priority=data.priority,
        delay_ms=data.delay_ms,
        idempotency_key=data.idempotency_key,
        enqueue=data.enqueue,
        depends_on=depends_on,
        on_parent_failure=data.on_parent_failure,
        traceparent=tracing.valid_traceparent(data.traceparent) or traceparent,
    )


def run_ended(run_id: str) -> errors.ConflictError:
    """A task for an auto-complete run that has ended."""
    return errors.ConflictError(
        f"Run {run_id} has ended (autoComplete); it takes no more tasks", runId=run_id
    )


def insert_failure(
    result: tasks_store.InsertResult, new: tasks_store.NewTask
) -> errors.ForemanError:
    """Why a task was not inserted."""
    if not result.run_found:
        return errors.NotFoundError(f"Run not found: {new.run_id}")
    if new.parent_task_id is not None and not result.parent_found:
        return errors.NotFoundError(f"Parent task not found: {new.parent_task_id}")
    if not result.run_open:
        return run_ended(new.run_id)
    return errors.ConflictError("The task could not be created, try again")


@post(
    "",
    status_code=201,
    responses={
        200: ResponseSpec(
            data_container=Task, description="The task of a repeated idempotency key"
        ),
        **error_responses(400, 404, 409, 413),
    },
)
async def create_task(
    request: Request[Any, Any, Any], data: JSONBody[TaskCreate]
) -> Response[Task]:
    """Create a task in a run (201), or return the task of a repeated idempotency key (200).

    With ``dependsOn`` it is ``blocked`` until every parent has ended.
    """
    new = new_task(data, parent_ids(data), request_traceparent(request))
    async with org_conn(request) as (org_id, conn):
        result = await tasks_store.insert_task(
            conn, org_id=org_id, task_id=ids.new_id(), new=new, now=ids.now_ms()
        )
    if result.task is None:
        raise insert_failure(result, new)
    app = state(request)
    if result.created and app.metrics is not None:
        app.metrics.tasks_created([result.task])
    if result.created and new.enqueue:
        await app.publish([result.task])
    return JsonResponse(result.task, status_code=201 if result.created else 200)


@get("/{task_id:str}", responses=error_responses(400, 404))
async def get_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Task:
    """A task."""
    task_id = params.path_id(task_id, "Task")
    async with org_conn(request) as (org_id, conn):
        task = await tasks_store.get_task(conn, org_id=org_id, task_id=task_id)
    if task is None:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    return task


@post("/{task_id:str}/cancel", status_code=200, responses=error_responses(400, 404, 409))
async def cancel_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Task:
    """Cancel a task: at once unless it runs, then at its worker's next heartbeat (200).

    A task already cancelled (or whose cancel is pending) is answered as it is; one that ended
    completed or failed is 409.
    """
    task_id = params.path_id(task_id, "Task")
    return await cancelling.cancel_task(request, auth.request_org(request), task_id)


@get(
    "/{task_id:str}/parents",
    responses=error_responses(400, 404),
    before_request=params.exact_request,
)
async def list_parents(
    request: Request[Any, Any, Any],
    task_id: FromPath[str],
    limit: Annotated[int, params.integer_param(ge=1, le=1000)] = 100,
    offset: deps.Offset = 0,
) -> TaskList:
    """A task's parents (dependsOn) with their status and outputData, a page at a time."""
    task_id = params.path_id(task_id, "Task")
    async with org_conn(request) as (org_id, conn):
        page = await dependencies_store.list_parents(
            conn, org_id=org_id, task_id=task_id, limit=limit, offset=offset
        )
    return deps.found(page, "Task", task_id)


@get("/{task_id:str}/attempts", responses=error_responses(400, 404))
async def list_attempts(request: Request[Any, Any, Any], task_id: FromPath[str]) -> AttemptList:
    """Every attempt of a task, oldest first: worker, start, end, outcome and error."""
    task_id = params.path_id(task_id, "Task")
    async with org_conn(request) as (org_id, conn):
        attempts = await tasks_store.list_attempts(conn, org_id=org_id, task_id=task_id)
    return AttemptList(data=deps.found(attempts, "Task", task_id))


@patch("/{task_id:str}", responses=error_responses(400, 404, 409, 413))
async def update_task(
    request: Request[Any, Any, Any], task_id: FromPath[str], data: JSONBody[TaskUpdate]
) -> Task:
    """Change a task's status or data; a terminal task cannot change status again (409)."""
    task_id = params.path_id(task_id, "Task")
    changes = models.changes(data)
    now = ids.now_ms()
    released: list[str] = []
    async with org_conn(request) as (org_id, conn):
        result = await tasks_store.update_task(
            conn, org_id=org_id, task_id=task_id, changes=changes, now=now, released=released
        )
        children = await released_tasks(request, conn, org_id, released)
    await state(request).publish(children)
    return patched(result, task_id=task_id, changes=changes, now=now, request=request)


def patched(
    result: tasks_store.UpdateResult,
    *,
    task_id: str,
    changes: dict[str, Any],
    now: int,
    request: Request[Any, Any, Any],
) -> Task:
    """The task a committed PATCH changed; 404, or 409 leaving a terminal status. A status it
    set now is counted as the task's end."""
    if not result.found:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    assert result.task is not None
    if result.conflict:
        raise errors.ConflictError(
            f"Task {task_id} is {result.task.status}; it cannot change to {changes.get('status')}"
        )
    metrics = state(request).metrics
    # Changed now (a repeat of a terminal status changes nothing and keeps its updatedAt).
    if metrics is not None and "status" in changes and result.task.updated_at == now:
        metrics.tasks_ended([result.task])
    return result.task


@post("/{task_id:str}/retry", status_code=200, responses=error_responses(400, 404, 409))
async def retry_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Task:
    """Queue a failed or cancelled task again with one more attempt allowed (409 otherwise)."""
    task_id = params.path_id(task_id, "Task")
    async with org_conn(request) as (org_id, conn):
        result = await tasks_store.retry_task(
            conn, org_id=org_id, task_id=task_id, now=ids.now_ms()
        )
    if result.status_before is None:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    if result.task is None:
        raise errors.ConflictError(
            f"Task {task_id} is {result.status_before}; only a failed or cancelled task is retried",
            status=result.status_before,
        )
    app = state(request)
    if app.metrics is not None:
        app.metrics.task_retried(result.task)
    # After the commit: a lost publish is repaired by the sweeper.
    await app.publish([result.task])
    return result.task


@get("", responses=error_responses(400), before_request=params.exact_request)
async def list_tasks(
    request: Request[Any, Any, Any],
    limit: Annotated[int, params.integer_param(ge=1, le=100)] = 20,
    offset: deps.Offset = 0,
    run_id: Annotated[str | None, params.id_param(name="runId")] = None,
    status: Annotated[str | None, params.enum_param(TASK_STATUSES)] = None,
    task_type: Annotated[str | None, params.text_param(name="type")] = None,
    parent_task_id: Annotated[str | None, params.id_param(name="parentTaskId")] = None,
    sort_by: Annotated[str, QueryParameter(name="sortBy", description=SORT_BY)] = "created_at",
    sort_order_: deps.SortOrder = "desc",
) -> TaskList:
    """Tasks of the organisation, filtered by run, status, type or parent; ties broken by id."""
    filters = {
        "run_id": params.id_filter(run_id, "runId"),
        "status": params.choice(status, "status", TASK_STATUSES),
        "type": params.text(task_type, "type"),
        "parent_task_id": params.id_filter(parent_task_id, "parentTaskId"),
    }
    columns = ("created_at", "started_at", "completed_at")
    paging = deps.checked_paging(sort_by, sort_order_, columns, limit=limit, offset=offset)
    # An id filter that is no UUID matches nothing (it cannot be any row's id).
    id_filters = (filters["run_id"], filters["parent_task_id"])
    if any(value is not None and not ids.is_uuid(value) for value in id_filters):
        return deps.listing(TaskList, queries.Page(items=[], total=0), paging)
    async with org_conn(request) as (org_id, conn):
        page = await tasks_store.list_tasks(conn, org_id=org_id, filters=filters, **paging)
    return deps.listing(TaskList, page, paging)


router = deps.api_router(
    "/api/v1/tasks",
    "tasks",
    [
        create_task,
        get_task,
        cancel_task,
        list_parents,
        list_attempts,
        retry_task,
        update_task,
        list_tasks,
    ],
)
