"""Task handlers of the end-to-end figures: `foreman worker foreman.bench.handlers:HANDLERS`."""

from __future__ import annotations

import time
from typing import Any

from foreman.worker import TaskContext

NOOP = "bench.noop"
PICKUP = "bench.pickup"


async def noop(_ctx: TaskContext) -> None:
    """Does nothing: the figure is Foreman's own cost per task."""


async def pickup(ctx: TaskContext) -> dict[str, Any]:
    """How long after its enqueue (epoch ms in inputData) this handler started."""
    started_ms = time.time() * 1000
    return {"pickupMs": started_ms - float(ctx.input_data["enqueuedAtMs"])}


HANDLERS = {NOOP: noop, PICKUP: pickup}
