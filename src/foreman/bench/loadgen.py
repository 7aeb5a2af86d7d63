"""A closed-loop load generator: N concurrent loops repeat one operation for a warm-up and a window.

Every loop awaits its operation, then starts the next, so N is exactly the number of requests in
flight (N keep-alive connections). Only operations that *finish* inside the measured window count,
and their latency is recorded; errors inside the window are counted and never count as throughput.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from foreman.bench.stats import Summary, summarize

logger = logging.getLogger(__name__)

# One unit of work; i numbers the calls so an operation can spread over runs or tasks.
Operation = Callable[[int], Awaitable[bool]]


class WindowProbe(Protocol):
    """Something sampled at the start and end of the measured window (CPU counters)."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, float | None]: ...


@dataclass(slots=True)
class LoadResult:
    """The summary of one figure plus what the probe saw and the first errors."""

    summary: Summary
    concurrency: int
    warmup_s: float
    cpu: dict[str, float | None] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)

    def cpu_us_per_op(self) -> dict[str, float | None]:
        """CPU microseconds per successful operation by who spent them (server, postgres, ...).

        Less sensitive than throughput to neighbours on a shared machine: they take cores away
        from the measured processes, which lowers the rate, but hardly the cost of each request.
        """
        per_s = self.summary.per_s
        return {
            name.removesuffix("_cores"): None
            if cores is None or not per_s
            else round(cores / per_s * 1e6, 1)
            for name, cores in self.cpu.items()
            if name not in ("machine_cores", "postgres_all_cores")
        }


@dataclass(slots=True)
class _Window:
    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    counter: int = 0

    def record_error(self, finished: float, reason: str) -> None:
        if self.start <= finished <= self.end:
            self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(reason)


async def _loop(operation: Operation, window: _Window) -> None:
    clock = time.perf_counter
    while True:
        index = window.counter
        window.counter += 1
        began = clock()
        try:
            ok = await operation(index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a load generator reports failures, it does not die of them
            window.record_error(clock(), f"{type(exc).__name__}: {exc}")
        else:
            finished = clock()
            if not ok:
                window.record_error(finished, "unexpected response")
            elif window.start <= finished <= window.end:
                window.latencies.append(finished - began)
        if clock() >= window.end:
            return


async def _probe_window(probe: WindowProbe, window: _Window) -> dict[str, float | None]:
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    probe.start()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    return probe.stop()


async def drive(
    operation: Operation,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    probe: WindowProbe | None = None,
) -> LoadResult:
    """Run operation in concurrency loops for warmup_s, then measure it for duration_s."""
    now = time.perf_counter()
    window = _Window(start=now + warmup_s, end=now + warmup_s + duration_s)
    probing = asyncio.ensure_future(_probe_window(probe, window)) if probe else None
    # Bounded: each loop returns once the window has ended; a hung request times out in the client.
    await asyncio.gather(*(_loop(operation, window) for _ in range(concurrency)))
    cpu = await probing if probing is not None else {}
    summary = summarize(window.latencies, errors=window.errors, duration_s=duration_s)
    if window.samples:
        logger.warning("errors during the load, first ones: %s", window.samples)
    return LoadResult(summary, concurrency, warmup_s, cpu, window.samples)
