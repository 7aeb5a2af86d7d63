"""The dashboard at /ui: server-rendered pages (Jinja2) with htmx for the live parts.

Every page reads through the store's bounded queries (store/ui.py) on a connection bound to the
session's organisation, so row-level security applies as it does to the API. Forms work without
JavaScript; htmx only refreshes the live parts of the runs and run pages every few seconds.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
import time
from typing import Any, get_args

import jinja2
import msgspec
from litestar import Request, Response, Router, get, post
from litestar.params import FromPath
from litestar.response import Redirect

from foreman import errors, ids
from foreman.models import RunStatus, TaskStatus
from foreman.server import deps, params
from foreman.server.ui import session as sessions
from foreman.store import db, runs, tasks
from foreman.store import ui as ui_store

PAGE = 25
COUNT_BOUND = 1000
SCAN_BOUND = 10_000
LIVE_S = 3  # the live parts refresh this often
NONE = "\N{EN DASH}"  # shown for a time that is not set
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
RETRYABLE = ("failed", "cancelled")
TERMINAL = ("completed", "failed", "cancelled")
# Pages only load the project's own files; no inline script or style (the progress bars are SVG).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {"content-security-policy": CSP, "cache-control": "no-store"}
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _files(folder: str) -> importlib.resources.abc.Traversable:
    return importlib.resources.files("foreman.server.ui") / folder


def environment() -> jinja2.Environment:
    """The templates, HTML-escaped, with the dashboard's filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_files("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = when
    env.filters["age"] = age
    env.filters["pretty"] = pretty
    return env


