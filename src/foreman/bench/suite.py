"""One `foreman bench` run: start what it measures, measure each figure, collect one report."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from foreman.bench import (
    api,
    brokers,
    dag,
    e2e,
    largebody,
    pginsert,
    scale,
    scaledata,
    services,
    sysinfo,
)
from foreman.bench.defaults import BENCH_API_KEY, Profile
from foreman.bench.http import open_http
from foreman.bench.loadgen import LoadResult
from foreman.bench.report import SCALE_QUERIES
from foreman.bench.stats import percentile, ratio
from foreman.client import AsyncClient
from foreman.settings import Settings

logger = logging.getLogger(__name__)

API_FIGURES = (
    "api_post_runs",
    "api_get_task",
    "api_lifecycle",
    "api_lifecycle_one_run",
    "api_large_body",
)
BACKENDS = ("postgres", "bullmq", "rabbitmq", "sqs")
E2E_FIGURES = (
    "e2e_postgres", "e2e_watched", "drain_postgres", "api_batch_enqueue", "dag_fanin",
    "dag_release", "e2e_bullmq", "e2e_rabbitmq", "e2e_sqs", "pickup",
)  # fmt: skip
FIGURES = (*API_FIGURES, "pg_insert", "scale", *E2E_FIGURES)
GROUPS = {"api": API_FIGURES, "e2e": E2E_FIGURES}

# The headline key of each load figure, and the stem of its latency keys.
_HEADLINE = {
    "api_post_runs": "api_post_runs_rps",
    "api_get_task": "api_get_task_rps",
    "api_lifecycle": "api_lifecycle_per_s",
    "api_lifecycle_one_run": "api_lifecycle_one_run_per_s",
    "pg_insert": "pg_insert_commits_per_s",
}
ALL_KEYS = (
    *_HEADLINE.values(),
    "api_large_body_ms",
    "api_large_body_peak_rss_mb",
    "e2e_postgres_tasks_per_s",
    "cpu_us_per_task",
    "drain_postgres_tasks_per_s",
    "api_batch_enqueue_tasks_per_s",
    "e2e_bullmq_tasks_per_s",
    "e2e_bullmq_cpu_us_per_task",
    "pickup_p50_ms",
    "pickup_p99_ms",
    "pickup_bullmq_p50_ms",
    "pickup_bullmq_p99_ms",
    "e2e_rabbitmq_tasks_per_s",
    "pickup_rabbitmq_p50_ms",
    "pickup_rabbitmq_p99_ms",
    "e2e_sqs_tasks_per_s",
    "e2e_sqs_calls_per_task",
    "pickup_sqs_p50_ms",
    "pickup_sqs_p99_ms",
    "e2e_dag_fanin_tasks_per_s",
    "dag_fanin_ratio",
    "dag_fanin_e2e_ratio",
    "dag_release_p50_ms",
    "dag_release_p99_ms",
    "e2e_watched_tasks_per_s",
    "e2e_watched_ratio",
    "events_p50_ms",
    "events_p99_ms",
)


def parse_only(text: str | None) -> tuple[str, ...]:
    """The figures named in --only (names or the groups api, e2e); every figure when empty."""
    if not text:
        return FIGURES
    chosen: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        members = GROUPS.get(name, (name,))
        unknown = [m for m in members if m not in FIGURES]
        if unknown:
            raise ValueError(
                f"unknown figure {name!r}; choose from {', '.join((*FIGURES, *GROUPS))}"
            )
        chosen.extend(m for m in members if m not in chosen)
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What the command line asked for."""

    profile: Profile
    figures: tuple[str, ...]
    endpoint: str | None = None
    api_key: str = BENCH_API_KEY
    server_workers: int = 1
    server_log_level: str | None = None
    reuse_scale_db: bool = False


