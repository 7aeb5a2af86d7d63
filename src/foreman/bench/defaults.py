"""The bench's fixed choices: concurrency, durations and sizes of a full and a quick run."""

from __future__ import annotations

from dataclasses import dataclass

# Any key in the fmn_<environment>_<org>_<random> format is accepted (SPEC section 3), even when
# the test key is disabled; the bench's rows live in their own organisation.
BENCH_API_KEY = "fmn_bench_bench_loadgen"
BENCH_ORG = "bench"


@dataclass(frozen=True, slots=True)
class Profile:
    """How long and how hard each figure is measured."""

    name: str
    concurrency: int = 32
    warmup_s: float = 5.0
    duration_s: float = 20.0
    lifecycle_runs: int = 200
    get_task_pool: int = 1000
    pg_insert_duration_s: float = 20.0
    scale_small_rows: int = 100_000
    scale_large_rows: int = 1_000_000
    scale_samples: int = 1000
    e2e_tasks: int = 20_000
    # moto_server's cost per call grows with its queue's length (its send and receive walk the
    # queue): the sqs figure keeps the backlog short, and measures moto more than Foreman.
    e2e_sqs_tasks: int = 2_000
    e2e_worker_processes: int = 1
    e2e_worker_concurrency: int = 200
    e2e_deadline_s: float = 180.0  # bounded: a slow backend yields a partial figure
    pickup_rate_per_s: float = 100.0
    pickup_duration_s: float = 20.0
    pickup_sqs_rate_per_s: float = 10.0  # one SendMessageBatch per task: moto's pace
    dag_fanin_tasks: int = 10_000  # parents of the one join (issue 13)
    dag_chain: int = 500  # links of the release-latency chain
    events_watchers: int = 10  # clients following the run's events in e2e_watched (issue 15)


FULL = Profile(name="full")
# Same figures and keys, shorter windows and a smaller scale set: well under 3 minutes.
QUICK = Profile(
    name="quick",
    warmup_s=2.0,
    duration_s=5.0,
    get_task_pool=500,
    pg_insert_duration_s=5.0,
    scale_small_rows=10_000,
    scale_large_rows=100_000,
    scale_samples=300,
    e2e_tasks=5_000,
    e2e_sqs_tasks=1_000,
    e2e_deadline_s=40.0,
    pickup_duration_s=5.0,
    dag_fanin_tasks=2_000,
    dag_chain=200,
)
