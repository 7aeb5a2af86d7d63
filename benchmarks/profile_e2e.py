"""Profile the worker and the server on the end-to-end path with py-spy, and print their CPU per task.

    python benchmarks/profile_e2e.py --mode drain --tasks 100000 --out /tmp/prof-e2e
    python benchmarks/profile_e2e.py --mode e2e --tasks 60000 --no-spy     # CPU per task only

Starts `foreman server` (2 processes) on a fresh database and one `foreman worker` process of
200 no-op handlers (the bench's fleet), queues the tasks (drain: before the worker starts; e2e:
in batches of 500 while it runs), records the worker and the server processes with
`py-spy record --format raw` while the tasks run, and prints the CPU µs per task of each part
(as `foreman bench`'s `cpu_us_per_task_by_part`) and each recording's summary
(`benchmarks/profile.py`'s buckets, top inclusive and self). PYTHONPATH picks the code measured.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil

from foreman.bench import e2e, services, sysinfo
from foreman.bench.defaults import BENCH_API_KEY
from foreman.client import AsyncClient
from foreman.logs import configure_logging
from foreman.settings import Settings


def _summarise(raw: Path, top: int) -> str:
    """benchmarks/profile.py's summary (loaded by path: `profile` is a standard module too)."""
    spec = importlib.util.spec_from_file_location(
        "foreman_profile", Path(__file__).with_name("profile.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.summarise(raw, top=top))


def _spy(
    pid: int, raw: Path, duration_s: float, *, subprocesses: bool, native: bool
) -> subprocess.Popen[bytes]:
    command = [
        shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
        "--pid", str(pid), "--duration", str(max(1, int(duration_s))), "--rate", "250",
        "--format", "raw", "--output", str(raw),
        *(["--subprocesses"] if subprocesses else []), *(["--native"] if native else ["--nonblocking"]),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _statements(database_url: str) -> dict[str, tuple[int, int]]:
    """Calls and rows per statement of this database (pg_stat_statements; read, never reset)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = await conn.fetch(
            "SELECT query, calls, rows FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    finally:
        await conn.close()
    return {r["query"]: (r["calls"], r["rows"]) for r in rows}


def _statement_diff(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], tasks: int
) -> str:
    lines = []
    for query, (calls, rows) in after.items():
        calls0, rows0 = before.get(query, (0, 0))
        if calls - calls0 >= 5:
            name = " ".join(query.split())[:70]
            lines.append((calls - calls0, rows - rows0, name))
    lines.sort(reverse=True)
    return "\n".join(
        f"  {c:7d} calls {r:8d} rows ({r / max(c, 1):6.1f}/call, {c * 1000 / tasks:5.1f} per 1000 tasks) {n}"
        for c, r, n in lines[:8]
    )


async def _wait_done(client: AsyncClient, run_id: str, count: int, workers: list) -> None:
    await e2e.wait_completed(
        client, run_id, count, deadline=time.perf_counter() + 300, workers=workers
    )


async def profile(args: argparse.Namespace) -> None:
    with services.postgres_server(Settings()) as server:
        url = await services.fresh_bench_database(server)
        try:
            async with services.run_server(url, workers=2, log_level="WARNING") as srv:
                fleet = e2e.Fleet(
                    srv.endpoint, BENCH_API_KEY, "postgres", e2e.Workers(1, args.concurrency),
                    server_pids=tuple(srv.pids), database=services.BENCH_DATABASE,
                )  # fmt: skip
                for round_ in range(args.rounds):
                    before = await _statements(url)
                    done = await _one(args, fleet, srv.process.pid, round_)
                    print(_statement_diff(before, await _statements(url), done), flush=True)
        finally:
            await services.drop_database(server.admin_url, services.BENCH_DATABASE)


async def _one(args: argparse.Namespace, fleet: e2e.Fleet, server_pid: int, round_: int) -> int:
    async with AsyncClient(fleet.endpoint, fleet.api_key, timeout=60.0) as client:
        run = await client.create_run({"bench": "profile"})
        if args.mode == "drain":
            await e2e._enqueue(client, run.id, args.tasks)
        async with e2e.run_workers(fleet) as processes:
            worker_pid = processes[0].pid
            await asyncio.sleep(1.5)  # imports and the first claims
            cpu = sysinfo.TaskCpu([server_pid], [worker_pid], fleet.database)
            before = (await client.get_run(run.id)).completed_tasks
            cpu.start()
            split = [psutil.Process(pid).cpu_times() for pid in (worker_pid, server_pid)]
            began = time.perf_counter()
            spies = []
            if args.spy:
                tag = f"{args.mode}-r{round_}"
                # The server's processes are the runner's children: py-spy follows them.
                spies = [
                    _spy(
                        pid,
                        args.out / f"{tag}-{name}.txt",
                        args.spy_s,
                        subprocesses=children,
                        native=args.native,
                    )
                    for pid, name, children in (
                        (worker_pid, "worker", False),
                        (server_pid, "server", True),
                    )
                ]
            if args.mode == "e2e":
                await e2e._enqueue(client, run.id, args.tasks)
            await _wait_done(client, run.id, args.tasks, processes)
            used = cpu.stop()
            split = [
                (t.user - t0.user, t.system - t0.system)
                for t, t0 in zip(
                    [psutil.Process(pid).cpu_times() for pid in (worker_pid, server_pid)],
                    split,
                    strict=True,
                )
            ]
            elapsed = time.perf_counter() - began
            done = (await client.get_run(run.id)).completed_tasks - before
            for spy in spies:
                spy.wait()
    parts = {k: None if v is None else round(v * 1e6 / done, 1) for k, v in used.items()}
    total = sum(v for v in parts.values() if v is not None)
    print(
        f"{args.mode} round {round_}: {done} tasks in {elapsed:.2f}s = {done / elapsed:,.0f}/s;"
        f" cpu µs/task {total:.1f} {parts}; worker user/system µs/task"
        f" {split[0][0] * 1e6 / done:.1f}/{split[0][1] * 1e6 / done:.1f}",
        flush=True,
    )
    return done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["drain", "e2e"], default="drain")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--spy-s", type=float, default=6.0, help="seconds py-spy records")
    parser.add_argument("--native", action="store_true", help="C frames too (uvloop, asyncpg)")
    parser.add_argument("--no-spy", dest="spy", action="store_false")
    parser.add_argument("--out", type=Path, default=Path("/tmp/foreman-profile-e2e"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    configure_logging("WARNING")
    import uvloop

    uvloop.run(profile(args))
    if args.spy:
        for raw in sorted(args.out.glob(f"{args.mode}-r*-*.txt")):
            print(f"\n===== {raw.name}\n{_summarise(raw, top=40)}")


if __name__ == "__main__":
    main()
