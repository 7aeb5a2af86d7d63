"""Prometheus metrics of a server process (GET /metrics, README "Metrics").

The request path only adds to plain Python tallies (a dict of lists: no lock, no label lookup,
nothing allocated but the key); ``flush()`` moves them into prometheus_client's metrics, at a
scrape and, under ``--workers N``, every second (multiprocess mode: each process writes its own
files in PROMETHEUS_MULTIPROC_DIR and a scrape of any process reads them all). The queue gauges
are read at a scrape from a bounded query, cached for a second.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hmac
import logging
import math
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import asyncpg
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from foreman import background, errors, ids
from foreman.models import Task
from foreman.server.context import Caller
from foreman.settings import Settings
from foreman.store import db
from foreman.store import metrics as metrics_store
from foreman.store.pool import Pool

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
INF = math.inf
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, INF)
# The task histograms share a 50 ms to 5 min ladder: a claim can come sooner, a task take longer.
_TASK_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PICKUP_BUCKETS = (0.005, 0.01, 0.025, *_TASK_SECONDS, INF)
DURATION_BUCKETS = (0.01, *_TASK_SECONDS, 900.0, 3600.0, INF)
# Any other method is counted as "other": a client must not create series at will.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route took (404, refused at the edge)
FINISHED = frozenset({"completed", "failed", "cancelled"})
QUEUE_CACHE_S = 1.0
FLUSH_INTERVAL_S = 1.0


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes to PROMETHEUS_MULTIPROC_DIR (set before it was imported)."""
    return MULTIPROC_ENV in os.environ


