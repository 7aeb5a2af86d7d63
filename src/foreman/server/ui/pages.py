"""The dashboard at /ui: server-rendered pages (Jinja2) with htmx for the live parts.

Every page reads through the store's bounded queries (store/ui.py) on a connection bound to the
session's organisation, so row-level security applies as it does to the API. Forms work without
JavaScript; htmx refreshes the live part of the runs page every few seconds, and that of a run
page whenever the run's event stream (static/live.js) says something changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, get_args

from litestar import Request, Response, Router, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Stream

from foreman import errors, ids
from foreman.models import RunStatus, TaskStatus
from foreman.server import cancelling, deps, events, params
from foreman.server.ui import login, render
from foreman.server.ui import session as sessions
from foreman.store import events as events_store
from foreman.store import runs, tasks
from foreman.store import ui as ui_store
from foreman.store.db import Db

PAGE = 25
COUNT_BOUND = 1000
SCAN_BOUND = 10_000
LIVE_S = 3  # the live parts refresh this often
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
RETRYABLE = ("failed", "cancelled")
TERMINAL = ("completed", "failed", "cancelled")
CANCELLABLE_RUN = ("pending", "running")
# What an action's redirect (?done=) says on the page it lands on.
DONE = {
    "retried": "retried.",
    "cancelled": "cancelled.",
    "cancel-requested": (
        "cancel requested: it stops at its worker's next heartbeat (or when its lease ends)."
    ),
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """One page of a list, whether a next page exists, and how many rows match (bounded)."""

    rows: list[T]
    more: bool
    count: ui_store.Count


class _Rows(Protocol[T]):
    """A store query of some rows (store/ui.py): one page of them, or their count up to bound."""

    async def page(self, conn: Db, *, limit: int, offset: int) -> list[T]: ...

    async def count(self, conn: Db, *, bound: int) -> ui_store.Count: ...


async def _listing(conn: Db, page: int, rows: _Rows[T]) -> Listing[T]:
    # One row past the page tells whether another follows, without counting them all.
    found = await rows.page(conn, limit=PAGE + 1, offset=page * PAGE)
    count = await rows.count(conn, bound=COUNT_BOUND)
    return Listing(found[:PAGE], len(found) > PAGE, count)


async def _short_listing(
    conn: Db, page: int, rows: _Rows[T], whole: Callable[[list[T]], ui_store.Count]
) -> Listing[T]:
    """_listing for lists that are mostly short (a task's attempts, its parents): a first page
    that is not full is the whole list, counted by whole(rows) without a statement."""
    found = await rows.page(conn, limit=PAGE + 1, offset=page * PAGE)
    if page == 0 and len(found) <= PAGE:
        return Listing(found, False, whole(found))
    count = await rows.count(conn, bound=COUNT_BOUND)
    return Listing(found[:PAGE], len(found) > PAGE, count)


def _page(
    request: Request[Any, Any, Any], template: str, session: sessions.Session, **context: Any
) -> Response[str]:
    return render.dashboard(request).render(
        template,
        session=session,
        path=request.url.path,
        live_s=LIVE_S,
        now_ms=ids.now_ms(),
        **context,
    )


def _choice(value: str | None, allowed: tuple[str, ...]) -> str | None:
    return value if value in allowed else None


def _number(value: str | None, default: int = 0) -> int:
    return int(value) if value is not None and value.isdigit() and len(value) < 7 else default


def _uuid(value: str, what: str) -> str:
    try:
        return params.path_id(value, what)
    except errors.NotFoundError:
        raise errors.NotFoundError(f"{what} not found: {value}") from None


# ---------------------------------------------------------------- runs


@get("/runs")
async def runs_page(request: Request[Any, Any, Any]) -> Response[str]:
    """Runs: filter by status, search by id (prefix), sort, paginate; counters and progress."""
    session = await render.session_of(request)
    query = request.query_params
    status = _choice(query.get("status"), RUN_STATUSES)
    sort_by = _choice(query.get("sort"), ui_store.RUN_SORTS) or "created_at"
    order = _choice(query.get("order"), ("asc", "desc")) or "desc"
    page = _number(query.get("page"))
    search = (query.get("q") or "").strip()
    id_range = ui_store.id_range(search) if search else None
    found: Listing[Any] = Listing([], False, ui_store.Count(0, False))
    if not search or id_range is not None:
        async with render.org_conn(request, session.org_id) as conn:
            runs_of = ui_store.Runs(session.org_id, status, id_range, sort_by, order)
            found = await _listing(conn, page, runs_of)
    filters = {"status": status or "", "q": search, "sort": sort_by, "order": order}
    return _page(
        request,
        "runs.html",
        session,
        runs=found,
        page=page,
        filters=filters,
        statuses=RUN_STATUSES,
        sorts=ui_store.RUN_SORTS,
    )


@get("/runs/{run_id:str}")
async def run_page(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Response[str]:
    """A run: counters, its tasks by status, its run data by key prefix and tag."""
    session = await render.session_of(request)
    run_id = _uuid(run_id, "Run")
    query = request.query_params
    status = _choice(query.get("status"), TASK_STATUSES)
    page = _number(query.get("page"))
    data_page = _number(query.get("dpage"))
    key_prefix = (query.get("key") or "").strip()[:255] or None
    tag = (query.get("tag") or "").strip()[:255] or None
    since = ids.now_ms()  # the page shows what happened until now; its stream what follows
    async with render.org_conn(request, session.org_id) as conn:
        run = await runs.get_run(conn, org_id=session.org_id, run_id=run_id)
        if run is None:
            raise errors.NotFoundError(f"Run not found: {run_id}")
        tasks_of_run = await _listing(conn, page, ui_store.RunTasks(session.org_id, run_id, status))
        run_data = await _listing(
            conn, data_page, ui_store.RunDataRows(session.org_id, run_id, key_prefix, tag)
        )
        blocked = await ui_store.run_blocked(
            conn, org_id=session.org_id, run_id=run_id, bound=COUNT_BOUND
        )
    return _page(
        request,
        "run.html",
        session,
        run=run,
        tasks=tasks_of_run,
        page=page,
        status=status or "",
        statuses=TASK_STATUSES,
        data=run_data,
        data_page=data_page,
        key=key_prefix or "",
        tag=tag or "",
        since=since,
        blocked=blocked,
        cancellable=run.status in CANCELLABLE_RUN,
        message=DONE.get(query.get("done") or ""),
    )


@get("/runs/{run_id:str}/events", media_type="text/event-stream")
async def run_events(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Stream:
    """The run's events for the page's EventSource (static/live.js), as the API streams them,
    from `since` (epoch ms: when the page was made) unless the browser resumes after an event."""
    session = await render.session_of(request)
    run_id = _uuid(run_id, "Run")
    after = events.last_event_id(request.headers.get("last-event-id"))
    since = request.query_params.get("since") or ""
    if after == events_store.START and since.isdigit() and len(since) <= 15:
        after = events_store.until(int(since))
    return await deps.event_hub(request).stream(session.org_id, run_id, after)


# ---------------------------------------------------------------- tasks


@get("/tasks/{task_id:str}")
async def task_page(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[str]:
    """A task: its fields, input, output and error, every attempt, its parents (dependsOn), its
    parent and children, its run data."""
    session = await render.session_of(request)
    task_id = _uuid(task_id, "Task")
    attempt_page = _number(request.query_params.get("apage"))
    parent_page = _number(request.query_params.get("ppage"))
    async with render.org_conn(request, session.org_id) as conn:
        task = await tasks.get_task(conn, org_id=session.org_id, task_id=task_id)
        if task is None:
            raise errors.NotFoundError(f"Task not found: {task_id}")
        children = await ui_store.task_children(
            conn, org_id=session.org_id, task_id=task_id, limit=50
        )
        data = await ui_store.task_run_data(conn, org_id=session.org_id, task_id=task_id, limit=50)
        attempts_of = ui_store.TaskAttempts(session.org_id, task_id)
        attempts = await _short_listing(conn, attempt_page, attempts_of, attempts_of.whole)
        parents_of = ui_store.TaskParents(session.org_id, task_id)
        parents = await _short_listing(conn, parent_page, parents_of, parents_of.whole)
        cancel_requested = None
        if task.status == "running":
            cancel_requested = await ui_store.task_cancel_requested(
                conn, org_id=session.org_id, task_id=task_id
            )
    return _page(
        request,
        "task.html",
        session,
        task=task,
        children=children,
        data=data,
        attempts=attempts,
        attempt_page=attempt_page,
        parents=parents,
        parent_page=parent_page,
        cancel_requested=cancel_requested,
        retryable=task.status in RETRYABLE,
        cancellable=task.status not in TERMINAL and cancel_requested is None,
        message=DONE.get(request.query_params.get("done") or ""),
    )


async def _action_session(request: Request[Any, Any, Any]) -> sessions.Session:
    session = await render.session_of(request)
    form = await request.form()
    sessions.check_csrf(session, form.get("csrf"))
    return session


@post("/tasks/{task_id:str}/retry", status_code=303)
async def retry_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[Any]:
    """POST /api/v1/tasks/:id/retry from the task page."""
    session = await _action_session(request)
    task_id = _uuid(task_id, "Task")
    async with render.org_conn(request, session.org_id) as conn:
        result = await tasks.retry_task(
            conn, org_id=session.org_id, task_id=task_id, now=ids.now_ms()
        )
    if result.status_before is None:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    if result.task is None:
        raise errors.ConflictError(
            f"Task {task_id} is {result.status_before}: it cannot be retried"
        )
    app = deps.state(request)
    if app.metrics is not None:
        app.metrics.task_retried(result.task)
    await app.publish([result.task])
    return Redirect(f"/ui/tasks/{task_id}?done=retried", status_code=303)


@post("/tasks/{task_id:str}/cancel", status_code=303)
async def cancel_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[Any]:
    """POST /api/v1/tasks/:id/cancel from the task page: a waiting or blocked task is cancelled
    at once, a running one is marked and stops at its worker's next heartbeat."""
    session = await _action_session(request)
    task_id = _uuid(task_id, "Task")
    task = await cancelling.cancel_task(request, session.org_id, task_id)
    done = "cancel-requested" if task.status == "running" else "cancelled"
    return Redirect(f"/ui/tasks/{task_id}?done={done}", status_code=303)


@post("/runs/{run_id:str}/cancel", status_code=303)
async def cancel_run(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Response[Any]:
    """POST /api/v1/runs/:id/cancel from the run page: the run and every task of it that has not
    ended (running ones at their worker's next heartbeat)."""
    session = await _action_session(request)
    run_id = _uuid(run_id, "Run")
    await cancelling.cancel_run(request, session.org_id, run_id)
    return Redirect(f"/ui/runs/{run_id}?done=cancelled", status_code=303)


# ---------------------------------------------------------------- queues and workers


@get("/queues")
async def queues_page(request: Request[Any, Any, Any]) -> Response[str]:
    """Per task type: ready, retrying, running, blocked, and the oldest ready task's age."""
    session = await render.session_of(request)
    now = ids.now_ms()
    async with render.org_conn(request, session.org_id) as conn:
        rows = await ui_store.queue_overview(conn, org_id=session.org_id, now=now, bound=SCAN_BOUND)
    return _page(request, "queues.html", session, rows=rows, bound=SCAN_BOUND)


@get("/workers")
async def workers_page(request: Request[Any, Any, Any]) -> Response[str]:
    """Workers that hold leases now."""
    session = await render.session_of(request)
    async with render.org_conn(request, session.org_id) as conn:
        holders = await ui_store.lease_holders(conn, org_id=session.org_id, bound=SCAN_BOUND)
    return _page(request, "workers.html", session, holders=holders, bound=SCAN_BOUND)


# ---------------------------------------------------------------- errors


def _login_required(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    response: Response[Any] = Redirect("/ui/login", status_code=303)
    if request.headers.get("hx-request"):
        response.headers["hx-redirect"] = "/ui/login"
    return response


def _error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error = exc if isinstance(exc, errors.ForemanError) else errors.ForemanError()
    return render.dashboard(request).render(
        "error.html", error.status_code, message=error.message, status=error.status_code
    )


def router() -> Router:
    """The /ui routes (no API key middleware: sessions instead)."""
    return Router(
        path="/ui",
        route_handlers=[
            login.login_form,
            login.login,
            login.logout,
            login.home,
            login.static,
            runs_page,
            run_page,
            run_events,
            task_page,
            retry_task,
            cancel_task,
            cancel_run,
            queues_page,
            workers_page,
        ],
        include_in_schema=False,
        exception_handlers={
            sessions.LoginRequiredError: _login_required,
            errors.ForemanError: _error_page,
        },
    )
