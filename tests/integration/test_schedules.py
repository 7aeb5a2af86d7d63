"""Schedules firing against real PostgreSQL (and Redis for bullmq), on a clock the test sets.

Each firing creates one run with one queued task; a tick fires once however many firing loops
(server replicas) run; ticks missed during a downtime fire once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from foreman import ids, triggers
from foreman.queue import bullmq as bullmq_backend
from foreman.queue.postgres import PostgresQueue
from foreman.server.app import create_app
from foreman.server.scheduler import Scheduler
from foreman.store import db
from foreman.store import queue as queue_store
from foreman.store import runs as runs_store
from foreman.store import schedules as store
from foreman.store import tasks as tasks_store
from tests.conftest import HEADERS_A, ORG_A, ORG_B, make_settings, truncate_all
from tests.integration.live_server import ServerProcess, server_env
from tests.queue_helpers import bullmq_queue, obliterate, running_app, unique_queue_name
from tests.services import scratch_database

T0 = 1_800_000_000_000  # 2027-01-15 08:00 UTC: the test's clock starts here
MINUTE = 60_000
TASK = msgspec.Raw(b'{"type":"tick","inputData":{"n":1},"maxRetries":2,"priority":5}')


@pytest.fixture(scope="module")
async def schedules_database(admin_url: str) -> AsyncIterator[str]:
    """A database of this module alone: no other test's firing loop may fire behind our back."""
    async with scratch_database(admin_url, "foreman_schedules", migrate=True) as url:
        yield url


@pytest.fixture
async def db_url(schedules_database: str) -> str:
    await truncate_all(schedules_database)
    return schedules_database


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[Any]:
    """The server's request pool: foreman_app, under row-level security."""
    pool = await db.create_pool(
        db_url, min_size=1, max_size=3, command_timeout_s=10, connect_timeout_s=3
    )
    yield pool
    await pool.close()


async def owner_pool(db_url: str) -> Any:
    """Like a firing loop's own pool: the table owner, no SET ROLE."""
    return await db.create_pool(
        db_url, min_size=1, max_size=1, command_timeout_s=10, connect_timeout_s=3, app_role=False
    )


@pytest.fixture
async def scheduler(db_url: str) -> AsyncIterator[Scheduler]:
    one = Scheduler(await owner_pool(db_url), queue=PostgresQueue(), interval_s=1.0, batch=100)
    yield one
    await one.close()


def ms(text: str) -> int:
    """An ISO time with its offset, as epoch ms."""
    return int(datetime.fromisoformat(text).timestamp()) * 1000


async def make_schedule(
    pool,
    *,
    org_id: str = ORG_A,
    now: int = T0,
    cron: str | None = None,
    interval_ms: int | None = None,
    timezone: str = "UTC",
    enabled: bool = True,
):
    new = store.NewSchedule(
        name="s",
        trigger=triggers.Trigger(cron=cron, interval_ms=interval_ms, timezone=timezone),
        enabled=enabled,
        run_input_data={"from": "schedule"},
        task=TASK,
    )
    async with db.org_connection(pool, org_id) as conn:
        return await store.insert_schedule(
            conn, org_id=org_id, schedule_id=ids.new_id(), new=new, now=now
        )


async def schedule_of(pool, schedule, org_id: str = ORG_A):
    async with db.org_connection(pool, org_id) as conn:
        return await store.get_schedule(conn, org_id=org_id, schedule_id=schedule.id)


async def runs_of(db_url: str, schedule_id: str) -> list[asyncpg.Record]:
    """The runs a schedule created (every organisation: the superuser), oldest tick first."""
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(
            "SELECT * FROM run WHERE metadata->>'scheduleId' = $1"
            " ORDER BY (metadata->>'scheduledAt')::bigint",
            schedule_id,
        )
    finally:
        await conn.close()


async def fire(scheduler: Scheduler, now: int) -> int:
    return await scheduler.fire_all(now=now)


