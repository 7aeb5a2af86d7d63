"""Helpers of the queue tests: the app in the test's event loop or in a thread of its own, and
unique BullMQ queues."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import uvicorn
from bullmq import Queue
from litestar import Litestar

from foreman.server.app import create_app
from foreman.server.runner import Server
from tests.conftest import make_settings
from tests.services import RedisServer, free_port


@contextlib.asynccontextmanager
async def running_app(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan in a task of its own (it must end in the task it began in), and a
    client that calls the app in this event loop, so long polls run alongside other requests
    (Litestar's AsyncTestClient runs each request to its end before the test goes on)."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # the start-up failed: raise its error
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://foreman.test"
        ) as http:
            yield http
    finally:
        stop.set()
        await task


class LiveApp:
    """The app served by uvicorn in a thread, so blocking and asyncio clients both reach it
    (settings: overrides of make_settings')."""

    def __init__(self, database_url: str, **settings: object) -> None:
        self.port = free_port()
        app = create_app(make_settings(database_url, **settings))
        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="on", log_config=None, loop="asyncio"
        )
        self.server = Server(config)  # the runner's: tells the app when its shutdown begins
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveApp:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn thread died"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def unique_queue_name() -> str:
    """A queue of this test alone on the shared Redis (no colon: Node BullMQ rejects it)."""
    return f"foreman-test-{uuid.uuid4().hex}"


def redis_settings(redis: RedisServer, queue_name: str) -> dict[str, object]:
    """Settings overrides for the bullmq backend on the test Redis."""
    return {
        "queue_backend": "bullmq",
        "redis_host": redis.host,
        "redis_port": redis.port,
        "task_queue_name": queue_name,
    }


def bullmq_queue(redis: RedisServer, queue_name: str) -> Queue:
    """A BullMQ Queue object on the test Redis, to inspect or clean up a test's queue."""
    return Queue(queue_name, {"connection": {"host": redis.host, "port": redis.port}})


async def obliterate(redis: RedisServer, queue_name: str) -> None:
    """Remove every key of a test's queue (never FLUSHALL: the Redis is shared)."""
    queue = bullmq_queue(redis, queue_name)
    try:
        await queue.obliterate(force=True)
    finally:
        await queue.close()
