"""The server's spans (README "Traces"): one per request, one per SQL statement. Imported only
when traces are on (foreman/tracing.py ``configure``).

Both come from OpenTelemetry's own instrumentations. The request span is the ASGI middleware's,
around Litestar inside the edge (server/edge.py); it is named from the route template once
routing found one (``POST /api/v1/tasks``), never the raw path, whose ids would make every
name unique, and just the method otherwise. The statement spans are asyncpg's instrumentation,
which wraps asyncpg's Connection methods: the pool's connections subclass it (store/db.py), and
only its own ``execute`` of a statement without arguments bypasses asyncpg's (no request sends
one; tests/integration/test_traces.py finds a span for each statement of a request).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation

HTTP_ROUTE = "http.route"


def instrument_statements() -> None:
    """A span per SQL statement of every asyncpg connection of this process (once per process)."""
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # a singleton
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


@contextlib.asynccontextmanager
async def untraced_lifespan(app: object) -> AsyncIterator[None]:
    """No span for the statements of what the app's lifespan starts: the background loops
    (sweeper, schedules, the metrics' queue gauges) and the LISTEN connection. Their tasks copy
    the lifespan's context; the requests' tasks never had it."""
    with suppress_instrumentation():
        yield


def _span_details(scope: Any) -> tuple[str, dict[str, Any]]:
    # The name until the route is known (a request no route takes keeps it).
    return str(scope["method"]), {}


def traced(app: ASGIApp) -> ASGIApp:
    """app inside OpenTelemetry's ASGI middleware: a SERVER span per request, the caller's
    traceparent its parent, without the middleware's extra span per receive and send."""

    async def named(scope: Scope, receive: Receive, send: Send) -> None:
        span = trace.get_current_span()  # the request's, made by the middleware

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("path_template")
                if route is not None:
                    span.update_name(f"{scope['method']} {route}")  # type: ignore[typeddict-item]
                    span.set_attribute(HTTP_ROUTE, route)
            await send(message)

        await app(scope, receive, send_named)

    middleware = OpenTelemetryMiddleware(
        named, default_span_details=_span_details, exclude_spans=["receive", "send"]
    )
    return cast("ASGIApp", middleware)
