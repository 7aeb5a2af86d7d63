"""The machine's ceiling: single-row INSERT commits/s into a table shaped like `task`, via asyncpg.

Same driver, same concurrency as the API figures, one autocommit INSERT per transaction, so every
API figure can be read as a fraction of what PostgreSQL on this machine allows.
"""

from __future__ import annotations

import json
import time

import asyncpg
import uuid_utils

from foreman.bench.loadgen import LoadResult, WindowProbe, drive

TABLE = "bench_task_insert"

# LIKE task: same columns, defaults, CHECKs and indexes (no foreign keys, no RLS), so the commit
# pays the same index maintenance as a real task insert.
_CREATE = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (LIKE task INCLUDING ALL) WITH (fillfactor = 70);
"""

_INSERT = f"""
INSERT INTO {TABLE} (id, run_id, org_id, type, status, input_data, max_retries, created_at, updated_at)
VALUES ($1, $2, $3, $4, 'pending', $5, 3, $6, $6)
"""

_INPUT = json.dumps({"i": 1, "source": "foreman bench"})


async def measure_insert_commits(
    database_url: str,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    probe: WindowProbe | None = None,
) -> LoadResult:
    """Commits/s of single-row INSERTs on `concurrency` connections (table dropped afterwards)."""
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(_CREATE)
        pool = await asyncpg.create_pool(database_url, min_size=concurrency, max_size=concurrency)
        assert pool is not None
        # A stack of idle connections: at most `concurrency` inserts are in flight, so a loop
        # always finds one, without the pool's acquire machinery on the client's side.
        idle = [await pool.acquire() for _ in range(concurrency)]
        run_id = str(uuid_utils.uuid7())

        async def insert(_index: int) -> bool:
            conn = idle.pop()
            try:
                await conn.execute(
                    _INSERT,
                    str(uuid_utils.uuid7()),
                    run_id,
                    "bench",
                    "bench.noop",
                    _INPUT,
                    time.time_ns() // 1_000_000,
                )
            finally:
                idle.append(conn)
            return True

        try:
            return await drive(
                insert,
                concurrency=concurrency,
                warmup_s=warmup_s,
                duration_s=duration_s,
                probe=probe,
            )
        finally:
            for conn in idle:
                await pool.release(conn)
            await pool.close()
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await admin.close()