# ---------------------------------------------------------------- one firing


async def test_an_interval_fires_a_run_with_one_queued_task(pool, db_url, scheduler):
    made = await make_schedule(pool, interval_ms=MINUTE)
    assert made.next_run_at == T0 + MINUTE
    assert await fire(scheduler, T0 + MINUTE - 1) == 0
    assert await fire(scheduler, T0 + MINUTE) == 1

    (row,) = await runs_of(db_url, made.id)
    async with db.org_connection(pool, ORG_A) as conn:
        run = await runs_store.get_run(conn, org_id=ORG_A, run_id=str(row["id"]))
        page = await tasks_store.list_tasks(
            conn,
            org_id=ORG_A,
            filters={"run_id": run.id},
            sort_by="created_at",
            sort_order="asc",
            limit=10,
            offset=0,
        )
    assert run.org_id == ORG_A
    assert run.status == "pending"
    assert msgspec.json.decode(run.input_data) == {"from": "schedule"}
    assert msgspec.json.decode(run.metadata) == {"scheduleId": made.id, "scheduledAt": T0 + MINUTE}
    assert run.created_at == T0 + MINUTE
    assert run.total_tasks == 1  # counted like any task
    (task,) = page.items
    assert (task.type, task.status, task.max_retries, task.priority) == ("tick", "queued", 2, 5)
    assert msgspec.json.decode(task.input_data) == {"n": 1}
    async with db.org_connection(pool, ORG_A) as conn:  # a worker's claim gets it
        held = await queue_store.claim_tasks(
            conn,
            org_id=ORG_A,
            worker_id="w",
            types=["tick"],
            limit=10,
            lease_ms=30_000,
            now=T0 + MINUTE,
        )
    assert [t.id for t in held] == [task.id]

    after = await schedule_of(pool, made)
    assert after.next_run_at == T0 + 2 * MINUTE
    assert after.last_run_at == T0 + MINUTE
    assert after.last_run_id == run.id
    # The tick is spent: the same moment fires nothing more.
    assert await fire(scheduler, T0 + MINUTE) == 0
    assert await fire(scheduler, T0 + 2 * MINUTE) == 1
    assert len(await runs_of(db_url, made.id)) == 2


async def test_missed_ticks_fire_once_as_the_latest(pool, db_url, scheduler):
    made = await make_schedule(pool, interval_ms=MINUTE)
    # Down for ten and a half minutes: ten ticks missed, one run.
    now = T0 + 10 * MINUTE + 30_000
    assert await fire(scheduler, now) == 1
    assert await fire(scheduler, now) == 0
    (run,) = await runs_of(db_url, made.id)
    assert msgspec.json.decode(run["metadata"])["scheduledAt"] == T0 + 10 * MINUTE
    after = await schedule_of(pool, made)
    assert (after.last_run_at, after.next_run_at) == (now, T0 + 11 * MINUTE)


async def test_the_loop_wakes_at_each_tick_of_a_short_interval(pool, db_url):
    # The firing loop runs every 2 s, the schedule every 1 s: the loop must wake at each tick
    # (Scheduler.tick answers when the next one is due), or each late wake-up fires only the
    # latest overdue tick and the one before it is lost.
    made = await make_schedule(pool, interval_ms=1000, now=ids.now_ms())
    loop = Scheduler(await owner_pool(db_url), queue=PostgresQueue(), interval_s=2.0, batch=10)
    loop.start()
    try:
        await asyncio.sleep(4.5)
    finally:
        await loop.close()
    ticks = [
        msgspec.json.decode(r["metadata"])["scheduledAt"] for r in await runs_of(db_url, made.id)
    ]
    assert len(ticks) >= 2, ticks
    # The first wake-up (1.6-2.4 s) may find two ticks due and fire the later; none after it.
    assert [b - a for a, b in itertools.pairwise(ticks)] == [1000] * (len(ticks) - 1)


