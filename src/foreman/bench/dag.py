"""Workflow figures (issue 13) through the SDK and `foreman worker` processes, postgres backend.

- e2e_dag_fanin_tasks_per_s: one run, `tasks` independent no-op tasks plus one join task that
  depends on all of them; tasks/s from the first enqueue until the run counts every task (join
  included) completed. The join must have run exactly once (one attempt, completed). Compared with
  e2e_postgres_tasks_per_s of the same bench run (dag_fanin_ratio): a fan-in whose open-parent
  counter were one hot row would serialise every worker's completions on it.
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
    completed: int
    elapsed_s: float
    join_attempts: int
    join_status: str

    @property
    def tasks_per_s(self) -> float:
        return self.completed / self.elapsed_s


async def measure_fanin(fleet: e2e.Fleet, *, tasks: int, deadline_s: float) -> FaninFigure:
    """Enqueue the parents in batches and the join after them; tasks/s until all completed."""
    async with (
        AsyncClient(fleet.endpoint, fleet.api_key, timeout=120.0) as client,
        e2e.run_workers(fleet) as processes,
    ):
        # Not autoComplete: the workers may finish every parent before the join is added.
        run = await client.create_run({"bench": "dag_fanin"})
        await asyncio.sleep(1.0)  # let the workers connect and start polling
        began = time.perf_counter()
        parents: list[str] = []
        for start in range(0, tasks, e2e.ENQUEUE_BATCH):
            batch = [
                TaskSpec(run.id, NOOP, {"i": i})
                for i in range(start, min(start + e2e.ENQUEUE_BATCH, tasks))
            ]
            parents += await client.enqueue_task_ids(batch)
        join = await client.enqueue_task(run.id, type=JOIN, input_data={}, depends_on=parents)
        total = tasks + 1
        finished, completed = await e2e.wait_completed(
            client, run.id, total, deadline=began + deadline_s, workers=processes
        )
        joined = await client.get_task(join.id)
    return FaninFigure(tasks, completed, finished - began, joined.attempt, joined.status)


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
