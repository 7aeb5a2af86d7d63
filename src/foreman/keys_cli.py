"""`foreman keys create|list|revoke`: the registered API keys of FOREMAN_AUTH_MODE=registered.

These commands connect as the database login of the settings (the owner that runs the
migrations): the request role of the server cannot read, add or revoke keys (migration 0003).
A new key is printed once, on standard output alone, so that a script can capture it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import typer

from foreman import errors, ids
from foreman.logs import configure_logging
from foreman.settings import Settings
from foreman.store import api_keys, embedded
from foreman.store.db import translate_errors

T = TypeVar("T")

app = typer.Typer(help="Registered API keys (FOREMAN_AUTH_MODE=registered).", no_args_is_help=True)


def run_as_owner(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run work on an owner connection to the migrated database; exit 1 on a Foreman error."""
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)

    async def main(url: str) -> T:
        with translate_errors():
            conn = await asyncpg.connect(
                url,
                timeout=settings.db_connect_timeout_s,
                # Behind PgBouncer a statement prepared in one transaction is gone in the next.
                statement_cache_size=0 if settings.db_pgbouncer else 100,
            )
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        with embedded.database(settings) as url:
            if settings.auto_migrate:
                from foreman.store.migrate import apply_migrations  # imported only when migrating

                apply_migrations(url)
            return asyncio.run(main(url))
    except errors.ForemanError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(key: api_keys.ApiKey) -> str:
    state = "active" if key.revoked_at is None else f"revoked {_when(key.revoked_at)}"
    return (
        f"{key.id}  {key.org_id}  {key.prefix}…  fp={key.fingerprint}  "
        f"created {_when(key.created_at)}  {state}  {key.name or ''}".rstrip()
    )


@app.command()
def create(
    org: str = typer.Option(..., "--org", help="Organisation the key belongs to."),
    name: str | None = typer.Option(None, "--name", help="A label, e.g. the service using it."),
    env: str | None = typer.Option(
        None, "--env", help="Environment part of the key (default FOREMAN_ENVIRONMENT)."
    ),
) -> None:
    """Make a key for ORG and print it once (only its SHA-256 is stored)."""
    environment = env or Settings().environment.replace("_", "-")

    async def work(conn: asyncpg.Connection) -> api_keys.NewKey:
        new = api_keys.new_key(org, environment=environment)
        await api_keys.insert_api_key(conn, new, name=name, now=ids.now_ms())
        return new

    new = run_as_owner(work)
    typer.echo(new.key)
    typer.echo(
        f"created key {new.id} for organisation {new.org_id} (fingerprint {new.fingerprint}); "
        "it is shown only this once",
        err=True,
    )


@app.command(name="list")
def list_keys(
    org: str | None = typer.Option(None, "--org", help="Only this organisation's keys."),
) -> None:
    """List keys: id, organisation, prefix, fingerprint, creation and revocation (never the key)."""

    async def work(conn: asyncpg.Connection) -> list[api_keys.ApiKey]:
        return await api_keys.list_api_keys(conn, org_id=org)

    keys = run_as_owner(work)
    for key in keys:
        typer.echo(_describe(key))
    if not keys:
        typer.echo("no keys", err=True)


@app.command()
def revoke(
    key: str = typer.Argument(..., help="The key's id, its prefix as listed, or the key itself."),
) -> None:
    """Revoke one key; servers refuse it within FOREMAN_AUTH_CACHE_TTL_S (5 s)."""
    if len(key.strip()) < 4:
        typer.echo("error: give a key id, a prefix of at least 4 characters, or the key", err=True)
        raise typer.Exit(2)

    async def work(conn: asyncpg.Connection) -> api_keys.ApiKey:
        matches = await api_keys.find_api_keys(conn, key.strip())
        if not matches:
            raise errors.NotFoundError(f"no API key matches {key!r}")
        if len(matches) > 1:
            listed = "\n".join(_describe(m) for m in matches)
            raise errors.ConflictError(f"{len(matches)} keys match; give the id:\n{listed}")
        return await api_keys.revoke_api_key(conn, matches[0].id, now=ids.now_ms())

    revoked = run_as_owner(work)
    typer.echo(f"revoked: {_describe(revoked)}")