async def test_cron_in_a_timezone_follows_daylight_saving_time(pool, db_url, scheduler):
    # 09:00 in Warsaw: 08:00 UTC in winter (CET), 07:00 UTC from 29 March 2026 (CEST).
    made = await make_schedule(
        pool, cron="0 9 * * *", timezone="Europe/Warsaw", now=ms("2026-03-27T12:00:00+00:00")
    )
    assert made.next_run_at == ms("2026-03-28T08:00:00+00:00")
    assert await fire(scheduler, ms("2026-03-28T07:59:59+00:00")) == 0
    assert await fire(scheduler, ms("2026-03-28T08:00:00.250+00:00")) == 1
    after = await schedule_of(pool, made)
    assert after.next_run_at == ms("2026-03-29T07:00:00+00:00")
    assert await fire(scheduler, ms("2026-03-29T07:00:00+00:00")) == 1
    # Down from Sunday to Thursday 10:00 UTC: Monday's to Thursday's ticks fire once, as Thursday's.
    thursday = ms("2026-04-02T10:00:00+00:00")
    assert await fire(scheduler, thursday) == 1
    assert await fire(scheduler, thursday) == 0
    ticks = [
        msgspec.json.decode(r["metadata"])["scheduledAt"] for r in await runs_of(db_url, made.id)
    ]
    assert ticks == [
        ms("2026-03-28T08:00:00+00:00"),
        ms("2026-03-29T07:00:00+00:00"),
        ms("2026-04-02T07:00:00+00:00"),
    ]
    after = await schedule_of(pool, made)
    assert after.next_run_at == ms("2026-04-03T07:00:00+00:00")
    assert after.last_run_at == thursday


async def test_cron_in_new_york_across_the_spring_gap(pool, db_url, scheduler):
    # 02:30 does not exist in New York on 8 March 2026 (02:00 -> 03:00): cron fires at 03:00 EDT.
    made = await make_schedule(
        pool, cron="30 2 * * *", timezone="America/New_York", now=ms("2026-03-07T12:00:00+00:00")
    )
    assert made.next_run_at == ms("2026-03-08T03:00:00-04:00")
    assert await fire(scheduler, made.next_run_at) == 1
    assert (await schedule_of(pool, made)).next_run_at == ms("2026-03-09T02:30:00-04:00")


async def test_disabled_schedules_do_not_fire(pool, db_url, scheduler):
    off = await make_schedule(pool, interval_ms=MINUTE, enabled=False)
    on = await make_schedule(pool, interval_ms=MINUTE)
    assert off.next_run_at is None
    assert await fire(scheduler, T0 + 60 * MINUTE) == 1
    assert await runs_of(db_url, off.id) == []

    # Disabled after it was due: it does not fire; enabled again, it starts from then.
    async with db.org_connection(pool, ORG_A) as conn:
        await store.update_schedule(
            conn, org_id=ORG_A, schedule_id=on.id, changes={"enabled": False}, now=T0
        )
    assert await fire(scheduler, T0 + 120 * MINUTE) == 0
    async with db.org_connection(pool, ORG_A) as conn:
        back = await store.update_schedule(
            conn,
            org_id=ORG_A,
            schedule_id=on.id,
            changes={"enabled": True},
            now=T0 + 120 * MINUTE,
        )
    assert back.next_run_at == T0 + 121 * MINUTE
    assert await fire(scheduler, T0 + 121 * MINUTE) == 1
    assert len(await runs_of(db_url, on.id)) == 2


async def test_schedules_of_every_organisation_fire_into_their_own(pool, db_url, scheduler):
    a = await make_schedule(pool, interval_ms=MINUTE)
    b = await make_schedule(pool, org_id=ORG_B, interval_ms=MINUTE)
    assert await fire(scheduler, T0 + MINUTE) == 2
    (run_a,) = await runs_of(db_url, a.id)
    (run_b,) = await runs_of(db_url, b.id)
    assert (run_a["org_id"], run_b["org_id"]) == (ORG_A, ORG_B)
    async with db.org_connection(pool, ORG_B) as conn:
        assert await conn.fetchval("SELECT count(*) FROM run") == 1  # row-level security