def when(ms: int | None) -> str:
    """Epoch ms as a UTC time."""
    if ms is None:
        return NONE
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(ms: int | None, now_ms: int | None = None) -> str:
    """How long ago epoch ms was, in the largest whole unit."""
    if ms is None:
        return NONE
    seconds = max(0, ((now_ms or ids.now_ms()) - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def pretty(value: Any) -> str:
    """A JSON value, indented (stored JSON arrives as raw text)."""
    if value is None:
        return "null"
    if isinstance(value, msgspec.Raw):
        value = msgspec.json.decode(value)
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


class Dashboard:
    """What the pages share: templates, static files, the session signer."""

    def __init__(self, signer: sessions.Signer) -> None:
        self.signer = signer
        self.env = environment()
        self.static = {
            item.name: item.read_bytes() for item in _files("static").iterdir() if item.is_file()
        }

    def render(self, name: str, status_code: int = 200, **context: Any) -> Response[str]:
        html = self.env.get_template(name).render(**context)
        return Response(html, status_code=status_code, media_type="text/html", headers=_HEADERS)


def _dashboard(request: Request[Any, Any, Any]) -> Dashboard:
    return request.app.state.foreman_ui  # type: ignore[no-any-return]


async def _session(request: Request[Any, Any, Any]) -> sessions.Session:
    return await sessions.current(request, _dashboard(request).signer, deps.state(request).auth)


def _conn(request: Request[Any, Any, Any], org_id: str) -> db.OrgConnection:
    return db.org_connection(deps.state(request).pool, org_id)


def _page(
    request: Request[Any, Any, Any], template: str, session: sessions.Session, **context: Any
) -> Response[str]:
    return _dashboard(request).render(
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


# ---------------------------------------------------------------- login and logout


@get("/login")
async def login_form(request: Request[Any, Any, Any]) -> Response[str]:
    """The login form (its key input is named apiKey)."""
    board = _dashboard(request)
    token = board.signer.login_token(now=time.time())
    return board.render("login.html", csrf=token, error=None)


@post("/login", status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    """Check the key like an API call; a signed session cookie on success."""
    board = _dashboard(request)
    form = await request.form()
    now = time.time()
    if not board.signer.login_token_ok(str(form.get("csrf", "")), now=now):
        return board.render(
            "login.html",
            403,
            csrf=board.signer.login_token(now=now),
            error="The form expired: try again.",
        )
    key = str(form.get("apiKey", "")).strip()
    auth = deps.state(request).auth
    try:
        if not key:
            raise errors.UnauthorizedError("Enter an API key")
        caller = await auth.registered_caller(key) if auth.registered else auth.format_caller(key)
    except errors.UnauthorizedError as exc:
        return board.render(
            "login.html", 401, csrf=board.signer.login_token(now=now), error=exc.message
        )
    cookie, _ = board.signer.cookie_for(caller, key=key, now=now)
    response: Response[Any] = Redirect("/ui/runs", status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        cookie,
        path="/ui",
        max_age=int(board.signer.session_s),
        httponly=True,
        samesite="strict",
        secure=sessions.secure_request(request),
    )
    return response


@post("/logout", status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    """End the session (the form carries its CSRF token)."""
    session = await _session(request)
    form = await request.form()
    sessions.check_csrf(session, form.get("csrf"))
    response: Response[Any] = Redirect("/ui/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response


@get("/")
async def home() -> Redirect:
    """The runs page."""
    return Redirect("/ui/runs")


@get("/static/{name:str}")
async def static(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """The project's own script and styles (htmx is vendored: no CDN at run time)."""
    body = _dashboard(request).static.get(name)
    suffix = name[name.rfind(".") :]
    if body is None or suffix not in _STATIC_TYPES:
        raise errors.NotFoundError(f"No such file: {name}")
    headers = {"cache-control": "public, max-age=3600"}
    return Response(body, media_type=_STATIC_TYPES[suffix], headers=headers)


# ---------------------------------------------------------------- runs


@get("/runs")
async def runs_page(request: Request[Any, Any, Any]) -> Response[str]:
    """Runs: filter by status, search by id (prefix), sort, paginate; counters and progress."""
    session = await _session(request)
    query = request.query_params
    status = _choice(query.get("status"), RUN_STATUSES)
    sort_by = _choice(query.get("sort"), ui_store.RUN_SORTS) or "created_at"
    order = _choice(query.get("order"), ("asc", "desc")) or "desc"
    page = _number(query.get("page"))
    search = (query.get("q") or "").strip()
    id_range = ui_store.id_range(search) if search else None
    rows: list[Any] = []
    count = ui_store.Count(0, False)
    if not search or id_range is not None:
        async with _conn(request, session.org_id) as conn:
            rows = await ui_store.runs_page(
                conn,
                org_id=session.org_id,
                status=status,
                ids=id_range,
                sort_by=sort_by,
                order=order,
                limit=PAGE + 1,
                offset=page * PAGE,
            )
            count = await ui_store.count_runs(
                conn, org_id=session.org_id, status=status, ids=id_range, bound=COUNT_BOUND
            )
    filters = {"status": status or "", "q": search, "sort": sort_by, "order": order}
    return _page(
        request,
        "runs.html",
        session,
        runs=rows[:PAGE],
        more=len(rows) > PAGE,
        page=page,
        count=count,
        filters=filters,
        statuses=RUN_STATUSES,
        sorts=ui_store.RUN_SORTS,
    )


@get("/runs/{run_id:str}")
async def run_page(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Response[str]:
    """A run: counters, its tasks by status, its run data by key prefix and tag."""
    session = await _session(request)
    run_id = _uuid(run_id, "Run")
    query = request.query_params
    status = _choice(query.get("status"), TASK_STATUSES)
    page = _number(query.get("page"))
    data_page = _number(query.get("dpage"))
    key_prefix = (query.get("key") or "").strip()[:255] or None
    tag = (query.get("tag") or "").strip()[:255] or None
    async with _conn(request, session.org_id) as conn:
        run = await runs.get_run(conn, org_id=session.org_id, run_id=run_id)
        if run is None:
            raise errors.NotFoundError(f"Run not found: {run_id}")
        task_rows = await ui_store.run_tasks_page(
            conn,
            org_id=session.org_id,
            run_id=run_id,
            status=status,
            limit=PAGE + 1,
            offset=page * PAGE,
        )
        task_count = await ui_store.count_run_tasks(
            conn, org_id=session.org_id, run_id=run_id, status=status, bound=COUNT_BOUND
        )
        data_rows = await ui_store.run_data_page(
            conn,
            org_id=session.org_id,
            run_id=run_id,
            key_prefix=key_prefix,
            tag=tag,
            limit=PAGE + 1,
            offset=data_page * PAGE,
        )
        data_count = await ui_store.count_run_data(
            conn,
            org_id=session.org_id,
            run_id=run_id,
            key_prefix=key_prefix,
            tag=tag,
            bound=COUNT_BOUND,
        )
    return _page(
        request,
        "run.html",
        session,
        run=run,
        tasks=task_rows[:PAGE],
        more=len(task_rows) > PAGE,
        page=page,
        task_count=task_count,
        status=status or "",
        statuses=TASK_STATUSES,
        data=data_rows[:PAGE],
        more_data=len(data_rows) > PAGE,
        data_page=data_page,
        data_count=data_count,
        key=key_prefix or "",
        tag=tag or "",
    )


# ---------------------------------------------------------------- tasks


@get("/tasks/{task_id:str}")
async def task_page(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[str]:
    """A task: its fields, input, output and error, its parent and children, its run data."""
    session = await _session(request)
    task_id = _uuid(task_id, "Task")
    async with _conn(request, session.org_id) as conn:
        task = await tasks.get_task(conn, org_id=session.org_id, task_id=task_id)
        if task is None:
            raise errors.NotFoundError(f"Task not found: {task_id}")
        children = await ui_store.task_children(
            conn, org_id=session.org_id, task_id=task_id, limit=50
        )
        data = await ui_store.task_run_data(conn, org_id=session.org_id, task_id=task_id, limit=50)
    return _page(
        request,
        "task.html",
        session,
        task=task,
        children=children,
        data=data,
        retryable=task.status in RETRYABLE,
        cancellable=task.status not in TERMINAL,
        message=request.query_params.get("done"),
    )


async def _action_session(request: Request[Any, Any, Any]) -> sessions.Session:
    session = await _session(request)
    form = await request.form()
    sessions.check_csrf(session, form.get("csrf"))
    return session


@post("/tasks/{task_id:str}/retry", status_code=303)
async def retry_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[Any]:
    """POST /api/v1/tasks/:id/retry from the task page."""
    session = await _action_session(request)
    task_id = _uuid(task_id, "Task")
    async with _conn(request, session.org_id) as conn:
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
    """PATCH /api/v1/tasks/:id {"status": "cancelled"} from the task page."""
    session = await _action_session(request)
    task_id = _uuid(task_id, "Task")
    now = ids.now_ms()
    async with _conn(request, session.org_id) as conn:
        result = await tasks.update_task(
            conn, org_id=session.org_id, task_id=task_id, changes={"status": "cancelled"}, now=now
        )
    if not result.found:
        raise errors.NotFoundError(f"Task not found: {task_id}")
    assert result.task is not None
    if result.conflict:
        raise errors.ConflictError(
            f"Task {task_id} is {result.task.status}: it cannot be cancelled"
        )
    metrics = deps.state(request).metrics
    if metrics is not None and result.task.updated_at == now:
        metrics.tasks_ended([result.task])
    return Redirect(f"/ui/tasks/{task_id}?done=cancelled", status_code=303)


# ---------------------------------------------------------------- queues and workers


@get("/queues")
async def queues_page(request: Request[Any, Any, Any]) -> Response[str]:
    """Per task type: ready, retrying, running, and the oldest ready task's age."""
    session = await _session(request)
    now = ids.now_ms()
    async with _conn(request, session.org_id) as conn:
        rows = await ui_store.queue_overview(conn, org_id=session.org_id, now=now, bound=SCAN_BOUND)
    return _page(request, "queues.html", session, rows=rows, bound=SCAN_BOUND)


@get("/workers")
async def workers_page(request: Request[Any, Any, Any]) -> Response[str]:
    """Workers that hold leases now."""
    session = await _session(request)
    async with _conn(request, session.org_id) as conn:
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
    return _dashboard(request).render(
        "error.html", error.status_code, message=error.message, status=error.status_code
    )


def router() -> Router:
    """The /ui routes (no API key middleware: sessions instead)."""
    return Router(
        path="/ui",
        route_handlers=[
            login_form,
            login,
            logout,
            home,
            static,
            runs_page,
            run_page,
            task_page,
            retry_task,
            cancel_task,
            queues_page,
            workers_page,
        ],
        include_in_schema=False,
        exception_handlers={
            sessions.LoginRequiredError: _login_required,
            errors.ForemanError: _error_page,
        },
    )
