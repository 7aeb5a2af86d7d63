"""`foreman prune --older-than DURATION [--dry-run]`: delete ended runs and what belongs to them.

It connects as the database login of the settings (the owner, like `foreman keys`): retention
works across organisations. Batches are short transactions (store/retention.py), so the server
keeps serving while it runs; a replica's automatic retention (FOREMAN_RETENTION_DAYS) and this
command take turns on the same lock.
"""

from __future__ import annotations

import asyncio

import asyncpg
import typer

from foreman import durations, ids, keys_cli
from foreman.store import retention

# A batch another pruner holds the lock for: try again this much later.
_LOCKED_RETRY_S = 0.2


def _older_than(value: str) -> int:
    try:
        return durations.parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def prune(
    older_than: str = typer.Option(
        ..., help="Age since a run ended: 90s, 15m, 12h, 30d.", callback=_older_than
    ),
    dry_run: bool = typer.Option(False, help="Only count what would be deleted."),
    batch: int = typer.Option(
        retention.DEFAULT_BATCH_ROWS, min=1, help="Rows deleted per transaction."
    ),
) -> None:
    """Delete the runs that ended (completed, failed, cancelled) longer ago than --older-than,
    with their tasks, run data and counters."""
    age_s = int(older_than)  # the callback's seconds
    ended_before = ids.now_ms() - age_s * 1000

    async def work(conn: asyncpg.Connection) -> retention.Pruned:
        if dry_run:
            return await retention.count_expired(conn, ended_before=ended_before)
        return await prune_all(conn, ended_before=ended_before, limit=batch)

    total = keys_cli.run_as_owner(work)
    verb = "would delete" if dry_run else "deleted"
    typer.echo(
        f"{verb} {total.runs} run(s), {total.tasks} task(s), {total.run_data} run data row(s)"
        f" of runs that ended more than {age_s} s ago"
    )


async def prune_all(conn: asyncpg.Connection, *, ended_before: int, limit: int) -> retention.Pruned:
    """Batches until one deletes nothing; the sums."""
    runs = tasks = run_data = 0
    while True:
        pruned = await retention.prune_batch(conn, ended_before=ended_before, limit=limit)
        if not pruned.locked:
            await asyncio.sleep(_LOCKED_RETRY_S)
            continue
        if pruned.rows == 0:
            return retention.Pruned(runs=runs, tasks=tasks, run_data=run_data)
        runs, tasks, run_data = runs + pruned.runs, tasks + pruned.tasks, run_data + pruned.run_data
