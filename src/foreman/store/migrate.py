"""Schema migrations: numbered plain-SQL files applied by yoyo-migrations under its lock."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg
from yoyo import get_backend, read_migrations

from foreman import errors

logger = logging.getLogger(__name__)


def _yoyo_url(database_url: str) -> str:
    # yoyo picks the driver from the scheme; psycopg 3 is the one we depend on.
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def apply_migrations(database_url: str) -> list[str]:
    """Apply every pending migration; return the ids applied (empty when up to date)."""
    directory = resources.files("foreman.store") / "migrations"
    with resources.as_file(directory) as path:
        migrations = read_migrations(str(path))
        try:
            backend = get_backend(_yoyo_url(database_url))
        except psycopg.OperationalError as exc:
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
            )
            raise errors.UnavailableError(f"Cannot reach the database: {first_line}") from exc
        try:
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
        finally:
            backend.connection.close()
    applied = [m.id for m in pending]
    if applied:
        logger.info("applied migrations %s", ", ".join(applied))
    return applied


async def apply_migrations_async(database_url: str) -> list[str]:
    """apply_migrations in a thread, for the server's start-up."""
    return await asyncio.to_thread(apply_migrations, database_url)
