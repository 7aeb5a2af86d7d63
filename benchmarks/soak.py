"""Soak: Foreman at a moderate steady rate for minutes, watching for leaks (issue 5).

    python benchmarks/soak.py --minutes 10

Everything it uses is its own and on loopback: a PostgreSQL cluster in a temp folder (pgserver,
unless --admin-url names another loopback server), `foreman server` and `foreman worker`
processes (postgres backend). The load: ``rate`` tasks/s enqueued through the SDK
(``AsyncClient.enqueue_tasks``, batches of ``batch``) and run by the workers (a no-op handler),
plus ``read_rate`` API reads/s (get run, get task, list tasks). Every ``sample_s`` it records the
RSS of the server and worker processes, the PostgreSQL connections of the soak database
(pg_stat_activity), live and dead tuples of ``task`` and ``run_counter`` and the backlog. At the
end every task must be completed and no request may have failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from foreman import errors
from foreman.bench import e2e, services, sysinfo
from foreman.bench.defaults import BENCH_API_KEY, BENCH_ORG
from foreman.bench.handlers import NOOP
from foreman.bench.stats import percentile
from foreman.client import AsyncClient, TaskSpec
from foreman.logs import configure_logging

logger = logging.getLogger(__name__)

SOAK_DATABASE = "foreman_soak"
TICK_S = 0.1
MAX_IN_FLIGHT = 64  # beyond this the schedule is skipped (and counted), never piled up
TASKS_PER_RUN = 1000
DRAIN_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """How long, how hard, and with how many processes."""

    minutes: float = 10.0
    rate: float = 150.0  # tasks/s through the SDK and the workers
    read_rate: float = 50.0  # API reads/s
    batch: int = 10  # tasks per enqueue request
    sample_s: float = 30.0
    server_workers: int = 1
    worker_processes: int = 1
    worker_concurrency: int = 50
    pool_max: int = 10  # FOREMAN_DB_POOL_MAX of each server process
    admin_url: str | None = None  # a loopback PostgreSQL to use instead of a private one


@dataclass(slots=True)
class LoadFigures:
    """What the load generator sent and how it was answered."""

    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    tasks_enqueued: int = 0
    reads: int = 0
    skipped: int = 0  # scheduled requests dropped because MAX_IN_FLIGHT were pending
    latencies_s: list[float] = field(default_factory=list)

    def record_error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{what}: {type(exc).__name__}: {exc}")


class SteadyLoad:
    """Enqueues and reads at fixed rates, on a schedule that never piles up."""

    def __init__(self, client: AsyncClient, options: SoakOptions) -> None:
        self.client = client
        self.options = options
        self.figures = LoadFigures()
        self._run_id: str | None = None
        self._run_tasks = 0
        self._run_lock = asyncio.Lock()
        self._recent: list[str] = []
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self, *, duration_s: float) -> None:
        """Send the load for duration_s, then wait for the requests still in flight."""
        began = time.monotonic()
        due_batches = due_reads = 0.0
        for tick in range(int(duration_s / TICK_S)):
            await asyncio.sleep(max(0.0, began + tick * TICK_S - time.monotonic()))
            due_batches += self.options.rate * TICK_S / self.options.batch
            due_reads += self.options.read_rate * TICK_S
            while due_batches >= 1:
                due_batches -= 1
                self._spawn(self._enqueue())
            while due_reads >= 1:
                due_reads -= 1
                self._spawn(self._read())
        if self._pending:
            await asyncio.gather(*self._pending)

    def _spawn(self, request: Any) -> None:
        if len(self._pending) >= MAX_IN_FLIGHT:
            request.close()  # never started: the coroutine is discarded
            self.figures.skipped += 1
            return
        task = asyncio.ensure_future(request)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _timed(self, what: str, call: Any) -> Any:
        self.figures.requests += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await call
        except (errors.ForemanError, TimeoutError) as exc:
            self.figures.record_error(what, exc)
            return None
        finally:
            self.figures.latencies_s.append(time.monotonic() - started)

    async def _current_run(self) -> str | None:
        async with self._run_lock:
            if self._run_id is None or self._run_tasks >= TASKS_PER_RUN:
                run = await self._timed("create_run", self.client.create_run({"soak": True}))
                if run is None:
                    return None
                self._run_id, self._run_tasks = run.id, 0
            self._run_tasks += self.options.batch
            return self._run_id

    async def _enqueue(self) -> None:
        run_id = await self._current_run()
        if run_id is None:
            return
        specs = [TaskSpec(run_id, NOOP, {"i": i}) for i in range(self.options.batch)]
        tasks = await self._timed("enqueue_tasks", self.client.enqueue_tasks(specs))
        if tasks:
            self.figures.tasks_enqueued += len(tasks)
            self._recent = [*self._recent[-(TASKS_PER_RUN - len(tasks)) :], *(t.id for t in tasks)]

    async def _read(self) -> None:
        index = self.figures.reads
        self.figures.reads += 1
        if self._run_id is None or not self._recent:
            return
        kind = index % 3
        if kind == 0:
            await self._timed("get_run", self.client.get_run(self._run_id))
        elif kind == 1:
            task_id = self._recent[index % len(self._recent)]
            await self._timed("get_task", self.client.get_task(task_id))
        else:
            await self._timed("list_tasks", self.client.list_tasks(run_id=self._run_id, limit=20))


# ---------------------------------------------------------------- samples

_CONNECTIONS = """
SELECT coalesce(application_name, ''), count(*)
  FROM pg_stat_activity
 WHERE datname = $1 AND pid <> pg_backend_pid()
 GROUP BY 1
