"""The REST figures: POST /runs, GET /tasks/:id and the task lifecycle (spread and one run)."""

from __future__ import annotations

import asyncio
import json
import random

from foreman.bench.defaults import Profile
from foreman.bench.http import BenchHttp, response_id
from foreman.bench.loadgen import LoadResult, Operation, WindowProbe, drive

RUNS = "/api/v1/runs"
TASKS = "/api/v1/tasks"

RUN_BODY = json.dumps({"inputData": {"source": "foreman bench", "n": 1}}).encode()
RUNNING_BODY = json.dumps({"status": "running"}).encode()
# SPEC's lifecycle figure: completion with about 500 bytes of output.
COMPLETED_BODY = json.dumps(
    {"status": "completed", "outputData": {"result": "x" * 440, "items": [1, 2, 3], "ok": True}}
).encode()
assert 480 <= len(COMPLETED_BODY) <= 540


def task_body(run_id: str, index: int) -> bytes:
    """A create-task body for run_id."""
    return b'{"runId":"%s","type":"bench.noop","inputData":{"i":%d}}' % (run_id.encode(), index)


async def create_runs(http: BenchHttp, count: int) -> list[str]:
    """count new runs, created 16 at a time."""
    return await _gather_ids(http, [(RUNS, RUN_BODY)] * count)


async def create_tasks(http: BenchHttp, run_ids: list[str], count: int) -> list[str]:
    """count new pending tasks spread over run_ids."""
    requests = [(TASKS, task_body(run_ids[i % len(run_ids)], i)) for i in range(count)]
    return await _gather_ids(http, requests)


async def _gather_ids(http: BenchHttp, requests: list[tuple[str, bytes]]) -> list[str]:
    gate = asyncio.Semaphore(16)

    async def one(path: str, body: bytes) -> str:
        async with gate:
            status, answer = await http.request("POST", path, body)
        if status != 201:
            raise RuntimeError(f"set-up POST {path} answered {status}: {answer[:200]!r}")
        return response_id(answer)

    return list(await asyncio.gather(*(one(path, body) for path, body in requests)))


def post_run_operation(http: BenchHttp) -> Operation:
    async def post_run(_index: int) -> bool:
        status, _ = await http.request("POST", RUNS, RUN_BODY)
        return status == 201

    return post_run


def get_task_operation(http: BenchHttp, task_ids: list[str]) -> Operation:
    # Random order so consecutive requests do not walk the index in insertion order.
    paths = [f"{TASKS}/{task_id}" for task_id in task_ids]
    random.shuffle(paths)

    async def get_task(index: int) -> bool:
        status, _ = await http.request("GET", paths[index % len(paths)])
        return status == 200

    return get_task


def lifecycle_operation(http: BenchHttp, run_ids: list[str]) -> Operation:
    """Create a task, PATCH it running, PATCH it completed with ~500 bytes of output."""

    async def lifecycle(index: int) -> bool:
        status, body = await http.request(
            "POST", TASKS, task_body(run_ids[index % len(run_ids)], index)
        )
        if status != 201:
            return False
        path = f"{TASKS}/{response_id(body)}"
        status, _ = await http.request("PATCH", path, RUNNING_BODY)
        if status != 200:
            return False
        status, _ = await http.request("PATCH", path, COMPLETED_BODY)
        return status == 200

    return lifecycle


async def measure_post_runs(
    http: BenchHttp, profile: Profile, probe: WindowProbe | None = None
) -> LoadResult:
    """POST /api/v1/runs at the profile's concurrency."""
    return await _drive(post_run_operation(http), profile, probe)


async def measure_get_task(
    http: BenchHttp, profile: Profile, probe: WindowProbe | None = None
) -> LoadResult:
    """GET /api/v1/tasks/:id over a pool of existing tasks."""
    run_ids = await create_runs(http, 10)
    task_ids = await create_tasks(http, run_ids, profile.get_task_pool)
    return await _drive(get_task_operation(http, task_ids), profile, probe)


async def measure_lifecycle(
    http: BenchHttp, profile: Profile, *, runs: int, probe: WindowProbe | None = None
) -> LoadResult:
    """Whole task lifecycles (3 requests each) spread over `runs` runs (1: the hot-row case)."""
    run_ids = await create_runs(http, runs)
    return await _drive(lifecycle_operation(http, run_ids), profile, probe)


async def measure_figure(
    http: BenchHttp, figure: str, profile: Profile, probe: WindowProbe | None = None
) -> LoadResult:
    """One REST figure by name: api_post_runs, api_get_task, api_lifecycle(_one_run)."""
    if figure == "api_post_runs":
        return await measure_post_runs(http, profile, probe)
    if figure == "api_get_task":
        return await measure_get_task(http, profile, probe)
    runs = profile.lifecycle_runs if figure == "api_lifecycle" else 1
    return await measure_lifecycle(http, profile, runs=runs, probe=probe)


async def _drive(operation: Operation, profile: Profile, probe: WindowProbe | None) -> LoadResult:
    return await drive(
        operation,
        concurrency=profile.concurrency,
        warmup_s=profile.warmup_s,
        duration_s=profile.duration_s,
        probe=probe,
    )