class _Tally:
    """Counts per label tuple, taken whole by ``take()``."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + amount

    def take(self) -> dict[tuple[str, ...], float]:
        counts, self.counts = self.counts, {}
        return counts


class _Observations:
    """Histogram observations per label key: [sum, count in bucket 0, bucket 1, ...]."""

    __slots__ = ("bounds", "rows")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.rows: dict[Any, list[float]] = {}

    def observe(self, key: Any, value: float) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0.0] * (len(self.bounds) + 1)
        row[0] += value
        # The first bucket whose upper bound is >= value: prometheus_client's own rule.
        row[bisect.bisect_left(self.bounds, value) + 1] += 1

    def take(self) -> dict[Any, list[float]]:
        # Emptied in place: ServerMetrics.request holds the dict itself.
        rows = dict(self.rows)
        self.rows.clear()
        return rows


def add_observations(histogram: Histogram, labels: Sequence[str], row: list[float]) -> None:
    """Add a tally row (sum, then one count per bucket) to histogram's child of labels.

    prometheus_client has no public call that adds n observations to a bucket; its child keeps one
    value per bucket (not cumulative) and the sum (observe() adds to them the same way). Fenced
    by the upper bound in pyproject.toml and tests/unit/test_metrics.py.
    """
    child = histogram.labels(*labels)
    child._sum.inc(row[0])
    for bucket, count in zip(child._buckets, row[1:], strict=True):
        if count:
            bucket.inc(count)


class ServerMetrics:
    """The figures of one server process; routes and the edge report to it."""

    def __init__(self, *, per_org: bool) -> None:
        self.per_org = per_org
        self.registry = CollectorRegistry(auto_describe=True)
        org = ("org",) if per_org else ()
        # One key per answered request feeds both (flush): they must have the same labels.
        http_labels = ("method", "route", "status", *org)
        by_type = ("type", *org)
        counter = functools.partial(Counter, registry=self.registry)
        histogram = functools.partial(Histogram, registry=self.registry)
        self._requests = counter("foreman_http_requests", "HTTP requests answered", http_labels)
        self._request_s = histogram(
            "foreman_http_request_duration_seconds",
            "Time to answer an HTTP request (route = the route template)",
            http_labels,
            buckets=HTTP_BUCKETS,
        )
        self._created = counter("foreman_tasks_created", "Tasks created", by_type)
        finished = "Tasks that reached completed, failed or cancelled"
        self._finished = counter("foreman_tasks_finished", finished, ("type", "status", *org))
        retries = "Attempts that failed and will be tried again, and retries by hand"
        self._retries = counter("foreman_task_retries", retries, by_type)
        pickup = "From ready (queued, or its run_after) to claimed"
        self._pickup_s = histogram(
            "foreman_task_pickup_seconds", pickup, by_type, buckets=PICKUP_BUCKETS
        )
        duration = "From the first start to the end of a finished task"
        self._duration_s = histogram(
            "foreman_task_duration_seconds", duration, by_type, buckets=DURATION_BUCKETS
        )
        self._expired = counter("foreman_leases_expired", "Leases the sweeper found expired")
        self._sweeps = counter("foreman_sweeper_runs", "Sweeps run (this process held the lock)")
        self._pool = Gauge(
            "foreman_db_pool_connections",
            "Request connections of the server's pools",
            ("state",),
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self._http = _Observations(HTTP_BUCKETS)
        self._http_rows = self._http.rows
        self._pickups = _Observations(PICKUP_BUCKETS)
        self._durations = _Observations(DURATION_BUCKETS)
        self._counts = {name: _Tally() for name in ("created", "finished", "retries")}
        self._sweep_counts = [0, 0]  # sweeps, expired leases

    # ------------------------------------------------------------ recording (request path)

    def request(
        self, method: str, route: str, status: int, start: float, caller: Caller | None
    ) -> None:
        """One answered request (start: its time.perf_counter())."""
        elapsed = perf_counter() - start
        if method not in _METHODS:
            method = "other"
        if self.per_org:
            key: tuple[Any, ...] = (method, route, status, caller.org_id if caller else "")
        else:
            key = (method, route, status)
        # _Observations.observe, inlined: this runs once per request.
        row = self._http_rows.get(key)
        if row is None:
            row = self._http_rows[key] = [0.0] * (len(HTTP_BUCKETS) + 1)
        row[0] += elapsed
        row[bisect_left(HTTP_BUCKETS, elapsed) + 1] += 1

    def _org(self, org_id: str) -> tuple[str, ...]:
        return (org_id,) if self.per_org else ()

    def tasks_created(self, tasks: Iterable[Task]) -> None:
        """Tasks created now (not idempotent repeats)."""
        tally = self._counts["created"]
        for task in tasks:
            tally.add((task.type, *self._org(task.org_id)))

    def types_created(self, org_id: str, types: Iterable[str]) -> None:
        """Tasks created now, by type (a batch answered with ids only: no Task was built)."""
        tally, org = self._counts["created"], self._org(org_id)
        for task_type in types:
            tally.add((task_type, *org))

    def tasks_ended(self, tasks: Iterable[Task]) -> None:
        """Tasks an attempt or a PATCH just ended: finished, or retrying after a backoff."""
        for task in tasks:
            org = self._org(task.org_id)
            if task.status in FINISHED:
                self._counts["finished"].add((task.type, task.status, *org))
                if task.duration_ms is not None:
                    self._durations.observe((task.type, *org), task.duration_ms / 1000)
            elif task.status == "retrying":
                self._counts["retries"].add((task.type, *org))

    def types_cancelled(self, org_id: str, types: Iterable[str]) -> None:
        """Tasks a run's cancel ended at once, by type (no Task was built for them)."""
        tally, org = self._counts["finished"], self._org(org_id)
        for task_type in types:
            tally.add((task_type, "cancelled", *org))

    def task_retried(self, task: Task) -> None:
        """A task retried by hand (POST /tasks/:id/retry)."""
        self._counts["retries"].add((task.type, *self._org(task.org_id)))

    def tasks_claimed(self, tasks: Iterable[Task], *, now: int) -> None:
        """Tasks just claimed at now (epoch ms): their wait since they became ready."""
        for task in tasks:
            ready_at = max(task.queued_at or task.created_at, task.run_after or 0)
            self._pickups.observe(
                (task.type, *self._org(task.org_id)), max(0, now - ready_at) / 1000
            )

    def swept(self, expired: Sequence[Task]) -> None:
        """One sweep that held the lock, and the leases it found expired."""
        self._sweep_counts[0] += 1
        self._sweep_counts[1] += len(expired)
        self.tasks_ended(expired)

    # ------------------------------------------------------------ flushing and scraping

    def flush(self, pools: Sequence[Pool[db.Connection]] = ()) -> None:
        """Move the tallies into the prometheus_client metrics."""
        for key, row in self._http.take().items():
            labels = (key[0], key[1], str(key[2]), *key[3:])
            self._requests.labels(*labels).inc(sum(row[1:]))
            add_observations(self._request_s, labels, row)
        for key, row in self._pickups.take().items():
            add_observations(self._pickup_s, key, row)
        for key, row in self._durations.take().items():
            add_observations(self._duration_s, key, row)
        for name, metric in (
            ("created", self._created),
            ("finished", self._finished),
            ("retries", self._retries),
        ):
            for key, count in self._counts[name].take().items():
                metric.labels(*key).inc(count)
        sweeps, expired = self._sweep_counts
        self._sweep_counts = [0, 0]
        if sweeps:
            self._sweeps.inc(sweeps)
        if expired:
            self._expired.inc(expired)
        self._pool_gauges(pools)

    def _pool_gauges(self, pools: Sequence[Pool[db.Connection]]) -> None:
        in_use = idle = waiting = 0
        for pool in pools:
            stats = pool.stats()
            in_use, idle, waiting = in_use + stats[0], idle + stats[1], waiting + stats[2]
        self._pool.labels("in_use").set(in_use)
        self._pool.labels("idle").set(idle)
        self._pool.labels("waiting").set(waiting)


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """The queue gauges of one type (and organisation, per org): ready, running, blocked tasks
    and the oldest ready one's age in seconds."""

    ready: int = 0
    running: int = 0
    blocked: int = 0
    age_s: float | None = None