"""
_TABLES = """
SELECT relname, n_live_tup, n_dead_tup, autovacuum_count
  FROM pg_stat_user_tables
 WHERE relname IN ('task', 'run_counter')
"""
_TASK_STATES = "SELECT status, count(*) FROM task WHERE org_id = $1 GROUP BY status"


async def _counts(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, int]:
    """{name: count} from a query of (name, count) rows."""
    return {str(row[0]): int(row[1]) for row in await conn.fetch(sql, *args)}


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, MiB (0 if gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return round(total / MIB, 1)


@dataclass(frozen=True, slots=True)
class Pids:
    """The processes whose memory is watched."""

    server: int
    workers: list[int]


async def take_sample(conn: asyncpg.Connection, pids: Pids, *, began: float) -> dict[str, Any]:
    """One row of the soak's time series."""
    connections = await _counts(conn, _CONNECTIONS, SOAK_DATABASE)
    tables = {
        r["relname"]: {
            "live": r["n_live_tup"],
            "dead": r["n_dead_tup"],
            "autovacuums": r["autovacuum_count"],
        }
        for r in await conn.fetch(_TABLES)
    }
    states = await _counts(conn, _TASK_STATES, BENCH_ORG)
    return {
        "t_s": round(time.monotonic() - began, 1),
        "server_rss_mib": _tree_rss_mib(pids.server),
        "worker_rss_mib": [_tree_rss_mib(pid) for pid in pids.workers],
        "connections": connections,
        "tables": tables,
        "tasks": states,
    }


async def _sampler(
    conn: asyncpg.Connection,
    pids: Pids,
    samples: list[dict[str, Any]],
    *,
    began: float,
    every_s: float,
) -> None:
    while True:
        await asyncio.sleep(every_s - (time.monotonic() - began) % every_s)
        samples.append(await take_sample(conn, pids, began=began))
        _log_sample(samples[-1])


def _log_sample(sample: dict[str, Any]) -> None:
    tables = sample["tables"]
    logger.info(
        "t=%ss server %s MiB, workers %s MiB, connections %s, dead tuples task %s run_counter %s, "
        "tasks %s",
        sample["t_s"],
        sample["server_rss_mib"],
        sample["worker_rss_mib"],
        sum(sample["connections"].values()),
        tables.get("task", {}).get("dead"),
        tables.get("run_counter", {}).get("dead"),
        sample["tasks"],
    )


# ---------------------------------------------------------------- the run


