"""The dashboard's server time per page with 1,000,000 tasks in the organisation (issue 15).

Loads (or reuses) `foreman bench`'s scale database of ROWS tasks and run-data rows (1,000 runs of
1,000 tasks, the status mix of a busy installation), logs in to /ui in process and times each
page CALLS times, one request after another: the app's whole answer, database included, no socket.

    FOREMAN_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python benchmarks/ui_scale.py [--rows 1000000] [--calls 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time

import asyncpg
from litestar.testing import AsyncTestClient

from foreman.bench import scaledata
from foreman.bench.defaults import BENCH_API_KEY, BENCH_ORG
from foreman.bench.services import BenchDatabase, with_database
from foreman.server.app import create_app
from foreman.settings import Settings


async def sample_ids(url: str) -> tuple[str, str, str]:
    conn = await asyncpg.connect(url)
    try:
        run_id = await conn.fetchval(
            "SELECT id::text FROM run WHERE org_id = $1 ORDER BY created_at DESC LIMIT 1 OFFSET 500",
            BENCH_ORG,
        )
        task_id = await conn.fetchval(
            "SELECT id::text FROM task WHERE run_id = $1::uuid ORDER BY created_at LIMIT 1", run_id
        )
    finally:
        await conn.close()
    return run_id, task_id, run_id[:9]


async def main(rows: int, calls: int) -> None:
    admin = with_database(os.environ["FOREMAN_DATABASE_URL"], "postgres")
    scale = await scaledata.prepare(BenchDatabase(admin, "FOREMAN_DATABASE_URL"), rows, reuse=True)
    run_id, task_id, prefix = await sample_ids(scale.url)
    app = create_app(Settings(database_url=scale.url, sweep_enabled=False))
    pages = {
        "runs": "/ui/runs",
        "runs, status filter": "/ui/runs?status=completed",
        "runs, oldest first, page 20": "/ui/runs?order=asc&page=20",
        "runs, id prefix search": f"/ui/runs?q={prefix}",
        "run (tasks, run data)": f"/ui/runs/{run_id}",
        "run, tasks failed": f"/ui/runs/{run_id}?status=failed",
        "run, run data key + tag": f"/ui/runs/{run_id}?key=metrics&tag=t1",
        "task": f"/ui/tasks/{task_id}",
        "queues": "/ui/queues",
        "workers": "/ui/workers",
    }
    async with AsyncTestClient(app=app) as client:
        form = await client.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        login = await client.post("/ui/login", data={"apiKey": BENCH_API_KEY, "csrf": csrf[1]})
        assert login.status_code in (200, 303), login.text
        print(f"{rows:,} tasks, {calls} calls per page, in process (ms)")
        print(f"{'page':32} {'p50':>7} {'p95':>7} {'max':>7}")
        for name, path in pages.items():
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                response = await client.get(path)
                times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            times.sort()
            p95 = times[int(len(times) * 0.95) - 1]
            print(f"{name:32} {statistics.median(times):7.2f} {p95:7.2f} {times[-1]:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.calls))
