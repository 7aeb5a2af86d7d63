"""Workflow figures (issue 13) through the SDK and `foreman worker` processes, postgres backend.

- e2e_dag_fanin_tasks_per_s: one run, `tasks` independent no-op tasks plus one join task that
  depends on all of them, queued before the workers start (so that every parent completes while
  the join waits on it); tasks/s from the first completion until the run counts every task (join
  included) completed. The join must have run exactly once (one attempt, completed). Compared with
  drain_postgres_tasks_per_s, the same window without a join (dag_fanin_ratio), and with
  e2e_postgres_tasks_per_s (dag_fanin_e2e_ratio): a fan-in whose open-parent counter were one hot
  row would serialise every worker's completions on it.
- dag_release_p50_ms / _p99_ms: a chain of `chain` tasks, each depending on the one before; for
  each link, the child's startedAt (its claim) minus the parent's completedAt (the statement that
  acknowledged the parent's completion and released the child), both server clock in ms: release
  plus the claimer's wake-up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from foreman import Task
from foreman.bench import e2e
from foreman.bench.handlers import NOOP
from foreman.bench.stats import percentile
from foreman.client import AsyncClient, TaskSpec

JOIN = NOOP  # the join is a no-op too: the figure is the engine's cost


@dataclass(frozen=True, slots=True)
class FaninFigure:
    """Tasks/s of a fan-out of `tasks` no-op tasks and one join depending on all of them."""

    tasks: int
    completed: int  # of tasks + 1 (the join)
    in_window: int  # completed from the first completion on (the figure's window)
    elapsed_s: float
    join_attempts: int
    join_status: str

    @property
    def tasks_per_s(self) -> float:
        return self.in_window / self.elapsed_s


async def measure_fanin(fleet: e2e.Fleet, *, tasks: int, deadline_s: float) -> FaninFigure:
    """Queue the parents and the join, then start the workers; tasks/s from the first completion
    to the join's (as drain_postgres: every parent completes while the join's edges are live)."""
    async with AsyncClient(fleet.endpoint, fleet.api_key, timeout=120.0) as client:
        run = await client.create_run({"bench": "dag_fanin"})
        parents: list[str] = []
        for start in range(0, tasks, e2e.ENQUEUE_BATCH):
            batch = [
                TaskSpec(run.id, NOOP, {"i": i})
                for i in range(start, min(start + e2e.ENQUEUE_BATCH, tasks))
            ]
            parents += await client.enqueue_task_ids(batch)
        join = await client.enqueue_task(run.id, type=JOIN, input_data={}, depends_on=parents)
        total = tasks + 1
        async with e2e.run_workers(fleet) as processes:
            deadline = time.perf_counter() + deadline_s
            first, before = await e2e.first_completion(client, run.id, deadline, processes)
            finished, completed = await e2e.wait_completed(
                client, run.id, total, deadline=deadline, workers=processes
            )
        joined = await client.get_task(join.id)
    elapsed = max(finished - first, 1e-9)
    return FaninFigure(tasks, completed, completed - before, elapsed, joined.attempt, joined.status)


@dataclass(frozen=True, slots=True)
class ReleaseFigure:
    """Parent completion to child claim along a chain, ms."""

    links: int
    p50_ms: float
    p99_ms: float


async def measure_release(fleet: e2e.Fleet, *, chain: int, deadline_s: float) -> ReleaseFigure:
    """A chain of `chain` no-op tasks made in one call (refs); the delay of each release."""
    async with (
        AsyncClient(fleet.endpoint, fleet.api_key, timeout=60.0) as client,
        e2e.run_workers(fleet) as processes,
    ):
        run = await client.create_run({"bench": "dag_release"}, auto_complete=True)
        await asyncio.sleep(1.0)
        specs = [
            TaskSpec(run.id, NOOP, {"i": i}, ref=f"l{i}", depends_on=[f"l{i - 1}"] if i else None)
            for i in range(chain)
        ]
        created = await client.enqueue_tasks(specs)
        deadline = time.perf_counter() + deadline_s
        await e2e.wait_completed(client, run.id, chain, deadline=deadline, workers=processes)
        by_id = {t.id: t for t in await _tasks_of(client, run.id)}
    ordered = [by_id[t.id] for t in created]
    delays = sorted(
        float(child.started_at - parent.completed_at)
        for parent, child in itertools.pairwise(ordered)
        if child.started_at is not None and parent.completed_at is not None
    )
    return ReleaseFigure(len(delays), percentile(delays, 0.5), percentile(delays, 0.99))


async def _tasks_of(client: AsyncClient, run_id: str) -> list[Task]:
    found: list[Task] = []
    while True:
        page = await client.list_tasks(run_id=run_id, limit=100, offset=len(found))
        found += page.data
        if not page.data or len(found) >= page.pagination.total:
            return found