@dataclass(slots=True)
class Report:
    """Flat figures (the JSON keys), metadata, per-figure details and notes."""

    results: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {**self.results, "meta": self.meta, "details": self.details, "notes": self.notes}

    def add_load(self, figure: str, result: LoadResult) -> None:
        """A load figure's headline, latency keys, and its CPU use and errors as details."""
        self.results[_HEADLINE[figure]] = round(result.summary.per_s, 1)
        stem = "pg_insert" if figure == "pg_insert" else figure
        self.results.update(result.summary.as_dict(stem))
        self.details[figure] = {
            "concurrency": result.concurrency,
            "warmup_s": result.warmup_s,
            "duration_s": result.summary.duration_s,
            "cpu": result.cpu,
            "cpu_us_per_op": result.cpu_us_per_op(),
            "error_samples": result.error_samples,
        }
        server_us = result.cpu_us_per_op().get("server")
        if server_us is not None:
            self.results[f"{stem}_server_cpu_us"] = server_us


async def _figure(report: Report, name: str, measure: Callable[[], Awaitable[None]]) -> None:
    """Measure one figure; a figure that cannot be measured is noted, and the others go on."""
    began = time.perf_counter()
    logger.info("measuring %s", name)
    try:
        await measure()
    except NotImplementedError as exc:
        report.notes[name] = str(exc)
    except Exception as exc:
        logger.exception("figure %s failed", name)
        report.notes[name] = f"failed: {type(exc).__name__}: {exc}"
    report.details.setdefault(name, {})["elapsed_s"] = round(time.perf_counter() - began, 1)


async def _settle(database_url: str | None) -> None:
    if database_url is not None:  # only the bench's own database
        await services.settle(database_url)


async def _api_figures(
    report: Report,
    options: BenchOptions,
    endpoint: str,
    probe: sysinfo.CpuProbe,
    database_url: str | None,
) -> None:
    profile = options.profile
    async with open_http(
        endpoint, connections=profile.concurrency, api_key=options.api_key
    ) as http:
        for name in API_FIGURES:
            if name not in options.figures:
                continue

            async def measure(name: str = name) -> None:
                await _settle(database_url)
                if name == "api_large_body":  # one request per shape, not a load
                    figures = await largebody.measure_large_bodies(http, probe.server_pids)
                    report.results.update(figures)
                    return
                report.add_load(name, await api.measure_figure(http, name, profile, probe))

            await _figure(report, name, measure)
    spread = report.results.get("api_lifecycle_per_s")
    one = report.results.get("api_lifecycle_one_run_per_s")
    if spread is not None and one is not None:
        report.results["api_lifecycle_one_run_ratio"] = round(ratio(one, spread) or 0.0, 3)


async def _e2e_figures(
    report: Report, options: BenchOptions, database_url: str | None, settings: Settings
) -> None:
    """Each backend through its own server (FOREMAN_QUEUE_BACKEND) and worker processes."""
    for backend in BACKENDS:
        own: tuple[str, ...] = (f"e2e_{backend}", "pickup")
        if backend == "postgres":
            own = (
                f"e2e_{backend}",
                "e2e_watched",
                "drain_postgres",
                "api_batch_enqueue",
                "dag_fanin",
                "dag_release",
                "pickup",
            )
        figures = [f for f in own if f in options.figures]
        if not figures:
            continue
        try:
            await _backend_figures(report, options, database_url, settings, backend, figures)
        except NotImplementedError as exc:  # a broker's package or server is not installed
            for figure in figures:
                report.notes[_figure_name(figure, backend)] = str(exc)


def _figure_name(figure: str, backend: str) -> str:
    return f"{figure}_{backend}" if figure == "pickup" else figure


async def _backend_figures(
    report: Report,
    options: BenchOptions,
    database_url: str | None,
    settings: Settings,
    backend: str,
    figures: list[str],
) -> None:
    queue = f"foreman-bench-{os.getpid()}"  # colon-free (BullMQ), ours alone on a shared broker
    env = {
        "FOREMAN_QUEUE_BACKEND": backend,
        "TASK_QUEUE_NAME": queue,
        "RESULT_QUEUE_NAME": f"{queue}-results",
    }
    async with _broker(backend, settings) as (broker_env, counter):
        try:
            async with _server(options, database_url, env=env | broker_env) as (endpoint, pids):
                for figure in figures:
                    await _settle(database_url)
                    measure = _e2e_measure(report, options, endpoint, backend, figure,
                                           broker_env, counter, pids)  # fmt: skip
                    await _figure(report, _figure_name(figure, backend), measure)
                if backend == "rabbitmq" and options.endpoint is None:
                    await _delete_rabbitmq_queues(options, endpoint, settings)
        finally:
            if backend == "bullmq" and options.endpoint is None:
                with contextlib.suppress(Exception):
                    await e2e.delete_bullmq_queue(_redis_url(settings), queue)


