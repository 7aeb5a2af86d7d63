"""The largest bodies: time and server memory for one request of each shape just under the limit.

A hostile client's shapes (docs/security.md "Large bodies, exact numbers, slow statements"): an
inputData array of millions of small integers, objects nested near the depth limit, a huge
run-data value of many small objects, and a batch of 1,000 tasks with small values each. Each is
sent once, alone, while the server's resident memory (its process tree) is sampled every 10 ms.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psutil

from foreman.bench.http import BenchHttp, response_id

LIMIT_BYTES = 10 * 1024 * 1024  # FOREMAN_MAX_BODY_BYTES's default
_ROOM = 1024  # the envelope around the big value
NESTED_DEPTH = 60  # FOREMAN_MAX_JSON_DEPTH is 64, envelope included
BATCH_TASKS = 1000  # the batch endpoint's maximum
SAMPLE_S = 0.01
SHAPE_NAMES = ("int_array", "nested", "run_data_value", "batch")


def repeated(item: bytes, size: int) -> bytes:
    """A JSON array of item repeated to about size bytes (never more)."""
    count = max(1, (size - 2) // (len(item) + 1))
    return b"[" + b",".join([item] * count) + b"]"


def nested(depth: int) -> bytes:
    """``{"a":{"a":...1...}}``, depth levels deep."""
    return b'{"a":' * depth + b"1" + b"}" * depth


@dataclass(frozen=True, slots=True)
class Shape:
    """One request: what it is called, where it goes and its body."""

    name: str
    path: str
    body: bytes


def shapes(run_id: str, task_id: str, limit: int = LIMIT_BYTES) -> list[Shape]:
    """The four bodies, each just under limit bytes."""
    size = limit - _ROOM
    run = run_id.encode()
    per_task = size // BATCH_TASKS - 120
    item = b'{"runId":"%s","type":"bench.big","inputData":%s}' % (run, repeated(b"7", per_task))
    return [
        Shape("int_array", "/api/v1/runs", b'{"inputData":%s}' % repeated(b"1", size)),
        Shape("nested", "/api/v1/runs", b'{"inputData":%s}' % repeated(nested(NESTED_DEPTH), size)),
        Shape(
            "run_data_value",
            f"/api/v1/runs/{run_id}/data",
            b'{"taskId":"%s","key":"big","value":%s}'
            % (task_id.encode(), repeated(b'{"k":1}', size)),
        ),
        Shape("batch", "/api/v1/tasks/batch", b'{"tasks":[%s]}' % b",".join([item] * BATCH_TASKS)),
    ]


def _rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            total += sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
        except psutil.Error:
            continue
    return total


async def _send_sampling(http: BenchHttp, shape: Shape, pids: list[int]) -> tuple[int, float, int]:
    """Status, milliseconds and the peak server RSS while shape's request ran."""
    peak = _rss_bytes(pids)
    began = time.perf_counter()
    request = asyncio.ensure_future(http.request("POST", shape.path, shape.body))
    while not request.done():
        await asyncio.wait([request], timeout=SAMPLE_S)
        peak = max(peak, _rss_bytes(pids))
    status, _ = request.result()
    return status, (time.perf_counter() - began) * 1000, peak


async def measure_large_bodies(http: BenchHttp, server_pids: list[int]) -> dict[str, float | int]:
    """``api_large_body_ms`` (the slowest shape), per-shape ms and status, and RSS in MB.

    RSS figures are None-free only for a server the bench started (server_pids known).
    """
    status, body = await http.request("POST", "/api/v1/runs", b'{"inputData":{"bench":"large"}}')
    if status != 201:
        raise RuntimeError(f"set-up POST /runs answered {status}: {body[:200]!r}")
    run_id = response_id(body)
    task = b'{"runId":"%s","type":"bench.big","inputData":1}' % run_id.encode()
    status, body = await http.request("POST", "/api/v1/tasks", task)
    if status != 201:
        raise RuntimeError(f"set-up POST /tasks answered {status}: {body[:200]!r}")
    results: dict[str, float | int] = {}
    baseline = _rss_bytes(server_pids)
    peak = baseline
    for shape in shapes(run_id, response_id(body)):
        status, ms, shape_peak = await _send_sampling(http, shape, server_pids)
        results[f"api_large_body_{shape.name}_ms"] = round(ms, 1)
        results[f"api_large_body_{shape.name}_status"] = status
        if server_pids:
            results[f"api_large_body_{shape.name}_peak_rss_mb"] = round(shape_peak / 2**20, 1)
        peak = max(peak, shape_peak)
    results["api_large_body_ms"] = max(results[f"api_large_body_{name}_ms"] for name in SHAPE_NAMES)
    if server_pids:
        results["api_large_body_rss_before_mb"] = round(baseline / 2**20, 1)
        results["api_large_body_peak_rss_mb"] = round(peak / 2**20, 1)
    return results