@contextlib.asynccontextmanager
async def private_postgres(options: SoakOptions) -> AsyncIterator[str]:
    """A superuser URL of the PostgreSQL to use: --admin-url, else a cluster in a temp folder."""
    if options.admin_url is not None:
        if not services.is_loopback_host(services.url_host(options.admin_url)):
            raise errors.ClientError("the soak only loads a PostgreSQL on this machine")
        yield options.admin_url
        return
    root = Path(tempfile.mkdtemp(prefix="foreman-soak-"))
    stack = contextlib.ExitStack()  # pgserver blocks: started and stopped in a thread
    try:
        yield await asyncio.to_thread(stack.enter_context, services.embedded_postgres(root))
    finally:
        await asyncio.to_thread(stack.close)
        shutil.rmtree(root, ignore_errors=True)


async def _wait_drained(conn: asyncpg.Connection, enqueued: int) -> dict[str, int]:
    """Task states once every enqueued task is finished (or after DRAIN_TIMEOUT_S)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        states = await _counts(conn, _TASK_STATES, BENCH_ORG)
        finished = sum(states.get(s, 0) for s in ("completed", "failed", "cancelled"))
        if finished >= enqueued or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.5)


async def run_soak(options: SoakOptions) -> dict[str, Any]:
    """Start everything, load it for options.minutes, and return the report."""
    samples: list[dict[str, Any]] = []
    began = time.monotonic()
    async with private_postgres(options) as admin_url:
        database = services.BenchDatabase(admin_url=admin_url, source="soak")
        url = await services.fresh_bench_database(database, SOAK_DATABASE)
        env = {"FOREMAN_DB_POOL_MAX": str(options.pool_max), "FOREMAN_QUEUE_BACKEND": "postgres"}
        workers = e2e.Workers(options.worker_processes, options.worker_concurrency)
        conn = await asyncpg.connect(url, server_settings={"application_name": "foreman-soak"})
        try:
            async with (
                services.run_server(
                    url, workers=options.server_workers, log_level="WARNING", env=env
                ) as server,
                e2e.run_workers(
                    e2e.Fleet(server.endpoint, BENCH_API_KEY, "postgres", workers)
                ) as processes,
                AsyncClient(server.endpoint, BENCH_API_KEY, retries=0) as client,
            ):
                pids = Pids(server.process.pid, [p.pid for p in processes])
                load_began = time.monotonic()
                samples.append(await take_sample(conn, pids, began=load_began))
                sampler = asyncio.create_task(
                    _sampler(conn, pids, samples, began=load_began, every_s=options.sample_s)
                )
                load = SteadyLoad(client, options)
                try:
                    await load.run(duration_s=options.minutes * 60)
                    states = await _wait_drained(conn, load.figures.tasks_enqueued)
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                samples.append(await take_sample(conn, pids, began=load_began))
                alive = all(p.poll() is None for p in processes) and server.process.poll() is None
        finally:
            await conn.close()
        await services.drop_database(admin_url, SOAK_DATABASE)
    return report(
        options, load.figures, samples, states, alive=alive, elapsed_s=time.monotonic() - began
    )


# ---------------------------------------------------------------- the report


def _series(samples: list[dict[str, Any]], pick: Any) -> dict[str, Any]:
    values = [pick(s) for s in samples]
    # "warm": the first sample after a tenth of the run, once caches and pools have filled.
    warm = values[min(len(values) - 1, max(1, len(values) // 10))]
    return {"start": values[0], "warm": warm, "end": values[-1], "max": max(values)}


def report(
    options: SoakOptions,
    load: LoadFigures,
    samples: list[dict[str, Any]],
    states: dict[str, int],
    *,
    alive: bool,
    elapsed_s: float,
) -> dict[str, Any]:
    """The soak's figures and verdicts."""
    latencies = sorted(load.latencies_s)
    bound = options.server_workers * (options.pool_max + 1)  # request pool + sweeper, per process
    summary = {
        "server_rss_mib": _series(samples, lambda s: s["server_rss_mib"]),
        "worker_rss_mib": _series(samples, lambda s: sum(s["worker_rss_mib"])),
        "pool_connections": _series(samples, lambda s: s["connections"].get("foreman", 0)),
        "all_connections": _series(samples, lambda s: sum(s["connections"].values())),
        "pool_connection_bound": bound,
        **{
            f"{table}_dead_tuples": _series(samples, lambda s, t=table: s["tables"][t]["dead"])
            for table in ("task", "run_counter")
        },
        **{
            f"{table}_autovacuums": samples[-1]["tables"][table]["autovacuums"]
            for table in ("task", "run_counter")
        },
        "task_live_tuples_end": samples[-1]["tables"]["task"]["live"],
    }
    completed = states.get("completed", 0)
    figures = {
        **{k: v for k, v in asdict(load).items() if k != "latencies_s"},
        "tasks_completed": completed,
        "lost": load.tasks_enqueued - completed,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "achieved_tasks_per_s": round(load.tasks_enqueued / (options.minutes * 60), 1),
    }
    verdicts = {
        "no_errors": load.errors == 0,
        "nothing_lost": figures["lost"] == 0 and states.keys() <= {"completed"},
        "connections_bounded": summary["pool_connections"]["max"] <= bound,
        "processes_alive": alive,
    }
    return {
        "options": asdict(options),
        "machine": sysinfo.machine(),
        "note": "load generator, server, workers and PostgreSQL share this machine (loopback)",
        "elapsed_s": round(elapsed_s, 1),
        "load": figures,
        "summary": summary,
        "verdicts": verdicts,
        "samples": samples,
    }


