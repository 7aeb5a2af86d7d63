"""`foreman runs ls|show|cancel` and `foreman tasks ls|show|retry|cancel|attempts`: operating
Foreman over its REST API.

They talk to a server like any client (the SDK's Client, FOREMAN_ENDPOINT and FOREMAN_API_KEY, or
--endpoint), so they see what the key's organisation sees. Tables are for people; --json prints
the API's own JSON (camelCase) for scripts. Lists come newest first; --since stops paging at the
first older row, so it reads no more than it shows.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Column, Table

from foreman import errors, models
from foreman.client import Client

T = TypeVar("T")
PAGE = 100  # the API's largest page
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RETRYABLE = ("failed", "cancelled")
_ENDED_RUN = ("completed", "failed")  # a cancelled run may be cancelled again (its tasks)

runs_app = typer.Typer(help="Runs of the key's organisation.", no_args_is_help=True)
tasks_app = typer.Typer(help="Tasks of the key's organisation.", no_args_is_help=True)
# Piped or captured, rich would wrap at 80 columns and split the ids: a wide line instead.
_out = Console(width=None if sys.stdout.isatty() else 200)
_err = Console(stderr=True)

ENDPOINT = typer.Option(None, "--endpoint", help="Server URL (default FOREMAN_ENDPOINT).")
JSON = typer.Option(False, "--json", help="JSON for scripts instead of a table.")
LIMIT = typer.Option(50, "--limit", min=1, help="Rows at most.")
TASK_IDS = typer.Argument(None, help="Task ids; none: every task matching the filters.")
CANCEL_IDS = typer.Argument(help="Task ids.")
SINCE = typer.Option(None, "--since", help="Created since: 30m, 6h, 2d, or an ISO date/time.")


def parse_since(text: str | None, *, now: dt.datetime) -> int | None:
    """Epoch ms of --since: a duration back from now (``90s``, ``30m``, ``6h``, ``2d``) or an ISO
    date or time (UTC unless it says otherwise); BadParameter otherwise."""
    if text is None:
        return None
    match = _DURATION.match(text.strip().lower())
    if match:
        moment = now - dt.timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    else:
        try:
            moment = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise typer.BadParameter(
                f"{text!r}: use a duration (30m, 6h, 2d) or an ISO date/time", param_hint="--since"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _client(endpoint: str | None) -> Client:
    try:
        return Client(endpoint)
    except errors.ForemanError as exc:
        _fail(exc)


def _fail(exc: errors.ForemanError) -> NoReturn:
    _err.print(f"[red]error:[/red] {exc.message}", highlight=False)
    raise typer.Exit(1) from exc


def _fetch(endpoint: str | None, read: Callable[[Client], T]) -> T:
    """read(client) with a client of endpoint; an API error ends the command with its message."""
    with _client(endpoint) as client:
        try:
            return read(client)
        except errors.ForemanError as exc:
            _fail(exc)


def _pages(
    fetch: Callable[[int], tuple[list[T], int]], *, limit: int, since_ms: int | None
) -> Iterator[T]:
    """Rows of fetch(offset) (newest first) until limit rows, the end, or one older than since."""
    offset = shown = 0
    while shown < limit:
        rows, total = fetch(offset)
        for row in rows:
            if since_ms is not None and getattr(row, "created_at", 0) < since_ms:
                return
            yield row
            shown += 1
            if shown >= limit:
                return
        offset += len(rows)
        if not rows or offset >= total:
            return


def _id_column(header: str = "id") -> Column:
    return Column(header, no_wrap=True, min_width=36)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _json(value: Any) -> None:
    typer.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def progress_text(run: models.Run) -> str:
    """Finished of total tasks, as a bar and a percentage."""
    done = run.completed_tasks + run.failed_tasks + run.cancelled_tasks
    share = done / run.total_tasks if run.total_tasks else 0.0
    filled = round(share * 20)
    return f"{'█' * filled}{'░' * (20 - filled)} {share:4.0%}"


# ---------------------------------------------------------------- runs


@runs_app.command("ls")
def runs_ls(
    status: str | None = typer.Option(None, "--status", help="pending, running, completed, ..."),
    since: str | None = SINCE,
    limit: int = LIMIT,
    as_json: bool = JSON,
    endpoint: str | None = ENDPOINT,
) -> None:
    """List runs, newest first, with their task counters."""
    since_ms = parse_since(since, now=dt.datetime.now(dt.UTC))
    runs = _fetch(
        endpoint,
        lambda client: _list_runs(client, status=status, since_ms=since_ms, limit=limit),
    )
    if as_json:
        _json(runs)
        return
    table = Table("status", "created (UTC)", "tasks", "done", "failed", "progress")
    table.columns.insert(0, _id_column())
    for run in runs:
        table.add_row(
            run.id,
            run.status,
            _when(run.created_at),
            str(run.total_tasks),
            str(run.completed_tasks),
            str(run.failed_tasks),
            progress_text(run),
        )
    _out.print(table)


def _run_fields(run: models.Run) -> list[tuple[str, str]]:
    return [
        ("id", run.id),
        ("status", run.status),
        ("created", _when(run.created_at)),
        ("updated", _when(run.updated_at)),
        ("tasks", str(run.total_tasks)),
        ("completed", str(run.completed_tasks)),
        ("failed", str(run.failed_tasks)),
        ("cancelled", str(run.cancelled_tasks)),
        ("progress", progress_text(run)),
        ("input", _pretty(run.input_data)),
        ("output", _pretty(run.output_data)),
        ("error", _pretty(run.error_data)),
        ("metadata", _pretty(run.metadata)),
    ]


def _show_command(
    app: typer.Typer,
    what: str,
    read: Callable[[Client, str], T],
    fields: Callable[[T], list[tuple[str, str]]],
    doc: str,
) -> None:
    """Add ``show``, doc its help: one object, the API's JSON or its fields as a table without a
    header; its id argument is named after what (run_id)."""

    def show(
        item_id: str = typer.Argument(metavar=f"{what.lower()}_id", help=f"{what} id."),
        as_json: bool = JSON,
        endpoint: str | None = ENDPOINT,
    ) -> None:
        item = _fetch(endpoint, lambda client: read(client, item_id))
        if as_json:
            _json(item)
            return
        table = Table(show_header=False)
        for name, text in fields(item):
            table.add_row(name, text)
        _out.print(table)

    show.__doc__ = doc
    app.command("show")(show)


_show_command(
    runs_app,
    "Run",
    lambda client, run_id: client.get_run(run_id),
    _run_fields,
    "A run: status, counters, progress, input and output.",
)


def _pretty(value: Any) -> str:
    if value is None:
        return "-"
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _list_runs(
    client: Client, *, status: str | None, since_ms: int | None, limit: int
) -> list[models.Run]:
    def fetch(offset: int) -> tuple[list[models.Run], int]:
        page = client.list_runs(status=status, limit=min(PAGE, limit), offset=offset)  # type: ignore[arg-type]
        return page.data, page.pagination.total

    return list(_pages(fetch, limit=limit, since_ms=since_ms))


@runs_app.command("cancel")
def runs_cancel(
    run_id: str = typer.Argument(help="Run id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = JSON,
    endpoint: str | None = ENDPOINT,
) -> None:
    """Cancel a run and every task of it that has not ended (POST /runs/:id/cancel).

    Waiting and blocked tasks are cancelled at once; a running task stops when its worker's next
    heartbeat sees the cancel (or its lease ends). A run that ended completed or failed is left
    as it is (exit 1).
    """
    with _client(endpoint) as client:
        try:
            run = client.get_run(run_id)
            if run.status in _ENDED_RUN:
                _err.print(
                    f"run {run.id} already ended: {run.status}", highlight=False, soft_wrap=True
                )
                raise typer.Exit(1)
            open_tasks = run.total_tasks - _finished(run)
            question = (
                f"Cancel run {run.id} ({run.status}) and its {open_tasks} unfinished task(s)?"
            )
            if not yes and not typer.confirm(question, err=True):
                raise typer.Exit(1)
            try:
                run = client.cancel_run(run.id)
            except errors.ConflictError as exc:  # it ended meanwhile
                _err.print(
                    f"run {run_id} already ended: {exc.message}", highlight=False, soft_wrap=True
                )
                raise typer.Exit(1) from exc
            running = client.list_tasks(run_id=run.id, status="running", limit=1)
        except errors.ForemanError as exc:
            _fail(exc)
    if as_json:
        _json(run)
        return
    still = running.pagination.total
    _err.print(
        f"cancelled run {run.id}: {run.cancelled_tasks} task(s) cancelled"
        + (f", {still} running task(s) stop at their worker's next heartbeat" if still else ""),
        highlight=False,
        soft_wrap=True,
    )


def _finished(run: models.Run) -> int:
    return run.completed_tasks + run.failed_tasks + run.cancelled_tasks


# ---------------------------------------------------------------- tasks


def _list_tasks(
    client: Client,
    *,
    run: str | None,
    status: str | None,
    task_type: str | None,
    since_ms: int | None,
    limit: int,
) -> list[models.Task]:
    def fetch(offset: int) -> tuple[list[models.Task], int]:
        page = client.list_tasks(
            run_id=run,
            status=status,  # type: ignore[arg-type]
            type=task_type,
            limit=min(PAGE, limit),
            offset=offset,
        )
        return page.data, page.pagination.total

    return list(_pages(fetch, limit=limit, since_ms=since_ms))


@tasks_app.command("ls")
def tasks_ls(
    run: str | None = typer.Option(None, "--run", help="Only this run's tasks."),
    status: str | None = typer.Option(None, "--status", help="queued, running, failed, ..."),
    task_type: str | None = typer.Option(None, "--type", help="Only tasks of this type."),
    since: str | None = SINCE,
    limit: int = LIMIT,
    as_json: bool = JSON,
    endpoint: str | None = ENDPOINT,
) -> None:
    """List tasks, newest first."""
    since_ms = parse_since(since, now=dt.datetime.now(dt.UTC))
    tasks = _fetch(
        endpoint,
        lambda client: _list_tasks(
            client, run=run, status=status, task_type=task_type, since_ms=since_ms, limit=limit
        ),
    )
    if as_json:
        _json(tasks)
        return
    table = Table("type", "status", "attempts", "created (UTC)")
    table.columns.insert(0, _id_column())
    table.columns.append(_id_column("run"))
    for task in tasks:
        attempts = f"{task.attempt}/{task.max_retries + 1}"
        table.add_row(
            task.id, task.type, task.status, attempts, _when(task.created_at), task.run_id
        )
    _out.print(table)


def _task_fields(task: models.Task) -> list[tuple[str, str]]:
    return [
        ("id", task.id),
        ("run", task.run_id),
        ("type", task.type),
        ("status", task.status),
        ("attempt", f"{task.attempt} of {task.max_retries + 1} (retries {task.retry_count})"),
        ("worker", task.worker_id or "-"),
        ("created", _when(task.created_at)),
        ("started", _when(task.started_at)),
        ("ended", _when(task.completed_at)),
        ("duration", "-" if task.duration_ms is None else f"{task.duration_ms} ms"),
        ("parent", task.parent_task_id or "-"),
        ("input", _pretty(task.input_data)),
        ("output", _pretty(task.output_data)),
        ("error", _pretty(task.error_data)),
    ]


_show_command(
    tasks_app,
    "Task",
    lambda client, task_id: client.get_task(task_id),
    _task_fields,
    "A task: status, attempts, timing, input, output and error.",
)


@tasks_app.command("retry")
def tasks_retry(
    task_ids: list[str] | None = TASK_IDS,
    run: str | None = typer.Option(None, "--run", help="Only this run's tasks."),
    status: str = typer.Option("failed", "--status", help="failed (default) or cancelled."),
    task_type: str | None = typer.Option(None, "--type", help="Only tasks of this type."),
    since: str | None = SINCE,
    limit: int = typer.Option(10_000, "--limit", min=1, help="Tasks at most."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = JSON,
    endpoint: str | None = ENDPOINT,
) -> None:
    """Queue failed (or cancelled) tasks again, one more attempt each: by id, or by filter.

    By filter, the matching tasks are listed first, you confirm their number, and a progress bar
    follows the retries; a task that changed status meanwhile is reported and skipped.
    """
    if status not in _RETRYABLE:
        raise typer.BadParameter(
            "only failed or cancelled tasks are retried", param_hint="--status"
        )
    since_ms = parse_since(since, now=dt.datetime.now(dt.UTC))
    with _client(endpoint) as client:
        ids = list(task_ids or [])
        if not ids:
            try:
                found = _list_tasks(
                    client,
                    run=run,
                    status=status,
                    task_type=task_type,
                    since_ms=since_ms,
                    limit=limit,
                )
            except errors.ForemanError as exc:
                _fail(exc)
            ids = [task.id for task in found]
            if not ids:
                _err.print(f"no {status} task matches")
                return
            if not yes and not typer.confirm(f"Retry {len(ids)} {status} task(s)?", err=True):
                raise typer.Exit(1)
        retried, refused = _retry_all(client, ids, show_progress=not as_json)
    if as_json:
        _json({"retried": retried, "refused": refused})
    else:
        _err.print(f"retried {len(retried)} task(s), {len(refused)} refused")
    if refused:
        raise typer.Exit(1)


def _retry_all(
    client: Client, ids: list[str], *, show_progress: bool
) -> tuple[list[str], list[dict[str, str]]]:
    retried: list[str] = []
    refused: list[dict[str, str]] = []
    with Progress(console=_err, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("retrying", total=len(ids))
        for task_id in ids:
            try:
                retried.append(client.retry_task(task_id).id)
            except (errors.ConflictError, errors.NotFoundError) as exc:
                refused.append({"id": task_id, "error": exc.message})
                if show_progress:
                    progress.console.print(f"[yellow]skipped[/yellow] {task_id}: {exc.message}")
            except errors.ForemanError as exc:
                _fail(exc)
            progress.advance(bar)
    return retried, refused


@tasks_app.command("cancel")
def tasks_cancel(
    task_ids: list[str] = CANCEL_IDS,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = JSON,
    endpoint: str | None = ENDPOINT,
) -> None:
    """Cancel tasks by id (POST /tasks/:id/cancel), after a confirmation.

    A waiting or blocked task is cancelled at once (its dependents per their onParentFailure); a
    running one is marked and stops at its worker's next heartbeat. Tasks that already ended
    completed or failed, and ids not found, are reported (exit 1).
    """
    ids = list(dict.fromkeys(task_ids))
    if not yes and not typer.confirm(f"Cancel {len(ids)} task(s)?", err=True):
        raise typer.Exit(1)
    with _client(endpoint) as client:
        report = _cancel_all(client, ids, show_progress=not as_json)
    if as_json:
        _json(report)
    else:
        _err.print(
            f"cancelled {len(report['cancelled'])} task(s), "
            f"{len(report['cancelRequested'])} running (stop at the next heartbeat), "
            f"{len(report['alreadyEnded'])} already ended, {len(report['notFound'])} not found",
            soft_wrap=True,
        )
    if report["alreadyEnded"] or report["notFound"]:
        raise typer.Exit(1)


def _cancel_all(client: Client, ids: list[str], *, show_progress: bool) -> dict[str, list[Any]]:
    report: dict[str, list[Any]] = {
        "cancelled": [],
        "cancelRequested": [],
        "alreadyEnded": [],
        "notFound": [],
    }
    with Progress(console=_err, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("cancelling", total=len(ids))
        for task_id in ids:
            note = ""
            try:
                task = client.cancel_task(task_id)
                # 200 answers the task as it is now: cancelled, or running until its next beat.
                if task.status == "running":
                    report["cancelRequested"].append(task.id)
                else:
                    report["cancelled"].append(task.id)
            except errors.ConflictError as exc:
                report["alreadyEnded"].append({"id": task_id, "error": exc.message})
                note = f"[yellow]already ended:[/yellow] {exc.message}"
            except errors.NotFoundError:
                report["notFound"].append(task_id)
                note = f"[yellow]not found[/yellow] {task_id}"
            except errors.ForemanError as exc:
                _fail(exc)
            if note and show_progress:
                progress.console.print(note, highlight=False, soft_wrap=True)
            progress.advance(bar)
    return report


@tasks_app.command("attempts")
def tasks_attempts(
    task_id: str = typer.Argument(help="Task id."),
    as_json: bool = JSON,
    endpoint: str | None = ENDPOINT,
) -> None:
    """Every attempt of a task, oldest first: worker, start, end, duration, outcome, error."""
    attempts = _fetch(endpoint, lambda client: client.list_attempts(task_id))
    if as_json:
        _json(attempts)
        return
    if not attempts:
        _err.print("no attempt yet: the task was never claimed")
        return
    table = Table(
        "attempt", "worker", "started (UTC)", "ended (UTC)", "duration", "outcome", "error"
    )
    for attempt in attempts:
        table.add_row(
            str(attempt.attempt),
            attempt.worker_id or "-",
            _when(attempt.started_at),
            _when(attempt.ended_at),
            "-" if attempt.duration_ms is None else f"{attempt.duration_ms} ms",
            attempt.outcome,
            error_text(attempt.error_data),
        )
    _out.print(table)


def error_text(error: Any) -> str:
    """An errorData in one line: ``type: message`` when it has them, else its JSON."""
    if error is None:
        return "-"
    if isinstance(error, dict) and ("type" in error or "message" in error):
        kind, message = error.get("type"), error.get("message")
        return ": ".join(str(part) for part in (kind, message) if part is not None)
    return msgspec.json.encode(error).decode()