async def test_a_schedule_that_cannot_fire_leaves_the_others_firing(pool, db_url, scheduler):
    broken = await make_schedule(pool, interval_ms=MINUTE)
    fine = await make_schedule(pool, interval_ms=MINUTE)
    admin = await asyncpg.connect(db_url)
    try:  # a task document the firing cannot read (a bug, or a hand-edited row)
        await admin.execute("UPDATE schedule SET task = '{\"type\": 1}' WHERE id = $1", broken.id)
    finally:
        await admin.close()
    assert await fire(scheduler, T0 + MINUTE) == 1
    assert await runs_of(db_url, broken.id) == []
    assert len(await runs_of(db_url, fine.id)) == 1
    assert (await schedule_of(pool, broken)).next_run_at == T0 + MINUTE  # still due, retried
    assert (await schedule_of(pool, fine)).next_run_at == T0 + 2 * MINUTE


async def test_fired_tasks_count_in_the_metrics(pool, db_url):
    app = create_app(
        make_settings(
            db_url, sweep_enabled=False, schedule_interval_s=0.02, metrics_token="scrape-token"
        )
    )
    made = await make_schedule(pool, interval_ms=3_600_000, now=ids.now_ms() - 3_600_000)
    async with running_app(app) as http:
        for _ in range(250):  # up to 5 s: the loop looks every 20 ms
            if await runs_of(db_url, made.id):
                break
            await asyncio.sleep(0.02)
        response = await http.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert response.status_code == 200
    assert 'foreman_tasks_created_total{type="tick"} 1.0' in response.text


# ---------------------------------------------------------------- replicas


async def test_two_firing_loops_at_once_fire_each_tick_once(pool, db_url):
    # Small batches, so that both loops claim several times in every round.
    loops = [
        Scheduler(await owner_pool(db_url), queue=PostgresQueue(), interval_s=1.0, batch=3)
        for _ in range(2)
    ]
    try:
        made = [await make_schedule(pool, interval_ms=MINUTE) for _ in range(20)]
        for tick in range(1, 6):
            now = T0 + tick * MINUTE
            counts = await asyncio.gather(*(loop.fire_all(now=now) for loop in loops))
            assert sum(counts) == 20, counts
            for schedule in made:
                runs = await runs_of(db_url, schedule.id)
                scheduled = [msgspec.json.decode(r["metadata"])["scheduledAt"] for r in runs]
                assert scheduled == [T0 + k * MINUTE for k in range(1, tick + 1)]
    finally:
        for loop in loops:
            await loop.close()


async def test_a_schedule_being_fired_is_skipped_by_another_replica(pool, db_url, scheduler):
    made = await make_schedule(pool, interval_ms=MINUTE)
    now = T0 + MINUTE
    other = await owner_pool(db_url)
    try:
        async with other.acquire() as conn, conn.transaction():
            (claimed,) = await store.claim_due_schedules(conn, now=now, limit=10)
            # Replica B looks while replica A holds the schedule: skipped, not waited for.
            assert await asyncio.wait_for(fire(scheduler, now), 5) == 0
            await store.fire_schedule(conn, claimed, now=now)
        # A committed: the tick is spent for B as well.
        assert await fire(scheduler, now) == 0
    finally:
        await other.close()
    assert len(await runs_of(db_url, made.id)) == 1