@contextlib.asynccontextmanager
async def _broker(
    backend: str, settings: Settings
) -> AsyncIterator[tuple[dict[str, str], brokers.SqsCallCounter | None]]:
    """The variables the server and workers of backend need, and the SQS call counter."""
    if backend == "rabbitmq":
        yield {"FOREMAN_RABBITMQ_URL": settings.rabbitmq_url}, None
    elif backend == "sqs":
        async with (
            brokers.local_sqs() as upstream,
            brokers.SqsCallCounter(upstream).serving() as counter,
        ):
            yield {"FOREMAN_SQS_ENDPOINT_URL": counter.url, **brokers.LOCAL_AWS_ENV}, counter
    else:
        yield {}, None


async def _delete_rabbitmq_queues(options: BenchOptions, endpoint: str, settings: Settings) -> None:
    """Remove the bench organisation's queue, named by the server, from the shared RabbitMQ."""
    with contextlib.suppress(Exception):
        async with AsyncClient(endpoint, options.api_key) as client:
            name = (await client.get_config()).queue.task_queue
        if name:
            await brokers.delete_rabbitmq_queues(settings.rabbitmq_url, [name])


def _redis_url(settings: Settings) -> str:
    password = f":{settings.redis_password}@" if settings.redis_password else ""
    return f"redis://{password}{settings.redis_host}:{settings.redis_port}/{settings.redis_db or 0}"


def _e2e_measure(
    report: Report,
    options: BenchOptions,
    endpoint: str,
    backend: str,
    figure: str,
    env: dict[str, str],
    counter: brokers.SqsCallCounter | None,
    server_pids: list[int],
) -> Callable[[], Awaitable[None]]:
    profile = options.profile
    workers = e2e.Workers(profile.e2e_worker_processes, profile.e2e_worker_concurrency)
    fleet = e2e.Fleet(
        endpoint, options.api_key, backend, workers,
        server_pids=tuple(server_pids),
        # Our own server: its backends are on foreman_bench, so their CPU can be told apart.
        database=services.BENCH_DATABASE if server_pids else None,
        env=tuple(env.items()),
    )  # fmt: skip

    async def measure() -> None:
        before = counter.snapshot() if counter is not None else None
        if figure == "pickup":
            tasks = await _pickup_figure(report, fleet, profile)
        elif figure == "api_batch_enqueue":
            tasks = await _batch_enqueue_figure(report, fleet, profile)
        elif figure == "dag_fanin":
            tasks = await _fanin_figure(report, fleet, profile)
        elif figure == "dag_release":
            tasks = await _release_figure(report, fleet, profile)
        elif figure == "e2e_watched":
            tasks = await _watched_figure(report, fleet, profile)
        else:
            tasks = await _throughput_figure(report, fleet, profile, figure)
        if counter is not None and before is not None:
            _count_calls(report, _figure_name(figure, backend), counter.snapshot() - before, tasks)

    return measure


async def _fanin_figure(report: Report, fleet: e2e.Fleet, profile: Profile) -> int:
    fanin = await dag.measure_fanin(
        fleet, tasks=profile.dag_fanin_tasks, deadline_s=profile.e2e_deadline_s
    )
    if fanin.completed < fanin.tasks + 1:
        report.notes["dag_fanin"] = (
            f"partial: {fanin.completed} of {fanin.tasks + 1} tasks completed within "
            f"{profile.e2e_deadline_s:g} s"
        )
    if (fanin.join_status, fanin.join_attempts) != ("completed", 1):
        report.notes["dag_fanin_join"] = (
            f"the join ended {fanin.join_status} after {fanin.join_attempts} attempt(s)"
        )
    report.results["e2e_dag_fanin_tasks_per_s"] = round(fanin.tasks_per_s, 1)
    drain = report.results.get("drain_postgres_tasks_per_s")
    if drain:
        report.results["dag_fanin_ratio"] = round(fanin.tasks_per_s / drain, 3)
    plain = report.results.get("e2e_postgres_tasks_per_s")
    if plain:
        report.results["dag_fanin_e2e_ratio"] = round(fanin.tasks_per_s / plain, 3)
    report.details["dag_fanin"] = {
        "parents": fanin.tasks,
        "elapsed_s": round(fanin.elapsed_s, 2),
        "join_attempts": fanin.join_attempts,
        "join_status": fanin.join_status,
        "worker_processes": fleet.workers.processes,
        "worker_concurrency": fleet.workers.concurrency,
    }
    return fanin.completed


