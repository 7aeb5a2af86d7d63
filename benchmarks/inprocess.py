"""Drive the ASGI app in process, one request after another, and print its CPU per request.

No server, socket or load generator: what is left is the app (Litestar, our middleware, routes,
store and pool) and asyncpg. Under callgrind the instruction count is the same from run to run
whatever else the machine does, so two runs of different lengths give the instructions of one
request, a figure that compares code changes on this noisy machine:

    python benchmarks/inprocess.py get 1000                      # CPU µs per request
    for n in 200 1200; do
        PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
            python benchmarks/inprocess.py get $n 2>&1 | grep Collected
    done                                                          # (b - a) / 1000 = per request

PYTHONHASHSEED=0 matters: with random hash seeds the start-up count alone moves by ~150M
instructions between runs, which swamps the difference of the two lengths.

The database is FOREMAN_DATABASE_URL's (migrated here); LOG_LEVEL sets the log level (INFO
writes the access line per request, as a server does by default).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
from typing import Any

import msgspec
import uvloop

from foreman.logs import configure_logging
from foreman.server.app import create_app
from foreman.settings import Settings
from foreman.store.migrate import apply_migrations

KEY = b"Bearer fmn_bench_inprocess_0123456789"


def _scope(method: str, path: str, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"authorization", KEY)]
    if body:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 3000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


async def call(app: Any, method: str, path: str, body: bytes = b"") -> list[dict[str, Any]]:
    """One request through the app; the ASGI messages it sent."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the app runs
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(method, path, body), receive, send)
    return sent


async def measure(route: str, count: int) -> None:
    database_url = os.environ["FOREMAN_DATABASE_URL"]
    apply_migrations(database_url)
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    app = create_app(Settings(database_url=database_url, sweep_enabled=False))
    async with app.lifespan():
        run = await call(app, "POST", "/api/v1/runs", b'{"inputData":{"a":1}}')
        run_id = msgspec.json.decode(run[1]["body"])["id"]
        body = msgspec.json.encode({"runId": run_id, "type": "t", "inputData": {}})
        task = await call(app, "POST", "/api/v1/tasks", body)
        task_id = msgspec.json.decode(task[1]["body"])["id"]
        if route == "get":
            request = ("GET", f"/api/v1/tasks/{task_id}", b"")
        elif route == "task":  # a queued task (the postgres backend: no publish)
            enqueue = msgspec.json.encode(
                {"runId": run_id, "type": "t", "inputData": {}, "enqueue": True}
            )
            request = ("POST", "/api/v1/tasks", enqueue)
        else:
            request = ("POST", "/api/v1/runs", b'{"inputData":{"a":1}}')
        for _ in range(200):  # warm: statement caches, pool connections
            await call(app, *request)
        gc.collect()
        gc.freeze()  # as serving processes do (server/runner.py)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            answer = await call(app, *request)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert answer[0]["status"] in (200, 201), answer
    print(f"{route}: {1e6 * cpu / count:.1f} µs CPU, {1e6 * wall / count:.1f} µs wall per request")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "route", choices=["get", "post", "task"], help="GET /tasks/:id, POST /runs or POST /tasks"
    )
    parser.add_argument("count", type=int, nargs="?", default=2000)
    args = parser.parse_args()
    uvloop.run(measure(args.route, args.count))


if __name__ == "__main__":
    main()
