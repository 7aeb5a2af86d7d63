"""The ``foreman`` command: parse arguments, build Settings, call the package."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer

from foreman.logs import configure_logging
from foreman.settings import Settings

logger = logging.getLogger("foreman")

app = typer.Typer(help="Foreman: workflow orchestration on PostgreSQL.", no_args_is_help=True)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database URL, or an embedded PostgreSQL started for the duration."""
    url = settings.resolved_database_url()
    if url is not None:
        yield url
        return
    from foreman.store.embedded import start_embedded  # noqa: PLC0415 - optional extra

    embedded = start_embedded(settings.data_dir)
    logger.info(
        "no database configured: using the embedded PostgreSQL, data in %s", embedded.pgdata
    )
    try:
        yield embedded.url
    finally:
        embedded.stop()


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
    from foreman.server.runner import serve  # noqa: PLC0415
    from foreman.store.migrate import apply_migrations  # noqa: PLC0415

    with database(settings) as url:
        if settings.auto_migrate:
            apply_migrations(url)
        serve(settings.model_copy(update={"database_url": url}))


@app.command()
def migrate() -> None:
    """Apply pending database migrations and exit."""
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    from foreman.store.migrate import apply_migrations  # noqa: PLC0415

    with database(settings) as url:
        applied = apply_migrations(url)
    typer.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


def main() -> None:
    """Entry point of the console script."""
    app()
