"""Serving the app: uvicorn in one process, or several processes with one SO_REUSEPORT socket each.

One socket per process lets the kernel spread new connections evenly; a shared listening socket
can hand a burst of connections to one process (see shared/PERFORMANCE-NOTES.md).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn

from foreman.background import tune_gc as _tune_gc  # the worker's processes call it too
from foreman.logs import configure_logging
from foreman.server.protocol import limited_protocol
from foreman.settings import Settings

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 30
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # server/metrics.py MULTIPROC_ENV


def _socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(settings: Settings) -> uvicorn.Config:
    from foreman.server.app import create_app

    return uvicorn.Config(
        create_app(settings),
        loop="uvloop",
        http=limited_protocol(settings),  # httptools with header size/time limits
        lifespan="on",
        log_config=None,
        access_log=False,  # our middleware logs each request once, with its id
        # Nothing reads the client address (logs name the caller by organisation and key), so
        # uvicorn's X-Forwarded-For rewriting is a layer of work per request for nothing.
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=2048,
    )


class Server(uvicorn.Server):
    """uvicorn's server, telling the app when its shutdown begins.

    uvicorn waits for open connections before the lifespan's shutdown, so an open event stream
    or long poll would hold a stopping process for GRACEFUL_SHUTDOWN_S: they are told first
    (AppState.drain) and answer at once.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(getattr(self.config.app, "state", None), "foreman", None)
        if state is not None:
            state.drain()
        await super().shutdown(sockets)


def serve_process(settings: Settings, *, reuse_port: bool) -> None:
    """Serve in this process until SIGTERM/SIGINT, finishing in-flight requests first."""
    configure_logging(settings.log_level, json_lines=settings.log_json)
    # uvicorn re-raises the stop signal once it has shut down; exiting through SystemExit lets
    # the caller's finally blocks run (the embedded PostgreSQL is stopped there).
    signal.signal(signal.SIGTERM, _exit)
    sock = _socket(settings.server_host, settings.server_port, reuse_port=reuse_port)
    server = Server(_uvicorn_config(settings))
    _tune_gc()
    server.run(sockets=[sock])


def serve(settings: Settings) -> None:
    """Serve with settings.server_workers processes."""
    logger.info(
        "serving on http://%s:%s with %s process(es)",
        settings.server_host,
        settings.server_port,
        settings.server_workers,
    )
    if settings.ui_enabled and not settings.ui_secret:
        # One dashboard session key for every process of this server (a session made by one
        # process is read by the next); a new one at each start.
        settings = settings.model_copy(update={"ui_secret": secrets.token_urlsafe(32)})
    if settings.server_workers == 1:
        serve_process(settings, reuse_port=False)
        return
    with _metrics_dir(settings):
        _serve_children(settings)


@contextlib.contextmanager
def _metrics_dir(settings: Settings) -> Iterator[None]:
    """Under --workers N, prometheus_client's multiprocess mode: the processes write their figures
    to files in one folder (PROMETHEUS_MULTIPROC_DIR, inherited at spawn, read before any import
    of prometheus_client) and a scrape of any one reads them all. A folder of this server's own,
    removed at its exit, unless the variable names one already."""
    if not settings.metrics_token or METRICS_DIR_ENV in os.environ:
        yield
        return
    folder = tempfile.mkdtemp(prefix="foreman-metrics-")
    os.environ[METRICS_DIR_ENV] = folder
    try:
        yield
    finally:
        del os.environ[METRICS_DIR_ENV]
        shutil.rmtree(folder, ignore_errors=True)


def _serve_children(settings: Settings) -> None:
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(
            target=serve_process, args=(settings,), kwargs={"reuse_port": True}, daemon=False
        )
        for _ in range(settings.server_workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                child.terminate() if signum == signal.SIGTERM else _interrupt(child.pid)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


def _exit(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _interrupt(pid: int) -> None:
    os.kill(pid, signal.SIGINT)