def _cpu_by_part(result: e2e.E2eFigure) -> dict[str, float | None]:
    """CPU µs per task of each part (server, workers, loadgen, postgres) of an e2e window."""
    return {
        part: None if used is None else round(used / max(result.cpu_tasks, 1) * 1e6, 1)
        for part, used in result.cpu_s.items()
    }


async def _watched_figure(report: Report, fleet: e2e.Fleet, profile: Profile) -> int:
    result = await e2e.measure_e2e(
        fleet,
        tasks=profile.e2e_tasks,
        deadline_s=profile.e2e_deadline_s,
        watchers=range(profile.events_watchers),
    )
    report.results["e2e_watched_tasks_per_s"] = round(result.tasks_per_s, 1)
    plain = report.results.get("e2e_postgres_tasks_per_s")
    if plain:
        report.results["e2e_watched_ratio"] = round(result.tasks_per_s / plain, 3)
    delays = sorted(result.event_delays_ms)
    if delays:
        report.results["events_p50_ms"] = round(percentile(delays, 0.5), 1)
        report.results["events_p99_ms"] = round(percentile(delays, 0.99), 1)
    report.details["e2e_watched"] = {
        "tasks": result.tasks,
        "completed": result.completed,
        "watchers": profile.events_watchers,
        "events_timed": len(result.event_delays_ms),
        # CPU time is steadier than tasks/s on a shared machine: compare it with e2e_postgres's.
        "cpu_us_per_task_by_part": _cpu_by_part(result),
    }
    return result.completed


async def _release_figure(report: Report, fleet: e2e.Fleet, profile: Profile) -> int:
    released = await dag.measure_release(
        fleet, chain=profile.dag_chain, deadline_s=profile.e2e_deadline_s
    )
    report.results["dag_release_p50_ms"] = round(released.p50_ms, 2)
    report.results["dag_release_p99_ms"] = round(released.p99_ms, 2)
    report.details["dag_release"] = {"links": released.links}
    return released.links


def _count_calls(report: Report, figure: str, calls: Counter[str], tasks: int) -> None:
    """SQS calls per task of a figure (server and workers, idle polls included)."""
    per_task = round(sum(calls.values()) / max(tasks, 1), 3)
    key = f"{figure}_calls_per_task" if figure.startswith("pickup") else "e2e_sqs_calls_per_task"
    report.results[key] = per_task
    report.details.setdefault(figure, {})["sqs_calls"] = dict(calls.most_common())


async def _pickup_figure(report: Report, fleet: e2e.Fleet, profile: Profile) -> int:
    rate = profile.pickup_sqs_rate_per_s if fleet.backend == "sqs" else profile.pickup_rate_per_s
    picked = await e2e.measure_pickup(fleet, rate_per_s=rate, duration_s=profile.pickup_duration_s)
    prefix = "pickup" if fleet.backend == "postgres" else f"pickup_{fleet.backend}"
    report.results[f"{prefix}_p50_ms"] = round(picked.p50_ms, 2)
    report.results[f"{prefix}_p99_ms"] = round(picked.p99_ms, 2)
    report.details[f"pickup_{fleet.backend}"] = {
        "samples": picked.samples,
        "rate_per_s": picked.rate_per_s,
    }
    return picked.samples


