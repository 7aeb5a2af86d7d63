"""What the long-running processes share: stopping a background asyncio task (the notifier,
sweeper and worker), and the cyclic collector's settings of a serving process (server, worker)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

# Generation thresholds of the cyclic GC in a serving process (see tune_gc).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request and task path.

    Everything alive after start-up (modules, the app and its routes, the handlers) is frozen out
    of the collector's view, and young collections run every GC_THRESHOLDS[0] container
    allocations instead of 700 (measured: benchmarks/README.md, "Notes moved from server/" and
    "Session 8").
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel task (if any) and wait until it has stopped; its CancelledError is swallowed."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
