"""The ``foreman`` command: parse arguments, build Settings, call the package."""

from __future__ import annotations

import typer

from foreman import errors, keys_cli, ops_cli, prune_cli
from foreman.bench.command import bench as bench_command
from foreman.logs import configure_logging
from foreman.settings import Settings
from foreman.store import embedded

app = typer.Typer(
    help="Foreman: workflow orchestration on PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys_cli.app, name="keys")
app.add_typer(ops_cli.runs_app, name="runs")
app.add_typer(ops_cli.tasks_app, name="tasks")


@app.command()
def server(
    port: int | None = typer.Option(None, help="Port (default FOREMAN_SERVER_PORT, PORT or 3000)."),
    host: str | None = typer.Option(None, help="Host (default FOREMAN_SERVER_HOST or 127.0.0.1)."),
    workers: int | None = typer.Option(
        None, help="Server processes (default FOREMAN_SERVER_WORKERS or 1)."
    ),
) -> None:
    """Serve the REST API (migrating the database first unless FOREMAN_AUTO_MIGRATE=false)."""
    settings = Settings()
    overrides = {"server_port": port, "server_host": host, "server_workers": workers}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_level, json_lines=settings.log_json)
    from foreman.server.runner import serve
    from foreman.store.migrate import apply_migrations

    with embedded.database(settings) as url:
        if settings.auto_migrate:
            apply_migrations(url)
        serve(settings.model_copy(update={"database_url": url}))


@app.command()
def migrate() -> None:
    """Apply pending database migrations and exit."""
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    from foreman.store.migrate import apply_migrations

    with embedded.database(settings) as url:
        applied = apply_migrations(url)
    typer.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


app.command(name="bench")(bench_command)
app.command(name="prune")(prune_cli.prune)


@app.command()
def worker(
    target: str = typer.Argument(help="module:attribute naming a dict {task type: handler}."),
    concurrency: int = typer.Option(10, min=1, help="Handlers running at once."),
    backend: str | None = typer.Option(
        None, help="postgres, bullmq, rabbitmq or sqs (default: what the server advertises)."
    ),
    burst: bool = typer.Option(False, help="Exit once no ready task is left."),
    lease: float = typer.Option(30.0, min=1.0, help="Lease length in seconds."),
    grace: float = typer.Option(30.0, min=0.0, help="Seconds running handlers get on SIGTERM."),
    endpoint: str | None = typer.Option(None, help="Server URL (default FOREMAN_ENDPOINT)."),
    only_known_types: bool = typer.Option(
        False, help="Claim only the handled types (postgres); else unknown types fail clearly."
    ),
    metrics_port: int | None = typer.Option(
        None, help="Serve the worker's Prometheus figures on this port (/metrics)."
    ),
    metrics_host: str = typer.Option("127.0.0.1", help="Address of --metrics-port."),
) -> None:
    """Run task handlers until SIGTERM/SIGINT (the API key comes from FOREMAN_API_KEY)."""
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    if backend not in (None, "postgres", "bullmq", "rabbitmq", "sqs"):
        raise typer.BadParameter(
            "backend must be postgres, bullmq, rabbitmq or sqs", param_hint="--backend"
        )
    from foreman.worker.runner import run_worker

    run_worker(
        target,
        concurrency=concurrency,
        backend=backend,  # type: ignore[arg-type]
        burst=burst,
        lease_s=lease,
        grace_s=grace,
        endpoint=endpoint,
        api_key=settings.api_key,
        only_known_types=only_known_types,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )


def main() -> None:
    """Entry point of the console script: known failures are one line on stderr, exit 1."""
    try:
        app()
    except errors.ForemanError as exc:
        typer.echo(f"foreman: {exc.message}", err=True)
        raise SystemExit(1) from None
    except OSError as exc:  # e.g. the database refused the connection during migrations
        typer.echo(f"foreman: {exc}", err=True)
        raise SystemExit(1) from None
