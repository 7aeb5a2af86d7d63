"""Polling helpers of the end-to-end tests (every wait is bounded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from foreman import AsyncClient, Run, Task


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    """Until check() is true; AssertionError naming what after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.1)


async def run_finished(client: AsyncClient, run_id: str, count: int, *, timeout_s: float) -> Run:
    """The run once count of its tasks are terminal."""

    async def done() -> bool:
        run = await client.get_run(run_id)
        return run.completed_tasks + run.failed_tasks + run.cancelled_tasks >= count

    await eventually(done, timeout_s=timeout_s, what=f"{count} finished tasks of run {run_id}")
    return await client.get_run(run_id)


async def all_tasks(client: AsyncClient, run_id: str) -> list[Task]:
    """Every task of a run (pages of 100)."""
    tasks: list[Task] = []
    while True:
        page = await client.list_tasks(
            run_id=run_id, limit=100, offset=len(tasks), sort_order="asc"
        )
        tasks.extend(page.data)
        if len(tasks) >= page.pagination.total or not page.data:
            return tasks
