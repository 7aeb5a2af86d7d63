"""create_app: the Litestar application and the lifespan that owns its resources."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, get
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from foreman import errors
from foreman.queue import open_queue
from foreman.server import edge
from foreman.server import errors as error_handlers
from foreman.server.auth import Authenticator
from foreman.server.deps import AppState, JsonRequest
from foreman.server.middleware import BodyLimitMiddleware, cors_config
from foreman.server.notify import Notifier
from foreman.server.responses import JsonResponse
from foreman.server.routes import queue as queue_routes
from foreman.server.routes import run_data, runs, schedules, system, tasks
from foreman.server.scheduler import Scheduler
from foreman.server.sweeper import Sweeper
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


class ForemanApp(Litestar):
    """Litestar inside the server's edge (server/edge.py): request ids, HEAD, security headers
    and the access log around everything Litestar answers, unknown routes included."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await edge.handle(super().__call__, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> Litestar:
    """The API over the database of settings.database_url (already migrated, already running)."""
    database_url = settings.resolved_database_url()
    if database_url is None:
        raise errors.ForemanError(
            "create_app needs a database URL (the CLI starts the embedded one)"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await db.create_pool(
            database_url,
            min_size=min(settings.db_pool_min, settings.db_pool_max),
            max_size=settings.db_pool_max,
            command_timeout_s=settings.db_command_timeout_s,
            connect_timeout_s=settings.db_connect_timeout_s,
        )
        queue = open_queue(settings)
        notifier = Notifier(database_url)  # one LISTEN connection: wakes long polls
        notifier.start()
        sweeper = None
        if settings.sweep_enabled:
            sweeper = await Sweeper.open(settings, database_url=database_url, queue=queue)
            sweeper.start()
        scheduler = None
        if settings.schedule_enabled:
            scheduler = await Scheduler.open(settings, database_url=database_url, queue=queue)
            scheduler.start()
        app.state.foreman = AppState(
            settings=settings,
            pool=pool,
            auth=Authenticator(settings, pool=pool),
            queue=queue,
            notifier=notifier,
        )
        try:
            yield
        finally:
            if scheduler is not None:
                await scheduler.close()
            if sweeper is not None:
                await sweeper.close()
            await notifier.close()
            await queue.close()
            await pool.close()

    return ForemanApp(
        route_handlers=[
            system.router,
            runs.router,
            tasks.router,
            queue_routes.router,
            run_data.router,
            schedules.router,
            openapi_json,
        ],
        lifespan=[lifespan],
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
