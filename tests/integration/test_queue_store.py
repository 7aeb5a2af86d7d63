"""store/queue.py and the batch insert against real PostgreSQL: claims, leases, fencing, counters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from foreman import errors, ids
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import runs as runs_store
from foreman.store import tasks as tasks_store
from tests.conftest import ORG_A, ORG_B

LEASE_MS = 30_000


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(
        db_url, min_size=1, max_size=4, command_timeout_s=10, connect_timeout_s=3
    )
    yield pool
    await pool.close()


@pytest.fixture
async def conn(pool) -> AsyncIterator[db.Connection]:
    async with db.org_connection(pool, ORG_A) as conn:
        yield conn


async def make_run(conn, org_id: str = ORG_A) -> str:
    run = await runs_store.insert_run(
        conn, run_id=ids.new_id(), org_id=org_id, input_data={}, metadata=None, now=ids.now_ms()
    )
    return run.id


async def make_tasks(
    conn, run_id: str, count: int, org_id: str = ORG_A, now: int | None = None, **fields
) -> list:
    fields.setdefault("enqueue", True)
    task_type = fields.pop("task_type", "work")
    news = [
        tasks_store.NewTask(run_id=run_id, task_type=task_type, input_data={"i": i}, **fields)
        for i in range(count)
    ]
    result = await tasks_store.insert_tasks(
        conn,
        org_id=org_id,
        task_ids=[ids.new_id() for _ in news],
        news=news,
        now=now or ids.now_ms(),
    )
    assert result.failed_index is None
    return result.tasks


async def claim(conn, limit: int = 1000, *, types=None, lease_ms: int = LEASE_MS, now=None):
    return await queue_store.claim_tasks(
        conn,
        org_id=ORG_A,
        worker_id="w1",
        types=types,
        limit=limit,
        lease_ms=lease_ms,
        now=now or ids.now_ms(),
    )


async def run_counts(conn, run_id: str) -> tuple[int, int, int, int]:
    run = await runs_store.get_run(conn, org_id=ORG_A, run_id=run_id)
    assert run is not None
    return run.total_tasks, run.completed_tasks, run.failed_tasks, run.cancelled_tasks


def done(task, status="completed", **kw) -> queue_store.Outcome:
    return queue_store.Outcome(task.id, task.lease_token, status, **kw)


def raw(value) -> object:
    return msgspec.json.decode(bytes(value)) if isinstance(value, msgspec.Raw) else value


# ---------------------------------------------------------------- batch insert


async def test_batch_insert_keeps_order_counts_once_and_is_idempotent(conn):
    run_id = await make_run(conn)
    news = [
        tasks_store.NewTask(run_id=run_id, task_type=f"t{i}", input_data=i, enqueue=True)
        for i in range(300)
    ]
    news[10] = tasks_store.NewTask(run_id=run_id, task_type="k", input_data=1, idempotency_key="K")
    news[20] = tasks_store.NewTask(run_id=run_id, task_type="k", input_data=1, idempotency_key="K")
    task_ids = [ids.new_id() for _ in news]
    result = await tasks_store.insert_tasks(
        conn, org_id=ORG_A, task_ids=task_ids, news=news, now=ids.now_ms()
    )
    assert [t.type for t in result.tasks] == [n.task_type for n in news]
    assert result.tasks[20].id == result.tasks[10].id == task_ids[10]  # a repeat inside the batch
    assert result.created.count(False) == 1
    assert await run_counts(conn, run_id) == (299, 0, 0, 0)
    assert result.tasks[0].status == "queued"
    assert result.tasks[0].queued_at is not None
    assert result.tasks[10].status == "pending"

    # The same key again later: the existing task, nothing counted twice.
    again = await tasks_store.insert_tasks(
        conn, org_id=ORG_A, task_ids=[ids.new_id()], news=[news[10]], now=ids.now_ms()
    )
    assert again.tasks[0].id == task_ids[10]
    assert again.created == [False]
    assert await run_counts(conn, run_id) == (299, 0, 0, 0)


@pytest.mark.parametrize(
    ("made", "sent", "same"),
    [
        ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, True),
        (1, 1.0, True),  # jsonb's number equality
        (True, 1, False),
        ({"a": None}, {}, False),
        ("1", 1, False),
    ],
)
async def test_a_key_replays_only_the_same_request(conn, made, sent, same):
    run_id = await make_run(conn)
    first = tasks_store.NewTask(run_id=run_id, task_type="k", input_data=made, idempotency_key="K")
    again = tasks_store.NewTask(run_id=run_id, task_type="k", input_data=sent, idempotency_key="K")
    await tasks_store.insert_tasks(
        conn, org_id=ORG_A, task_ids=[ids.new_id()], news=[first], now=ids.now_ms()
    )
    fresh = tasks_store.NewTask(run_id=run_id, task_type="f", input_data=0)
    batch = [fresh, again]
    if same:
        result = await tasks_store.insert_tasks(
            conn, org_id=ORG_A, task_ids=[ids.new_id(), ids.new_id()], news=batch, now=ids.now_ms()
        )
        assert result.created == [True, False]
        assert await run_counts(conn, run_id) == (2, 0, 0, 0)
        return
    with pytest.raises(errors.ConflictError) as caught:
        await tasks_store.insert_tasks(
            conn, org_id=ORG_A, task_ids=[ids.new_id(), ids.new_id()], news=batch, now=ids.now_ms()
        )
    assert (caught.value.details["index"], caught.value.details["fields"]) == (1, ["inputData"])
    # The whole batch rolled back: the fresh task was not created, nor counted.
    assert await run_counts(conn, run_id) == (1, 0, 0, 0)
    assert await conn.fetchval("SELECT count(*) FROM task") == 1


async def test_batch_insert_is_all_or_nothing(conn):
    run_id = await make_run(conn)
    news = [
        tasks_store.NewTask(run_id=run_id, task_type="a", input_data=1),
        tasks_store.NewTask(run_id=str(uuid.uuid4()), task_type="b", input_data=2),
        tasks_store.NewTask(run_id=run_id, task_type="c", input_data=3),
    ]
    result = await tasks_store.insert_tasks(
        conn, org_id=ORG_A, task_ids=[ids.new_id() for _ in news], news=news, now=ids.now_ms()
    )
    assert (result.failed_index, result.run_found) == (1, False)
    assert await run_counts(conn, run_id) == (0, 0, 0, 0)
    assert await conn.fetchval("SELECT count(*) FROM task") == 0


async def test_batch_insert_parents_existing_or_earlier_in_batch(conn):
    run_id, other_run = await make_run(conn), await make_run(conn)
    (parent,) = await make_tasks(conn, run_id, 1)
    first_id = ids.new_id()
    news = [
        tasks_store.NewTask(run_id=run_id, task_type="a", input_data=1, parent_task_id=parent.id),
        tasks_store.NewTask(run_id=run_id, task_type="b", input_data=1),
        tasks_store.NewTask(run_id=run_id, task_type="c", input_data=1, parent_task_id=first_id),
    ]
    task_ids = [ids.new_id(), first_id, ids.new_id()]
    task_ids[0], task_ids[1] = task_ids[1], task_ids[0]  # "b" is first_id, "c" points to it
    news[0], news[1] = news[1], news[0]
    ok = await tasks_store.insert_tasks(
        conn, org_id=ORG_A, task_ids=task_ids, news=news, now=ids.now_ms()
    )
    assert ok.failed_index is None
    assert ok.tasks[2].parent_task_id == first_id
    # A parent in another run is not found, and nothing is inserted.
    wrong = tasks_store.NewTask(
        run_id=other_run, task_type="x", input_data=1, parent_task_id=parent.id
    )
    bad = await tasks_store.insert_tasks(
        conn, org_id=ORG_A, task_ids=[ids.new_id()], news=[wrong], now=ids.now_ms()
    )
    assert (bad.failed_index, bad.run_found, bad.parent_found) == (0, True, False)


# ---------------------------------------------------------------- claim


async def test_claim_order_priority_run_after_and_id(conn):
    run_id = await make_run(conn)
    now = ids.now_ms()  # one clock for every insert and claim: no race with a slow machine
    p2 = await make_tasks(conn, run_id, 2, now=now, priority=2)
    p0 = await make_tasks(conn, run_id, 2, now=now, priority=0)
    p1 = await make_tasks(conn, run_id, 2, now=now, priority=1)
    delayed = await make_tasks(conn, run_id, 1, now=now, delay_ms=60_000)
    pending = await make_tasks(conn, run_id, 1, now=now, enqueue=False)
    claimed = await claim(conn, now=now + 100)
    # BullMQ order: 0 (no priority) first, then 1 = highest; ties by runAfter then id (uuid7).
    assert [t.id for t in claimed] == [t.id for t in p0 + p1 + p2]
    assert all(t.status == "running" and t.attempt == 1 and t.lease_token for t in claimed)
    assert all(t.lease_expires_at == now + 100 + LEASE_MS and t.worker_id == "w1" for t in claimed)
    assert len({t.lease_token for t in claimed}) == 6
    assert await claim(conn, now=now + 100) == []
    # Not before runAfter; never a pending task.
    later = await claim(conn, now=now + 61_000)
    assert [t.id for t in later] == [delayed[0].id]
    assert (
        await tasks_store.get_task(conn, org_id=ORG_A, task_id=pending[0].id)
    ).status == "pending"


async def test_claim_limit_and_types(conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 5, task_type="a")
    bs = await make_tasks(conn, run_id, 5, task_type="b")
    assert len(await claim(conn, 2, types=["b"])) == 2
    rest_b = await claim(conn, 10, types=["b", "zzz"])
    assert {t.id for t in rest_b} < {t.id for t in bs}
    assert len(rest_b) == 3
    assert await claim(conn, 10, types=[]) == []
    assert {t.type for t in await claim(conn, 10)} == {"a"}


async def test_concurrent_claims_never_share_a_task(pool, conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 400)

    async def worker() -> list[str]:
        got: list[str] = []
        async with db.org_connection(pool, ORG_A) as own:
            while batch := await claim(own, 25):
                got += [t.id for t in batch]
        return got

    results = await asyncio.gather(*(worker() for _ in range(4)))
    every = [task_id for got in results for task_id in got]
    assert len(every) == len(set(every)) == 400


async def test_claim_sees_only_its_organisation(pool, conn):
    async with db.org_connection(pool, ORG_B) as conn_b:
        await make_tasks(conn_b, await make_run(conn_b, ORG_B), 3, org_id=ORG_B)
    assert await claim(conn) == []


# ---------------------------------------------------------------- claim by id


async def test_claim_by_id(conn):
    run_id = await make_run(conn)
    (pending,) = await make_tasks(conn, run_id, 1, enqueue=False, max_retries=1)

    async def by_id(now=None, lease_ms=LEASE_MS):
        return await queue_store.claim_task(
            conn,
            org_id=ORG_A,
            task_id=pending.id,
            worker_id="w2",
            lease_ms=lease_ms,
            now=now or ids.now_ms(),
        )

    first = await by_id(lease_ms=60_000)
    assert first.task is not None
    assert first.task.attempt == 1
    assert first.task.queued_at
    held = await by_id()
    assert held.task is None
    assert held.found
    assert held.current.status == "running"
    # Expired lease with attempts left: taken over, the lost attempt counted as a retry.
    later = ids.now_ms() + 61_000  # past the first lease
    second = await by_id(now=later)
    assert second.task.attempt == 2
    assert second.task.retry_count == 1
    assert second.task.lease_token != first.task.lease_token
    assert raw(second.task.error_data)["type"] == "LeaseExpired"
    # Attempts exhausted (maxRetries 1 = 2 attempts): not taken over, the sweeper fails it.
    assert (await by_id(now=later + LEASE_MS + 1)).task is None
    missing = await queue_store.claim_task(
        conn, org_id=ORG_A, task_id=str(uuid.uuid4()), worker_id="w", lease_ms=1000, now=1
    )
    assert (missing.task, missing.found) == (None, False)


# ---------------------------------------------------------------- heartbeat


async def test_heartbeat_extends_held_leases_and_reports_lost_and_cancelled(conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 3)
    a, b, c = await claim(conn, 3)
    await tasks_store.update_task(
        conn, org_id=ORG_A, task_id=c.id, changes={"status": "cancelled"}, now=ids.now_ms()
    )
    now = ids.now_ms()
    leases = [
        queue_store.Lease(a.id, a.lease_token),
        queue_store.Lease(b.id, str(uuid.uuid4())),
        queue_store.Lease(c.id, c.lease_token),
        queue_store.Lease(str(uuid.uuid4()), str(uuid.uuid4())),
    ]
    states = await queue_store.heartbeat(
        conn, org_id=ORG_A, leases=leases, lease_ms=90_000, now=now
    )
    assert [(s.ok, s.cancelled, s.found) for s in states] == [
        (True, False, True),
        (False, False, True),
        (False, True, True),
        (False, False, False),
    ]
    assert states[0].lease_expires_at == now + 90_000
    assert (
        await tasks_store.get_task(conn, org_id=ORG_A, task_id=a.id)
    ).lease_expires_at == now + 90_000


# ---------------------------------------------------------------- complete / fail


async def test_complete_counts_once_and_fences_stale_tokens(conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 3)
    a, b, c = await claim(conn, 3)
    ended = await queue_store.finish_tasks(
        conn,
        org_id=ORG_A,
        outcomes=[
            done(a, output_data={"r": 1}),
            queue_store.Outcome(b.id, str(uuid.uuid4()), "completed", output_data="stale"),
            done(c, "failed", error_data={"message": "no"}, retryable=False),
        ],
        now=ids.now_ms(),
    )
    assert [(e.ok, e.status) for e in ended] == [
        (True, "completed"),
        (False, "running"),
        (True, "failed"),
    ]
    assert raw(ended[0].task.output_data) == {"r": 1}
    assert ended[0].task.duration_ms is not None
    assert raw(ended[2].task.error_data) == {"message": "no"}
    still = await tasks_store.get_task(conn, org_id=ORG_A, task_id=b.id)
    assert still.status == "running"
    assert still.output_data is None
    assert await run_counts(conn, run_id) == (3, 1, 1, 0)
    # A repeat of the same call changes nothing but is recognised; a different outcome is not.
    repeat = await queue_store.finish_tasks(
        conn, org_id=ORG_A, outcomes=[done(a)], now=ids.now_ms()
    )
    assert (repeat[0].ok, repeat[0].repeat, repeat[0].task) == (True, True, None)
    other = await queue_store.finish_tasks(
        conn, org_id=ORG_A, outcomes=[done(a, "failed")], now=ids.now_ms()
    )
    assert (other[0].ok, other[0].status) == (False, "completed")
    assert await run_counts(conn, run_id) == (3, 1, 1, 0)


async def test_a_refused_row_is_explained_by_the_task_before_the_statement(conn):
    # finish_tasks and release_tasks read a task again only for a row they refused (queue.sql).
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 2)
    a, b = await claim(conn, 2)
    missing = str(uuid.uuid4())
    ended = await queue_store.finish_tasks(
        conn,
        org_id=ORG_A,
        outcomes=[
            done(a),
            queue_store.Outcome(missing, str(uuid.uuid4()), "completed"),
            queue_store.Outcome(b.id, str(uuid.uuid4()), "completed"),
        ],
        now=ids.now_ms(),
    )
    assert [(e.ok, e.status, e.found, e.repeat) for e in ended] == [
        (True, "completed", True, False),
        (False, None, False, False),
        (False, "running", True, False),
    ]
    released = await queue_store.release_tasks(
        conn,
        org_id=ORG_A,
        leases=[
            queue_store.Lease(a.id, a.lease_token),
            queue_store.Lease(missing, str(uuid.uuid4())),
            queue_store.Lease(b.id, b.lease_token),
        ],
        now=ids.now_ms(),
    )
    assert [(e.ok, e.status, e.found) for e in released] == [
        (False, "completed", True),
        (False, None, False),
        (True, "queued", True),
    ]


async def test_fail_retries_with_backoff_until_attempts_run_out(conn):
    run_id = await make_run(conn)
    (task,) = await make_tasks(conn, run_id, 1, max_retries=2)
    history = []
    for attempt in (1, 2, 3):
        now = ids.now_ms() + 10 * 60_000 * attempt  # past any backoff
        (held,) = await claim(conn, 1, now=now)
        assert held.id == task.id
        assert held.attempt == attempt
        assert held.retry_count == attempt - 1
        (ended,) = await queue_store.finish_tasks(
            conn,
            org_id=ORG_A,
            outcomes=[done(held, "failed", error_data={"n": attempt})],
            now=now,
        )
        history.append(ended.task)
    first, second, last = history
    assert first.status == second.status == "retrying"
    # min(2000 * 2^(attempt-1), 300000) +- 20 %
    assert 1600 <= first.run_after - first.updated_at <= 2400
    assert 3200 <= second.run_after - second.updated_at <= 4800
    assert (first.retry_count, second.retry_count) == (1, 2)
    assert first.completed_at is None
    assert (last.status, last.attempt, last.retry_count) == ("failed", 3, 2)
    assert raw(last.error_data) == {"n": 3}
    assert await run_counts(conn, run_id) == (1, 0, 1, 0)


async def test_max_retries_zero_means_one_attempt(conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 1, max_retries=0)
    (held,) = await claim(conn)
    (ended,) = await queue_store.finish_tasks(
        conn, org_id=ORG_A, outcomes=[done(held, "failed")], now=ids.now_ms()
    )
    assert (ended.task.status, ended.task.retry_count, ended.task.attempt) == ("failed", 0, 1)


async def test_batch_finish_of_one_run_counts_exactly(conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 500)
    held = await claim(conn, 500)
    outcomes = [
        done(t) if i % 5 else done(t, "failed", retryable=False) for i, t in enumerate(held)
    ]
    ended = await queue_store.finish_tasks(conn, org_id=ORG_A, outcomes=outcomes, now=ids.now_ms())
    assert all(e.ok for e in ended)
    assert await run_counts(conn, run_id) == (500, 400, 100, 0)


async def test_a_cancelled_task_cannot_be_completed(conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 1)
    (held,) = await claim(conn)
    await tasks_store.update_task(
        conn, org_id=ORG_A, task_id=held.id, changes={"status": "cancelled"}, now=ids.now_ms()
    )
    (ended,) = await queue_store.finish_tasks(
        conn, org_id=ORG_A, outcomes=[done(held)], now=ids.now_ms()
    )
    assert (ended.ok, ended.status) == (False, "cancelled")
    assert await run_counts(conn, run_id) == (1, 0, 0, 1)


# ---------------------------------------------------------------- release


async def test_release_puts_the_task_back_without_counting_the_attempt(conn):
    run_id = await make_run(conn)
    await make_tasks(conn, run_id, 2)
    a, b = await claim(conn, 2)
    ended = await queue_store.release_tasks(
        conn,
        org_id=ORG_A,
        leases=[queue_store.Lease(a.id, a.lease_token), queue_store.Lease(b.id, str(uuid.uuid4()))],
        now=ids.now_ms(),
    )
    assert [(e.ok, e.status) for e in ended] == [(True, "queued"), (False, "running")]
    assert ended[0].task.attempt == 0
    assert ended[0].task.lease_expires_at is None
    (again,) = await claim(conn)
    assert again.id == a.id
    assert again.attempt == 1


# ---------------------------------------------------------------- notifications


async def test_terminal_transitions_notify_task_done(db_url, conn):
    listener = await asyncpg.connect(db_url)
    received: list[tuple[str, str]] = []
    await listener.add_listener("foreman_task_done", lambda *a: received.append((a[2], a[3])))
    await listener.add_listener("foreman_task_ready", lambda *a: received.append((a[2], a[3])))
    try:
        run_id = await make_run(conn)
        await make_tasks(conn, run_id, 250)
        held = await claim(conn, 250)
        await queue_store.finish_tasks(
            conn, org_id=ORG_A, outcomes=[done(t) for t in held[:249]], now=ids.now_ms()
        )
        await tasks_store.update_task(
            conn, org_id=ORG_A, task_id=held[249].id, changes={"status": "failed"}, now=ids.now_ms()
        )
        for _ in range(50):
            if sum(ch == "foreman_task_done" for ch, _ in received) >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        await listener.close()
    done_ids = [i for ch, p in received if ch == "foreman_task_done" for i in p.split(",")]
    assert sorted(done_ids) == sorted(t.id for t in held)
    # One payload per 100 ids from the batch (3), one from the PATCH.
    assert sum(ch == "foreman_task_done" for ch, _ in received) == 4
    assert ("foreman_task_ready", ORG_A) in received


@pytest.mark.parametrize("batch", [False, True])
async def test_a_run_cannot_be_deleted_while_tasks_are_added_to_it(pool, db_url: str, batch: bool):
    """The insert locks its run FOR KEY SHARE (migration 0006 replaced the foreign key): a
    DELETE of the run waits for the insert's commit, so it never leaves a task without its run."""
    async with db.org_connection(pool, ORG_A) as conn:
        run_id = await make_run(conn)
        transaction = conn.transaction()
        await transaction.start()
        new = tasks_store.NewTask(run_id=run_id, task_type="work", input_data={})
        if batch:
            await tasks_store.insert_tasks(
                conn, org_id=ORG_A, task_ids=[ids.new_id()], news=[new], now=ids.now_ms()
            )
        else:
            await tasks_store.insert_task(
                conn, org_id=ORG_A, task_id=ids.new_id(), new=new, now=ids.now_ms()
            )
        admin = await asyncpg.connect(db_url)
        try:
            await admin.execute("SET lock_timeout = '300ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await admin.execute("DELETE FROM run WHERE id = $1", uuid.UUID(run_id))
        finally:
            await transaction.rollback()
            await admin.close()
