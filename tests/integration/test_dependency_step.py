"""The step after tasks end (end_dependents(), migration 0021): every path that ends a task
releases or cancels its blocked children, transitively, in the same transaction; the sweeper
repairs children a cut cascade left blocked; a retried parent re-opens the children it cancelled."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from foreman import ids
from foreman.queue.postgres import PostgresQueue
from foreman.server.sweeper import Sweeper
from foreman.store import cancel as cancel_store
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import runs as runs_store
from foreman.store import tasks as tasks_store
from tests.conftest import ORG_A, truncate_all
from tests.services import scratch_database


@pytest.fixture(scope="module")
async def step_database(admin_url: str) -> AsyncIterator[str]:
    """A database of this module alone: no other test's app may sweep it behind our back."""
    async with scratch_database(admin_url, "foreman_step", migrate=True) as url:
        yield url


@pytest.fixture
async def pool(step_database: str) -> AsyncIterator[asyncpg.Pool]:
    await truncate_all(step_database)
    pool = await db.create_pool(
        step_database, min_size=1, max_size=3, command_timeout_s=10, connect_timeout_s=3
    )
    yield pool
    await pool.close()


@pytest.fixture
async def owner_pool(step_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(
        step_database,
        min_size=1,
        max_size=2,
        command_timeout_s=10,
        connect_timeout_s=3,
        app_role=False,
    )
    yield pool
    await pool.close()


class Graph:
    """parent -> tolerant (onParentFailure run), parent -> child (cancel) -> grandchild."""

    def __init__(self, run_id: str, ids_: dict[str, str]) -> None:
        self.run_id = run_id
        self.ids = ids_

    async def statuses(self, conn) -> dict[str, str]:
        rows = await conn.fetch(
            "SELECT id, status FROM task WHERE id = ANY($1::uuid[])", list(self.ids.values())
        )
        by_id = {r["id"]: r["status"] for r in rows}
        return {name: by_id[task_id] for name, task_id in self.ids.items()}


async def graph(pool, *, max_retries: int = 0) -> Graph:
    now = ids.now_ms()
    async with db.org_connection(pool, ORG_A) as conn:
        run = await runs_store.insert_run(
            conn, run_id=ids.new_id(), org_id=ORG_A, input_data={}, metadata=None, now=now
        )
        made: dict[str, str] = {}

        async def add(name: str, parents: tuple[str, ...] = (), policy: str = "cancel") -> None:
            new = tasks_store.NewTask(
                run_id=run.id,
                task_type=name,
                input_data={},
                enqueue=True,
                max_retries=max_retries,
                depends_on=tuple(made[p] for p in parents),
                on_parent_failure=policy,
            )
            result = await tasks_store.insert_task(
                conn, org_id=ORG_A, task_id=ids.new_id(), new=new, now=now
            )
            assert result.task is not None
            made[name] = result.task.id

        await add("parent")
        await add("tolerant", ("parent",), "run")
        await add("child", ("parent",))
        await add("grandchild", ("child",))
    return Graph(run.id, made)


async def claim_parent(conn, g: Graph, *, lease_ms: int = 60_000) -> queue_store.Lease:
    (held,) = await queue_store.claim_tasks(
        conn,
        org_id=ORG_A,
        worker_id="w",
        types=["parent"],
        limit=1,
        lease_ms=lease_ms,
        now=ids.now_ms(),
    )
    assert held.lease_token is not None
    return queue_store.Lease(held.id, held.lease_token)


ENDED = {"tolerant": "queued", "child": "cancelled", "grandchild": "cancelled"}


async def writers(conn, g: Graph) -> set[str]:
    """The transactions that wrote the graph's rows last (xmin): one when one transaction did."""
    rows = await conn.fetch(
        "SELECT xmin::text AS x FROM task WHERE id = ANY($1::uuid[])", list(g.ids.values())
    )
    return {r["x"] for r in rows}


@pytest.mark.parametrize("path", ["fail", "cancel", "patch", "release"])
async def test_every_end_takes_the_step_in_its_own_transaction(pool, path):
    g = await graph(pool)
    async with db.org_connection(pool, ORG_A) as conn:
        lease = await claim_parent(conn, g) if path in ("fail", "release") else None
        if path == "release":  # a cancel asked while it runs: the release ends it cancelled
            await cancel_store.cancel_task(conn, org_id=ORG_A, task_id=g.ids["parent"], now=1)
        now = ids.now_ms()
        if path == "fail":
            assert lease is not None
            outcome = queue_store.Outcome(
                lease.task_id, lease.lease_token, "failed", error_data={}, retryable=False
            )
            await queue_store.finish_tasks(conn, org_id=ORG_A, outcomes=[outcome], now=now)
        elif path == "cancel":
            await cancel_store.cancel_task(conn, org_id=ORG_A, task_id=g.ids["parent"], now=now)
        elif path == "patch":
            changes = {"status": "failed"}
            await tasks_store.update_task(
                conn, org_id=ORG_A, task_id=g.ids["parent"], changes=changes, now=now
            )
        else:
            assert lease is not None
            await queue_store.release_tasks(conn, org_id=ORG_A, leases=[lease], now=now)
        statuses = await g.statuses(conn)
        assert {k: statuses[k] for k in ENDED} == ENDED  # the whole cascade
        # Each call runs in autocommit: one writer = the parent's own transaction.
        assert len(await writers(conn, g)) == 1


async def test_the_sweeper_expiry_takes_the_step_and_publishes_nothing_uncommitted(
    pool, owner_pool
):
    g = await graph(pool)
    async with db.org_connection(pool, ORG_A) as conn:
        await claim_parent(conn, g, lease_ms=1)
    sweeper = Sweeper(owner_pool, queue=PostgresQueue(), interval_s=1.0, batch=100, grace_s=0.0)
    result = await sweeper.sweep(now=ids.now_ms() + 1_000)
    assert result.failed == 1
    async with db.org_connection(pool, ORG_A) as conn:
        statuses = await g.statuses(conn)
        run = await runs_store.get_run(conn, org_id=ORG_A, run_id=g.run_id)
    assert statuses == {"parent": "failed", **ENDED}
    assert run is not None
    assert (run.failed_tasks, run.cancelled_tasks) == (1, 2)


async def test_the_sweeper_repairs_children_a_cut_cascade_left_blocked(pool, owner_pool):
    g = await graph(pool)
    async with owner_pool.acquire() as conn:
        # What a server's death between statements left before migration 0021: the parent
        # cancelled and counted, its edges not flipped; and a child whose edges are all done.
        await conn.execute(
            "UPDATE task SET status = 'cancelled', completed_at = 1 WHERE id = $1",
            g.ids["parent"],
        )
        await conn.execute(
            "INSERT INTO run_counter (run_id, shard, org_id, cancelled_tasks)"
            " VALUES ($1, 0, $2, 1)"
            " ON CONFLICT (run_id, shard) DO UPDATE"
            " SET cancelled_tasks = run_counter.cancelled_tasks + 1",
            g.run_id,
            ORG_A,
        )
    lone = await graph(pool)
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE task SET status = 'completed' WHERE id = $1", lone.ids["parent"])
        await conn.execute(
            "UPDATE task_dependency SET parent_done = true WHERE parent_id = $1",
            lone.ids["parent"],
        )
    sweeper = Sweeper(owner_pool, queue=PostgresQueue(), interval_s=1.0, batch=100, grace_s=0.0)
    await sweeper.sweep(now=ids.now_ms())
    async with db.org_connection(pool, ORG_A) as conn:
        assert await g.statuses(conn) == {"parent": "cancelled", **ENDED}
        run = await runs_store.get_run(conn, org_id=ORG_A, run_id=g.run_id)
        lone_statuses = await lone.statuses(conn)
    assert run is not None
    assert run.cancelled_tasks == 3  # the parent, the child and the grandchild, once each
    assert lone_statuses["tolerant"] == "queued"
    assert lone_statuses["child"] == "queued"
    assert lone_statuses["grandchild"] == "blocked"  # its parent has not run


async def test_a_retried_parent_reopens_the_children_it_cancelled(pool):
    g = await graph(pool)
    async with db.org_connection(pool, ORG_A) as conn:
        lease = await claim_parent(conn, g)
        outcome = queue_store.Outcome(
            lease.task_id, lease.lease_token, "failed", error_data={}, retryable=False
        )
        await queue_store.finish_tasks(conn, org_id=ORG_A, outcomes=[outcome], now=ids.now_ms())
        assert await g.statuses(conn) == {"parent": "failed", **ENDED}
        retried = await tasks_store.retry_task(
            conn, org_id=ORG_A, task_id=g.ids["parent"], now=ids.now_ms()
        )
        assert retried.task is not None
        statuses = await g.statuses(conn)
        # The tolerant child had been released (it may run): only the cancelled are re-opened.
        assert statuses == {
            "parent": "queued",
            "tolerant": "queued",
            "child": "blocked",
            "grandchild": "blocked",
        }
        run = await runs_store.get_run(conn, org_id=ORG_A, run_id=g.run_id)
        assert run is not None
        assert (run.failed_tasks, run.cancelled_tasks) == (0, 0)
        lease = await claim_parent(conn, g)
        done = queue_store.Outcome(lease.task_id, lease.lease_token, "completed", output_data=1)
        await queue_store.finish_tasks(conn, org_id=ORG_A, outcomes=[done], now=ids.now_ms())
        statuses = await g.statuses(conn)
        assert (statuses["child"], statuses["grandchild"]) == ("queued", "blocked")
        errors = await conn.fetchval("SELECT error_data FROM task WHERE id = $1", g.ids["child"])
        assert errors is None
