"""What the machine is (cores, memory, versions) and who used its CPU during a measured window."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    """Cores, memory and software versions, for the report's metadata."""
    cpu_model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu_model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                None,
            )
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            name: _version(name)
            for name in ("foreman", "litestar", "uvicorn", "asyncpg", "aiohttp")
        },
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and its children (a gone process counts 0)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _postgres_cpu_s(database: str | None) -> dict[int, float]:
    """CPU seconds per postgres process: every one, or the backends of one database.

    A backend's process title names its database ("postgres: user db 127.0.0.1(5432) idle"),
    which separates the bench's own backends from other work on a shared server.
    """
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        info = process.info
        if info.get("name") not in ("postgres", "postmaster") or info.get("cpu_times") is None:
            continue
        if database is not None and f" {database} " not in " ".join(info.get("cmdline") or ()):
            continue
        found[process.pid] = info["cpu_times"].user + info["cpu_times"].system
    return found


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass(slots=True)
class CpuProbe:
    """Cores used during the window by the server processes, PostgreSQL, the load and the machine.

    "cores" = CPU seconds / window seconds, so 1.0 is one core fully busy; the machine has
    os.cpu_count() of them. "postgres" counts only the backends connected to `database` (when
    given); "postgres_all" and "machine" include everyone's load on this host.
    """

    server_pids: list[int] = field(default_factory=list)
    database: str | None = None
    _began: float = 0.0
    _before: dict[str, float] = field(default_factory=dict)
    _backends: dict[int, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        return {
            "server": sum(_tree_cpu_s(pid) for pid in self.server_pids),
            "postgres_all": sum(_postgres_cpu_s(None).values()),
            "loadgen": time.process_time(),
            "machine": _machine_busy_s(),
        }

    def start(self) -> None:
        self._began = time.perf_counter()
        self._before = self._sample()
        if self.database is not None:
            self._backends = _postgres_cpu_s(self.database)

    def stop(self) -> dict[str, float | None]:
        elapsed = time.perf_counter() - self._began
        after = self._sample()
        cores: dict[str, float | None] = {
            f"{name}_cores": round((after[name] - self._before[name]) / elapsed, 3)
            for name in after
        }
        cores["postgres_cores"] = None
        if self.database is not None:
            backends = _postgres_cpu_s(self.database)
            used = sum(cpu - self._backends.get(pid, 0.0) for pid, cpu in backends.items())
            cores["postgres_cores"] = round(used / elapsed, 3)
        if not self.server_pids:  # a remote --endpoint: its CPU is not visible from here
            cores["server_cores"] = None
        return cores


@dataclass(slots=True)
class TaskCpu:
    """CPU seconds spent on a batch of tasks, by part: the server, the workers, this load
    generator, and PostgreSQL (the backends connected to `database`, autovacuum included).

    Over a window, like CpuProbe, but in seconds, to divide by the tasks done (cpu_us_per_task).
    PostgreSQL's shared processes (WAL writer, checkpointer) are not counted: they serve everyone.
    """

    server_pids: list[int]
    worker_pids: list[int]
    database: str | None = None
    _before: dict[str, float] = field(default_factory=dict)
    _backends: dict[int, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        return {
            "server": sum(_tree_cpu_s(pid) for pid in self.server_pids),
            "workers": sum(_tree_cpu_s(pid) for pid in self.worker_pids),
            "loadgen": time.process_time(),
        }

    def start(self) -> None:
        self._before = self._sample()
        self._backends = _postgres_cpu_s(self.database) if self.database else {}

    def stop(self) -> dict[str, float | None]:
        """Seconds per part since start(); postgres is None when its backends are not ours."""
        after = self._sample()
        used: dict[str, float | None] = {k: after[k] - self._before[k] for k in after}
        used["postgres"] = None
        if self.database is not None:
            backends = _postgres_cpu_s(self.database)
            used["postgres"] = sum(s - self._backends.get(pid, 0.0) for pid, s in backends.items())
        if not self.server_pids:
            used["server"] = None
        return used