async def _throughput_figure(
    report: Report, fleet: e2e.Fleet, profile: Profile, figure: str
) -> int:
    tasks = profile.e2e_sqs_tasks if fleet.backend == "sqs" else profile.e2e_tasks
    measure = e2e.measure_drain if figure.startswith("drain_") else e2e.measure_e2e
    result = await measure(fleet, tasks=tasks, deadline_s=profile.e2e_deadline_s)
    if result.completed < result.tasks:
        report.notes[figure] = (
            f"partial: {result.completed} of {result.tasks} tasks completed within "
            f"{profile.e2e_deadline_s:g} s; the figure is completed tasks per second so far"
        )
    report.results[f"{figure}_tasks_per_s"] = round(result.tasks_per_s, 1)
    cpu_us = result.cpu_us_per_task
    if figure == "e2e_postgres":
        report.results["cpu_us_per_task"] = _round(cpu_us)
    elif figure.startswith("e2e_"):
        report.results[f"{figure}_cpu_us_per_task"] = _round(cpu_us)
    report.details[figure] = {
        "tasks": result.tasks,
        "completed": result.completed,
        "elapsed_s": round(result.elapsed_s, 2),
        "enqueue_s": round(result.enqueue_s, 2),
        "worker_processes": fleet.workers.processes,
        "worker_concurrency": fleet.workers.concurrency,
        "enqueue_batch": e2e.ENQUEUE_BATCH,
        "cpu_us_per_task": _round(cpu_us),
        "cpu_us_per_task_by_part": _cpu_by_part(result),
    }
    return result.completed


async def _batch_enqueue_figure(report: Report, fleet: e2e.Fleet, profile: Profile) -> int:
    result = await e2e.measure_batch_enqueue(fleet, tasks=profile.e2e_tasks)
    report.results["api_batch_enqueue_tasks_per_s"] = round(result.tasks_per_s, 1)
    report.details["api_batch_enqueue"] = {
        "tasks": result.tasks,
        "batch": e2e.ENQUEUE_BATCH,
        "concurrency": result.concurrency,
        "elapsed_s": round(result.elapsed_s, 2),
        "cpu_us_per_task_by_part": {
            part: None if used is None else round(used / result.tasks * 1e6, 1)
            for part, used in result.cpu_s.items()
        },
    }
    return result.tasks


async def _pg_insert_figure(report: Report, options: BenchOptions, database_url: str) -> None:
    profile = options.profile

    async def measure() -> None:
        probe = sysinfo.CpuProbe(database=services.BENCH_DATABASE)
        result = await pginsert.measure_insert_commits(
            database_url,
            concurrency=profile.concurrency,
            warmup_s=min(profile.warmup_s, 3.0),
            duration_s=profile.pg_insert_duration_s,
            probe=probe,
        )
        report.add_load("pg_insert", result)

    await _figure(report, "pg_insert", measure)


async def _scale_figure(
    report: Report, options: BenchOptions, server: services.BenchDatabase
) -> None:
    profile = options.profile

    async def measure() -> None:
        sizes = {"_small": profile.scale_small_rows, "": profile.scale_large_rows}
        loaded = {
            label: await scaledata.prepare(server, rows, reuse=options.reuse_scale_db)
            for label, rows in sizes.items()
        }
        try:
            measured = await scale.measure_scale(
                {label: database.url for label, database in loaded.items()},
                samples=profile.scale_samples,
            )
        finally:
            if not options.reuse_scale_db:
                for database in loaded.values():
                    await services.drop_database(server.admin_url, database.name)
        details = report.details.setdefault("scale", {})
        for suffix, figures in measured.items():
            report.results[f"scale{suffix}_rows"] = sizes[suffix]
            details[f"load{suffix}_s"] = round(loaded[suffix].load_s, 1)
            details[f"reused{suffix}"] = loaded[suffix].reused
            for query, figure in figures.items():
                report.results[f"scale_{query}_p99_ms{suffix}"] = _round(figure.p99_ms)
                report.results[f"scale_{query}_p50_ms{suffix}"] = _round(figure.p50_ms)
                report.results[f"scale_{query}_buffers{suffix}"] = figure.buffers
                report.results[f"scale_{query}_plan{suffix}"] = figure.scans
        _scale_summary(report)

    await _figure(report, "scale", measure)


