"""End-to-end throughput and pickup latency through the SDK (SPEC sections 7-8).

TODO(issue 4): implement once `foreman.client` (AsyncClient.enqueue_tasks) and `foreman.worker`
(Worker, run(burst=True)) exist; they are being written now (issue 3). Until then these raise
NotImplementedError and the report shows the figures as not measured - never invented numbers.

Plan, so the keys stay stable:
- e2e_{backend}_tasks_per_s: a fresh run, `tasks` no-op tasks enqueued in batches of 500 through
  AsyncClient.enqueue_tasks with the server's queue backend set to `backend`, executed by
  Worker processes (one per core, high concurrency) until every task is `completed`; tasks/s
  from the first enqueue to the last completion (checked with the run's completedTasks).
- pickup_p50_ms / pickup_p99_ms: tasks enqueued one at a time at a steady `rate_per_s` with
  the enqueue time in inputData; the handler records handler-start minus enqueue time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class E2eFigure:
    """Tasks/s from first enqueue to last completion."""

    backend: str
    tasks: int
    elapsed_s: float
    tasks_per_s: float


@dataclass(frozen=True, slots=True)
class PickupFigure:
    """Enqueue-to-handler-start latency at a steady rate."""

    backend: str
    rate_per_s: float
    samples: int
    p50_ms: float
    p99_ms: float


def _sdk_missing(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{what}: not implemented yet - needs foreman.client and foreman.worker (issue 3)"
    )


async def measure_e2e(endpoint: str, *, backend: str, tasks: int, api_key: str) -> E2eFigure:
    """TODO(issue 4): end-to-end tasks/s for backend through the SDK and its workers."""
    raise _sdk_missing(f"e2e {backend}")


async def measure_pickup(
    endpoint: str, *, backend: str, rate_per_s: float, duration_s: float, api_key: str
) -> PickupFigure:
    """TODO(issue 4): pickup latency p50/p99 at a steady enqueue rate."""
    raise _sdk_missing(f"pickup {backend}")