async def test_two_server_replicas_fire_each_tick_once(pool, db_url):
    # Two apps on one database, each with its own pools and firing loop (what two server processes
    # are to the database), the loops running every 20 ms: schedules due in the past fire once
    # each, however the two loops interleave.
    apps = [
        create_app(make_settings(db_url, sweep_enabled=False, schedule_interval_s=0.02))
        for _ in range(2)
    ]
    made = [
        await make_schedule(pool, interval_ms=3_600_000, now=ids.now_ms() - 3_600_000)
        for _ in range(10)
    ]
    async with running_app(apps[0]) as http, running_app(apps[1]):
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            fired = [len(await runs_of(db_url, s.id)) for s in made]
            if all(fired) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # ten more rounds of both loops: nothing fires twice
        response = await http.get(f"/api/v1/schedules/{made[0].id}", headers=HEADERS_A)
    assert [len(await runs_of(db_url, s.id)) for s in made] == [1] * 10
    shown = response.json()
    (run,) = await runs_of(db_url, made[0].id)
    assert shown["lastRunId"] == str(run["id"])
    assert shown["nextRunAt"] > shown["lastRunAt"]


async def test_two_foreman_server_processes_fire_each_tick_once(db_url, tmp_path):
    # Two real `foreman server` processes on one database, their loops looking every 50 ms, and
    # schedules ticking every second for three seconds: no tick fires twice.
    env = server_env(
        FOREMAN_DATABASE_URL=db_url,
        FOREMAN_SCHEDULE_INTERVAL_S="0.05",
        FOREMAN_SWEEP_ENABLED="false",
        FOREMAN_AUTO_MIGRATE="false",
    )
    servers = [ServerProcess(tmp_path, env=env) for _ in range(2)]
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        async with httpx.AsyncClient(headers=HEADERS_A, timeout=30) as http:
            body = {"name": "s", "intervalMs": 1000, "task": {"type": "t", "inputData": 1}}
            made = [
                (await http.post(f"{servers[0].url}/api/v1/schedules", json=body)).json()
                for _ in range(5)
            ]
            await asyncio.sleep(3.3)
            for schedule in made:
                response = await http.patch(
                    f"{servers[1].url}/api/v1/schedules/{schedule['id']}", json={"enabled": False}
                )
                assert response.json()["enabled"] is False
    finally:
        for server in servers:
            server.kill()
    logs = "".join(server.log() for server in servers)
    for schedule in made:
        ticks = [
            msgspec.json.decode(r["metadata"])["scheduledAt"]
            for r in await runs_of(db_url, schedule["id"])
        ]
        assert len(ticks) >= 2, logs
        assert len(set(ticks)) == len(ticks), ticks  # each tick once
        assert all((tick - schedule["createdAt"]) % 1000 == 0 for tick in ticks), ticks


# ---------------------------------------------------------------- bullmq


async def test_bullmq_a_fired_task_is_published(pool, db_url, redis_server):
    name = unique_queue_name()
    settings = make_settings(
        "postgresql://unused", redis_host=redis_server.host, redis_port=redis_server.port
    )
    queue = bullmq_backend.BullMQQueue(name, client=bullmq_backend.redis_client(settings))
    firing = Scheduler(await owner_pool(db_url), queue=queue, interval_s=1.0, batch=10)
    inspect = bullmq_queue(redis_server, name)
    try:
        made = await make_schedule(pool, interval_ms=MINUTE)
        assert await firing.fire_all(now=T0 + MINUTE) == 1
        (run,) = await runs_of(db_url, made.id)
        async with db.org_connection(pool, ORG_A) as conn:
            page = await tasks_store.list_tasks(
                conn,
                org_id=ORG_A,
                filters={"run_id": str(run["id"])},
                sort_by="created_at",
                sort_order="asc",
                limit=10,
                offset=0,
            )
        (task,) = page.items
        assert (await inspect.getJobCounts())["prioritized"] == 1  # priority 5
        job = await inspect.getJob(f"{task.id}:1")
        assert job.data == {"taskId": task.id}
        assert job.name == "tick"
    finally:
        await firing.close()
        await queue.close()
        await inspect.close()
        await obliterate(redis_server, name)


def test_clock_constants():
    assert datetime.fromtimestamp(T0 / 1000, UTC).isoformat() == "2027-01-15T08:00:00+00:00"
