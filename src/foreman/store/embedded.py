"""The embedded PostgreSQL (pgserver) used when no database is configured."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foreman import errors

if TYPE_CHECKING:
    from foreman.settings import Settings

logger = logging.getLogger(__name__)

# An adapter over two pgserver internals: the lock its handles take (PostgresServer._lock) and its
# list of user processes (pgdata/.handle_pids.json). Fenced by the bound pgserver<0.2 and by
# tests/integration/test_embedded.py::test_pgserver_internals_that_embedded_relies_on.
HANDLES_FILE = ".handle_pids.json"


@dataclass(slots=True)
class EmbeddedPostgres:
    """A PostgreSQL server running from the pgserver wheel, its data in data_dir/pgdata."""

    pgdata: Path
    server: Any
    url: str

    def stop(self) -> None:
        """Stop the server; the data stays for the next start."""
        self.server.cleanup()
        if (self.pgdata / "postmaster.pid").exists():
            # pgserver stops it only when the last process using it lets go.
            logger.info(
                "embedded PostgreSQL left running for other processes using %s", self.pgdata
            )
        else:
            logger.info("embedded PostgreSQL stopped (data kept in %s)", self.pgdata)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_users(pgserver: Any, pgdata: Path) -> None:
    """Take dead processes off pgserver's list of the server's users.

    pgserver stops the server when the last process in that list exits; a process that was killed
    (SIGKILL, OOM) never takes itself off, and then the server is never stopped again.
    """
    lock = getattr(pgserver.PostgresServer, "_lock", None)
    if lock is None:  # pgserver changed under us (see HANDLES_FILE): leave its list alone
        logger.warning("pgserver has no PostgresServer._lock; dead users are not forgotten")
        return
    handles = pgdata / HANDLES_FILE
    with lock:
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (or join) the embedded PostgreSQL in data_dir/pgdata and create the foreman database."""
    try:
        import pgserver  # optional dependency, the [embedded] extra
    except ImportError as exc:
        raise errors.ForemanError(
            "No database configured and pgserver is not installed: set FOREMAN_DATABASE_URL "
            "or install foreman[embedded]"
        ) from exc
    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    forget_dead_users(pgserver, pgdata)
    # cleanup_mode="stop": stopped when the last process using it exits, data kept.
    server = pgserver.postgres_server.get_server(pgdata, cleanup_mode="stop")
    if "foreman" not in server.psql("SELECT datname FROM pg_database;"):
        server.psql("CREATE DATABASE foreman;")
    url = server.get_uri("foreman")
    logger.info("embedded PostgreSQL running, data in %s", pgdata)
    return EmbeddedPostgres(pgdata=pgdata, server=server, url=url)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database URL, or an embedded PostgreSQL started for the duration."""
    url = settings.resolved_database_url()
    if url is not None:
        yield url
        return
    embedded = start_embedded(settings.data_dir)
    logger.info(
        "no database configured: using the embedded PostgreSQL, data in %s", embedded.pgdata
    )
    try:
        yield embedded.url
    finally:
        embedded.stop()
