"""Retention: ended runs deleted with everything that belongs to them, in bounded batches.

A batch is one short transaction that deletes at most ``limit`` rows (run data first, then tasks,
then the runs left empty, whose counter shards go by cascade), so that no lock is held for long
and autovacuum can keep up between batches. Batches take a transaction-level advisory lock: one
pruner at a time across replicas and ``foreman prune`` (a replica that does not get it skips its
turn), and it works through PgBouncer in transaction mode, where a session lock would not.
"""

from __future__ import annotations

from dataclasses import dataclass

from foreman.store import queries
from foreman.store.db import Db

_SQL = queries.load_statements("retention")
# pg_try_advisory_xact_lock key: "foreman\x02" as a big-endian int64 (the sweeper's is \x01).
PRUNE_LOCK_KEY = int.from_bytes(b"foreman\x02", "big", signed=True)
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# Runs looked at per batch: a batch works through their rows before it takes the next ones.
RUNS_PER_BATCH = 100
DEFAULT_BATCH_ROWS = 5000


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows one batch deleted (locked False: another pruner held the lock, nothing was done)."""

    runs: int = 0
    tasks: int = 0
    run_data: int = 0
    locked: bool = True

    @property
    def rows(self) -> int:
        """Rows deleted, counter shards and cascaded subtasks aside."""
        return self.runs + self.tasks + self.run_data


async def prune_batch(conn: Db, *, ended_before: int, limit: int = DEFAULT_BATCH_ROWS) -> Pruned:
    """Delete at most limit rows of the runs that ended before ended_before (epoch ms)."""
    async with conn.transaction():
        if not await conn.fetchval(_TRY_LOCK, PRUNE_LOCK_KEY):
            return Pruned(locked=False)
        run_ids = [
            r[0] for r in await conn.fetch(_SQL["expired_runs"], ended_before, RUNS_PER_BATCH)
        ]
        if not run_ids:
            return Pruned()
        run_data = int(await conn.fetchval(_SQL["delete_run_data"], run_ids, limit))
        tasks = runs = 0
        if run_data < limit:
            tasks = int(await conn.fetchval(_SQL["delete_tasks"], run_ids, limit - run_data))
        if run_data + tasks < limit:
            await conn.execute(_SQL["lock_runs"], run_ids)
            runs = int(await conn.fetchval(_SQL["delete_runs"], run_ids, ended_before))
    return Pruned(runs=runs, tasks=tasks, run_data=run_data)


async def count_expired(conn: Db, *, ended_before: int) -> Pruned:
    """What pruning the runs that ended before ended_before would delete."""
    record = await conn.fetchrow(_SQL["count_expired"], ended_before)
    assert record is not None  # an aggregate row, always
    return Pruned(runs=record["runs"], tasks=record["tasks"], run_data=record["run_data"])
