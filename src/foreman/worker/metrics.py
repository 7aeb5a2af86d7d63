"""The handler-side figures of a worker, served on ``foreman worker --metrics-port N``.

The same names as the server's where they measure the same thing seen from the worker:
``foreman_task_duration_seconds`` is the handler's own run time here, ``foreman_task_pickup_seconds``
the wait from ready to the handler's start (the server's ends at the claim).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from foreman.models import Task

PICKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class WorkerMetrics:
    """A worker's registry; ``serve(port)`` exposes it over HTTP (prometheus_client's server)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attempts = Counter(
            "foreman_worker_attempts",
            "Attempts this worker ran, by outcome (completed, failed, dropped: result refused)",
            ("type", "outcome"),
            registry=r,
        )
        self.duration = Histogram(
            "foreman_task_duration_seconds",
            "Handler run time",
            ("type",),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.pickup = Histogram(
            "foreman_task_pickup_seconds",
            "From ready (queued, or its run_after) to the handler's start",
            ("type",),
            buckets=PICKUP_BUCKETS,
            registry=r,
        )
        self.running = Gauge("foreman_worker_running_tasks", "Handlers running now", registry=r)

    def started(self, task: Task, *, now_ms: int) -> None:
        """A handler starts on task."""
        ready_at = max(task.queued_at or task.created_at, task.run_after or 0)
        self.pickup.labels(task.type).observe(max(0, now_ms - ready_at) / 1000)
        self.running.inc()

    def ended(self, task: Task, *, seconds: float) -> None:
        """task's handler returned or raised after seconds."""
        self.running.dec()
        self.duration.labels(task.type).observe(seconds)

    def reported(self, task: Task, outcome: str) -> None:
        """The attempt's result: completed, failed, or dropped (cancelled, lease lost, refused)."""
        self.attempts.labels(task.type, outcome).inc()

    def serve(self, port: int, *, host: str = "127.0.0.1") -> None:
        """Serve /metrics on host:port from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
