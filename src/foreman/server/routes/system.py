"""Health and configuration (SPEC section 5)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
from litestar import Request, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec

from foreman import ids
from foreman.models import (
    Config,
    Health,
    HealthServices,
    QueueBackendConfig,
    QueuesConfig,
    RedisConfig,
)
from foreman.queue import naming
from foreman.server import context
from foreman.server.auth import authenticated, may_see_redis_password, request_org
from foreman.server.deps import error_responses, state
from foreman.settings import Settings

HEALTH_TIMEOUT_S = 2.0


async def _database_ok(request: Request[Any, Any, Any]) -> bool:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            async with state(request).pool.acquire() as conn:
                try:
                    await conn.fetchval("SELECT 1")
                except asyncio.CancelledError:
                    # Timed out on a server that does not answer: drop the connection instead
                    # of waiting, on its way back to the pool, for the query's cancellation.
                    conn.terminate()
                    raise
    except Exception:  # any failure means "not healthy"; asyncpg logs the reason
        return False
    return True


async def _redis_status(request: Request[Any, Any, Any]) -> str:
    queue = state(request).queue
    if queue is None or queue.name != "bullmq" or not hasattr(queue, "ping"):
        return "not configured"
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await queue.ping()
    except Exception:  # any failure means "disconnected"
        return "disconnected"
    return "connected"


@get(
    ["/health", "/api/v1/health"],
    responses={503: ResponseSpec(data_container=Health, description="Database unreachable")},
)
async def health(request: Request[Any, Any, Any]) -> Response[Health]:
    """Checks the database for real: 200 when it answers, 503 when it does not."""
    database_ok = await _database_ok(request)
    body = Health(
        status="healthy" if database_ok else "unhealthy",
        timestamp=dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        environment=state(request).settings.environment,
        services=HealthServices(
            database="connected" if database_ok else "disconnected",
            redis=await _redis_status(request),
        ),
    )
    return Response(body, status_code=200 if database_ok else 503)


async def redis_config(request: Request[Any, Any, Any]) -> RedisConfig:
    """The Redis connection the caller's workers use, with the credentials it may see.

    FOREMAN_REDIS_ACL=per-org: its organisation's own user (created or brought up to date now);
    the admin password is never handed out then.
    """
    app = state(request)
    settings = app.settings
    config = RedisConfig(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db)
    if not may_see_redis_password(request):
        return config
    if app.redis_acl is None:
        return msgspec.structs.replace(
            config, username=settings.redis_username, password=settings.redis_password
        )
    # Redis down: 503, never the admin password instead (the SDK retries a 503).
    user = await app.redis_acl.ensure(request_org(request), now_ms=ids.now_ms())
    return msgspec.structs.replace(config, username=user.username, password=user.password)


def queues_config(settings: Settings, org_id: str) -> QueuesConfig:
    """The queue names of org_id's workers: its own (FOREMAN_QUEUE_PER_ORG), else the shared."""
    if not settings.queue_per_org:
        return QueuesConfig(
            task_queue=settings.task_queue_name, result_queue=settings.result_queue_name
        )
    return QueuesConfig(
        task_queue=naming.org_queue_name(settings.task_queue_name, org_id),
        result_queue=naming.org_queue_name(settings.result_queue_name, org_id),
    )


def queue_backend_config(settings: Settings, request: Request[Any, Any, Any]) -> QueueBackendConfig:
    """The backend, and for a broker with a queue per organisation the caller's queue."""
    caller = context.context_of(request.scope).caller
    if settings.queue_backend in ("rabbitmq", "sqs") and caller is not None:
        name = naming.org_queue_name(settings.task_queue_name, caller.org_id)
        return QueueBackendConfig(backend=settings.queue_backend, task_queue=name)
    return QueueBackendConfig(backend=settings.queue_backend)


@get("/api/v1/config", middleware=[authenticated], responses=error_responses())
async def get_config(request: Request[Any, Any, Any]) -> Config:
    """Server version, Redis connection, the caller's queue names and the queue backend in use."""
    settings = state(request).settings
    return Config(
        version=settings.version,
        environment=settings.environment,
        redis=await redis_config(request),
        queues=queues_config(settings, request_org(request)),
        queue=queue_backend_config(settings, request),
    )


@get("/api/v1/config/redis", middleware=[authenticated], responses=error_responses())
async def get_redis_config(request: Request[Any, Any, Any]) -> RedisConfig:
    """The Redis connection the caller's workers use."""
    return await redis_config(request)


@get("/api/v1/config/queues", middleware=[authenticated], responses=error_responses())
async def get_queues_config(request: Request[Any, Any, Any]) -> QueuesConfig:
    """The caller's queue names (its organisation's own, unless FOREMAN_QUEUE_PER_ORG=false)."""
    return queues_config(state(request).settings, request_org(request))


router = Router(
    path="/",
    route_handlers=[health, get_config, get_redis_config, get_queues_config],
    tags=["system"],
)
