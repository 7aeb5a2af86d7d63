"""create_app: the Litestar application and the lifespan that owns its resources."""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from foreman import errors, tracing
from foreman.queue import open_queue, open_redis_acl
from foreman.queue.base import QueueBackend
from foreman.server import edge
from foreman.server import errors as error_handlers
from foreman.server.auth import Authenticator
from foreman.server.deps import AppState, JsonRequest
from foreman.server.events import EventHub
from foreman.server.metrics import Exporter, ServerMetrics
from foreman.server.middleware import BodyLimitMiddleware, cors_config
from foreman.server.notify import Notifier
from foreman.server.responses import JsonResponse
from foreman.server.routes import queue as queue_routes
from foreman.server.routes import run_data, runs, schedules, system, tasks
from foreman.server.scheduler import Scheduler
from foreman.server.sweeper import Sweeper
from foreman.server.ui import pages, render
from foreman.server.ui import session as ui_session
from foreman.settings import Settings
from foreman.store import db

logger = logging.getLogger(__name__)


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI document (also at /docs/openapi.json)."""
    return request.app.openapi_schema.to_schema()


def _openapi(settings: Settings) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Foreman",
        version=settings.version,
        description="Workflow orchestration on PostgreSQL: runs, tasks, run data and schedules.",
        path="/docs",
        render_plugins=[SwaggerRenderPlugin(path="/")],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", description="fmn_<env>_<org>_<random>"
                ),
                "apiKey": SecurityScheme(
                    type="apiKey", name="x-api-key", security_scheme_in="header"
                ),
            }
        ),
        security=[{"bearer": []}, {"apiKey": []}],
    )


# Litestar adds "; charset=utf-8" to a text/* type itself.
@get("/metrics", include_in_schema=False, media_type="text/plain; version=0.0.4")
async def metrics_text(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The Prometheus text format, for a caller with FOREMAN_METRICS_TOKEN as its bearer."""
    exporter: Exporter = request.app.state.foreman_exporter
    if not exporter.authorized(request.headers.get("authorization")):
        raise errors.UnauthorizedError("/metrics needs FOREMAN_METRICS_TOKEN as a bearer token")
    return Response(await exporter.exposition())


class ForemanApp(Litestar):
    """Litestar inside the server's edge (server/edge.py): request ids, HEAD, security headers,
    the access log and the request metrics around everything Litestar answers, unknown routes
    included."""

    foreman_metrics: ServerMetrics | None = None  # None: metrics are off (no token)
    foreman_traced: Any = None  # Litestar inside the request spans (server/traces.py); None: off

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            app = self.foreman_traced or super().__call__
            await edge.handle(app, scope, receive, send, self.foreman_metrics)
        else:
            await super().__call__(scope, receive, send)


async def _start_loops(
    settings: Settings, *, database_url: str, queue: QueueBackend, metrics: ServerMetrics | None
) -> list[Sweeper | Scheduler]:
    """The background loops this process runs, started: the sweeper, the schedules' firing loop."""
    loops: list[Sweeper | Scheduler] = []
    if settings.sweep_enabled:
        loops.append(
            await Sweeper.open(settings, database_url=database_url, queue=queue, metrics=metrics)
        )
    if settings.schedule_enabled:
        loops.append(
            await Scheduler.open(settings, database_url=database_url, queue=queue, metrics=metrics)
        )
    for loop in loops:
        loop.start()
    return loops


def create_app(settings: Settings) -> Litestar:
    """The API over the database of settings.database_url (already migrated, already running)."""
    database_url = settings.resolved_database_url()
    if database_url is None:
        raise errors.ForemanError(
            "create_app needs a database URL (the CLI starts the embedded one)"
        )

    exporter = None
    if settings.metrics_token:
        exporter = Exporter(settings, database_url=database_url)
    untraced = _untraced_lifespans()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await db.create_pool(
            database_url,
            min_size=min(settings.db_pool_min, settings.db_pool_max),
            max_size=settings.db_pool_max,
            command_timeout_s=settings.db_command_timeout_s,
            connect_timeout_s=settings.db_connect_timeout_s,
            pgbouncer=settings.db_pgbouncer,
        )
        queue = open_queue(settings)
        redis_acl = open_redis_acl(settings)
        notifier = Notifier(settings.listen_url(database_url))  # wakes long polls
        notifier.start()
        metrics = None if exporter is None else exporter.metrics
        hub = EventHub(
            pool,
            notifier if settings.listen_url(database_url) else None,
            poll_s=settings.events_poll_s,
            settle_ms=settings.events_settle_ms,
            heartbeat_s=settings.events_heartbeat_s,
        )
        loops = await _start_loops(
            settings, database_url=database_url, queue=queue, metrics=metrics
        )
        app.state.foreman = AppState(
            settings=settings,
            pool=pool,
            auth=Authenticator(settings, pool=pool),
            queue=queue,
            notifier=notifier,
            redis_acl=redis_acl,
            metrics=metrics,
            events=hub,
        )
        if exporter is not None:
            app.state.foreman_exporter = exporter
            exporter.start([pool])
        try:
            yield
        finally:
            if redis_acl is not None:
                await redis_acl.close()
            if exporter is not None:
                await exporter.close()
            for loop in reversed(loops):
                await loop.close()
            await hub.close()
            await notifier.close()
            await queue.close()
            await pool.close()

    handlers: list[Any] = [
        system.router,
        runs.router,
        tasks.router,
        queue_routes.router,
        run_data.router,
        schedules.router,
        openapi_json,
    ]
    if exporter is not None:
        handlers.append(metrics_text)
    if settings.ui_enabled:
        handlers.append(pages.router())
    app = ForemanApp(
        route_handlers=handlers,
        lifespan=[*untraced, lifespan],
        exception_handlers=error_handlers.EXCEPTION_HANDLERS,
        middleware=[DefineMiddleware(BodyLimitMiddleware, settings=settings)],
        openapi_config=_openapi(settings),
        cors_config=cors_config(settings),
        request_max_body_size=settings.max_body_bytes,
        request_class=JsonRequest,  # strict JSON bodies (SPEC section 2)
        response_class=JsonResponse,  # plain JSON answers take a short path
        logging_config=None,
        state=None,
        debug=False,
    )
    app.foreman_metrics = None if exporter is None else exporter.metrics
    if untraced:
        app.foreman_traced = _traced_requests(app)
    if settings.ui_enabled:
        # Without FOREMAN_UI_SECRET, one per app (the runner makes one for all its processes).
        secret = settings.ui_secret or secrets.token_urlsafe(32)
        signer = ui_session.Signer(secret, session_s=settings.ui_session_s)
        app.state.foreman_ui = render.Dashboard(signer)
    return app


def _untraced_lifespans() -> list[Any]:
    """[] while traces are off (foreman/tracing.py); else, with a span per SQL statement from now
    on, the lifespan to enter first, so that what the app's lifespan starts makes none."""
    if not tracing.configure("foreman-server"):
        return []
    from foreman.server import traces  # imports OpenTelemetry: only when traces are on

    traces.instrument_statements()
    return [traces.untraced_lifespan]


def _traced_requests(app: Litestar) -> Any:
    """Litestar's handling of app inside a span per request (server/traces.py)."""
    from foreman.server import traces

    return traces.traced(functools.partial(Litestar.__call__, app))
