"""Task handlers of the end-to-end tests, importable by `foreman worker tests.e2e.handlers:HANDLERS`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from foreman import TaskContext


async def noop(ctx: TaskContext) -> Any:
    """Returns its input and the worker process that ran it."""
    return {"echo": ctx.input_data, "pid": os.getpid(), "attempt": ctx.attempt}


async def nap(ctx: TaskContext) -> Any:
    """Sleeps input_data seconds (async), stopping early when cancelled."""
    deadline = time.monotonic() + float(ctx.input_data)
    while time.monotonic() < deadline and not ctx.cancelled:
        await asyncio.sleep(0.02)
    return {"pid": os.getpid(), "attempt": ctx.attempt, "cancelled": ctx.cancelled}


def sync_nap(ctx: TaskContext) -> Any:
    """Sleeps input_data seconds in a worker thread."""
    time.sleep(float(ctx.input_data))
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def flaky(ctx: TaskContext) -> Any:
    """Fails until attempt input_data (sync handler)."""
    if ctx.attempt < int(ctx.input_data):
        raise RuntimeError(f"attempt {ctx.attempt} failed on purpose")
    return {"succeeded_on": ctx.attempt}


async def until_cancelled(ctx: TaskContext) -> Any:
    """Waits up to input_data seconds for ctx.wait_cancelled()."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ctx.wait_cancelled(), float(ctx.input_data))
    return {"cancelled": ctx.cancelled}


async def split(ctx: TaskContext) -> Any:
    """The first step of a DAG: its output is the parts."""
    return {"parts": int(ctx.input_data)}


async def square(ctx: TaskContext) -> Any:
    """One part of a DAG's fan-out."""
    return {"square": int(ctx.input_data) ** 2}


async def join(ctx: TaskContext) -> Any:
    """The fan-in: sums its parents' outputs."""
    outputs = await ctx.parent_outputs(page_size=7)
    return {"sum": sum(o["square"] for o in outputs.values()), "parents": len(outputs)}


async def gated_join(ctx: TaskContext) -> Any:
    """A fan-in that a test can kill mid-run: notes each start in the run's data, waits until the
    file input_data["gate"] exists, then records its result (run data "joined") and returns it.
    So "joined" has one entry per run of the join that got past the gate."""
    mine = {"attempt": ctx.attempt, "pid": os.getpid()}
    await ctx.set_data("join_started", mine)
    gate = Path(ctx.input_data["gate"])
    while not gate.exists():
        await asyncio.sleep(0.02)
    outputs = await ctx.parent_outputs()
    result = {**mine, "sum": sum(o["square"] for o in outputs.values()), "parents": len(outputs)}
    await ctx.set_data("joined", result)
    return result


HANDLERS = {
    "split": split,
    "square": square,
    "join": join,
    "noop": noop,
    "nap": nap,
    "sync_nap": sync_nap,
    "flaky": flaky,
    "until_cancelled": until_cancelled,
    "gated_join": gated_join,
}