class QueueCollector(Collector):
    """foreman_queue_* gauges from the last QueueGauges.refresh()."""

    def __init__(self, gauges: QueueGauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        org = ["org"] if self.gauges.per_org else []
        ready = GaugeMetricFamily(
            "foreman_queue_ready_tasks",
            "Tasks ready to claim now (read from at most FOREMAN_METRICS_QUEUE_SCAN rows)",
            labels=["type", *org],
        )
        running = GaugeMetricFamily(
            "foreman_queue_running_tasks", "Tasks held under a lease", labels=["type", *org]
        )
        blocked = GaugeMetricFamily(
            "foreman_queue_blocked_tasks",
            "Tasks waiting for their parents (dependsOn)",
            labels=["type", *org],
        )
        oldest = GaugeMetricFamily(
            "foreman_queue_oldest_ready_age_seconds",
            "Age of the oldest ready task (since it became ready)",
            labels=["type", *org],
        )
        for labels, depth in self.gauges.values.items():
            ready.add_metric(list(labels), depth.ready)
            running.add_metric(list(labels), depth.running)
            blocked.add_metric(list(labels), depth.blocked)
            if depth.age_s is not None:
                oldest.add_metric(list(labels), depth.age_s)
        yield from (ready, running, blocked, oldest)


class QueueGauges:
    """The queue's depth, read at most once a second per process with one bounded query."""

    def __init__(self, settings: Settings, *, database_url: str) -> None:
        self.per_org = settings.metrics_per_org
        self._settings = settings
        self._database_url = database_url
        self._bound = settings.metrics_queue_scan
        self._pool: Pool[db.Connection] | None = None
        self._read_at = -math.inf
        self._lock = asyncio.Lock()
        self.values: dict[tuple[str, ...], QueueFigures] = {}

    async def refresh(self) -> None:
        """Read the depth again unless it was read less than a second ago."""
        async with self._lock:  # concurrent scrapes share one read
            if time.monotonic() - self._read_at < QUEUE_CACHE_S:
                return
            if self._pool is None:
                # The owner's connection, opened at the first scrape: it sees every organisation.
                self._pool = await db.open_owner_pool(
                    self._settings, self._database_url, min_size=0
                )
            now = ids.now_ms()
            async with self._pool.acquire() as conn:
                depth = await metrics_store.queue_depth(conn, now=now, bound=self._bound)
            self.values = self._gauges(depth, now)
            self._read_at = time.monotonic()

    def _gauges(
        self, depth: list[metrics_store.QueueDepth], now: int
    ) -> dict[tuple[str, ...], QueueFigures]:
        values: dict[tuple[str, ...], QueueFigures] = {}
        for row in depth:
            key = (row.task_type, row.org_id) if self.per_org else (row.task_type,)
            was = values.get(key, QueueFigures())
            age = was.age_s
            row_age = (
                None if row.oldest_ready_ms is None else max(0, now - row.oldest_ready_ms) / 1000
            )
            if row_age is not None:
                age = row_age if age is None else max(age, row_age)
            values[key] = QueueFigures(
                was.ready + row.ready, was.running + row.running, was.blocked + row.blocked, age
            )
        return values

    async def close(self) -> None:
        """Close the owner connection, if a scrape opened it."""
        if self._pool is not None:
            await self._pool.close()


class Exporter:
    """What /metrics answers, and the process's flush loop under --workers N."""

    def __init__(self, settings: Settings, *, database_url: str) -> None:
        self.metrics = ServerMetrics(per_org=settings.metrics_per_org)
        self.queue = QueueGauges(settings, database_url=database_url)
        self._token = (settings.metrics_token or "").encode()
        self._pools: list[Pool[db.Connection]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.metrics.registry.register(QueueCollector(self.queue))

    def authorized(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries the metrics token as a bearer."""
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token
        )

    def start(self, pools: Sequence[Pool[db.Connection]]) -> None:
        """Watch pools; under multiprocess mode flush every second (any process may be scraped)."""
        self._pools = list(pools)
        if multiprocess_mode():
            self._flusher = asyncio.create_task(self._flush_loop(), name="foreman-metrics")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.metrics.flush(self._pools)

    async def close(self) -> None:
        """Stop flushing; the process's live gauges leave the multiprocess files."""
        await background.cancel_and_wait(self._flusher)
        self.metrics.flush(self._pools)
        await self.queue.close()
        if multiprocess_mode():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    async def exposition(self) -> bytes:
        """The text format of every metric (all processes' under multiprocess mode)."""
        try:
            await self.queue.refresh()
        except (OSError, TimeoutError, asyncpg.PostgresError, errors.UnavailableError) as exc:
            # The other figures are still worth a scrape; the queue gauges keep their last values.
            logger.warning("queue gauges not refreshed, database unavailable: %s", exc)
        self.metrics.flush(self._pools)
        if not multiprocess_mode():
            return generate_latest(self.metrics.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(QueueCollector(self.queue))
        return generate_latest(registry)