def format_summary(result: dict[str, Any]) -> str:
    """A few readable lines of the report."""
    load, summary = result["load"], result["summary"]
    lines = [
        f"soak {result['options']['minutes']:g} min: {load['tasks_enqueued']} tasks enqueued "
        f"({load['achieved_tasks_per_s']}/s), {load['tasks_completed']} completed, lost "
        f"{load['lost']}; {load['requests']} requests ({load['reads']} reads), errors "
        f"{load['errors']}, skipped {load['skipped']}; p50 {load['p50_ms']} ms, p99 "
        f"{load['p99_ms']} ms",
    ]
    for key in ("server_rss_mib", "worker_rss_mib", "pool_connections", "all_connections"):
        series = summary[key]
        lines.append(
            f"{key}: start {series['start']}, warm {series['warm']}, end {series['end']}, "
            f"max {series['max']}"
        )
    lines.append(f"pool connection bound: {summary['pool_connection_bound']}")
    for table in ("task", "run_counter"):
        series = summary[f"{table}_dead_tuples"]
        lines.append(
            f"{table} dead tuples: start {series['start']}, end {series['end']}, max "
            f"{series['max']}; autovacuum runs {summary[f'{table}_autovacuums']}"
        )
    lines.append("verdicts: " + ", ".join(f"{k}={v}" for k, v in result["verdicts"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: python benchmarks/soak.py --minutes 10."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = SoakOptions()
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="tasks/s")
    parser.add_argument("--read-rate", type=float, default=defaults.read_rate, help="reads/s")
    parser.add_argument("--sample", type=float, default=defaults.sample_s, help="seconds")
    parser.add_argument("--server-workers", type=int, default=defaults.server_workers)
    parser.add_argument("--worker-processes", type=int, default=defaults.worker_processes)
    parser.add_argument("--worker-concurrency", type=int, default=defaults.worker_concurrency)
    parser.add_argument("--pool-max", type=int, default=defaults.pool_max)
    parser.add_argument(
        "--admin-url", help="superuser URL of a loopback PostgreSQL (default: a private one)"
    )
    parser.add_argument("--json", type=Path, default=Path(".foreman/soak-report.json"))
    args = parser.parse_args(argv)
    options = SoakOptions(
        minutes=args.minutes,
        rate=args.rate,
        read_rate=args.read_rate,
        sample_s=args.sample,
        server_workers=args.server_workers,
        worker_processes=args.worker_processes,
        worker_concurrency=args.worker_concurrency,
        pool_max=args.pool_max,
        admin_url=args.admin_url,
    )
    configure_logging("INFO")
    try:
        import uvloop  # not on Windows
    except ImportError:
        result = asyncio.run(run_soak(options))
    else:
        result = uvloop.run(run_soak(options))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(format_summary(result) + f"\nwrote {args.json}\n")
    if not all(result["verdicts"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
