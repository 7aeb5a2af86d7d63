"""``foreman worker module:handlers``: load the handlers and run a Worker until signalled."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from foreman import tracing
from foreman.background import tune_gc
from foreman.client import AsyncClient
from foreman.worker.metrics import WorkerMetrics
from foreman.worker.worker import Backend, Handler, Worker, WorkerStats


def load_handlers(target: str) -> Mapping[str, Handler]:
    """The dict named by ``module:attribute`` (the current directory is importable)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"Expected module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    handlers: Any = module
    for part in attribute.split("."):
        handlers = getattr(handlers, part, None)
        if handlers is None:
            raise ValueError(f"{module_name} has no attribute {attribute!r}")
    if not isinstance(handlers, Mapping) or not all(
        isinstance(k, str) and callable(v) for k, v in handlers.items()
    ):
        raise ValueError(f"{target} must be a dict of {{task type: handler function}}")
    return handlers


def run_worker(
    target: str,
    *,
    concurrency: int,
    backend: Backend | None = None,
    burst: bool = False,
    lease_s: float = 30.0,
    grace_s: float = 30.0,
    endpoint: str | None = None,
    api_key: str | None = None,
    only_known_types: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> WorkerStats:
    """Run the handlers of target until SIGTERM/SIGINT (or, with burst, until nothing is ready);
    with metrics_port, serve the worker's figures on http://metrics_host:metrics_port/metrics."""
    handlers = load_handlers(target)
    tracing.configure("foreman-worker")  # when OTEL_* variables ask for traces
    metrics = None
    if metrics_port is not None:
        metrics = WorkerMetrics()
        metrics.serve(metrics_port, host=metrics_host)

    async def main() -> WorkerStats:
        async with AsyncClient(endpoint, api_key) as client:
            worker = Worker(
                client,
                handlers,
                concurrency=concurrency,
                backend=backend,
                lease_s=lease_s,
                grace_s=grace_s,
                only_known_types=only_known_types,
                metrics=metrics,
            )
            return await worker.run(burst=burst)

    # As the server's processes: the collector's full passes walked every imported module for
    # each few hundred tasks (a fifth of the worker's CPU per task, benchmarks/README.md).
    tune_gc()
    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())
