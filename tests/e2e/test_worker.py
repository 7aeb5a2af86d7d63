"""Worker behaviour end to end, for each backend: a real `foreman server` process, the Worker in
this process (so the test can read its stats), real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from foreman import AsyncClient, Handlers, TaskContext, TaskSpec, Worker
from foreman.worker._leases import Held, LeaseKeeper
from foreman.worker.context import AttemptState
from foreman.worker.metrics import WorkerMetrics
from tests.conftest import KEY_A
from tests.e2e import handlers
from tests.e2e.helpers import all_tasks, eventually, run_finished
from tests.services import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def client(server) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.url, KEY_A) as api:
        yield api


def make_worker(client: AsyncClient, **options) -> Worker:
    options.setdefault("handlers", handlers.HANDLERS)
    options.setdefault("claim_wait_s", 0.5)
    return Worker(client, handle_signals=False, **options)


async def run_until(worker: Worker, done, *, timeout_s: float = 30):
    """Run worker until the awaitable done finishes, then stop it gracefully."""
    runner = asyncio.create_task(worker.run())
    try:
        return await asyncio.wait_for(done, timeout_s)
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)


async def test_sync_and_async_handlers(client: AsyncClient):
    run = await client.create_run({})
    specs = [TaskSpec(run.id, "noop", i) for i in range(20)]
    specs += [TaskSpec(run.id, "sync_nap", 0.05) for _ in range(8)]
    await client.enqueue_tasks(specs)
    worker = make_worker(client, concurrency=8)
    stats = await asyncio.wait_for(worker.run(burst=True), 30)

    finished = await run_finished(client, run.id, 28, timeout_s=10)
    assert (finished.completed_tasks, finished.failed_tasks, finished.total_tasks) == (28, 0, 28)
    tasks = await all_tasks(client, run.id)
    assert {t.status for t in tasks} == {"completed"}
    assert {t.attempt for t in tasks} == {1}
    assert {t.output_data["pid"] for t in tasks} == {os.getpid()}
    noop_outputs = sorted(t.output_data["echo"] for t in tasks if t.type == "noop")
    assert noop_outputs == list(range(20))
    assert (stats.claimed, stats.completed, stats.failed, stats.dropped) == (28, 28, 0, 0)


async def test_retries_and_max_retries_zero(client: AsyncClient):
    run = await client.create_run({})
    recovers = await client.enqueue_task(run.id, type="flaky", input_data=2, max_retries=1)
    exhausted = await client.enqueue_task(run.id, type="flaky", input_data=3, max_retries=1)
    once = await client.enqueue_task(run.id, type="flaky", input_data=2, max_retries=0)
    worker = make_worker(client, concurrency=4)
    await run_until(worker, run_finished(client, run.id, 3, timeout_s=20))

    ok = await client.get_task(recovers.id)
    assert (ok.status, ok.attempt, ok.retry_count) == ("completed", 2, 1)
    assert ok.output_data == {"succeeded_on": 2}
    failed = await client.get_task(exhausted.id)
    assert (failed.status, failed.attempt, failed.retry_count) == ("failed", 2, 1)
    single = await client.get_task(once.id)
    assert (single.status, single.attempt, single.retry_count) == ("failed", 1, 0)
    error = single.error_data
    assert error["type"] == "RuntimeError"
    assert error["message"] == "attempt 1 failed on purpose"
    assert "Traceback" in error["stack"]
    assert "handlers.py" in error["stack"]
    counters = await client.get_run(run.id)
    assert (counters.completed_tasks, counters.failed_tasks) == (1, 2)


async def test_priorities_and_delays(client: AsyncClient, server):
    run = await client.create_run({})
    late = await client.enqueue_task(run.id, type="nap", input_data=0.01, delay_ms=1500)
    order = [5, 1, 0, 3]
    by_priority = {
        p: await client.enqueue_task(run.id, type="nap", input_data=0.02, priority=p) for p in order
    }
    worker = make_worker(client, concurrency=1)
    await run_until(worker, run_finished(client, run.id, 5, timeout_s=20))

    tasks = {t.id: t for t in await all_tasks(client, run.id)}
    started = sorted(by_priority, key=lambda p: tasks[by_priority[p].id].started_at or 0)
    if server.env["FOREMAN_QUEUE_BACKEND"] == "sqs":
        # SQS has no priorities (docs/backends.md): each ran, in any order.
        assert sorted(started) == [0, 1, 3, 5]
    else:
        # BullMQ order, in every other backend: 0 (no priority) first, then 1 = highest.
        assert started == [0, 1, 3, 5]
    delayed = tasks[late.id]
    assert delayed.status == "completed"
    assert delayed.started_at is not None
    assert delayed.started_at >= delayed.created_at + 1500


async def test_cancellation(client: AsyncClient):
    run = await client.create_run({})
    never = await client.enqueue_task(run.id, type="noop", input_data=1, delay_ms=800)
    await client.update_task(never.id, status="cancelled")
    long = await client.enqueue_task(run.id, type="nap", input_data=30)
    worker = make_worker(client, concurrency=2, lease_s=3)

    async def cancel_while_running() -> None:
        async def running() -> bool:
            return (await client.get_task(long.id)).status == "running"

        await eventually(running, timeout_s=10, what="the long task to start")
        await client.update_task(long.id, status="cancelled")
        # The handler learns it at the next heartbeat (every lease_s / 3) and returns early.
        await eventually(lambda: _true_when(worker.stats.dropped == 1), timeout_s=10, what="drop")
        await asyncio.sleep(1.2)  # the delayed, cancelled task's time has come and gone

    started = time.monotonic()
    await run_until(worker, cancel_while_running())
    assert time.monotonic() - started < 15

    cancelled_running = await client.get_task(long.id)
    assert cancelled_running.status == "cancelled"
    assert cancelled_running.attempt == 1
    cancelled_before = await client.get_task(never.id)
    assert (cancelled_before.status, cancelled_before.attempt) == ("cancelled", 0)
    assert cancelled_before.started_at is None
    assert worker.stats.completed == 0
    assert (await client.get_run(run.id)).cancelled_tasks == 2


async def test_cancel_endpoints_reach_the_worker(client: AsyncClient):
    run = await client.create_run({})
    waiting = await client.enqueue_task(run.id, type="until_cancelled", input_data=30)
    queued = await client.enqueue_task(run.id, type="noop", input_data=1, delay_ms=60_000)
    worker = make_worker(client, concurrency=2, lease_s=3)

    async def cancel_while_running() -> None:
        async def running() -> bool:
            return (await client.get_task(waiting.id)).status == "running"

        await eventually(running, timeout_s=10, what="the task to start")
        marked = await client.cancel_task(waiting.id)
        assert marked.status == "running"  # marked: it ends when its worker reports
        # wait_cancelled() returns at the next heartbeat; the result ends the task cancelled.
        await run_finished(client, run.id, 1, timeout_s=10)
        cancelled = await client.cancel_run(run.id)
        assert cancelled.status == "cancelled"

    started = time.monotonic()
    await run_until(worker, cancel_while_running())
    assert time.monotonic() - started < 15
    ended = await client.get_task(waiting.id)
    assert (ended.status, ended.attempt, ended.output_data) == ("cancelled", 1, None)
    assert (await client.get_task(queued.id)).status == "cancelled"
    (attempt,) = await client.list_attempts(waiting.id)
    assert attempt.outcome == "cancelled"
    final = await client.get_run(run.id)
    assert (final.status, final.total_tasks, final.cancelled_tasks) == ("cancelled", 2, 2)
    assert (final.completed_tasks, final.failed_tasks) == (0, 0)
    assert (worker.stats.completed, worker.stats.dropped) == (0, 1)


class AddInput(msgspec.Struct):
    a: int
    b: int


async def test_typed_handlers_validate_input_and_fail_bad_input_without_retries(
    client: AsyncClient,
):
    typed = Handlers()

    @typed.task("typed_add")
    async def add(ctx: TaskContext, data: AddInput) -> dict:
        return {"sum": data.a + data.b}

    run = await client.create_run({}, auto_complete=True)
    good = await client.enqueue_task(run.id, type="typed_add", input_data={"a": 2, "b": 3})
    bad = await client.enqueue_task(
        run.id, type="typed_add", input_data={"a": 2, "b": "x"}, max_retries=3
    )
    worker = make_worker(client, handlers=typed, concurrency=2)
    await run_until(worker, client.wait_for_run(run.id, timeout=20))

    done = await client.get_task(good.id)
    assert (done.status, done.output_data) == ("completed", {"sum": 5})
    refused = await client.get_task(bad.id)
    assert (refused.status, refused.attempt, refused.retry_count) == ("failed", 1, 0)
    assert refused.error_data["type"] == "InputValidationError"
    assert refused.error_data["field"] == "b"
    assert (await client.get_run(run.id)).status == "failed"  # autoComplete: one task failed


async def test_a_dag_fans_out_and_in_and_completes_its_run(client: AsyncClient):
    run = await client.create_run({}, auto_complete=True)
    n = 20
    specs = [TaskSpec(run.id, "split", n, ref="split")]
    specs += [TaskSpec(run.id, "square", i, ref=f"sq{i}", depends_on=["split"]) for i in range(n)]
    specs += [TaskSpec(run.id, "join", {}, depends_on=[f"sq{i}" for i in range(n)])]
    created = await client.enqueue_tasks(specs)
    assert [t.status for t in created[:2]] == ["queued", "blocked"]
    worker = make_worker(client, concurrency=8)
    finished = await run_until(worker, client.wait_for_run(run.id, timeout=30))
    assert (finished.status, finished.completed_tasks, finished.total_tasks) == (
        "completed",
        n + 2,
        n + 2,
    )
    joined = await client.get_task(created[-1].id)
    assert joined.output_data == {"sum": sum(i * i for i in range(n)), "parents": n}
    assert joined.attempt == 1  # released once, run once
    parents = await client.list_parents(joined.id, limit=5)
    assert parents.pagination.total == n


async def _true_when(value: bool) -> bool:
    return value


async def test_idempotent_enqueue_runs_once(client: AsyncClient):
    run = await client.create_run({})
    first = await client.enqueue_task(run.id, type="noop", input_data="x", idempotency_key="once")
    second = await client.enqueue_task(run.id, type="noop", input_data="x", idempotency_key="once")
    assert second.id == first.id
    worker = make_worker(client, concurrency=2)
    await run_until(worker, run_finished(client, run.id, 1, timeout_s=10))
    task = await client.get_task(first.id)
    assert (task.status, task.attempt) == ("completed", 1)
    assert (await client.get_run(run.id)).total_tasks == 1
    assert worker.stats.claimed == 1


async def test_unknown_type_fails_clearly(client: AsyncClient):
    run = await client.create_run({})
    task = await client.enqueue_task(run.id, type="no-such-type", input_data=1, max_retries=3)
    worker = make_worker(client, handlers={"noop": handlers.noop})
    await run_until(worker, run_finished(client, run.id, 1, timeout_s=10))
    failed = await client.get_task(task.id)
    assert (failed.status, failed.attempt) == ("failed", 1)  # no retry can help
    assert failed.error_data["type"] == "UnknownTaskType"
    assert "no-such-type" in failed.error_data["message"]


async def test_stop_releases_what_outlives_the_grace_period(client: AsyncClient):
    run = await client.create_run({})
    short = [await client.enqueue_task(run.id, type="nap", input_data=0.3) for _ in range(2)]
    long = [await client.enqueue_task(run.id, type="sync_nap", input_data=5) for _ in range(2)]
    worker = make_worker(client, concurrency=4, grace_s=1.0)
    runner = asyncio.create_task(worker.run())

    async def all_running() -> bool:
        tasks = await all_tasks(client, run.id)
        return sum(t.status == "running" for t in tasks) == 4

    await eventually(all_running, timeout_s=10, what="4 running tasks")
    started = time.monotonic()
    worker.stop()
    stats = await asyncio.wait_for(runner, 10)
    assert time.monotonic() - started < 3  # the grace period, not the 5 s handlers

    for task in short:
        assert (await client.get_task(task.id)).status == "completed"
    for task in long:
        released = await client.get_task(task.id)
        assert (released.status, released.attempt) == ("queued", 0)
    assert (stats.completed, stats.released) == (2, 2)


async def test_context_run_data_helpers(client: AsyncClient):
    async def writer(ctx: TaskContext) -> str:
        await ctx.set_data("greeting", {"text": ctx.input_data}, tags=["t"])
        return await ctx.get_data("greeting")

    def sync_reader(ctx: TaskContext) -> object:
        ctx.set_data_sync("count", 2)
        return {"greeting": ctx.get_data_sync("greeting"), "missing": ctx.get_data_sync("x", 0)}

    run = await client.create_run({})
    first = await client.enqueue_task(run.id, type="writer", input_data="hi")
    worker = make_worker(client, handlers={"writer": writer, "reader": sync_reader})
    await run_until(worker, run_finished(client, run.id, 1, timeout_s=10))
    second = await client.enqueue_task(run.id, type="reader", input_data=0)
    worker = make_worker(client, handlers={"writer": writer, "reader": sync_reader})
    await run_until(worker, run_finished(client, run.id, 2, timeout_s=10))

    assert (await client.get_task(first.id)).output_data == {"text": "hi"}
    read = await client.get_task(second.id)
    assert read.output_data == {"greeting": {"text": "hi"}, "missing": 0}
    stored = await client.query_run_data(run.id, key="count")
    assert stored.data[0].task_id == second.id


async def test_a_lost_lease_drops_the_result(client: AsyncClient):
    async def slow_first_attempt(ctx: TaskContext) -> object:
        if ctx.attempt == 1:
            # Renewed too late (heartbeat_s > lease_s): the sweeper takes the task back, the next
            # heartbeat reports the lease lost, and the handler sees ctx.cancelled.
            deadline = time.monotonic() + 10
            while not ctx.cancelled and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return "from a lost lease"
        return {"attempt": ctx.attempt}

    run = await client.create_run({})
    task = await client.enqueue_task(run.id, type="slow", input_data=1)
    worker = make_worker(
        client, handlers={"slow": slow_first_attempt}, lease_s=1.0, heartbeat_s=1.5
    )
    await run_until(worker, run_finished(client, run.id, 1, timeout_s=20))
    done = await client.get_task(task.id)
    assert (done.status, done.attempt, done.retry_count) == ("completed", 2, 1)
    assert done.output_data == {"attempt": 2}  # never the first attempt's result
    assert worker.stats.dropped == 1
    assert worker.stats.completed == 1


async def test_only_known_types_leaves_other_types_queued(pg_server, db_url):
    async with AsyncClient(pg_server.url, KEY_A) as client:
        run = await client.create_run({})
        mine = await client.enqueue_task(run.id, type="noop", input_data=1)
        theirs = await client.enqueue_task(run.id, type="someone-elses", input_data=1)
        worker = make_worker(client, handlers={"noop": handlers.noop}, only_known_types=True)
        stats = await asyncio.wait_for(worker.run(burst=True), 20)
        assert (await client.get_task(mine.id)).status == "completed"
        untouched = await client.get_task(theirs.id)
        assert (untouched.status, untouched.attempt) == ("queued", 0)
        assert stats.claimed == 1


async def test_a_heartbeat_racing_a_recorded_result_is_not_a_lost_lease(
    client: AsyncClient, caplog
):
    # Between the batch that records a result and the worker forgetting the lease, a heartbeat
    # finds the task no longer running: that is not a lost lease (it logged false warnings).
    run = await client.create_run({})
    done, lost = await client.enqueue_tasks([TaskSpec(run.id, "t", i) for i in range(2)])
    claimed = {t.id: t for t in await client.claim_tasks(worker_id="w", limit=2)}
    for task in claimed.values():
        assert task.lease_token is not None
        await client.complete_task(task.id, lease_token=task.lease_token)
    keeper = LeaseKeeper(client, lease_s=5, interval_s=60)
    reported = Held(claimed[done.id], AttemptState(), executing=False)
    running = Held(claimed[lost.id], AttemptState(), executing=True)
    keeper.add(reported)
    keeper.add(running)
    await keeper.beat()
    assert not reported.state.lease_lost
    assert running.state.lease_lost  # a handler still running did lose its lease
    lost_logs = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert lost_logs == [f"lease of task {lost.id} lost: its result will be dropped"]


async def test_a_worker_keeps_its_sources_takes_out_and_never_exceeds_its_slots(
    client: AsyncClient, server, monkeypatch
):
    """As many takes out at once as the source allows (postgres: two claims, each for its share
    of the slots; the brokers: one reader), and each task runs exactly once."""
    from foreman.worker._bullmq import BullMQSource
    from foreman.worker._postgres import PostgresSource
    from foreman.worker._rabbitmq import RabbitMQSource
    from foreman.worker._sqs import SqsSource

    sources = {"postgres": PostgresSource, "bullmq": BullMQSource, "rabbitmq": RabbitMQSource}
    source = sources.get(server.env["FOREMAN_QUEUE_BACKEND"], SqsSource)
    out = 0
    most_out = 0
    limits: list[int] = []
    take = source.take

    async def counting_take(self, limit: int, *, burst: bool):
        nonlocal out, most_out
        out += 1
        most_out = max(most_out, out)
        limits.append(limit)
        try:
            return await take(self, limit, burst=burst)
        finally:
            out -= 1

    monkeypatch.setattr(source, "take", counting_take)
    run = await client.create_run({})
    await client.enqueue_tasks([TaskSpec(run.id, "nap", 0.01) for _ in range(300)])
    worker = make_worker(client, concurrency=20)
    stats = await asyncio.wait_for(worker.run(burst=True), 30)
    finished = await run_finished(client, run.id, 300, timeout_s=10)
    assert (finished.completed_tasks, stats.claimed, stats.completed) == (300, 300, 300)
    assert most_out == source.takes_in_flight
    assert max(limits) <= 20 // source.takes_in_flight


async def test_worker_metrics_are_served_on_their_port(client: AsyncClient):
    run = await client.create_run({})
    await client.enqueue_tasks([TaskSpec(run.id, "noop", i) for i in range(5)])
    await client.enqueue_tasks([TaskSpec(run.id, "flaky", 5, max_retries=0)])
    metrics = WorkerMetrics()
    port = free_port()
    metrics.serve(port)
    stats = await asyncio.wait_for(make_worker(client, metrics=metrics).run(burst=True), 30)
    assert stats.completed == 5
    text = (await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics")).text
    assert 'foreman_worker_attempts_total{outcome="completed",type="noop"} 5.0' in text
    assert 'foreman_worker_attempts_total{outcome="failed",type="flaky"} 1.0' in text
    assert 'foreman_task_duration_seconds_count{type="noop"} 5.0' in text
    assert 'foreman_task_pickup_seconds_count{type="flaky"} 1.0' in text
    assert "foreman_worker_running_tasks 0.0" in text
