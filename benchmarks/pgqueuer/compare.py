"""PgQueuer 1.6 side by side with Foreman's figures: end to end, processing only, enqueue only.

Run with the interpreter of the venv that `benchmarks/pgqueuer/run.sh` makes (pgqueuer, asyncpg,
psutil); it measures PgQueuer's own `pgq run` worker with `--batch-size 100`, the shape of
`foreman bench --only e2e_postgres,drain_postgres,api_batch_enqueue`: 20,000 no-op jobs enqueued
in batches of 500 by one connection, one worker process. CPU per job counts the worker process,
the load generator (this process) and the PostgreSQL backends of the bench's database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

HERE = Path(__file__).resolve().parent
DATABASE = "foreman_bench_pgqueuer"


def postgres_cpu_s(database: str) -> dict[int, float]:
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        info = process.info
        if info.get("name") not in ("postgres", "postmaster") or info.get("cpu_times") is None:
            continue
        if f" {database} " not in " ".join(info.get("cmdline") or ()):
            continue
        found[process.pid] = info["cpu_times"].user + info["cpu_times"].system
    return found


class Cpu:
    """CPU seconds of the worker, this process and the database's backends over a window."""

    def __init__(self, worker: psutil.Process | None) -> None:
        self.worker = worker
        self.began_pg = postgres_cpu_s(DATABASE)
        self.began_self = time.process_time()
        self.began_worker = self._worker_s()

    def _worker_s(self) -> float:
        if self.worker is None:
            return 0.0
        times = self.worker.cpu_times()
        return times.user + times.system

    def used_s(self) -> float:
        pg = sum(s - self.began_pg.get(pid, 0.0) for pid, s in postgres_cpu_s(DATABASE).items())
        return pg + (time.process_time() - self.began_self) + (self._worker_s() - self.began_worker)


async def enqueue(queries: Queries, jobs: int, batch: int) -> None:
    for start in range(0, jobs, batch):
        n = min(batch, jobs - start)
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)


async def remaining(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM pgqueuer"))


async def wait_empty(connection: asyncpg.Connection, deadline_s: float = 180.0) -> float:
    end = time.perf_counter() + deadline_s
    while await remaining(connection) and time.perf_counter() < end:  # noqa: ASYNC110 - polls the table
        await asyncio.sleep(0.01)
    return time.perf_counter()


def start_worker(dsn: str, batch_size: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGDSN": dsn, "PYTHONPATH": str(HERE)}
    return subprocess.Popen(
        [sys.executable, str(HERE / "worker.py"), str(batch_size)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_listening(connection: asyncpg.Connection) -> None:
    """Until the worker's LISTEN connection is up (it is ready to take jobs)."""
    for _ in range(500):
        waiting = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            DATABASE,
        )
        if waiting:
            await asyncio.sleep(0.5)
            return
        await asyncio.sleep(0.02)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {DATABASE}")
    dsn = args.dsn.rsplit("/", 1)[0] + f"/{DATABASE}"
    pgq = Path(sys.executable).parent / "pgq"
    subprocess.run([str(pgq), "--pg-dsn", dsn, "install"], check=True, capture_output=True)  # noqa: ASYNC221 - before any timing
    connection = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(connection))
    results: dict[str, list[float]] = {"e2e": [], "drain": [], "enqueue": [], "cpu_us_e2e": []}
    try:
        for _ in range(args.rounds):
            # Enqueue only: no worker.
            began = time.perf_counter()
            await enqueue(queries, args.jobs, args.batch)
            results["enqueue"].append(args.jobs / (time.perf_counter() - began))
            # Processing only: the jobs wait; a worker starts and drains them.
            worker = start_worker(dsn, args.batch_size)
            began = time.perf_counter()
            first = None
            while await remaining(connection) >= args.jobs:
                if worker.poll() is not None:
                    raise RuntimeError(worker.stderr.read().decode()[-3000:])
                await asyncio.sleep(0.005)
            first = time.perf_counter()
            finished = await wait_empty(connection)
            results["drain"].append(args.jobs / (finished - first))
            # End to end: the worker waits, the jobs come in batches.
            await asyncio.sleep(0.5)
            cpu = Cpu(psutil.Process(worker.pid))
            began = time.perf_counter()
            await enqueue(queries, args.jobs, args.batch)
            finished = await wait_empty(connection)
            results["cpu_us_e2e"].append(cpu.used_s() / args.jobs * 1e6)
            results["e2e"].append(args.jobs / (finished - began))
            stop_worker(worker)
            print(json.dumps({k: round(v[-1]) for k, v in results.items()}), flush=True)
            await connection.execute("TRUNCATE pgqueuer_log, pgqueuer_statistics")
    finally:
        await connection.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.close()
    best = {
        f"pgqueuer_{k}_best": round(max(v) if k != "cpu_us_e2e" else min(v))
        for k, v in results.items()
    }
    print(json.dumps({"rounds": {k: [round(x) for x in v] for k, v in results.items()}, **best}))


if __name__ == "__main__":
    asyncio.run(main())
