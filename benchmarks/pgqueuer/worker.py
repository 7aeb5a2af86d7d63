"""PgQueuer's side of the comparison: a no-op entrypoint, started by `pgq run worker:create`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(os.environ["PGDSN"])
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Does nothing, like Foreman's bench handler."""

    try:
        yield pgq
    finally:
        await connection.close()


if __name__ == "__main__":
    # What `pgq run worker:create --batch-size N` does (the same supervisor, on asyncio's loop):
    # pgqueuer 1.6's CLI fails on its --log-level option with typer 0.29.
    import asyncio
    import sys

    from pgqueuer import run

    asyncio.run(run("worker:create", batch_size=int(sys.argv[1])))