def _scale_summary(report: Report) -> None:
    results = report.results
    seq_scans = []
    for query in SCALE_QUERIES:
        for measure in ("p99_ms", "buffers"):
            growth = ratio(
                results.get(f"scale_{query}_{measure}"),
                results.get(f"scale_{query}_{measure}_small"),
            )
            key = "growth" if measure == "p99_ms" else "buffers_growth"
            results[f"scale_{query}_{key}"] = None if growth is None else round(growth, 2)
        for suffix in ("", "_small"):
            plan = results.get(f"scale_{query}_plan{suffix}", [])
            seq_scans += [
                f"{query}{suffix}: {scan}" for scan in plan if scan.startswith("Seq Scan")
            ]
    results["scale_seq_scans"] = seq_scans
    p99s = [results.get(f"scale_{query}_p99_ms") for query in SCALE_QUERIES]
    results["scale_max_p99_ms"] = max((v for v in p99s if v is not None), default=None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@contextlib.asynccontextmanager
async def _server(
    options: BenchOptions, database_url: str | None, *, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, list[int]]]:
    if options.endpoint is not None or database_url is None:
        yield options.endpoint or "", []
        return
    async with services.run_server(
        database_url, workers=options.server_workers, log_level=options.server_log_level, env=env
    ) as server:
        yield server.endpoint, server.pids


async def run_bench(settings: Settings, options: BenchOptions) -> Report:
    """Measure the chosen figures and return the report."""
    began = time.perf_counter()
    report = Report(results=dict.fromkeys(ALL_KEYS))
    report.meta = _meta(settings, options)
    figures = set(options.figures)
    needs_server = bool(figures & {*API_FIGURES, *E2E_FIGURES})
    start_server = needs_server and options.endpoint is None
    needs_database = start_server or bool(figures & {"pg_insert", "scale"})
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(services.postgres_server(settings)) if needs_database else None
        report.meta["database"] = None if server is None else server.source
        if server is not None and (start_server or "pg_insert" in figures):
            await _bench_database_figures(
                report, options, server, start_server=start_server, settings=settings
            )
        elif needs_server:
            await _server_figures(report, options, None, settings)
        if server is not None and "scale" in figures:
            await _scale_figure(report, options, server)
    report.meta["elapsed_s"] = round(time.perf_counter() - began, 1)
    return report


async def _bench_database_figures(
    report: Report,
    options: BenchOptions,
    server: services.BenchDatabase,
    *,
    start_server: bool,
    settings: Settings,
) -> None:
    """pg_insert, then the server figures, in a fresh foreman_bench database dropped afterwards."""
    database_url = await services.fresh_bench_database(server)
    try:
        if "pg_insert" in options.figures:
            await _pg_insert_figure(report, options, database_url)
        if set(options.figures) & {*API_FIGURES, *E2E_FIGURES}:
            await _server_figures(report, options, database_url if start_server else None, settings)
    finally:
        await services.drop_database(server.admin_url, services.BENCH_DATABASE)


async def _server_figures(
    report: Report, options: BenchOptions, database_url: str | None, settings: Settings
) -> None:
    if set(options.figures) & set(API_FIGURES):
        async with _server(options, database_url) as (endpoint, pids):
            report.meta["endpoint"] = endpoint
            # Our own server: its backends are on foreman_bench, so their CPU can be told apart.
            database = services.BENCH_DATABASE if pids else None
            probe = sysinfo.CpuProbe(pids, database)
            await _api_figures(report, options, endpoint, probe, database_url)
    await _e2e_figures(report, options, database_url, settings)


def _meta(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    profile = options.profile
    return {
        **sysinfo.machine(),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "figures": list(options.figures),
        "concurrency": profile.concurrency,
        "warmup_s": profile.warmup_s,
        "duration_s": profile.duration_s,
        "server_processes": None if options.endpoint else options.server_workers,
        "server_log_level": None
        if options.endpoint
        else (options.server_log_level or settings.log_level),
        "server_db_pool_max": None if options.endpoint else settings.db_pool_max,
        "endpoint": options.endpoint,
        "load_generator": "aiohttp, closed loop, same machine (it shares the cores it measures)",
        "lifecycle_runs": profile.lifecycle_runs,
        "scale_rows_per_run": scaledata.ROWS_PER_RUN,
        "scale_samples": profile.scale_samples,
        "e2e_tasks": profile.e2e_tasks,
        "e2e_worker_processes": profile.e2e_worker_processes,
        "e2e_worker_concurrency": profile.e2e_worker_concurrency,
        "pickup_rate_per_s": profile.pickup_rate_per_s,
        "pickup_duration_s": profile.pickup_duration_s,
    }
