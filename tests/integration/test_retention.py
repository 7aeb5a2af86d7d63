"""Retention against real PostgreSQL, on a clock the tests set (issue 16, item 3).

Runs are written as the owner with chosen end times; the prune functions take the cut-off, so no
test waits for anything to age.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from foreman import durations, ids
from foreman.prune_cli import prune_all
from foreman.queue.postgres import PostgresQueue
from foreman.server.sweeper import Sweeper
from foreman.store import db, retention
from tests.integration.live_server import run_foreman, server_env
from tests.services import scratch_database

NOW = 1_800_000_000_000
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
async def retention_database(admin_url: str) -> AsyncIterator[str]:
    async with scratch_database(admin_url, "foreman_retention", migrate=True) as url:
        yield url


@pytest.fixture
async def owner(retention_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(retention_database)
    await conn.execute("TRUNCATE run, run_counter, task, run_data CASCADE")
    try:
        yield conn
    finally:
        await conn.close()


async def make_run(
    owner: asyncpg.Connection,
    *,
    org: str = "org-a",
    status: str = "completed",
    ended_at: int | None = NOW - 2 * DAY_MS,
    tasks: int = 3,
    data: int = 2,
) -> str:
    """A run with tasks (the second a subtask of the first), run data and a counter shard."""
    run_id = str(uuid.uuid4())
    created = NOW - 10 * DAY_MS
    await owner.execute(
        "INSERT INTO run (id, org_id, status, input_data, created_at, updated_at, completed_at)"
        " VALUES ($1, $2, $3, '{}', $4, $4, $5)",
        run_id,
        org,
        status,
        created,
        ended_at,
    )
    await owner.execute(
        "INSERT INTO run_counter (run_id, shard, org_id, total_tasks) VALUES ($1, 0, $2, $3)",
        run_id,
        org,
        tasks,
    )
    task_ids = [str(uuid.uuid4()) for _ in range(tasks)]
    for i, task_id in enumerate(task_ids):
        parent = task_ids[0] if i == 1 else None
        await owner.execute(
            "INSERT INTO task (id, run_id, parent_task_id, org_id, type, status, input_data,"
            " created_at, updated_at) VALUES ($1, $2, $3, $4, 't', 'completed', '1', $5, $5)",
            task_id,
            run_id,
            parent,
            org,
            created,
        )
    for i in range(data):
        await owner.execute(
            "INSERT INTO run_data (id, run_id, task_id, org_id, key, value, created_at,"
            " updated_at) VALUES ($1, $2, $3, $4, $5, '1', $6, $6)",
            str(uuid.uuid4()),
            run_id,
            task_ids[i % tasks],
            org,
            f"k{i}",
            created,
        )
    return run_id


async def rows_of(owner: asyncpg.Connection, run_id: str) -> dict[str, int]:
    counts = {}
    for table, column in (("run", "id"), ("run_counter", "run_id"), ("task", "run_id")):
        counts[table] = await owner.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = $1",
            run_id,
        )
    counts["run_data"] = await owner.fetchval(
        "SELECT count(*) FROM run_data WHERE run_id = $1", run_id
    )
    return counts


GONE = {"run": 0, "run_counter": 0, "task": 0, "run_data": 0}


async def test_ended_runs_older_than_the_cutoff_go_with_everything_they_hold(owner):
    old_a = await make_run(owner, org="org-a", status="completed")
    old_b = await make_run(owner, org="org-b", status="failed")
    old_cancelled = await make_run(owner, status="cancelled")
    young = await make_run(owner, ended_at=NOW - 10_000)
    running = await make_run(owner, status="running", ended_at=None)
    # Ended once, then set back to running by its client: not ended any more.
    revived = await make_run(owner, status="running", ended_at=NOW - 5 * DAY_MS)

    pruned = await prune_all(owner, ended_before=NOW - DAY_MS, limit=1000)

    assert (pruned.runs, pruned.tasks, pruned.run_data) == (3, 9, 6)
    for run_id in (old_a, old_b, old_cancelled):
        assert await rows_of(owner, run_id) == GONE
    for run_id in (young, running, revived):
        assert await rows_of(owner, run_id) == {
            "run": 1,
            "run_counter": 1,
            "task": 3,
            "run_data": 2,
        }


async def test_the_age_counts_from_when_the_run_ended(owner):
    run_id = await make_run(owner, ended_at=NOW - 90_000)  # created 10 days ago, ended 90 s ago
    age_ms = durations.parse_duration("90s") * 1000
    assert (await prune_all(owner, ended_before=NOW - age_ms, limit=100)).rows == 0
    pruned = await prune_all(owner, ended_before=NOW + 1 - age_ms, limit=100)
    assert pruned.runs == 1
    assert await rows_of(owner, run_id) == GONE


async def test_each_batch_deletes_at_most_its_limit(owner):
    big = await make_run(owner, tasks=20, data=10)
    batches = []
    while (pruned := await retention.prune_batch(owner, ended_before=NOW, limit=7)).rows:
        batches.append(pruned)
    assert all(b.rows <= 7 for b in batches)
    # run data first, then tasks (subtasks may go with their parent), then the empty run
    assert [b.run_data for b in batches[:3]] == [7, 3, 0]
    assert (batches[0].tasks, batches[1].tasks) == (0, 4)
    assert sum(b.tasks for b in batches) in (19, 20)  # the subtask by cascade or by itself
    assert batches[-1].runs == 1
    assert await rows_of(owner, big) == GONE


async def test_a_dry_run_counts_and_deletes_nothing(owner):
    old = await make_run(owner, tasks=4, data=3)
    await make_run(owner, ended_at=NOW)
    counted = await retention.count_expired(owner, ended_before=NOW - DAY_MS)
    assert (counted.runs, counted.tasks, counted.run_data) == (1, 4, 3)
    assert (await rows_of(owner, old))["task"] == 4


async def test_one_pruner_at_a_time(owner, retention_database):
    await make_run(owner)
    other = await asyncpg.connect(retention_database)
    try:
        async with other.transaction():
            await other.fetchval("SELECT pg_advisory_xact_lock($1)", retention.PRUNE_LOCK_KEY)
            skipped = await retention.prune_batch(owner, ended_before=NOW, limit=100)
        assert not skipped.locked
        assert skipped.rows == 0
        assert (await retention.prune_batch(owner, ended_before=NOW, limit=100)).rows > 0
    finally:
        await other.close()


async def test_the_sweeper_prunes_when_retention_is_on(owner, retention_database):
    old = await make_run(owner, ended_at=NOW - 31 * DAY_MS)
    kept = await make_run(owner, ended_at=NOW - 29 * DAY_MS)
    pool = await db.create_pool(
        retention_database,
        min_size=1,
        max_size=1,
        command_timeout_s=5,
        connect_timeout_s=3,
        app_role=False,
    )
    try:
        off = Sweeper(pool, queue=PostgresQueue(), interval_s=1, batch=100, grace_s=0)
        assert (await off.prune(now=NOW)).rows == 0
        sweepers = [
            Sweeper(
                pool,
                queue=PostgresQueue(),
                interval_s=1,
                batch=100,
                grace_s=0,
                retention_s=30 * 86400,
                retention_batch=4,
            )
            for _ in range(2)
        ]
        total = 0
        while pruned := [await s.prune(now=NOW) for s in sweepers]:
            done = sum(p.rows for p in pruned)
            if done == 0:
                break
            total += done
        # The run, its run data and its tasks; the subtask goes uncounted when a batch deletes
        # its parent first (the parent's ON DELETE CASCADE): which batch takes which is not fixed.
        assert total in (1 + 3 + 2, 1 + 2 + 2)
        assert await rows_of(owner, old) == GONE
        assert (await rows_of(owner, kept))["run"] == 1
    finally:
        await pool.close()


async def test_concurrent_pruners_delete_each_row_once(owner, retention_database):
    for _ in range(30):
        await make_run(owner, tasks=5, data=5)
    conns = [await asyncpg.connect(retention_database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(prune_all(c, ended_before=NOW, limit=10) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    assert sum(r.runs for r in results) == 30
    assert sum(r.run_data for r in results) == 150
    assert await owner.fetchval("SELECT count(*) FROM task") == 0


def test_foreman_prune_command(retention_database: str, tmp_path: Path) -> None:
    async def seed() -> tuple[str, str]:
        conn = await asyncpg.connect(retention_database)
        try:
            await conn.execute("TRUNCATE run, run_counter, task, run_data CASCADE")
            now = ids.now_ms()
            old = await make_run(conn, ended_at=now - 20 * 60_000)  # ended 20 minutes ago
            young = await make_run(conn, ended_at=now - 5 * 60_000)
            return old, young
        finally:
            await conn.close()

    old, young = asyncio.run(seed())
    env = server_env(FOREMAN_DATABASE_URL=retention_database, FOREMAN_AUTO_MIGRATE="false")
    dry = run_foreman(["prune", "--older-than", "15m", "--dry-run"], env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 1 run(s), 3 task(s), 2 run data row(s)" in dry.stdout
    done = run_foreman(["prune", "--older-than", "15m"], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 run(s), 3 task(s), 2 run data row(s)" in done.stdout
    bad = run_foreman(["prune", "--older-than", "15 minutes"], env=env, cwd=tmp_path)
    assert bad.returncode == 2
    assert "invalid duration '15 minutes'" in bad.stderr

    async def left() -> list[str]:
        conn = await asyncpg.connect(retention_database)
        try:
            return [str(r[0]) for r in await conn.fetch("SELECT id FROM run")]
        finally:
            await conn.close()

    assert asyncio.run(left()) == [young]
    assert old != young


async def test_a_task_added_while_its_run_is_pruned_is_never_left_without_its_run(
    owner, retention_database
):
    """No foreign key since migration 0006: the insert's FOR KEY SHARE on the run and the
    pruner's FOR UPDATE (lock_runs) keep a run with a task added in flight for a later batch."""
    from foreman.store import tasks as tasks_store

    run_id = await make_run(owner, tasks=0, data=0)
    inserter = await asyncpg.connect(retention_database)
    pruner = await asyncpg.connect(retention_database)
    try:
        await db._init_connection(inserter)  # the codecs the server's connections have
        await inserter.execute("SELECT set_config('app.current_org_id', 'org-a', false)")
        transaction = inserter.transaction()
        await transaction.start()
        new = tasks_store.NewTask(run_id=run_id, task_type="late", input_data={})
        await tasks_store.insert_task(
            inserter, org_id="org-a", task_id=str(uuid.uuid4()), new=new, now=NOW
        )
        pruning = asyncio.create_task(retention.prune_batch(pruner, ended_before=NOW))
        await asyncio.sleep(0.3)
        assert not pruning.done()  # waiting for the insert's lock on the run
        await transaction.commit()
        pruned = await asyncio.wait_for(pruning, 10)
    finally:
        await inserter.close()
        await pruner.close()
    assert pruned.runs == 0
    orphans = await owner.fetchval(
        "SELECT count(*) FROM task t WHERE NOT EXISTS (SELECT 1 FROM run r WHERE r.id = t.run_id)"
    )
    assert orphans == 0
    assert (await rows_of(owner, run_id))["task"] == 1
