"""The brokers of the rabbitmq and sqs figures: the server's and workers' settings, a local SQS
server with a call counter in front of it, and the removal of the bench's queues afterwards.

RabbitMQ is the one FOREMAN_RABBITMQ_URL names (default: the machine's). SQS is always a
`moto_server` started here on a free port (the bench never sends load to AWS); its speed bounds
the sqs figures. Every SQS call of the server and the workers passes through ``SqsCallCounter``,
a small HTTP proxy that counts the calls by action: the sqs figures report calls per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

from foreman.bench.services import free_port

logger = logging.getLogger(__name__)

# moto accepts any credentials; botocore needs some (and a region) to sign its requests.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


@dataclass(slots=True)
class SqsCallCounter:
    """An HTTP proxy to an SQS endpoint that counts the calls per action."""

    upstream: str
    calls: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _session: aiohttp.ClientSession | None = None

    def snapshot(self) -> Counter[str]:
        """The counts so far (a copy)."""
        return Counter(self.calls)

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls[_action(request, body)] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=answer.status, body=payload, headers=kept)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SqsCallCounter]:
        """Listen on a free port of 127.0.0.1 (self.url) until the block ends."""
        app = web.Application(client_max_size=1024**2 * 4)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        # No keep-alive: moto's server (werkzeug) closes idle connections under the proxy's feet.
        connector = aiohttp.TCPConnector(limit=256, force_close=True)
        self._session = aiohttp.ClientSession(connector=connector)
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await self._session.close()
            await runner.cleanup()


def _action(request: web.Request, body: bytes) -> str:
    """The SQS action of a call: the JSON protocol's X-Amz-Target, else the query protocol's."""
    target = request.headers.get("X-Amz-Target", "")
    if target:
        return target.rsplit(".", 1)[-1]
    form = parse_qs(body.decode(errors="replace")) or parse_qs(request.query_string)
    return (form.get("Action") or ["unknown"])[0]


def _moto_server() -> str:
    """The moto_server script of this interpreter's environment, or of PATH."""
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(binary).exists():
        raise NotImplementedError(
            "the sqs figures need moto_server: pip install 'moto[server]' (the dev extra)"
        )
    return binary


@contextlib.asynccontextmanager
async def local_sqs() -> AsyncIterator[str]:
    """A moto_server on a free port of 127.0.0.1 (its URL), stopped when the block ends."""
    binary = _moto_server()
    port = free_port()
    # Popen returns at once; the readiness wait below is async.
    process = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter's script
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


async def delete_rabbitmq_queues(url: str, names: list[str]) -> None:
    """Remove the bench's queues (and their dead-letter queues) from a shared RabbitMQ."""
    import aio_pika  # the [rabbitmq] extra

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in names:
            for queue in (name, f"{name}-dead"):
                await channel.queue_delete(queue)
    finally:
        await connection.close()
