"""Profile the server under one bench load with py-spy, and summarise where its time goes.

    python benchmarks/profile.py --figure api_get_task --workers 1 --log WARNING --out /tmp/prof

Starts `foreman server` on a fresh foreman_bench database, drives the figure's load, records the
server processes with `py-spy record --format raw` (collapsed stacks) during the load, then prints
the functions with the largest inclusive and self share of the samples, and the share of
coarse buckets (logging, asyncpg, litestar, uvicorn/httptools, msgspec, foreman code).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from foreman.bench import api, services
from foreman.bench.defaults import FULL, Profile
from foreman.bench.http import open_http
from foreman.logs import configure_logging
from foreman.settings import Settings

BUCKETS = {
    "logging": ("logging/", "foreman/logs.py"),
    "asyncpg": ("asyncpg/",),
    "litestar": ("litestar/",),
    "uvicorn+httptools": ("uvicorn/", "httptools/"),
    "msgspec": ("msgspec",),
    "foreman store": ("foreman/store/",),
    "foreman routes": (
        "foreman/server/routes/",
        "foreman/server/deps.py",
        "foreman/server/auth.py",
    ),
}


def summarise(raw: Path, top: int = 25) -> str:
    """Inclusive and self shares per function, and per bucket, from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        for name, needles in BUCKETS.items():
            if any(any(n in frame for n in needles) for frame in frames):
                buckets[name] += count
    lines = [f"{total} samples"]
    lines.append("\n-- buckets (inclusive; overlapping) --")
    lines += [f"{100 * c / total:5.1f}%  {name}" for name, c in buckets.most_common()]
    lines.append("\n-- top inclusive --")
    lines += [f"{100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    lines.append("\n-- top self --")
    lines += [f"{100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(lines)


async def profile(args: argparse.Namespace) -> Path:
    load = Profile(
        name="profile",
        warmup_s=3.0,
        duration_s=args.duration + 6.0,
        get_task_pool=FULL.get_task_pool,
    )
    raw: Path = args.out / f"{args.figure}-w{args.workers}-{args.log}.txt"
    with services.postgres_server(Settings()) as server:
        url = await services.fresh_bench_database(server)
        try:
            async with (
                services.run_server(url, workers=args.workers, log_level=args.log) as srv,
                open_http(srv.endpoint, connections=load.concurrency) as http,
            ):
                task = asyncio.ensure_future(api.measure_figure(http, args.figure, load))
                await asyncio.sleep(8.0)  # set-up and warm-up
                command = [
                    shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(srv.process.pid),
                    "--subprocesses", "--duration", str(int(args.duration)), "--rate", "250",
                    "--format", "raw", "--output", str(raw),
                    *(["--native"] if args.native else []),
                ]  # fmt: skip
                spy = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL)
                await spy.wait()
                result = await task
                print(
                    f"{args.figure}: {result.summary.per_s:.0f}/s during the profile",
                    file=sys.stderr,
                )
        finally:
            await services.drop_database(server.admin_url, services.BENCH_DATABASE)
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--figure",
        default="api_get_task",
        choices=["api_post_runs", "api_get_task", "api_lifecycle", "api_lifecycle_one_run"],
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log", default="WARNING")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--native", action="store_true", help="C frames too (asyncpg, uvloop)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/foreman-profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    configure_logging("INFO")
    import uvloop

    raw = uvloop.run(profile(args))
    print(summarise(raw))


if __name__ == "__main__":
    main()
