"""create_app: the Litestar application and the lifespan that owns its resources."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, get
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from foreman import errors
from foreman.server import errors as error_handlers
from foreman.server.deps import AppState
from foreman.server.middleware import RequestLogMiddleware
from foreman.server.routes import run_data, runs, system, tasks
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
        description="Workflow orchestration on PostgreSQL: runs, tasks and run data.",
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


def _cors(settings: Settings) -> CORSConfig | None:
    if not settings.cors_origin:
        return None
    origins = [o.strip() for o in settings.cors_origin.split(",") if o.strip()]
    return CORSConfig(allow_origins=origins, allow_headers=["*"], expose_headers=["x-request-id"])


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
        app.state.foreman = AppState(settings=settings, pool=pool)
        try:
            yield
        finally:
            await pool.close()

    return Litestar(
        route_handlers=[system.router, runs.router, tasks.router, run_data.router, openapi_json],
        lifespan=[lifespan],
        exception_handlers=error_handlers.EXCEPTION_HANDLERS,
        middleware=[RequestLogMiddleware],
        openapi_config=_openapi(settings),
        cors_config=_cors(settings),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        state=None,
        debug=False,
    )
