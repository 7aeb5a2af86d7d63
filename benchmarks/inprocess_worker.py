"""Run a Worker over N no-op tasks without a server, and print its CPU per task.

The worker's own cost per task: the claim answer decoded into tasks, the slots, the handler's
task and context, the result, the completion batch encoded and its answer decoded. The HTTP
exchange is left out: ``AsyncClient._request`` answers from memory with the bytes a server
sends (a claim's tasks as the server encodes them, one ack per result), so the SDK's call plans,
retries and decoders still run. Under callgrind the instruction count does not move with the
machine's load (see benchmarks/inprocess.py for the method):

    python benchmarks/inprocess_worker.py 20000                 # CPU µs per task
    for n in 2000 12000; do
        PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cgw.$n \\
            python benchmarks/inprocess_worker.py $n --gc-tuned 2>&1 | grep Collected
    done                                                         # (b - a) / 10000 = per task

--gc-tuned applies `foreman worker`'s collector settings (background.tune_gc) first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import uvloop

from foreman import models
from foreman.client import AsyncClient
from foreman.client._base import Call
from foreman.worker import Worker

NOOP = "bench.noop"


@dataclass(frozen=True, slots=True)
class _Answer:
    status_code: int
    headers: Mapping[str, str]
    content: bytes


def _uuid(i: int) -> str:
    """A distinct id of UUID form, cheaply (the set-up counts under callgrind too)."""
    return f"{i & 0xFFFFFFFF:08x}-0000-4000-8000-{i & 0xFFFFFFFFFFFF:012x}"


class MemoryClient(AsyncClient):
    """An AsyncClient whose requests are answered here, as the server would answer them."""

    def __init__(self, tasks: int) -> None:
        super().__init__("http://127.0.0.1:9", "fmn_bench_inprocess_0123456789")
        self.claims = 0
        self.completions = 0
        now = int(time.time() * 1000)
        template = models.Task(
            id="", run_id=str(uuid.uuid4()), org_id="bench", type=NOOP, status="running",
            input_data={"i": 0}, metadata=None, retry_count=0, max_retries=3, priority=0,
            attempt=1, created_at=now, updated_at=now, queued_at=now, started_at=now,
            lease_expires_at=now + 30_000, worker_id="w", lease_token="",
        )  # fmt: skip
        encode = msgspec.json.encode
        # Made before the measurement: each task as the server encodes it in a claim's answer.
        self._tasks = [
            encode(msgspec.structs.replace(template, id=_uuid(i), lease_token=_uuid(~i)))
            for i in range(tasks)
        ]
        self._ack = b'{"taskId":"00000000-0000-0000-0000-000000000000","ok":true,"status":"completed","reason":null}'

    async def _request(self, call: Call[Any]) -> _Answer:  # type: ignore[override]
        await asyncio.sleep(0)  # a round trip yields to the loop
        body = call.body or b""
        if call.path.endswith("/tasks/claim"):
            limit = msgspec.json.decode(body)["limit"]
            batch, self._tasks = self._tasks[:limit], self._tasks[limit:]
            self.claims += 1
            return _Answer(200, {}, b'{"data":[' + b",".join(batch) + b"]}")
        if call.path.endswith("/tasks/complete"):
            self.completions += 1
            acks = b",".join([self._ack] * body.count(b'"taskId":'))
            return _Answer(200, {}, b'{"data":[' + acks + b"]}")
        raise AssertionError(f"unexpected call {call.method} {call.path}")


async def noop(_ctx: Any) -> None:
    """The bench's handler."""


async def run(tasks: int, concurrency: int) -> None:
    client = MemoryClient(tasks)
    worker = Worker(
        client, {NOOP: noop}, concurrency=concurrency, backend="postgres", handle_signals=False
    )
    began_cpu, began = time.process_time(), time.perf_counter()
    stats = await worker.run(burst=True)
    cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
    print(
        f"{stats.completed} tasks, {client.claims} claims, {client.completions} completions:"
        f" {cpu * 1e6 / max(stats.completed, 1):.2f} µs CPU per task,"
        f" {stats.completed / wall:,.0f} tasks/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tasks", type=int, nargs="?", default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--gc-tuned", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.gc_tuned:
        # background.tune_gc's settings, here also for code from before it existed (A/B).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    uvloop.run(run(args.tasks, args.concurrency))


if __name__ == "__main__":
    main()
